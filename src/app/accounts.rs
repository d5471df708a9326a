//! The provider accounts this process knows, by name: built once at start from the
//! configuration (`Vec<Account>`), read by every delivery. Holding no lock, a lookup costs a
//! hash of the name.

use std::collections::HashMap;
use std::sync::Arc;

use super::AppError;
use crate::domain::account::{Account, AccountName, ProviderKind};

pub const REASON_ACCOUNT_NOT_FOUND: &str = "ACCOUNT_NOT_FOUND";

/// The configured accounts. Cheap to clone.
#[derive(Clone, Default)]
pub struct Accounts {
    by_name: Arc<HashMap<AccountName, Arc<Account>>>,
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
        })
    }

    /// The account called `name`; an unknown (or impossible) name is NOT_FOUND
    /// (`ACCOUNT_NOT_FOUND`).
    pub fn get(&self, name: &str) -> Result<Arc<Account>, AppError> {
        AccountName::parse(name)
            .ok()
            .and_then(|n| self.by_name.get(&n).cloned())
            .ok_or_else(|| AppError::not_found(REASON_ACCOUNT_NOT_FOUND, "no such account"))
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
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
}
