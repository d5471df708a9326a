//! Events that are triggers, not the truth (DESIGN §5.3). Stripe, Polar and PayTabs send no
//! object versions (Stripe's `created` has one-second resolution, PayTabs has nothing), so an
//! event from them only names an object ([`crate::providers::Trigger`], read by the event's
//! adapter); the inbox worker fetches that object's current state from the provider, outside
//! any transaction, and applies it under the object's lock in one short transaction
//! (`app::inbox`, its leased phase).
//!
//! A fetched subscription may also ask Coffer to act: one the provider stopped retrying and
//! left PAST_DUE is ended the tenant's way ([`Triggers::act_on`], decision 0034), before it is
//! applied, so a failure there (the provider down) makes the event wait and try again.
//!
//! An object Coffer does not know yet is found by Coffer's own id, which the provider echoes
//! (`client_reference_id`, metadata): a webhook that races the API call that created the object
//! updates the row that call wrote before calling, never a second one.

use std::sync::Arc;

use sqlx::PgConnection;

use super::AppError;
use super::journal::Journal;
use super::payments::{self, ApplyError};
use super::providers::Providers;
use super::subscriptions::Subscriptions;
use crate::domain::account::AccountName;
use crate::domain::ids::{CheckoutId, TenantId};
use crate::providers::{Operation, ProviderObject, Trigger};
use crate::settings::Settings;

/// Fetches what triggers name, and acts on what the provider's state asks of Coffer. Cheap to
/// clone.
#[derive(Clone)]
pub struct Triggers {
    providers: Providers,
    journal: Journal,
    subscriptions: Subscriptions,
    settings: Arc<Settings>,
}

impl Triggers {
    pub fn new(
        providers: Providers,
        journal: Journal,
        subscriptions: Subscriptions,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            providers,
            journal,
            subscriptions,
            settings,
        }
    }

    /// What a fetched object asks Coffer to do on the provider before it is applied: a
    /// subscription whose provider's retries ran out, left PAST_DUE, ends as the tenant's
    /// `dunning_end` says ([`Subscriptions::end_dunning`]). Idempotent: an event seen again,
    /// or another about the same subscription, finds the cancel already made.
    pub async fn act_on(
        &self,
        tenant: TenantId,
        account: &AccountName,
        object: &ProviderObject,
    ) -> Result<(), AppError> {
        // An invoice's payment carries the subscription it bills: a renewal's last failed
        // retry (`invoice.payment_failed`) may be the only event Stripe sends when its retries
        // run out and it leaves the subscription past due.
        let s = match object {
            ProviderObject::Subscription(s) => s,
            ProviderObject::Payment(p) => match p.subscription.as_deref() {
                Some(s) => s,
                None => return Ok(()),
            },
            _ => return Ok(()),
        };
        if !s.retries_exhausted {
            return Ok(());
        }
        let end = self.settings.tenant(tenant).dunning_end.unwrap_or_default();
        self.subscriptions
            .end_dunning(tenant, account, s, end)
            .await
    }

    /// The current state of the object `trigger` names, from the provider of `account`
    /// (counted like every provider read); `None` if the provider has no such object.
    pub async fn fetch(
        &self,
        tenant: TenantId,
        account: &AccountName,
        trigger: &Trigger,
    ) -> Result<Option<ProviderObject>, AppError> {
        let resolved = self.providers.resolve(tenant, Some(account)).await?;
        let provider = resolved.for_op(Operation::FetchObject)?;
        self.journal
            .fetch(
                resolved.kind,
                "fetch_trigger",
                provider.fetch(&resolved.name, trigger.kind, &trigger.id),
            )
            .await
    }
}

/// Applies a fetched object with the appliers every other path uses, in `tx` (under the
/// object's lock, taken by the caller).
pub async fn apply(
    tx: &mut PgConnection,
    tenant: TenantId,
    object: &ProviderObject,
) -> Result<(), ApplyError> {
    match object {
        ProviderObject::CheckoutSession(session) => {
            let id = session.client_reference.ok_or_else(|| {
                ApplyError::Refused("the provider's session names no Coffer checkout".into())
            })?;
            payments::apply_checkout(tx, tenant, CheckoutId::from_uuid(id), session).await
        }
        ProviderObject::Payment(p) => payments::apply_payment(tx, tenant, p).await,
        ProviderObject::Refund(r) => payments::apply_refund(tx, tenant, r).await,
        ProviderObject::Subscription(s) => {
            super::subscriptions::apply_subscription(tx, tenant, s).await
        }
        ProviderObject::Dispute(d) => payments::apply_dispute(tx, tenant, d).await,
        // Coffer keeps nothing of a provider's customer but its id, recorded when it was made.
        ProviderObject::Customer { .. }
        | ProviderObject::Price { .. }
        | ProviderObject::Meter { .. } => Ok(()),
    }
}
