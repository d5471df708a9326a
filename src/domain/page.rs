//! AIP-158 pagination: page sizes and opaque page tokens bound to their list and filters.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::validation::Invalid;

/// A page size: 0 means the default (20), above 100 is clamped to 100, negative is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u8);

impl PageSize {
    pub const DEFAULT: u8 = 20;
    pub const MAX: u8 = 100;

    pub fn parse(n: i32) -> Result<Self, Invalid> {
        match n {
            n if n < 0 => Err(Invalid::new("must not be negative")),
            0 => Ok(Self(Self::DEFAULT)),
            n => Ok(Self(n.min(Self::MAX as i32) as u8)),
        }
    }

    pub fn get(self) -> usize {
        self.0 as usize
    }
}

const TOKEN_VERSION: u8 = 1;

/// Where the next page starts (keyset pagination on the time-ordered id), and a digest of the
/// filters the first page was asked with, so a token reused with other filters is refused
/// rather than silently skipping rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    pub after: Uuid,
    filters: [u8; 8],
}

impl PageToken {
    pub fn new(after: Uuid, filters: FilterDigest) -> Self {
        Self {
            after,
            filters: filters.0,
        }
    }

    pub fn encode(&self) -> String {
        let mut bytes = Vec::with_capacity(25);
        bytes.push(TOKEN_VERSION);
        bytes.extend_from_slice(self.after.as_bytes());
        bytes.extend_from_slice(&self.filters);
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// Decodes a token and checks it was made with the same filters.
    pub fn decode(s: &str, filters: FilterDigest) -> Result<Self, Invalid> {
        let bytes = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| Invalid::new("is not a page token from this list"))?;
        if bytes.len() != 25 || bytes[0] != TOKEN_VERSION {
            return Err(Invalid::new("is not a page token from this list"));
        }
        let after = Uuid::from_slice(&bytes[1..17]).expect("16 bytes");
        if bytes[17..] != filters.0 {
            return Err(Invalid::new(
                "was made with other filters; repeat the first request's filters or start over",
            ));
        }
        Ok(Self {
            after,
            filters: filters.0,
        })
    }
}

/// A short digest of which list a request pages through and with which filters, so a token of
/// one list is refused by another, and by the same list asked with other filters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FilterDigest([u8; 8]);

impl FilterDigest {
    /// `list` names the list (its method, say); `parts` are its filter values.
    pub fn of(list: &str, parts: &[&str]) -> Self {
        let mut h = Sha256::new();
        for p in std::iter::once(&list).chain(parts) {
            // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
            h.update((p.len() as u64).to_be_bytes());
            h.update(p.as_bytes());
        }
        let digest = h.finalize();
        let mut out = [0u8; 8];
        out.copy_from_slice(&digest[..8]);
        Self(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_sizes() {
        assert_eq!(PageSize::parse(0).unwrap().get(), 20);
        assert_eq!(PageSize::parse(7).unwrap().get(), 7);
        assert_eq!(PageSize::parse(1000).unwrap().get(), 100);
        assert!(PageSize::parse(-1).is_err());
    }

    #[test]
    fn tokens_are_bound_to_filters() {
        let f = FilterDigest::of("customers", &["a@b.co"]);
        let t = PageToken::new(Uuid::now_v7(), f);
        assert_eq!(PageToken::decode(&t.encode(), f).unwrap(), t);
        assert!(PageToken::decode(&t.encode(), FilterDigest::of("customers", &[""])).is_err());
        // The same filter values on another list.
        assert!(PageToken::decode(&t.encode(), FilterDigest::of("plans", &["a@b.co"])).is_err());
        assert!(PageToken::decode("garbage!", f).is_err());
        assert!(PageToken::decode("", f).is_err());
    }
}
