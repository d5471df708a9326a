//! Authenticating API keys, with a short cache so the hot path does not hit the database on
//! every call. Entries live at most [`CACHE_TTL`], which bounds how long a revoked key keeps
//! working.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;

use super::AppError;
use crate::domain::auth::{ApiKey, Caller, KeyOwner, Scope, Scopes};
use crate::domain::ids::KeyId;
use crate::store::tenants::{KeyRecord, find_api_key};

/// A revocation takes effect within this long.
pub const CACHE_TTL: Duration = Duration::from_millis(500);
/// Past this many entries the cache is emptied, so made-up key ids cannot grow it unbounded.
const CACHE_MAX: usize = 10_000;

/// Key id → when it was looked up, and what was found (`None`: no such key).
type KeyCache = HashMap<KeyId, (Instant, Option<Arc<KeyRecord>>)>;

#[derive(Clone)]
pub struct Authenticator {
    pool: PgPool,
    cache: Arc<Mutex<KeyCache>>,
}

/// Why a presented key was refused. Deliberately vague towards the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing api key")]
    Missing,
    #[error("invalid api key")]
    Invalid,
}

impl Authenticator {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            cache: Arc::default(),
        }
    }

    /// Resolves an `authorization` header value (`Bearer ck_...`) to a caller.
    pub async fn authenticate(
        &self,
        header: Option<&str>,
    ) -> Result<Result<Caller, AuthError>, AppError> {
        let Some(header) = header else {
            return Ok(Err(AuthError::Missing));
        };
        let Some(token) = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
        else {
            return Ok(Err(AuthError::Invalid));
        };
        let Ok(key) = ApiKey::parse(token.trim()) else {
            return Ok(Err(AuthError::Invalid));
        };
        let Some(record) = self.lookup(key.id()).await? else {
            return Ok(Err(AuthError::Invalid));
        };
        if record.revoked || !key.matches(&record.key_hash) {
            return Ok(Err(AuthError::Invalid));
        }
        let scopes = record
            .scopes
            .iter()
            .map(|s| Scope::parse(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| AppError::internal(format!("stored key scopes: {e}")))?;
        Ok(Ok(Caller {
            key_id: key.id(),
            owner: record.tenant.map_or(KeyOwner::System, KeyOwner::Tenant),
            scopes: Scopes::new(scopes),
        }))
    }

    async fn lookup(&self, id: KeyId) -> Result<Option<Arc<KeyRecord>>, AppError> {
        {
            let cache = self.cache.lock().expect("auth cache poisoned");
            if let Some((at, record)) = cache.get(&id)
                && at.elapsed() < CACHE_TTL
            {
                return Ok(record.clone());
            }
        }
        let mut conn = self.pool.acquire().await?;
        let record = find_api_key(&mut conn, id).await?.map(Arc::new);
        let mut cache = self.cache.lock().expect("auth cache poisoned");
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(id, (Instant::now(), record.clone()));
        Ok(record)
    }
}
