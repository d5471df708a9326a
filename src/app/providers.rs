//! The provider registry: which account a tenant's call goes through, and the provider that
//! serves it. Configured accounts come from coffer.toml, each with its adapter built at start
//! (`providers::adapter`); with the sandbox enabled every tenant also has `{tenant}-sandbox`,
//! made on first use, served by the one sandbox instance.

use std::collections::HashMap;
use std::sync::Arc;

use time::OffsetDateTime;

use super::AppError;
use super::RejectionKind;
use super::accounts::REASON_ACCOUNT_NOT_FOUND;
use crate::domain::account::{AccountName, ProviderKind};
use crate::domain::ids::TenantId;
use crate::providers::outbound::OutboundConfig;
use crate::providers::sandbox::Sandbox;
use crate::providers::{AdapterError, Operation, Provider, supports};
use crate::settings::Settings;

pub const REASON_PROVIDER_UNSUPPORTED: &str = "PROVIDER_UNSUPPORTED";
pub const REASON_NO_PROVIDER_ACCOUNT: &str = "NO_PROVIDER_ACCOUNT";

/// An account resolved for one tenant.
#[derive(Clone)]
pub struct Resolved {
    pub name: AccountName,
    pub kind: ProviderKind,
    /// `None` for providers this version cannot call yet.
    provider: Option<Arc<dyn Provider>>,
}

impl Resolved {
    /// The provider, if it can do `op`; FAILED_PRECONDITION (`PROVIDER_UNSUPPORTED`) if not.
    pub fn for_op(&self, op: Operation) -> Result<&dyn Provider, AppError> {
        if !supports(self.kind, op) {
            return Err(AppError::rejected(
                RejectionKind::FailedPrecondition,
                REASON_PROVIDER_UNSUPPORTED,
                format!(
                    "{} accounts do not support this operation ({op:?})",
                    self.kind
                ),
            ));
        }
        self.provider.as_deref().ok_or_else(|| {
            AppError::rejected(
                RejectionKind::FailedPrecondition,
                REASON_PROVIDER_UNSUPPORTED,
                format!(
                    "this version of Coffer cannot call {} accounts yet",
                    self.kind
                ),
            )
        })
    }

    pub fn supports(&self, op: Operation) -> bool {
        supports(self.kind, op)
    }
}

/// The accounts and the providers behind them. Cheap to clone.
#[derive(Clone)]
pub struct Providers {
    settings: Arc<Settings>,
    sandbox: Option<Sandbox>,
    /// The adapter of each configured account that Coffer can call, built once at start
    /// (`providers::adapter`), each with its own breaker and bulkhead.
    configured: Arc<HashMap<AccountName, Arc<dyn Provider>>>,
}

impl Providers {
    /// The registry of `settings`' accounts, with the sandbox when it runs; no configured
    /// account can be called until [`Providers::with_adapters`] builds their adapters.
    pub fn new(settings: Arc<Settings>, sandbox: Option<Sandbox>) -> Self {
        Self {
            settings,
            sandbox,
            configured: Arc::default(),
        }
    }

    /// The same registry with every configured account's adapter built, each with its own
    /// client stack from `outbound`, so a bad account stops the start rather than its first
    /// call.
    pub fn with_adapters(mut self, outbound: &OutboundConfig) -> Result<Self, AdapterError> {
        let mut configured = HashMap::new();
        for account in self.settings.accounts() {
            if let Some(adapter) = crate::providers::adapter(account, outbound)? {
                configured.insert(account.name.clone(), adapter);
            }
        }
        self.configured = Arc::new(configured);
        Ok(self)
    }

    /// The time as `account` sees it: Coffer's one seam for an account's "now". A sandbox
    /// account has a clock of its own (AdvanceClock moves it); every other account runs on the
    /// wall clock. Microsecond precision, as Postgres stores it.
    pub async fn now(
        &self,
        tenant: TenantId,
        account: &Resolved,
    ) -> Result<OffsetDateTime, AppError> {
        let now = match (&self.sandbox, account.kind) {
            (Some(sandbox), ProviderKind::Sandbox) => sandbox.now(tenant, &account.name).await?,
            _ => OffsetDateTime::now_utc(),
        };
        Ok(now
            .replace_nanosecond(now.nanosecond() / 1_000 * 1_000)
            .unwrap_or(now))
    }

    /// Every configured account whose usage is pushed to the provider's meters, with its
    /// tenant: what the push worker serves.
    pub fn metering_accounts(&self) -> Vec<(TenantId, Resolved)> {
        self.settings
            .accounts()
            .iter()
            .filter(|a| supports(a.provider, Operation::PushUsage))
            .filter_map(|a| {
                let provider = self.configured.get(&a.name)?.clone();
                Some((
                    a.tenant,
                    Resolved {
                        name: a.name.clone(),
                        kind: a.provider,
                        provider: Some(provider),
                    },
                ))
            })
            .collect()
    }

    pub fn sandbox(&self) -> Option<&Sandbox> {
        self.sandbox.as_ref()
    }

    /// The account a call names, or the tenant's default when it names none: its
    /// `default_account`, else its sandbox account when the sandbox is enabled. An account of
    /// another tenant is NOT_FOUND, as an unknown one is.
    pub async fn resolve(
        &self,
        tenant: TenantId,
        requested: Option<&AccountName>,
    ) -> Result<Resolved, AppError> {
        let wanted = requested.or(self.settings.tenant(tenant).default_account.as_ref());
        if let Some(name) = wanted
            && let Some(account) = self.settings.account(name)
        {
            if account.tenant != tenant {
                return Err(account_not_found());
            }
            return Ok(Resolved {
                name: account.name.clone(),
                kind: account.provider,
                provider: self.configured.get(&account.name).cloned(),
            });
        }
        let Some(sandbox) = &self.sandbox else {
            return Err(match wanted {
                Some(_) => account_not_found(),
                None => AppError::rejected(
                    RejectionKind::FailedPrecondition,
                    REASON_NO_PROVIDER_ACCOUNT,
                    "the tenant has no provider account: name one, configure default_account, \
                     or run with --sandbox",
                ),
            });
        };
        let secret = self.settings.tenant(tenant).sandbox_webhook_secret.as_ref();
        let (name, _secret) = sandbox
            .account_for(tenant, secret)
            .await?
            .ok_or_else(account_not_found)?;
        if wanted.is_some_and(|w| *w != name) {
            return Err(account_not_found());
        }
        Ok(Resolved {
            name,
            kind: ProviderKind::Sandbox,
            provider: Some(Arc::new(sandbox.clone())),
        })
    }
}

fn account_not_found() -> AppError {
    AppError::not_found(REASON_ACCOUNT_NOT_FOUND, "no such provider account")
}
