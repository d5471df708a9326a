//! Events that are triggers, not the truth (DESIGN §5.3). Stripe, Polar and PayTabs send no
//! object versions (Stripe's `created` has one-second resolution, PayTabs has nothing), so an
//! event from them only names an object ([`crate::providers::Trigger`], read by the event's
//! adapter); the inbox worker fetches that object's current state from the provider, outside
//! any transaction, and applies it under the object's lock in one short transaction
//! (`app::inbox`, its leased phase).
//!
//! An object Coffer does not know yet is found by Coffer's own id, which the provider echoes
//! (`client_reference_id`, metadata): a webhook that races the API call that created the object
//! updates the row that call wrote before calling, never a second one.

use sqlx::PgConnection;

use super::AppError;
use super::journal::Journal;
use super::payments::{self, ApplyError};
use super::providers::Providers;
use crate::domain::account::AccountName;
use crate::domain::ids::{CheckoutId, TenantId};
use crate::providers::{Operation, ProviderObject, Trigger};

/// Fetches what triggers name. Cheap to clone.
#[derive(Clone)]
pub struct Triggers {
    providers: Providers,
    journal: Journal,
}

impl Triggers {
    pub fn new(providers: Providers, journal: Journal) -> Self {
        Self { providers, journal }
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
