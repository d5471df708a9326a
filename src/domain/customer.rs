//! Customers and the values they are made of.

use std::collections::BTreeMap;

use time::OffsetDateTime;

use super::ids::CustomerId;
use super::validation::{Invalid, TextKind, is_printable_ascii, untrimmed, visible};

/// The caller's own id for a customer: 1-255 printable ASCII characters, with no space at either
/// end (a trimmed copy would be another customer's id, or none).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ExternalId(String);

impl ExternalId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() || s.len() > 255 {
            return Err(Invalid::new("must be 1 to 255 characters"));
        }
        if !is_printable_ascii(s) {
            return Err(Invalid::new("must be printable ASCII"));
        }
        untrimmed(s)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An email address: at most 254 characters, a plain syntax check (one `@`, a non-empty local
/// part, a dotted domain, no spaces), and no invisible characters at all, so two addresses that
/// look alike are alike. Deliverability is not our concern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.chars().count() > 254 {
            return Err(Invalid::new("must be at most 254 characters"));
        }
        visible(s, TextKind::Identifier)?;
        let bad = || Invalid::new("must be an email address like name@example.com");
        if s.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        let (local, domain) = s.split_once('@').ok_or_else(bad)?;
        let domain_ok = !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        if local.is_empty() || local.len() > 64 || !domain_ok {
            return Err(bad());
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A display name: at most 256 characters, none of them invisible but the joiners some scripts
/// need (see [`TextKind::Prose`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DisplayName(String);

impl DisplayName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.chars().count() > 256 {
            return Err(Invalid::new("must be at most 256 characters"));
        }
        visible(s, TextKind::Prose)?;
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free-form key/value pairs. At most 45 keys: Stripe allows 50 and Coffer keeps 5 for its own
/// references when it mirrors an object to a provider. Keys follow the identifier rule for
/// invisible characters, values the prose rule (see [`TextKind`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(BTreeMap<String, String>);

impl Metadata {
    pub const MAX_KEYS: usize = 45;
    pub const MAX_KEY_CHARS: usize = 40;
    pub const MAX_VALUE_CHARS: usize = 500;

    pub fn parse(map: &BTreeMap<String, String>) -> Result<Self, Invalid> {
        if map.len() > Self::MAX_KEYS {
            return Err(Invalid::new(format!(
                "must have at most {} keys",
                Self::MAX_KEYS
            )));
        }
        for (k, v) in map {
            let chars = k.chars().count();
            if chars == 0 || chars > Self::MAX_KEY_CHARS {
                return Err(Invalid::new(format!(
                    "keys must be 1 to {} characters",
                    Self::MAX_KEY_CHARS
                )));
            }
            // The key is not echoed: it is the bad value here.
            visible(k, TextKind::Identifier).map_err(|e| Invalid::new(format!("keys {e}")))?;
            if v.chars().count() > Self::MAX_VALUE_CHARS {
                return Err(Invalid::new(format!(
                    "value of key {k:?} must be at most {} characters",
                    Self::MAX_VALUE_CHARS
                )));
            }
            visible(v, TextKind::Prose)
                .map_err(|e| Invalid::new(format!("value of key {k:?} {e}")))?;
        }
        Ok(Self(map.clone()))
    }

    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }
}

/// A customer as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Customer {
    pub id: CustomerId,
    pub external_id: Option<ExternalId>,
    pub email: Option<Email>,
    pub name: Option<DisplayName>,
    pub metadata: Metadata,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub deleted_at: Option<OffsetDateTime>,
}

/// The values of a new customer.
#[derive(Debug, Clone, PartialEq)]
pub struct NewCustomer {
    pub external_id: Option<ExternalId>,
    pub email: Option<Email>,
    pub name: Option<DisplayName>,
    pub metadata: Metadata,
}

/// A change to a customer: `None` leaves a field alone, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CustomerPatch {
    pub external_id: Option<Option<ExternalId>>,
    pub email: Option<Option<Email>>,
    pub name: Option<Option<DisplayName>>,
    pub metadata: Option<Metadata>,
}

impl CustomerPatch {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// The customer with this patch applied.
    pub fn apply(&self, mut customer: Customer) -> Customer {
        if let Some(v) = &self.external_id {
            customer.external_id = v.clone();
        }
        if let Some(v) = &self.email {
            customer.email = v.clone();
        }
        if let Some(v) = &self.name {
            customer.name = v.clone();
        }
        if let Some(v) = &self.metadata {
            customer.metadata = v.clone();
        }
        customer
    }
}

/// Which customers a lookup means: by Coffer's id or by the caller's.
#[derive(Debug, Clone, PartialEq)]
pub enum CustomerRef {
    Id(CustomerId),
    External(ExternalId),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_id_bounds() {
        assert!(ExternalId::parse("user-42").is_ok());
        assert!(ExternalId::parse("").is_err());
        assert!(ExternalId::parse(&"x".repeat(255)).is_ok());
        assert!(ExternalId::parse(&"x".repeat(256)).is_err());
        assert!(ExternalId::parse("tab\there").is_err());
        assert!(ExternalId::parse("é").is_err());
    }

    #[test]
    fn external_id_has_no_outer_spaces() {
        assert!(ExternalId::parse("user 42").is_ok());
        for bad in [" user-42", "user-42 ", " "] {
            assert!(ExternalId::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn email_refuses_invisible_characters() {
        for bad in [
            "a@b.c\u{200b}",
            "\u{202e}evil@x.com",
            "a\u{200d}b@x.com",
            "a@b.co\u{0}",
            "\u{feff}a@b.co",
        ] {
            let err = Email::parse(bad).unwrap_err();
            assert!(err.0.contains("invisible"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn name_refuses_invisible_characters_but_keeps_joiners() {
        for bad in [
            "Ada\u{0}",
            "Ada\nLovelace",
            "\u{202e}Ada",
            "A\u{200b}da",
            "Ada\u{2069}",
        ] {
            assert!(DisplayName::parse(bad).is_err(), "{bad:?}");
        }
        for ok in ["Ada Lovelace", "مهر\u{200c}نوش", "Zoë"] {
            assert!(DisplayName::parse(ok).is_ok(), "{ok:?}");
        }
    }

    #[test]
    fn metadata_refuses_invisible_characters_naming_the_key() {
        let nul_value = BTreeMap::from([("plan".into(), "v\u{0}".into())]);
        let err = Metadata::parse(&nul_value).unwrap_err();
        assert_eq!(
            err.0,
            "value of key \"plan\" must not contain control or invisible formatting characters \
             (found U+0000)"
        );
        let bidi_value = BTreeMap::from([("k".into(), "\u{202e}gpj.exe".into())]);
        assert!(Metadata::parse(&bidi_value).is_err());
        for key in ["k\u{0}", "k\u{200b}", "\u{200d}"] {
            let bad_key = BTreeMap::from([(key.to_owned(), "v".into())]);
            let err = Metadata::parse(&bad_key).unwrap_err();
            assert!(err.0.starts_with("keys must not contain"), "{key:?}: {err}");
            assert!(!err.0.contains(key), "the key is not echoed");
        }
        let joined = BTreeMap::from([("k".into(), "a\u{200c}b".into())]);
        assert!(Metadata::parse(&joined).is_ok());
    }

    #[test]
    fn email_syntax() {
        for ok in ["a@b.co", "first.last+tag@sub.example.org"] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "plain", "@b.co", "a@", "a@b", "a@@b.co", "a b@c.co", "a@.b.co", "a@b..co",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
        let long = format!("{}@example.com", "a".repeat(250));
        assert!(Email::parse(&long).is_err());
    }

    #[test]
    fn metadata_limits() {
        let mut m = BTreeMap::new();
        for i in 0..45 {
            m.insert(format!("k{i}"), "v".into());
        }
        assert!(Metadata::parse(&m).is_ok());
        m.insert("one-more".into(), "v".into());
        assert!(Metadata::parse(&m).is_err());
        let long_key = BTreeMap::from([("k".repeat(41), String::new())]);
        assert!(Metadata::parse(&long_key).is_err());
        let long_value = BTreeMap::from([("k".into(), "v".repeat(501))]);
        assert!(Metadata::parse(&long_value).is_err());
        let empty_key = BTreeMap::from([(String::new(), "v".into())]);
        assert!(Metadata::parse(&empty_key).is_err());
    }
}
