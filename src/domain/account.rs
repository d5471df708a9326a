//! Provider accounts: which provider a tenant's payments go through, with what credentials.
//!
//! An account is configured in `coffer.toml` (or, for the sandbox, made for each tenant by
//! `serve --dev` / `--sandbox`). Webhooks for it arrive at `/webhooks/{name}`, so the name is a
//! URL path segment. Secrets are held in [`Secret`], whose `Debug` never prints them.

use std::fmt;

use super::Invalid;
use super::cidr::Cidrs;
use super::ids::TenantId;

/// An account's name: 1-64 characters of a-z, 0-9, `-` and `_`, starting with a letter or
/// digit, so it is safe as a URL path segment and as a metric label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountName(String);

impl AccountName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let ok_first = s
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok_rest = s
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
        if s.len() > 64 || !ok_first || !ok_rest {
            return Err(Invalid::new(
                "must be 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The sandbox account `serve --dev` gives a tenant: `{tenant}-sandbox`. Tenant names may
    /// hold characters an account name may not, so those become `-`.
    pub fn sandbox_for(tenant_name: &str) -> Self {
        let mut name: String = tenant_name
            .chars()
            .map(|c| {
                let c = c.to_ascii_lowercase();
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' {
                    c
                } else {
                    '-'
                }
            })
            .take(64 - "-sandbox".len())
            .collect();
        if name.is_empty() || name.starts_with(['-', '_']) {
            name.insert(0, 't');
            name.truncate(64 - "-sandbox".len());
        }
        name.push_str("-sandbox");
        Self(name)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AccountName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The payment providers Coffer speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProviderKind {
    /// Coffer's own fake provider, only with `serve --dev` or `--sandbox`.
    Sandbox,
    Stripe,
    Polar,
    PayTabs,
    /// Any platform that signs webhooks with an HMAC, described by [`HmacScheme`].
    Hmac,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 5] = [
        ProviderKind::Sandbox,
        ProviderKind::Stripe,
        ProviderKind::Polar,
        ProviderKind::PayTabs,
        ProviderKind::Hmac,
    ];

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|kind| kind.as_str() == s)
            .ok_or_else(|| {
                Invalid::new(format!(
                    "unknown provider {s:?}; expected one of sandbox, stripe, polar, paytabs, hmac"
                ))
            })
    }

    /// The name used in configuration, metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Sandbox => "sandbox",
            ProviderKind::Stripe => "stripe",
            ProviderKind::Polar => "polar",
            ProviderKind::PayTabs => "paytabs",
            ProviderKind::Hmac => "hmac",
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A secret string (an API key or a webhook signing secret). Its `Debug` and `Display` say
/// only `[redacted]`, so a secret that reaches a log line by accident shows nothing.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for signing and for provider calls only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// What a generic HMAC platform signs, and how (`provider = "hmac"` accounts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacScheme {
    /// The header carrying the signature, lower case.
    pub signature_header: String,
    /// The header carrying the signing time (Unix seconds), lower case; none if the platform
    /// sends no timestamp, in which case no staleness check is possible.
    pub timestamp_header: Option<String>,
    pub message: HmacMessage,
    pub encoding: HmacEncoding,
    /// Text before the encoded signature in the header (`sha256=`), if any.
    pub prefix: Option<String>,
}

/// The bytes a generic HMAC platform signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacMessage {
    /// `{body}`: the raw body alone.
    Body,
    /// `{timestamp}.{body}`: needs a timestamp header.
    TimestampDotBody,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacEncoding {
    Hex,
    Base64,
}

/// Where a PayTabs account's merchant profile lives (`provider = "paytabs"` accounts): which
/// profile, and in which region. A server key works only against its profile's region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayTabsProfile {
    /// The merchant profile id, sent as `profile_id` in every request.
    pub profile_id: u64,
    pub region: PayTabsRegion,
}

/// The PayTabs regions, by the codes PayTabs' own SDKs use for them. Each has its own API host
/// (in `providers::paytabs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayTabsRegion {
    /// United Arab Emirates.
    Are,
    /// Saudi Arabia.
    Sau,
    Omn,
    Jor,
    Egy,
    Kwt,
    Irq,
    /// Morocco.
    Mar,
    /// Qatar.
    Qat,
    Global,
}

impl PayTabsRegion {
    pub const ALL: [PayTabsRegion; 10] = [
        PayTabsRegion::Are,
        PayTabsRegion::Sau,
        PayTabsRegion::Omn,
        PayTabsRegion::Jor,
        PayTabsRegion::Egy,
        PayTabsRegion::Kwt,
        PayTabsRegion::Irq,
        PayTabsRegion::Mar,
        PayTabsRegion::Qat,
        PayTabsRegion::Global,
    ];

    /// Parses a region code (`ARE`, `SAU`, ..., `GLOBAL`), in upper case as PayTabs writes it.
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|r| r.code() == s)
            .ok_or_else(|| {
                let codes: Vec<&str> = Self::ALL.iter().map(|r| r.code()).collect();
                Invalid::new(format!(
                    "unknown PayTabs region {s:?}; expected one of {}",
                    codes.join(", ")
                ))
            })
    }

    pub fn code(self) -> &'static str {
        match self {
            PayTabsRegion::Are => "ARE",
            PayTabsRegion::Sau => "SAU",
            PayTabsRegion::Omn => "OMN",
            PayTabsRegion::Jor => "JOR",
            PayTabsRegion::Egy => "EGY",
            PayTabsRegion::Kwt => "KWT",
            PayTabsRegion::Irq => "IRQ",
            PayTabsRegion::Mar => "MAR",
            PayTabsRegion::Qat => "QAT",
            PayTabsRegion::Global => "GLOBAL",
        }
    }
}

/// One provider account of one tenant, resolved: secrets read, tenant found.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: AccountName,
    pub tenant: TenantId,
    pub provider: ProviderKind,
    /// The provider API key (none for the sandbox).
    pub api_key: Option<Secret>,
    /// Every active webhook secret, newest first; a signature made with any of them is
    /// accepted, so secrets rotate without downtime. Never empty.
    pub webhook_secrets: Vec<Secret>,
    /// The provider's API base URL: https, or http on loopback for tests. None means the
    /// provider's public default.
    pub api_base: Option<String>,
    /// Events whose own livemode disagrees are rejected.
    pub livemode: bool,
    /// Present exactly for `ProviderKind::Hmac`.
    pub hmac: Option<HmacScheme>,
    /// Present exactly for `ProviderKind::PayTabs`.
    pub paytabs: Option<PayTabsProfile>,
    /// The addresses its deliveries may come from (`webhook_source_cidrs`); one from anywhere
    /// else, or from an unknown address, is refused before anything of it is read. `None`:
    /// any source.
    pub webhook_sources: Option<Cidrs>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_names_are_path_segments() {
        assert!(AccountName::parse("stripe-main").is_ok());
        assert!(AccountName::parse("acme_2").is_ok());
        for bad in ["", "-x", "Stripe", "a/b", "a b", "ä", &"a".repeat(65)] {
            assert!(AccountName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sandbox_names_are_valid_account_names() {
        for tenant in ["acme", "Acme Corp", "-x", "", &"z".repeat(200), "dev"] {
            let name = AccountName::sandbox_for(tenant);
            assert!(AccountName::parse(name.as_str()).is_ok(), "{name}");
            assert!(name.as_str().ends_with("-sandbox"));
        }
        assert_eq!(AccountName::sandbox_for("acme").as_str(), "acme-sandbox");
    }

    #[test]
    fn paytabs_regions_round_trip() {
        for region in PayTabsRegion::ALL {
            assert_eq!(PayTabsRegion::parse(region.code()), Ok(region));
        }
        for bad in ["are", "UAE", "", "GLOBALX"] {
            assert!(PayTabsRegion::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn secrets_never_print() {
        let secret = Secret::new("whsec_very_secret");
        assert_eq!(format!("{secret:?}"), "[redacted]");
    }
}
