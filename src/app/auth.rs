//! Authenticating API keys, with a short cache so the hot path does not hit the database on
//! every call, and a budget of key lookups of their own, so a flood of made-up keys can neither
//! take the pool from real calls nor push real keys out of the cache.
//!
//! - An entry lives at most [`CACHE_TTL`], which bounds how long a revoked key keeps working.
//! - Keys that exist and ids that do not are cached apart. The first cache holds at most one
//!   entry per row of `api_keys`, which callers cannot add to, so it is never emptied; the
//!   second is bounded ([`LookupBudget::negatives`]) and only it is emptied when full.
//! - Refreshing a key the cache has found before is not limited: real keys are few. Looking up
//!   any other id (a new key's first use, or a made-up one) needs one of a few permits
//!   ([`LookupBudget::concurrent`]); a lookup that waits longer than [`LookupBudget::wait`] for
//!   one is answered [`AuthError::Busy`] without touching the database. Calls that present the
//!   same unseen id at once share one lookup: the first takes a permit and the others wait for
//!   its answer, so a client that opens many connections with a new key is not refused.
//! - Ephemeral system keys ([`Authenticator::ephemeral_system_key`]) live only in this
//!   process's memory: `serve` makes one for its in-process webhook sidecar. It is never
//!   written to the database, so it dies with the process and no other replica accepts it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::Semaphore;

use super::AppError;
use crate::domain::auth::{ApiKey, Caller, KeyOwner, Scope, Scopes};
use crate::domain::ids::KeyId;
use crate::store::tenants::{KeyRecord, find_api_key};

/// A revocation takes effect within this long.
pub const CACHE_TTL: Duration = Duration::from_millis(500);
/// When a caller refused [`AuthError::Busy`] may retry.
pub const LOOKUP_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What key lookups may cost.
#[derive(Debug, Clone)]
pub struct LookupBudget {
    /// How long a lookup's answer is trusted.
    pub ttl: Duration,
    /// Lookups of ids not known to exist that may run at once.
    pub concurrent: usize,
    /// How long such a lookup waits for its turn before the call is refused.
    pub wait: Duration,
    /// Ids found not to exist that are remembered, at most.
    pub negatives: usize,
}

impl LookupBudget {
    /// A quarter of `pool`'s connections for lookups of unknown ids, one to four: enough to
    /// admit a new key at once, too few for a flood of made-up ones to starve real calls or the
    /// health check.
    pub fn for_pool(pool: &PgPool) -> Self {
        Self {
            ttl: CACHE_TTL,
            concurrent: (pool.options().get_max_connections() as usize / 4).clamp(1, 4),
            wait: Duration::from_millis(100),
            negatives: 10_000,
        }
    }
}

#[derive(Default)]
struct KeyCache {
    /// Key id → when it was looked up and its row.
    found: HashMap<KeyId, (Instant, Arc<KeyRecord>)>,
    /// Key id → when it was found not to exist.
    missing: HashMap<KeyId, Instant>,
}

#[derive(Clone)]
pub struct Authenticator {
    pool: PgPool,
    budget: LookupBudget,
    cache: Arc<Mutex<KeyCache>>,
    permits: Arc<Semaphore>,
    /// Lookups of unseen ids in progress: the others asking for the same id wait for the
    /// sender to be dropped, then read the cache. At most one entry per call in flight.
    inflight: Arc<Mutex<HashMap<KeyId, tokio::sync::watch::Receiver<()>>>>,
    /// Key id → SHA-256 of the whole key, for the keys of this process alone.
    ephemeral: Arc<Mutex<HashMap<KeyId, [u8; 32]>>>,
}

/// Why a presented key was not accepted. Deliberately vague towards the caller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("missing api key")]
    Missing,
    #[error("invalid api key")]
    Invalid,
    /// The key could not be checked: too many lookups of unknown ids are running.
    #[error("too many api key lookups")]
    Busy,
}

/// What a lookup found.
enum Found {
    Key(Arc<KeyRecord>),
    Nothing,
    Busy,
}

impl Authenticator {
    pub fn new(pool: PgPool) -> Self {
        let budget = LookupBudget::for_pool(&pool);
        Self::with_budget(pool, budget)
    }

    pub fn with_budget(pool: PgPool, budget: LookupBudget) -> Self {
        Self {
            pool,
            permits: Arc::new(Semaphore::new(budget.concurrent)),
            budget,
            cache: Arc::default(),
            inflight: Arc::default(),
            ephemeral: Arc::default(),
        }
    }

    /// A new system key (`events:ingest`) known only to this authenticator and its clones:
    /// not stored anywhere, so it stops existing with the process.
    pub fn ephemeral_system_key(&self) -> ApiKey {
        let key = ApiKey::generate(KeyId::generate());
        self.ephemeral
            .lock()
            .expect("ephemeral keys poisoned")
            .insert(key.id(), key.hash());
        key
    }

    /// The caller of an ephemeral key: `Some(Ok)` if it is one and matches, `Some(Err)` if its
    /// id is one but the secret is wrong, `None` if it is not an ephemeral key.
    fn ephemeral_caller(&self, key: &ApiKey) -> Option<Result<Caller, AuthError>> {
        let keys = self.ephemeral.lock().expect("ephemeral keys poisoned");
        let hash = keys.get(&key.id())?;
        Some(if key.matches(hash) {
            Ok(Caller {
                key_id: key.id(),
                owner: KeyOwner::System,
                scopes: Scopes::new([Scope::EventsIngest]),
            })
        } else {
            Err(AuthError::Invalid)
        })
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
        if let Some(caller) = self.ephemeral_caller(&key) {
            return Ok(caller);
        }
        let record = match self.lookup(key.id()).await? {
            Found::Key(record) => record,
            Found::Nothing => return Ok(Err(AuthError::Invalid)),
            Found::Busy => return Ok(Err(AuthError::Busy)),
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

    fn inflight_map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<KeyId, tokio::sync::watch::Receiver<()>>> {
        self.inflight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The fresh cached answer for `id`, or whether the id is known to exist.
    fn cached(&self, id: KeyId) -> Result<Found, bool> {
        let cache = self.cache.lock().expect("auth cache poisoned");
        if let Some((at, record)) = cache.found.get(&id) {
            return if at.elapsed() < self.budget.ttl {
                Ok(Found::Key(record.clone()))
            } else {
                Err(true)
            };
        }
        match cache.missing.get(&id) {
            Some(at) if at.elapsed() < self.budget.ttl => Ok(Found::Nothing),
            _ => Err(false),
        }
    }

    async fn lookup(&self, id: KeyId) -> Result<Found, AppError> {
        let known = match self.cached(id) {
            Ok(found) => return Ok(found),
            Err(known) => known,
        };
        let (_permit, _leading) = if known {
            (None, None)
        } else {
            // Another call is looking this id up: its answer serves this one too.
            let running = self.inflight_map().get(&id).cloned();
            if let Some(mut done) = running {
                // Err once the lookup ends and drops its sender; either way, look again.
                let _ = done.changed().await;
                if let Ok(found) = self.cached(id) {
                    return Ok(found);
                }
            }
            let leading = Leading::start(self.inflight.clone(), id);
            let Ok(Ok(permit)) =
                tokio::time::timeout(self.budget.wait, self.permits.acquire()).await
            else {
                return Ok(Found::Busy);
            };
            if let Ok(found) = self.cached(id) {
                return Ok(found);
            }
            (Some(permit), Some(leading))
        };
        let mut conn = self.pool.acquire().await?;
        let record = find_api_key(&mut conn, id).await?.map(Arc::new);
        drop(conn);
        let now = Instant::now();
        let mut cache = self.cache.lock().expect("auth cache poisoned");
        Ok(match record {
            Some(record) => {
                cache.missing.remove(&id);
                cache.found.insert(id, (now, record.clone()));
                Found::Key(record)
            }
            None => {
                cache.found.remove(&id);
                // Emptying all of it at once keeps inserts O(1); a forgotten made-up id only
                // costs another budgeted lookup.
                if cache.missing.len() >= self.budget.negatives {
                    cache.missing.clear();
                }
                cache.missing.insert(id, now);
                Found::Nothing
            }
        })
    }
}

/// A lookup other calls may wait for: registered while it lives, and its waiters woken when
/// it ends, however it ends (answered, busy, failed or cancelled).
struct Leading {
    inflight: Arc<Mutex<HashMap<KeyId, tokio::sync::watch::Receiver<()>>>>,
    id: KeyId,
    _done: tokio::sync::watch::Sender<()>,
}

impl Leading {
    fn start(
        inflight: Arc<Mutex<HashMap<KeyId, tokio::sync::watch::Receiver<()>>>>,
        id: KeyId,
    ) -> Self {
        let (done, waiters) = tokio::sync::watch::channel(());
        inflight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(id, waiters);
        Self {
            inflight,
            id,
            _done: done,
        }
    }
}

impl Drop for Leading {
    fn drop(&mut self) {
        self.inflight
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
        // `_done` drops after this: waiters wake and read the cache.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pool whose every connection attempt fails at once: a lookup that reached the
    /// database would be an error, not an answer.
    fn no_database() -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(100))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap()
    }

    #[tokio::test]
    async fn ephemeral_keys_live_in_memory_only() {
        let auth = Authenticator::new(no_database());
        let key = auth.ephemeral_system_key();
        let header = format!("Bearer {}", key.expose());
        let caller = auth.authenticate(Some(&header)).await.unwrap().unwrap();
        assert_eq!(caller.owner, KeyOwner::System);
        assert_eq!(caller.scopes, Scopes::new([Scope::EventsIngest]));
        // A clone (what each layer holds) knows it too.
        assert!(
            auth.clone()
                .authenticate(Some(&header))
                .await
                .unwrap()
                .is_ok()
        );
        // The same id with another secret is refused, without asking the database.
        let forged = ApiKey::generate(key.id());
        let header = format!("Bearer {}", forged.expose());
        assert_eq!(
            auth.authenticate(Some(&header)).await.unwrap(),
            Err(AuthError::Invalid)
        );
        // Another authenticator (another process) has never heard of it, and asks the
        // database, which is not there.
        let other = Authenticator::new(no_database());
        let header = format!("Bearer {}", key.expose());
        assert!(other.authenticate(Some(&header)).await.is_err());
    }
}
