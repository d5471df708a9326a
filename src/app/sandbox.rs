//! The Sandbox service's use case: moving a tenant's sandbox clock (AdvanceClock), under the
//! idempotency mechanism like every mutation.

use time::OffsetDateTime;

use super::accounts::REASON_ACCOUNT_NOT_FOUND;
use super::idempotency::{Done, IdempotentCall, Replayable};
use super::{App, AppError, TenantCtx};
use crate::domain::Violations;
use crate::domain::account::AccountName;
use crate::providers::sandbox::clock;
use crate::providers::sandbox::store::ClockMove;

/// Where a sandbox clock stands after a move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClockMoved {
    pub now: OffsetDateTime,
}

impl Replayable for ClockMoved {
    fn encode_replay(&self) -> Vec<u8> {
        self.now.unix_timestamp_nanos().to_be_bytes().to_vec()
    }

    fn decode_replay(bytes: &[u8]) -> Option<Self> {
        let nanos = i128::from_be_bytes(bytes.try_into().ok()?);
        Some(Self {
            now: OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()?,
        })
    }
}

/// Moves the tenant's sandbox account (`account`, or its own when `None`) forward to `to`,
/// expiring the sessions due by then. Another tenant's account is NOT_FOUND, as an unknown
/// one is; a `to` before the account's sandbox time is INVALID_ARGUMENT on `to`.
pub async fn advance_clock(
    app: &App,
    ctx: &TenantCtx,
    call: Option<IdempotentCall>,
    account: Option<AccountName>,
    to: OffsetDateTime,
) -> Result<Done<ClockMoved>, AppError> {
    // The Sandbox service is registered only with the sandbox: without it, a bug.
    let Some(sandbox) = app.checkout.providers().sandbox() else {
        return Err(AppError::internal(
            "the Sandbox service runs without the sandbox",
        ));
    };
    let secret = app
        .settings
        .tenant(ctx.tenant)
        .sandbox_webhook_secret
        .as_ref();
    let (own, _) = sandbox
        .account_for(ctx.tenant, secret)
        .await?
        .ok_or_else(account_not_found)?;
    if account.as_ref().is_some_and(|a| *a != own) {
        return Err(account_not_found());
    }
    // Bounded ahead of the wall clock (which only moves forward), so every time derived from
    // the sandbox clock stays one the store can hold and read back.
    let horizon = sandbox.config().clock_horizon;
    let latest = OffsetDateTime::now_utc() + horizon;
    if to > latest {
        return Err(AppError::Invalid(Violations::single(
            "to",
            format!(
                "is more than {} ahead of now (the sandbox clock's horizon, --sandbox-clock-horizon); the latest accepted now is {latest}",
                humantime::format_duration(horizon)
            ),
        )));
    }
    let tenant = ctx.tenant;
    let account = own.clone();
    let moved = app
        .events
        .mutations()
        .run(ctx, call, move |conn| {
            Box::pin(async move {
                match clock::advance(conn, tenant, own.as_str(), to).await? {
                    ClockMove::Moved(now) => Ok(ClockMoved { now }),
                    ClockMove::InThePast(now) => Err(AppError::Invalid(Violations::single(
                        "to",
                        format!("is before the account's sandbox time ({now}); the clock only moves forward"),
                    ))),
                    ClockMove::NotFound => Err(account_not_found()),
                }
            })
        })
        .await?;
    // Then everything the new time makes due, in order, each step committed on its own (a
    // replayed call runs it too: it finishes what an interrupted one began).
    sandbox.renew_due(Some(&account)).await?;
    Ok(moved)
}

fn account_not_found() -> AppError {
    AppError::not_found(REASON_ACCOUNT_NOT_FOUND, "no such sandbox account")
}
