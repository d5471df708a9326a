//! The provider accounts this process knows, by name: built once at start from the
//! configuration (`Vec<Account>`), read by every delivery. Holding no lock, a lookup costs a
//! hash of the name.

use std::collections::HashMap;
use std::sync::Arc;

use super::AppError;
use crate::domain::account::{Account, AccountName};

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
}

impl Accounts {
    /// The registry of `accounts`. Two accounts of one name, or one without a webhook secret,
    /// are configuration errors (the configuration file reports them first; this is the
    /// backstop, so a verifier never runs with nothing to verify against).
    pub fn new(accounts: Vec<Account>) -> Result<Self, AccountsError> {
        let mut by_name = HashMap::with_capacity(accounts.len());
        for account in accounts {
            if account.webhook_secrets.is_empty() {
                return Err(AccountsError::NoSecret(account.name));
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
