//! Provider webhook events in the inbox: where each is in its processing.

use time::OffsetDateTime;

use super::account::{AccountName, ProviderKind};
use super::ids::EventId;

/// Where an event is in the inbox. Workers move a pending (or due failed) event to processed,
/// ignored, failed (due again after a backoff) or dead (after the last attempt), in the
/// transaction that holds its row lock; ReplayEvent moves a dead, failed or ignored event back
/// to pending. `Processing` is allowed by the table but not written: the workers' claim is
/// the row lock, not a committed status (see `app::inbox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventStatus {
    Pending,
    Processing,
    Processed,
    Failed,
    Dead,
    Ignored,
}

impl EventStatus {
    pub const ALL: [EventStatus; 6] = [
        EventStatus::Pending,
        EventStatus::Processing,
        EventStatus::Processed,
        EventStatus::Failed,
        EventStatus::Dead,
        EventStatus::Ignored,
    ];

    /// The stored name (`webhook_events.status`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Pending => "pending",
            EventStatus::Processing => "processing",
            EventStatus::Processed => "processed",
            EventStatus::Failed => "failed",
            EventStatus::Dead => "dead",
            EventStatus::Ignored => "ignored",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Whether ReplayEvent may put it back in the queue: only events no worker will take again
    /// by itself. A pending, processing or processed event is left alone.
    pub fn replayable(self) -> bool {
        matches!(
            self,
            EventStatus::Dead | EventStatus::Failed | EventStatus::Ignored
        )
    }
}

/// An event as stored, without its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub id: EventId,
    pub account: AccountName,
    pub provider: ProviderKind,
    pub provider_event_id: String,
    pub event_type: String,
    pub status: EventStatus,
    pub attempts: i32,
    pub next_attempt_at: OffsetDateTime,
    pub last_error: Option<String>,
    pub received_at: OffsetDateTime,
    pub processed_at: Option<OffsetDateTime>,
    /// When its payload was removed, past the retention period; such an event cannot be
    /// replayed.
    pub payload_purged_at: Option<OffsetDateTime>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_round_trip_and_only_the_settled_failures_replay() {
        for s in EventStatus::ALL {
            assert_eq!(EventStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(EventStatus::parse("PENDING"), None);
        let replayable: Vec<_> = EventStatus::ALL
            .into_iter()
            .filter(|s| s.replayable())
            .collect();
        assert_eq!(
            replayable,
            [EventStatus::Failed, EventStatus::Dead, EventStatus::Ignored]
        );
    }
}
