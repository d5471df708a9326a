//! Tenants, API keys and scopes.
//!
//! An API key is `ck_<key id suffix>_<secret>`: the key id finds the stored row, and only the
//! SHA-256 of the whole key string is stored, compared in constant time. The key id is public
//! (shown as `key_<suffix>` by `coffer key list`); the secret is shown once, at creation.

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::ids::{KeyId, TenantId, decode_suffix, encode_suffix};
use super::validation::Invalid;

/// What a key may do. `Write` implies `Read`; `EventsIngest` belongs only to system keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Read,
    Write,
    Admin,
    EventsIngest,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Write => "write",
            Scope::Admin => "admin",
            Scope::EventsIngest => "events:ingest",
        }
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            "admin" => Ok(Scope::Admin),
            "events:ingest" => Ok(Scope::EventsIngest),
            other => Err(Invalid::new(format!(
                "unknown scope {other:?} (read, write, admin, events:ingest)"
            ))),
        }
    }
}

/// A set of scopes, sorted and without repeats.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Scopes(Vec<Scope>);

impl Scopes {
    pub fn new(scopes: impl IntoIterator<Item = Scope>) -> Self {
        let mut v: Vec<Scope> = scopes.into_iter().collect();
        v.sort();
        v.dedup();
        Self(v)
    }

    /// Parses a comma-separated list such as `read,write`.
    pub fn parse_list(s: &str) -> Result<Self, Invalid> {
        let scopes = s
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(Scope::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if scopes.is_empty() {
            return Err(Invalid::new("at least one scope is needed"));
        }
        Ok(Self::new(scopes))
    }

    /// Whether these scopes allow an operation that needs `needed`.
    pub fn allows(&self, needed: Scope) -> bool {
        self.0.contains(&needed) || (needed == Scope::Read && self.0.contains(&Scope::Write))
    }

    pub fn as_strs(&self) -> Vec<String> {
        self.0.iter().map(|s| s.as_str().to_owned()).collect()
    }
}

impl fmt::Display for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|s| s.as_str()).collect();
        f.write_str(&names.join(","))
    }
}

/// Who a key belongs to: one tenant, or the system (webhook ingestion, which finds the tenant
/// from the provider account instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOwner {
    Tenant(TenantId),
    System,
}

/// Checks that scopes fit the owner: system keys hold exactly `events:ingest`, tenant keys
/// never hold it.
pub fn check_scopes_for(owner: KeyOwner, scopes: &Scopes) -> Result<(), Invalid> {
    let ingest = scopes.allows(Scope::EventsIngest);
    match owner {
        KeyOwner::System if *scopes != Scopes::new([Scope::EventsIngest]) => Err(Invalid::new(
            "system keys hold exactly the events:ingest scope",
        )),
        KeyOwner::Tenant(_) if ingest => Err(Invalid::new(
            "events:ingest belongs to system keys (use --system)",
        )),
        _ => Ok(()),
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub key_id: KeyId,
    pub owner: KeyOwner,
    pub scopes: Scopes,
}

/// A tenant's name: 1-63 characters of `a-z`, `0-9`, `-` and `_`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantName(String);

impl TenantName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok_char =
            |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
        if s.is_empty()
            || s.len() > 63
            || !s.starts_with(|c: char| c.is_ascii_lowercase())
            || !s.chars().all(ok_char)
        {
            return Err(Invalid::new(
                "tenant names are 1-63 characters of a-z, 0-9, - and _, starting with a letter",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A whole API key as a caller presents it. Its `Debug` hides the secret, so a key that ends
/// up in a log line by mistake does not leak.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    id: KeyId,
    full: String,
}

const SECRET_LEN: usize = 32;
const SECRET_ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

impl ApiKey {
    /// A new key with 160 random bits of secret.
    pub fn generate(id: KeyId) -> Self {
        let mut bytes = [0u8; SECRET_LEN];
        getrandom::fill(&mut bytes).expect("the operating system's random source failed");
        // 256 is a multiple of 32, so masking keeps every character equally likely.
        let secret: String = bytes
            .iter()
            .map(|b| SECRET_ALPHABET[(b & 0x1f) as usize] as char)
            .collect();
        Self {
            id,
            full: format!("ck_{}_{}", encode_suffix(id.as_uuid()), secret),
        }
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let malformed = || Invalid::new("malformed api key");
        let rest = s.strip_prefix("ck_").ok_or_else(malformed)?;
        let (suffix, secret) = rest.split_once('_').ok_or_else(malformed)?;
        if secret.len() != SECRET_LEN || !secret.bytes().all(|b| SECRET_ALPHABET.contains(&b)) {
            return Err(malformed());
        }
        let id = KeyId::from_uuid(decode_suffix(suffix).map_err(|_| malformed())?);
        Ok(Self {
            id,
            full: s.to_owned(),
        })
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    /// The whole key; shown once to whoever created it, never logged.
    pub fn expose(&self) -> &str {
        &self.full
    }

    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.full.as_bytes()).into()
    }

    /// Compares against a stored hash in constant time.
    pub fn matches(&self, stored_hash: &[u8]) -> bool {
        stored_hash.len() == 32 && bool::from(self.hash().ct_eq(stored_hash))
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}, secret hidden)", self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_match_their_hash() {
        let key = ApiKey::generate(KeyId::generate());
        let parsed = ApiKey::parse(key.expose()).unwrap();
        assert_eq!(parsed.id(), key.id());
        assert!(parsed.matches(&key.hash()));
        let other = ApiKey::generate(key.id());
        assert!(!other.matches(&key.hash()), "same id, other secret");
        assert!(!format!("{key:?}").contains(&key.expose()[30..]));
    }

    #[test]
    fn malformed_keys_are_refused() {
        let good = ApiKey::generate(KeyId::generate()).expose().to_owned();
        assert!(ApiKey::parse(&good[1..]).is_err());
        assert!(ApiKey::parse(&good[..good.len() - 1]).is_err());
        assert!(ApiKey::parse(&good.to_uppercase()).is_err());
        assert!(ApiKey::parse("ck__").is_err());
    }

    #[test]
    fn scopes() {
        let s = Scopes::parse_list("write, read,write").unwrap();
        assert_eq!(s.to_string(), "read,write");
        assert!(Scopes::parse_list("write").unwrap().allows(Scope::Read));
        assert!(!Scopes::parse_list("read").unwrap().allows(Scope::Write));
        assert!(!Scopes::parse_list("write").unwrap().allows(Scope::Admin));
        assert!(Scopes::parse_list("root").is_err());
        let system = Scopes::new([Scope::EventsIngest]);
        assert!(check_scopes_for(KeyOwner::System, &system).is_ok());
        assert!(check_scopes_for(KeyOwner::System, &Scopes::new([Scope::Read])).is_err());
        let tenant = KeyOwner::Tenant(TenantId::generate());
        assert!(check_scopes_for(tenant, &system).is_err());
    }

    #[test]
    fn tenant_names() {
        assert!(TenantName::parse("acme").is_ok());
        assert!(TenantName::parse("dev").is_ok());
        for bad in ["", "Acme", "1acme", "a b", &"a".repeat(64)] {
            assert!(TenantName::parse(bad).is_err(), "{bad}");
        }
    }
}
