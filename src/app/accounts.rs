//! The provider accounts this process knows, by name: built once at start from the
//! configuration (`Vec<Account>`), read by every delivery. Holding no lock, a lookup of a
//! configured account costs a hash of the name.
//!
//! With the sandbox enabled ([`Accounts::with_sandbox`]), a name that is not configured may
//! be a tenant's sandbox account (`{tenant}-sandbox`, made on first use, so also for tenants
//! created after the start): it is looked up in `sandbox_accounts` and, once found, kept in
//! memory with its secret (the tenant's `sandbox_webhook_secret_env` override wins). An
//! unknown name is still NOT_FOUND; only names of the sandbox's form reach the database.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use sqlx::PgPool;

use super::AppError;
use crate::domain::account::{Account, AccountName, ProviderKind, Secret};
use crate::providers::sandbox::store;
use crate::settings::Settings;

pub const REASON_ACCOUNT_NOT_FOUND: &str = "ACCOUNT_NOT_FOUND";

/// The configured accounts, and the sandbox's once seen. Cheap to clone.
#[derive(Clone, Default)]
pub struct Accounts {
    by_name: Arc<HashMap<AccountName, Arc<Account>>>,
    sandbox: Option<SandboxAccounts>,
}

/// The sandbox's accounts, found in its table and remembered (they are never deleted and
/// their secrets never change, so the cache needs no invalidation).
#[derive(Clone)]
struct SandboxAccounts {
    pool: PgPool,
    settings: Arc<Settings>,
    found: Arc<RwLock<HashMap<AccountName, Arc<Account>>>>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccountsError {
    #[error("account {0} is configured twice")]
    Duplicate(AccountName),
    #[error("account {0} has no webhook secret")]
    NoSecret(AccountName),
    #[error("hmac account {0} has no signature scheme")]
    NoScheme(AccountName),
}

impl Accounts {
    /// The registry of `accounts`. Two accounts of one name, one without a webhook secret, or
    /// an hmac account without its scheme, are configuration errors (the configuration file reports them first; this is the
    /// backstop, so a verifier never runs with nothing to verify against).
    pub fn new(accounts: Vec<Account>) -> Result<Self, AccountsError> {
        let mut by_name = HashMap::with_capacity(accounts.len());
        for account in accounts {
            if account.webhook_secrets.is_empty() {
                return Err(AccountsError::NoSecret(account.name));
            }
            if account.provider == ProviderKind::Hmac && account.hmac.is_none() {
                return Err(AccountsError::NoScheme(account.name));
            }
            let name = account.name.clone();
            if by_name.insert(name.clone(), Arc::new(account)).is_some() {
                return Err(AccountsError::Duplicate(name));
            }
        }
        Ok(Self {
            by_name: Arc::new(by_name),
            sandbox: None,
        })
    }

    /// The same registry, also knowing every tenant's sandbox account (`serve --sandbox`).
    pub fn with_sandbox(mut self, pool: PgPool, settings: Arc<Settings>) -> Self {
        self.sandbox = Some(SandboxAccounts {
            pool,
            settings,
            found: Arc::default(),
        });
        self
    }

    /// The configured account called `name`; an unknown (or impossible) name is NOT_FOUND
    /// (`ACCOUNT_NOT_FOUND`).
    pub fn get(&self, name: &str) -> Result<Arc<Account>, AppError> {
        AccountName::parse(name)
            .ok()
            .and_then(|n| self.by_name.get(&n).cloned())
            .ok_or_else(not_found)
    }

    /// The account called `name`: a configured one, else (with the sandbox) a tenant's
    /// sandbox account; NOT_FOUND (`ACCOUNT_NOT_FOUND`) when neither.
    pub async fn find(&self, name: &str) -> Result<Arc<Account>, AppError> {
        let Ok(name) = AccountName::parse(name) else {
            return Err(not_found());
        };
        if let Some(account) = self.by_name.get(&name) {
            return Ok(account.clone());
        }
        match &self.sandbox {
            Some(sandbox) if name.as_str().ends_with("-sandbox") => sandbox.find(name).await,
            _ => Err(not_found()),
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

impl SandboxAccounts {
    async fn find(&self, name: AccountName) -> Result<Arc<Account>, AppError> {
        if let Some(account) = self.found.read().expect("accounts lock").get(&name) {
            return Ok(account.clone());
        }
        let mut conn = self.pool.acquire().await?;
        let (tenant, stored) = store::find_sandbox_account_by_name(&mut conn, name.as_str())
            .await?
            .ok_or_else(not_found)?;
        let secret = self
            .settings
            .tenant(tenant)
            .sandbox_webhook_secret
            .clone()
            .unwrap_or_else(|| Secret::new(stored));
        let account = Arc::new(Account {
            name: name.clone(),
            tenant,
            provider: ProviderKind::Sandbox,
            api_key: None,
            webhook_secrets: vec![secret],
            api_base: None,
            livemode: false,
            hmac: None,
            paytabs: None,
            webhook_sources: None,
        });
        self.found
            .write()
            .expect("accounts lock")
            .insert(name, account.clone());
        Ok(account)
    }
}

fn not_found() -> AppError {
    AppError::not_found(REASON_ACCOUNT_NOT_FOUND, "no such account")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::account::Secret;
    use crate::domain::ids::TenantId;

    fn account(name: &str, provider: ProviderKind, secrets: &[&str]) -> Account {
        Account {
            name: AccountName::parse(name).unwrap(),
            tenant: TenantId::generate(),
            provider,
            api_key: None,
            webhook_secrets: secrets.iter().map(|s| Secret::new(*s)).collect(),
            api_base: None,
            livemode: false,
            hmac: None,
            paytabs: None,
            webhook_sources: None,
        }
    }

    #[test]
    fn lookups_and_configuration_errors() {
        let accounts = Accounts::new(vec![
            account("a", ProviderKind::Stripe, &["s"]),
            account("b", ProviderKind::Sandbox, &["s"]),
        ])
        .unwrap();
        assert_eq!(accounts.len(), 2);
        assert_eq!(accounts.get("a").unwrap().provider, ProviderKind::Stripe);
        for unknown in ["c", "", "A", "a/b"] {
            match accounts.get(unknown) {
                Err(AppError::Rejected(r)) => assert_eq!(r.reason, REASON_ACCOUNT_NOT_FOUND),
                _ => panic!("{unknown:?} found"),
            }
        }
        let twice = Accounts::new(vec![
            account("a", ProviderKind::Stripe, &["s"]),
            account("a", ProviderKind::Polar, &["s"]),
        ]);
        assert!(matches!(twice, Err(AccountsError::Duplicate(_))));
        let no_secret = Accounts::new(vec![account("a", ProviderKind::Stripe, &[])]);
        assert!(matches!(no_secret, Err(AccountsError::NoSecret(_))));
        let no_scheme = Accounts::new(vec![account("a", ProviderKind::Hmac, &["s"])]);
        assert!(matches!(no_scheme, Err(AccountsError::NoScheme(_))));
    }

    /// Without the sandbox, `find` is `get`: a sandbox-shaped name is not looked up anywhere.
    #[tokio::test]
    async fn find_without_the_sandbox_knows_only_configured_accounts() {
        let accounts = Accounts::new(vec![account("a", ProviderKind::Stripe, &["s"])]).unwrap();
        assert_eq!(
            accounts.find("a").await.unwrap().provider,
            ProviderKind::Stripe
        );
        for unknown in ["acme-sandbox", "b", "A"] {
            match accounts.find(unknown).await {
                Err(AppError::Rejected(r)) => assert_eq!(r.reason, REASON_ACCOUNT_NOT_FOUND),
                _ => panic!("{unknown:?} found"),
            }
        }
    }
}
