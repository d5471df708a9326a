//! Subscriptions: their statuses and the one state machine they move through, and the read
//! model. Changes come from the provider (its events, fetched) and, with the lifecycle RPCs,
//! from Coffer's own calls; both go through [`SubscriptionStatus::transition`].

use time::OffsetDateTime;

use crate::domain::ids::{CheckoutId, CustomerId, PlanId, PriceId, SubscriptionId};

/// A subscription's status: Stripe's list. Only TRIALING and ACTIVE are reachable until the
/// lifecycle RPCs and renewals come; the rest are here so the stored values and the API do
/// not change then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionStatus {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Paused,
}

impl SubscriptionStatus {
    pub const ALL: [SubscriptionStatus; 8] = [
        SubscriptionStatus::Incomplete,
        SubscriptionStatus::IncompleteExpired,
        SubscriptionStatus::Trialing,
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Canceled,
        SubscriptionStatus::Unpaid,
        SubscriptionStatus::Paused,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::IncompleteExpired => "incomplete_expired",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Canceled => "canceled",
            SubscriptionStatus::Unpaid => "unpaid",
            SubscriptionStatus::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// The one state machine of subscriptions, Stripe's transitions: INCOMPLETE becomes
    /// ACTIVE/TRIALING once paid or INCOMPLETE_EXPIRED; TRIALING and ACTIVE move among
    /// themselves and to PAST_DUE, PAUSED or CANCELED; PAST_DUE recovers or ends
    /// UNPAID/CANCELED; CANCELED and INCOMPLETE_EXPIRED are final. Staying is always allowed
    /// (a repeated event). An illegal move names both ends, for a FAILED_PRECONDITION that
    /// says the current status.
    pub fn transition(
        self,
        to: SubscriptionStatus,
    ) -> Result<SubscriptionStatus, IllegalTransition> {
        use SubscriptionStatus::*;
        let legal = self == to
            || matches!(
                (self, to),
                (Incomplete, Trialing | Active | IncompleteExpired)
                    | (Trialing, Active | PastDue | Paused | Canceled)
                    | (Active, PastDue | Paused | Canceled)
                    | (PastDue, Active | Unpaid | Canceled)
                    | (Unpaid, Active | Canceled)
                    | (Paused, Active | Trialing | Canceled)
            );
        if legal {
            Ok(to)
        } else {
            Err(IllegalTransition { from: self, to })
        }
    }
}

/// A move the state machine does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a {} subscription cannot become {}", from.as_str(), to.as_str())]
pub struct IllegalTransition {
    pub from: SubscriptionStatus,
    pub to: SubscriptionStatus,
}

/// The largest cancel reason kept, in characters.
pub const MAX_CANCEL_REASON: usize = 500;

/// A change a caller asks of a subscription (the lifecycle RPCs), as Stripe's subscription
/// updates make them: cancel now or at the period's end (and undo the latter), and pause or
/// resume collection (the status stays, as Stripe's `pause_collection` leaves it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Cancel {
        at_period_end: bool,
        reason: String,
    },
    UndoCancel,
    PauseCollection,
    ResumeCollection,
    /// Resume a PAUSED subscription (a trial that ended without a payment method), as
    /// Stripe's `POST /v1/subscriptions/{id}/resume` does: a new period starts now and is
    /// charged at once to the card on file. ResumeSubscription asks it when the status is
    /// PAUSED ([`Change::resume_of`]); the provider's answer says whether the charge paid.
    Resume,
    /// A change of price or quantity (ChangeSubscriptionPlan), now or at the period's end.
    ChangePlan(PlanChange),
}

/// When a plan change takes effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effective {
    /// Now, prorated as asked.
    Now,
    /// At the current period's end: the renewal charges the new price; nothing is prorated.
    PeriodEnd,
}

/// A change of a subscription's price and quantity, with what the provider needs to make it:
/// the new per-period total (unit amount × quantity, minor units) and the provider's id of the
/// price (empty for providers that take amounts inline).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlanChange {
    pub price: PriceId,
    pub provider_price: String,
    pub quantity: u32,
    pub new_total: i64,
    pub proration: crate::domain::proration::Behavior,
    pub effective: Effective,
    /// The time the proration is computed at (a preview's, so the change charges what it
    /// showed); `None`: the provider's now.
    pub proration_time: Option<OffsetDateTime>,
}

impl Change {
    /// What the change does, for messages.
    pub fn verb(&self) -> &'static str {
        match self {
            Change::Cancel {
                at_period_end: true,
                ..
            } => "be canceled at the end of its period",
            Change::Cancel { .. } => "be canceled",
            Change::UndoCancel => "have a scheduled cancel undone",
            Change::PauseCollection => "have its collection paused",
            Change::ResumeCollection => "have its collection resumed",
            Change::Resume => "be resumed",
            Change::ChangePlan(_) => "change its plan",
        }
    }

    /// What "resume" means for a subscription in `status`: a PAUSED one (its trial ended
    /// without a card) is resumed with a new, charged period; any other has its paused
    /// collection resumed (Stripe's `pause_collection` unset), which is judged as such.
    pub fn resume_of(status: SubscriptionStatus) -> Change {
        if status == SubscriptionStatus::Paused {
            Change::Resume
        } else {
            Change::ResumeCollection
        }
    }
}

/// A change the subscription's state does not allow: FAILED_PRECONDITION naming the current
/// status (and why, when the status alone is not the reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {} subscription cannot {verb}{why}", status.as_str())]
pub struct IllegalChange {
    pub status: SubscriptionStatus,
    pub verb: &'static str,
    /// Empty, or ": " and the flag that refuses it.
    pub why: &'static str,
}

/// The part of a subscription its lifecycle moves. Invariants (what [`Lifecycle::check`]
/// asserts, and what no sequence of changes and provider moves may break): a CANCELED
/// subscription has `canceled_at` and neither a scheduled cancel nor paused collection; only
/// a TRIALING or ACTIVE subscription has its collection paused; a scheduled cancel needs a
/// status that still has a period to end (TRIALING, ACTIVE, PAST_DUE).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lifecycle {
    pub status: SubscriptionStatus,
    pub cancel_at_period_end: bool,
    pub collection_paused: bool,
    pub canceled_at: Option<OffsetDateTime>,
    pub cancel_reason: String,
}

impl Lifecycle {
    /// A fresh subscription's.
    pub fn new(status: SubscriptionStatus) -> Self {
        Lifecycle {
            status,
            cancel_at_period_end: false,
            collection_paused: false,
            canceled_at: None,
            cancel_reason: String::new(),
        }
    }

    /// The state after `change` at `now`, or why it is refused. A change that is already so
    /// (pausing paused collection, scheduling a scheduled cancel) is allowed and changes
    /// nothing but the reason, so a caller's retry without an idempotency key is harmless.
    pub fn apply(&self, change: &Change, now: OffsetDateTime) -> Result<Lifecycle, IllegalChange> {
        use SubscriptionStatus::*;
        let refuse = |why: &'static str| IllegalChange {
            status: self.status,
            verb: change.verb(),
            why,
        };
        let mut next = self.clone();
        match change {
            Change::Cancel {
                at_period_end: false,
                reason,
            } => {
                if self.status == Canceled {
                    return Err(refuse(""));
                }
                next.status = self.status.transition(Canceled).map_err(|_| refuse(""))?;
                next.canceled_at = Some(now);
                next.cancel_at_period_end = false;
                next.collection_paused = false;
                next.cancel_reason = reason.clone();
            }
            Change::Cancel {
                at_period_end: true,
                reason,
            } => {
                if !matches!(self.status, Trialing | Active | PastDue) {
                    return Err(refuse(""));
                }
                next.cancel_at_period_end = true;
                next.cancel_reason = reason.clone();
            }
            Change::UndoCancel => {
                if self.status == Canceled {
                    return Err(refuse(""));
                }
                if !self.cancel_at_period_end {
                    return Err(refuse(": no cancel is scheduled"));
                }
                next.cancel_at_period_end = false;
                next.cancel_reason.clear();
            }
            Change::PauseCollection => {
                if !matches!(self.status, Trialing | Active) {
                    return Err(refuse(""));
                }
                next.collection_paused = true;
            }
            Change::ResumeCollection => {
                if !self.collection_paused {
                    return Err(refuse(": its collection is not paused"));
                }
                next.collection_paused = false;
            }
            Change::Resume => {
                if self.status != Paused {
                    return Err(refuse(""));
                }
                // ACTIVE when the charge pays; the provider's answer is what is applied, and
                // a declined charge leaves it PAUSED.
                next.status = self.status.transition(Active).map_err(|_| refuse(""))?;
            }
            Change::ChangePlan(_) => {
                // Only a subscription with a period being paid for changes price.
                if !matches!(self.status, Trialing | Active | PastDue) {
                    return Err(refuse(""));
                }
            }
        }
        Ok(next)
    }

    /// The state after the provider moved the subscription to `to` at `now` (a renewal, a
    /// failed charge, the end of a period): only through the state machine; entering CANCELED
    /// ends what was scheduled, and a status that is not TRIALING or ACTIVE collects nothing to
    /// pause.
    pub fn moved(
        &self,
        to: SubscriptionStatus,
        now: OffsetDateTime,
    ) -> Result<Lifecycle, IllegalTransition> {
        use SubscriptionStatus::*;
        let status = self.status.transition(to)?;
        let mut next = self.clone();
        next.status = status;
        if status == Canceled {
            next.canceled_at = self.canceled_at.or(Some(now));
            next.cancel_at_period_end = false;
        }
        if !matches!(status, Trialing | Active) {
            next.collection_paused = false;
        }
        if !matches!(status, Trialing | Active | PastDue) {
            next.cancel_at_period_end = false;
        }
        Ok(next)
    }

    /// Whether the invariants hold (see the type's comment).
    pub fn check(&self) -> Result<(), &'static str> {
        use SubscriptionStatus::*;
        if (self.status == Canceled) != self.canceled_at.is_some() {
            return Err("canceled_at is set exactly when CANCELED");
        }
        if self.collection_paused && !matches!(self.status, Trialing | Active) {
            return Err("only a TRIALING or ACTIVE subscription has paused collection");
        }
        if self.cancel_at_period_end && !matches!(self.status, Trialing | Active | PastDue) {
            return Err("a scheduled cancel needs a period to end");
        }
        Ok(())
    }
}

/// A customer's subscription: made by a completed SUBSCRIPTION checkout or by
/// CreateSubscription, moved by the lifecycle calls and the provider's events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub id: SubscriptionId,
    pub customer: CustomerId,
    pub plan: Option<PlanId>,
    pub price: Option<PriceId>,
    pub quantity: u32,
    pub status: SubscriptionStatus,
    pub current_period_start: OffsetDateTime,
    pub current_period_end: OffsetDateTime,
    pub trial_end: Option<OffsetDateTime>,
    pub cancel_at_period_end: bool,
    pub collection_paused: bool,
    pub canceled_at: Option<OffsetDateTime>,
    /// The caller's reason for a cancel; empty when none was given.
    pub cancel_reason: String,
    pub account: String,
    pub provider_subscription_id: String,
    /// The checkout session that made it; `None` for one made by CreateSubscription.
    pub checkout_session: Option<CheckoutId>,
    pub created_at: OffsetDateTime,
}

impl Subscription {
    /// The part its lifecycle moves.
    pub fn lifecycle(&self) -> Lifecycle {
        Lifecycle {
            status: self.status,
            cancel_at_period_end: self.cancel_at_period_end,
            collection_paused: self.collection_paused,
            canceled_at: self.canceled_at,
            cancel_reason: self.cancel_reason.clone(),
        }
    }

    /// Live: it may still charge or grant (neither CANCELED nor INCOMPLETE_EXPIRED), so its
    /// customer cannot be deleted.
    pub fn is_live(&self) -> bool {
        !matches!(
            self.status,
            SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired
        )
    }
}

/// What a change to a subscription was, as its outbox row and `WatchSubscriptionEvents` say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The subscription was made.
    Created,
    /// Its status moved (what CheckAccess answers may have changed).
    StatusChanged,
    /// What it grants changed without a status change: another price or plan, a payment of it
    /// disputed or settled.
    EntitlementsChanged,
    /// Anything else: a new period, a trial end.
    Updated,
}

impl ChangeKind {
    pub const ALL: [ChangeKind; 4] = [
        ChangeKind::Created,
        ChangeKind::StatusChanged,
        ChangeKind::EntitlementsChanged,
        ChangeKind::Updated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::StatusChanged => "status_changed",
            ChangeKind::EntitlementsChanged => "entitlements_changed",
            ChangeKind::Updated => "updated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a change stands in the outbox's order: the writing transaction's id, then the row's
/// sequence, and (for expiry) when it was written. Opaque to clients, who get it encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct EventCursor {
    pub xid: i64,
    pub seq: i64,
    /// When the change was written, in Unix microseconds.
    pub at_micros: i64,
}

const CURSOR_VERSION: u8 = 1;

impl EventCursor {
    /// Before every change.
    pub const START: EventCursor = EventCursor {
        xid: 0,
        seq: 0,
        at_micros: i64::MAX,
    };

    pub fn encode(&self) -> String {
        use base64::Engine as _;
        let mut bytes = Vec::with_capacity(25);
        bytes.push(CURSOR_VERSION);
        bytes.extend_from_slice(&self.xid.to_be_bytes());
        bytes.extend_from_slice(&self.seq.to_be_bytes());
        bytes.extend_from_slice(&self.at_micros.to_be_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    pub fn decode(s: &str) -> Result<Self, super::Invalid> {
        use base64::Engine as _;
        let bad = || super::Invalid::new("is not a cursor of this stream");
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad())?;
        if bytes.len() != 25 || bytes[0] != CURSOR_VERSION {
            return Err(bad());
        }
        let int = |i: usize| i64::from_be_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        let cursor = EventCursor {
            xid: int(1),
            seq: int(9),
            at_micros: int(17),
        };
        if cursor.xid < 0 || cursor.seq < 0 {
            return Err(bad());
        }
        Ok(cursor)
    }

    /// Whether the change it points at is older than `retention` at `now`: the rows after it
    /// may have been pruned, so a stream cannot resume from it without a gap.
    pub fn expired(&self, now: OffsetDateTime, retention: time::Duration) -> bool {
        let at = OffsetDateTime::from_unix_timestamp_nanos(self.at_micros as i128 * 1_000);
        match at {
            Ok(at) => at < now - retention,
            Err(_) => true,
        }
    }
}

/// One change of a subscription, with the whole subscription as it was right after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionEvent {
    pub cursor: EventCursor,
    pub kind: ChangeKind,
    pub subscription: Subscription,
    pub occurred_at: OffsetDateTime,
}

/// The longest trial CreateSubscription gives, in days (Stripe's `trial_period_days` limit).
pub const MAX_TRIAL_DAYS: u32 = 730;

/// The trial a CreateSubscription asks: 0 (none) up to [`MAX_TRIAL_DAYS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrialDays(u16);

impl TrialDays {
    pub fn parse(days: u32) -> Result<Self, crate::domain::Invalid> {
        if days > MAX_TRIAL_DAYS {
            return Err(crate::domain::Invalid::new(format!(
                "must be between 0 and {MAX_TRIAL_DAYS}"
            )));
        }
        Ok(Self(days as u16))
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// The saved card a new subscription's charges go to, as far as a subscription's start
/// cares: whether charging it off-session succeeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardOnFile {
    Pays,
    /// The sandbox's `4000 0000 0000 0341`: it paid once, at its checkout, and every later
    /// (off-session) charge of it fails.
    Declines,
}

/// How a subscription made through the API starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// TRIALING until the trial's end; nothing is charged now.
    Trial,
    /// The first period is charged now and paid: ACTIVE.
    Paid,
    /// The first period's charge failed: INCOMPLETE, as Stripe's
    /// `payment_behavior=default_incomplete` leaves a subscription whose first invoice is not
    /// paid. Nothing is retried; a new CreateSubscription (with another card) starts again.
    FirstChargeFailed,
}

impl Start {
    pub fn status(self) -> SubscriptionStatus {
        match self {
            Start::Trial => SubscriptionStatus::Trialing,
            Start::Paid => SubscriptionStatus::Active,
            Start::FirstChargeFailed => SubscriptionStatus::Incomplete,
        }
    }
}

/// Neither a trial nor a card to charge: nothing to start the subscription with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the customer has no payment method on file and the subscription has no trial")]
pub struct PaymentMethodRequired;

/// How a subscription made through the API starts: a trial whether or not a card is on file;
/// else the card is charged for the first period; no card and no trial is refused.
pub fn start(trial: TrialDays, card: Option<CardOnFile>) -> Result<Start, PaymentMethodRequired> {
    match (trial.get(), card) {
        (1.., _) => Ok(Start::Trial),
        (0, Some(CardOnFile::Pays)) => Ok(Start::Paid),
        (0, Some(CardOnFile::Declines)) => Ok(Start::FirstChargeFailed),
        (0, None) => Err(PaymentMethodRequired),
    }
}

/// What becomes of a trial that ends with no payment method on file (Stripe's
/// `trial_settings.end_behavior.missing_payment_method`; tenant setting
/// `trial_end_without_payment_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MissingPaymentMethod {
    /// CANCELED at the trial's end (Stripe's `cancel`, Coffer's default).
    #[default]
    Cancel,
    /// PAUSED at the trial's end (Stripe's `pause`): no access, nothing charged.
    Pause,
}

impl MissingPaymentMethod {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "cancel" => Some(Self::Cancel),
            "pause" => Some(Self::Pause),
            _ => None,
        }
    }

    /// The status the trial ends in.
    pub fn status(self) -> SubscriptionStatus {
        match self {
            Self::Cancel => SubscriptionStatus::Canceled,
            Self::Pause => SubscriptionStatus::Paused,
        }
    }
}

/// What becomes of a subscription whose failed renewal is never paid (tenant setting
/// `dunning_end`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DunningEnd {
    #[default]
    Unpaid,
    Canceled,
}

impl DunningEnd {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "unpaid" => Some(Self::Unpaid),
            "canceled" => Some(Self::Canceled),
            _ => None,
        }
    }

    pub fn status(self) -> SubscriptionStatus {
        match self {
            Self::Unpaid => SubscriptionStatus::Unpaid,
            Self::Canceled => SubscriptionStatus::Canceled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscription_starts_with_a_trial_or_the_card_or_is_refused() {
        let none = TrialDays::parse(0).unwrap();
        let week = TrialDays::parse(7).unwrap();
        assert_eq!(start(week, None), Ok(Start::Trial));
        assert_eq!(start(week, Some(CardOnFile::Declines)), Ok(Start::Trial));
        assert_eq!(start(none, Some(CardOnFile::Pays)), Ok(Start::Paid));
        assert_eq!(
            start(none, Some(CardOnFile::Declines)),
            Ok(Start::FirstChargeFailed)
        );
        assert_eq!(start(none, None), Err(PaymentMethodRequired));
        assert_eq!(
            Start::FirstChargeFailed.status(),
            SubscriptionStatus::Incomplete
        );
        // Every start is a status the state machine can leave for ACTIVE.
        for s in [Start::Trial, Start::Paid, Start::FirstChargeFailed] {
            assert!(s.status().transition(SubscriptionStatus::Active).is_ok());
        }
    }

    #[test]
    fn trial_days_are_bounded() {
        assert_eq!(TrialDays::parse(730).unwrap().get(), 730);
        assert!(TrialDays::parse(731).is_err());
    }

    #[test]
    fn a_trial_without_a_card_ends_canceled_or_paused_legally() {
        assert_eq!(
            MissingPaymentMethod::default(),
            MissingPaymentMethod::Cancel
        );
        assert_eq!(
            MissingPaymentMethod::parse("pause"),
            Some(MissingPaymentMethod::Pause)
        );
        assert_eq!(MissingPaymentMethod::parse("Pause"), None);
        for m in [MissingPaymentMethod::Cancel, MissingPaymentMethod::Pause] {
            assert!(SubscriptionStatus::Trialing.transition(m.status()).is_ok());
        }
        assert_eq!(DunningEnd::parse("canceled"), Some(DunningEnd::Canceled));
        assert_eq!(DunningEnd::parse("cancelled"), None);
        for e in [DunningEnd::Unpaid, DunningEnd::Canceled] {
            assert!(SubscriptionStatus::PastDue.transition(e.status()).is_ok());
        }
    }
    use proptest::prelude::*;

    fn t(s: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_764_590_000 + s).unwrap()
    }

    fn cancel(at_period_end: bool) -> Change {
        Change::Cancel {
            at_period_end,
            reason: "too expensive".into(),
        }
    }

    #[test]
    fn cancel_now_ends_it_and_names_the_status_when_refused() {
        let active = Lifecycle::new(SubscriptionStatus::Active);
        let done = active.apply(&cancel(false), t(5)).unwrap();
        assert_eq!(done.status, SubscriptionStatus::Canceled);
        assert_eq!(done.canceled_at, Some(t(5)));
        assert_eq!(done.cancel_reason, "too expensive");
        let again = done.apply(&cancel(false), t(6)).unwrap_err();
        assert_eq!(
            again.to_string(),
            "a canceled subscription cannot be canceled"
        );
        assert_eq!(
            done.apply(&Change::PauseCollection, t(6))
                .unwrap_err()
                .to_string(),
            "a canceled subscription cannot have its collection paused"
        );
    }

    #[test]
    fn a_scheduled_cancel_is_undone_and_an_unscheduled_one_is_refused() {
        let active = Lifecycle::new(SubscriptionStatus::Trialing);
        let scheduled = active.apply(&cancel(true), t(1)).unwrap();
        assert!(scheduled.cancel_at_period_end);
        assert_eq!(scheduled.status, SubscriptionStatus::Trialing);
        let undone = scheduled.apply(&Change::UndoCancel, t(2)).unwrap();
        assert_eq!(undone, active);
        assert_eq!(
            undone
                .apply(&Change::UndoCancel, t(3))
                .unwrap_err()
                .to_string(),
            "a trialing subscription cannot have a scheduled cancel undone: no cancel is scheduled"
        );
    }

    #[test]
    fn pausing_keeps_the_status() {
        let active = Lifecycle::new(SubscriptionStatus::Active);
        let paused = active.apply(&Change::PauseCollection, t(1)).unwrap();
        assert_eq!(paused.status, SubscriptionStatus::Active);
        assert!(paused.collection_paused);
        assert_eq!(
            paused.apply(&Change::ResumeCollection, t(2)).unwrap(),
            active
        );
        assert!(
            Lifecycle::new(SubscriptionStatus::PastDue)
                .apply(&Change::PauseCollection, t(1))
                .is_err()
        );
    }

    #[test]
    fn resume_of_a_paused_subscription_starts_it_and_any_other_resumes_collection() {
        assert_eq!(
            Change::resume_of(SubscriptionStatus::Paused),
            Change::Resume
        );
        let paused = Lifecycle::new(SubscriptionStatus::Paused);
        assert_eq!(
            paused.apply(&Change::Resume, t(1)).unwrap().status,
            SubscriptionStatus::Active
        );
        for s in [SubscriptionStatus::Active, SubscriptionStatus::Trialing] {
            assert_eq!(Change::resume_of(s), Change::ResumeCollection);
            assert_eq!(
                Lifecycle::new(s)
                    .apply(&Change::Resume, t(1))
                    .unwrap_err()
                    .to_string(),
                format!("a {} subscription cannot be resumed", s.as_str())
            );
        }
        // A PAUSED subscription has no paused collection to resume.
        assert!(paused.apply(&Change::ResumeCollection, t(1)).is_err());
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            any::<bool>().prop_map(cancel),
            Just(Change::UndoCancel),
            Just(Change::PauseCollection),
            Just(Change::ResumeCollection),
            Just(Change::Resume),
        ]
    }

    /// A lifecycle call, or the provider moving the subscription to a status.
    #[derive(Debug, Clone)]
    enum Step {
        Call(Change),
        Provider(SubscriptionStatus),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            change().prop_map(Step::Call),
            proptest::sample::select(SubscriptionStatus::ALL.to_vec()).prop_map(Step::Provider),
        ]
    }

    proptest! {
        /// No sequence of lifecycle calls and provider moves reaches a state the machine
        /// forbids: every status change is one `transition` allows, every state keeps the
        /// invariants, and a refused step changes nothing.
        #[test]
        fn no_sequence_reaches_a_forbidden_state(
            start in proptest::sample::select(vec![
                SubscriptionStatus::Incomplete,
                SubscriptionStatus::Trialing,
                SubscriptionStatus::Active,
            ]),
            steps in proptest::collection::vec(step(), 0..40),
        ) {
            let mut state = Lifecycle::new(start);
            for (i, step) in steps.into_iter().enumerate() {
                let now = t(i as i64);
                let next = match &step {
                    Step::Call(c) => state.apply(c, now).ok(),
                    Step::Provider(to) => state.moved(*to, now).ok(),
                };
                if let Some(next) = next {
                    prop_assert!(state.status.transition(next.status).is_ok(),
                        "{:?} -> {:?} by {:?}", state.status, next.status, step);
                    prop_assert_eq!(next.check(), Ok(()), "{:?} after {:?}", next, step);
                    if state.status == SubscriptionStatus::Canceled {
                        prop_assert_eq!(next.status, SubscriptionStatus::Canceled);
                    }
                    state = next;
                }
            }
        }
    }

    #[test]
    fn cursors_round_trip_and_expire() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let c = EventCursor {
            xid: 7_000_123,
            seq: 42,
            at_micros: 1_800_000_000 * 1_000_000 - 5_000_000,
        };
        assert_eq!(EventCursor::decode(&c.encode()), Ok(c));
        assert!(EventCursor::decode("").is_err());
        assert!(EventCursor::decode("AAAA").is_err());
        assert!(!c.expired(now, time::Duration::seconds(10)));
        assert!(c.expired(now, time::Duration::seconds(4)));
        for k in ChangeKind::ALL {
            assert_eq!(ChangeKind::parse(k.as_str()), Some(k));
        }
    }

    #[test]
    fn only_trialing_and_active_are_reachable_from_checkout_and_canceled_is_final() {
        use SubscriptionStatus::*;
        assert_eq!(Trialing.transition(Active), Ok(Active));
        assert_eq!(
            Active.transition(Trialing),
            Err(IllegalTransition {
                from: Active,
                to: Trialing
            })
        );
        for to in SubscriptionStatus::ALL {
            assert_eq!(Canceled.transition(to).is_ok(), to == Canceled);
            assert_eq!(
                IncompleteExpired.transition(to).is_ok(),
                to == IncompleteExpired
            );
        }
    }

    #[test]
    fn dunning_recovers_or_ends() {
        use SubscriptionStatus::*;
        assert!(Active.transition(PastDue).is_ok());
        assert!(PastDue.transition(Active).is_ok());
        assert!(PastDue.transition(Unpaid).is_ok());
        assert!(PastDue.transition(Canceled).is_ok());
        assert!(Unpaid.transition(PastDue).is_err());
        assert_eq!(
            Canceled.transition(Active).unwrap_err().to_string(),
            "a canceled subscription cannot become active"
        );
    }

    #[test]
    fn names_round_trip() {
        for s in SubscriptionStatus::ALL {
            assert_eq!(SubscriptionStatus::parse(s.as_str()), Some(s));
        }
    }
}
