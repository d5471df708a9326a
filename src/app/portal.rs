//! The customer portal: `Customers.CreatePortalSession`, and what a sandbox portal asks of
//! Coffer.
//!
//! A portal session is opened on the account's provider (the sandbox's own page, Stripe's
//! billing portal, Polar's customer session) for the customer mirrored there, and remembered in
//! `portal_sessions` with the key that opened it. A session is a short-lived link, not an
//! object with a state, so its provider call is counted but not journaled: an answer lost is
//! settled by opening another (decision 0027).
//!
//! [`Portal`] implements the sandbox page's port ([`PortalActions`]): a change the customer asks
//! for there is made by [`Subscriptions::change`], the lifecycle RPCs' own use case, as the key
//! that opened the session. There is no second write path.

use sqlx::PgPool;
use time::{Duration, OffsetDateTime};
use uuid::Uuid;

use futures_core::future::BoxFuture;

use super::error::Rejection;
use super::idempotency::{Done, IdempotentCall, Lapse, Mutations};
use super::journal::Journal;
use super::mirror::{Mirror, mirrored};
use super::providers::Providers;
use super::subscriptions::Subscriptions;
use super::{AppError, RejectionKind, TenantCtx};
use crate::domain::customer::CustomerRef;
use crate::domain::subscription::Change;
use crate::providers::sandbox::portal::{PortalAction, PortalActions, PortalCaller, PortalRefusal};
use crate::providers::{Operation, PortalRequest};
use crate::store::{customers as customer_store, portal as store};

pub const REASON_CUSTOMER_NOT_FOUND: &str = "CUSTOMER_NOT_FOUND";
/// A replay of CreatePortalSession under a key whose link has expired: its stored answer is
/// gone (the link was a credential), and a new link needs a new key.
pub const REASON_PORTAL_SESSION_EXPIRED: &str = "PORTAL_SESSION_EXPIRED";

/// How long a sandbox portal link works, on the account's clock. Stripe and Polar answer
/// their own.
pub const PORTAL_LIFETIME: Duration = Duration::hours(1);

/// CreatePortalSession, checked.
#[derive(Debug, Clone)]
pub struct NewPortalSession {
    pub customer: CustomerRef,
    /// Checked against the tenant's allowed redirect origins.
    pub return_url: String,
}

/// A portal link. The URL is the customer's credential for the portal: never logged, and
/// stored as an idempotent answer only while it works (decision 0033).
#[derive(Clone)]
pub struct PortalLink {
    pub url: String,
    /// On the account's clock (a sandbox account's may be ahead of the wall clock).
    pub expires_at: OffsetDateTime,
    /// How much longer the link works, measured on the account's clock when the provider
    /// answered; `None` for a link decoded from a stored answer, which is never stored again.
    pub works_for: Option<Duration>,
}

impl PortalLink {
    /// The stored answer lapses when the link stops working: replayed until then, refused
    /// with `PORTAL_SESSION_EXPIRED` after, and its URL scrubbed from the database.
    pub fn lapse(&self) -> Option<Lapse> {
        let works_for = self.works_for?;
        Some(Lapse {
            // A link already dead when answered (a clock moved meanwhile) is stored for no
            // time at all: its first answer is its only one.
            after: works_for.try_into().unwrap_or(std::time::Duration::ZERO),
            refusal: Rejection {
                kind: RejectionKind::FailedPrecondition,
                reason: REASON_PORTAL_SESSION_EXPIRED.to_owned(),
                message: "the portal link this idempotency key answered has expired; open a \
                          new one under a new idempotency key"
                    .to_owned(),
                metadata: Vec::new(),
            },
        })
    }
}

/// The portal's use cases. Cheap to clone.
#[derive(Clone)]
pub struct Portal {
    pool: PgPool,
    mutations: Mutations,
    providers: Providers,
    journal: Journal,
    subscriptions: Subscriptions,
}

impl Portal {
    pub fn new(
        pool: PgPool,
        mutations: Mutations,
        providers: Providers,
        journal: Journal,
        subscriptions: Subscriptions,
    ) -> Self {
        Self {
            pool,
            mutations,
            providers,
            journal,
            subscriptions,
        }
    }

    /// Opens a portal session for the customer on the tenant's default account, under the
    /// call's idempotency key (a retry answers the same link).
    #[tracing::instrument(skip_all)]
    pub async fn create(
        &self,
        ctx: &TenantCtx,
        call: Option<IdempotentCall>,
        new: NewPortalSession,
    ) -> Result<Done<PortalLink>, AppError> {
        let this = self.clone();
        let ctx = *ctx;
        self.mutations
            .run_external(&ctx, call, move |_call| async move {
                this.create_attempt(ctx, new).await
            })
            .await
    }

    async fn create_attempt(
        &self,
        ctx: TenantCtx,
        new: NewPortalSession,
    ) -> Result<PortalLink, AppError> {
        let customer = {
            let mut conn = self.pool.acquire().await?;
            customer_store::find_customer(&mut conn, ctx.tenant, &new.customer)
                .await?
                .ok_or_else(|| {
                    AppError::not_found(REASON_CUSTOMER_NOT_FOUND, "customer not found")
                })?
        };
        let account = self.providers.resolve(ctx.tenant, None).await?;
        let provider = account.for_op(Operation::CreatePortalSession)?;
        let now = self.providers.now(ctx.tenant, &account).await?;
        // The customer as the provider knows it, made there now if it never bought anything.
        let provider_customer = mirrored(
            &self.pool,
            &self.journal,
            ctx,
            &account,
            Mirror::Customer(&customer),
        )
        .await?
        .ok_or_else(|| AppError::internal("a portal provider without customers"))?;
        let id = Uuid::now_v7();
        let portal = self
            .journal
            .fetch(
                account.kind,
                "create_portal_session",
                provider.create_portal_session(
                    &account.name,
                    PortalRequest {
                        client_reference: id,
                        idempotency_key: format!("portal-{id}"),
                        customer: provider_customer,
                        coffer_customer: customer.id.as_uuid(),
                        return_url: new.return_url.clone(),
                        expires_at: now + PORTAL_LIFETIME,
                    },
                ),
            )
            .await?;
        // What is left of the link's life once the provider answered, on its account's clock:
        // the stored answer lapses no later than the link (the few milliseconds until the
        // answer is stored aside).
        let answered = self.providers.now(ctx.tenant, &account).await?;
        let works_for = portal.expires_at - answered;
        let mut conn = self.pool.acquire().await?;
        store::insert_portal_session(
            &mut conn,
            ctx.tenant,
            id,
            customer.id,
            ctx.key,
            account.name.as_str(),
            &new.return_url,
            portal.expires_at,
        )
        .await?;
        tracing::info!(
            portal.session = %id,
            account = account.name.as_str(),
            "portal session opened"
        );
        Ok(PortalLink {
            url: portal.url,
            expires_at: portal.expires_at,
            works_for: Some(works_for),
        })
    }

    async fn portal_change(
        &self,
        caller: &PortalCaller,
        subscription: &str,
        action: PortalAction,
    ) -> Result<(), PortalRefusal> {
        const NOT_YOURS: &str = "That subscription is not one of yours.";
        let found = async {
            let mut conn = self.pool.acquire().await?;
            let Some(session) =
                store::find_portal_session(&mut conn, caller.tenant, caller.session).await?
            else {
                return Ok(None);
            };
            if session.account != caller.account {
                return Ok(None);
            }
            let sub = store::find_customer_subscription(
                &mut conn,
                caller.tenant,
                session.customer,
                &session.account,
                subscription,
            )
            .await?;
            Ok::<_, AppError>(sub.map(|sub| (session, sub)))
        }
        .await;
        let (session, id) = match found {
            Ok(Some(found)) => found,
            Ok(None) => return Err(PortalRefusal::Refused(NOT_YOURS)),
            Err(e) => {
                tracing::error!(error = %e, "a portal change could not be looked up");
                return Err(PortalRefusal::Unavailable);
            }
        };
        let ctx = TenantCtx {
            tenant: caller.tenant,
            key: session.key,
        };
        let change = match action {
            PortalAction::CancelAtPeriodEnd => Change::Cancel {
                at_period_end: true,
                reason: "asked in the customer portal".to_owned(),
            },
            PortalAction::UndoCancel => Change::UndoCancel,
            PortalAction::PauseCollection => Change::PauseCollection,
            PortalAction::ResumeCollection => Change::ResumeCollection,
        };
        match self.subscriptions.change(&ctx, None, id, change).await {
            Ok(_) => Ok(()),
            Err(AppError::Rejected(r)) if r.kind == RejectionKind::FailedPrecondition => Err(
                PortalRefusal::Refused("This subscription cannot be changed that way now."),
            ),
            Err(AppError::Rejected(r)) if r.kind == RejectionKind::NotFound => {
                Err(PortalRefusal::Refused(NOT_YOURS))
            }
            Err(e) => {
                tracing::error!(error = %e, "a portal change failed");
                Err(PortalRefusal::Unavailable)
            }
        }
    }
}

impl PortalActions for Portal {
    fn change<'a>(
        &'a self,
        caller: &'a PortalCaller,
        subscription: &'a str,
        action: PortalAction,
    ) -> BoxFuture<'a, Result<(), PortalRefusal>> {
        Box::pin(self.portal_change(caller, subscription, action))
    }
}
