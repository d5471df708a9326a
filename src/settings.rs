//! coffer.toml: provider accounts and per-tenant settings.
//!
//! The file is read once, when `serve` starts (`--config` / `COFFER_CONFIG`); without one there
//! are no configured accounts and every tenant has the default settings. Its shape is
//! DESIGN.md §2:
//!
//! ```toml
//! [[account]]
//! name = "stripe-main"            # webhooks arrive at /webhooks/stripe-main
//! tenant = "acme"                 # a tenant made with `coffer tenant create acme`
//! provider = "stripe"             # sandbox | stripe | polar | paytabs | hmac
//! api_key_env = "STRIPE_SECRET_KEY"
//! webhook_secret_env = ["STRIPE_WEBHOOK_SECRET", "STRIPE_WEBHOOK_SECRET_PREVIOUS"]
//! api_base = "https://api.stripe.com"
//! livemode = false
//! webhook_source_cidrs = ["3.18.12.63/32", "2600:1f18::/32"]  # optional; without it, any source
//!
//! [[account]]
//! name = "paytabs-main"
//! tenant = "acme"
//! provider = "paytabs"
//! api_key_env = "PAYTABS_SERVER_KEY"   # also signs its callbacks
//! profile_id = 123456                  # paytabs only, required
//! region = "ARE"                       # paytabs only, required: ARE SAU OMN JOR EGY KWT IRQ MAR QAT GLOBAL
//!
//! [tenant.acme]
//! allowed_redirect_origins = ["https://shop.acme.example"]
//! sandbox_webhook_secret_env = "ACME_SANDBOX_SECRET"
//! past_due_grace = "3days"
//! disputed_access = "deny"
//! renewal_retries = 3                          # a failed renewal's retries
//! renewal_retry_window = "7days"               # spread evenly over this
//! dunning_end = "unpaid"                       # unpaid | canceled, once they run out
//! trial_end_without_payment_method = "cancel"  # cancel | pause
//! default_account = "stripe-main"
//!
//! [tenant.acme.amount_limits]
//! HUF = { min = 100, max = 1000000000 }
//! ```
//!
//! Reading happens in two steps: [`read`] parses and checks everything the file and the
//! environment can tell (before the database is opened, so a typo fails fast), and
//! [`Draft::resolve`] finds the tenants it names in the database. Any problem is one
//! [`SettingsError`], whose one line names the file, the account or tenant, and the field.
//!
//! Secrets are given by environment-variable name, never inline, and are held in
//! [`Secret`], which never prints; no error message includes a variable's value.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::domain::Invalid;
use crate::domain::account::{
    Account, AccountName, HmacEncoding, HmacMessage, HmacScheme, PayTabsProfile, PayTabsRegion,
    ProviderKind, Secret,
};
use crate::domain::auth::TenantName;
use crate::domain::cidr::{Cidr, Cidrs};
use crate::domain::ids::TenantId;
use crate::domain::money::{AmountLimits, Currency, CurrencyLimits};

/// What coffer.toml configures, resolved: accounts with their secrets read and their tenants
/// found, and the settings of every tenant the file names. Read-only once made.
#[derive(Debug, Default)]
pub struct Settings {
    accounts: Vec<Account>,
    tenants: HashMap<TenantId, TenantSettings>,
    /// What a tenant the file does not name gets.
    defaults: TenantSettings,
}

impl Settings {
    /// Every configured account, in file order.
    pub fn accounts(&self) -> &[Account] {
        &self.accounts
    }

    pub fn account(&self, name: &AccountName) -> Option<&Account> {
        self.accounts.iter().find(|a| &a.name == name)
    }

    /// A tenant's settings; the defaults for a tenant the file does not name (one created
    /// after the start, say).
    pub fn tenant(&self, tenant: TenantId) -> &TenantSettings {
        self.tenants.get(&tenant).unwrap_or(&self.defaults)
    }
}

/// One tenant's settings (`[tenant.NAME]`).
#[derive(Debug, Clone, Default)]
pub struct TenantSettings {
    /// Where checkout success and cancel URLs may point. Empty: anywhere https (or loopback).
    pub allowed_redirect_origins: Vec<RedirectOrigin>,
    /// Amount limits, narrowed per currency from the defaults of `domain::money`.
    pub amount_limits: CurrencyLimits,
    /// The signing secret of the tenant's sandbox account under `--dev` / `--sandbox`, instead
    /// of a generated one.
    pub sandbox_webhook_secret: Option<Secret>,
    /// How long a PAST_DUE subscription keeps access; `None`: the service's default.
    pub past_due_grace: Option<Duration>,
    /// Whether a subscription with a DISPUTED payment keeps access (`disputed_access =
    /// "allow"`) or loses it (`"deny"`); `None`: deny.
    pub disputed_access: Option<crate::domain::access::DisputedAccess>,
    /// How many times a failed renewal is retried (`renewal_retries`, 1..=20); `None`: 3.
    pub renewal_retries: Option<u32>,
    /// The span the retries are spread over (`renewal_retry_window`, 1 hour..=60 days);
    /// `None`: 7 days.
    pub renewal_retry_window: Option<Duration>,
    /// What a subscription whose retries ran out becomes (`dunning_end`); `None`: UNPAID.
    pub dunning_end: Option<crate::domain::subscription::DunningEnd>,
    /// What a trial ending without a payment method becomes
    /// (`trial_end_without_payment_method`); `None`: CANCELED.
    pub trial_end_without_payment_method: Option<crate::domain::subscription::MissingPaymentMethod>,
    /// The account checkouts use when they name none: a configured account of this tenant, or
    /// its sandbox account (`{tenant}-sandbox`), which exists only with the sandbox enabled.
    pub default_account: Option<AccountName>,
}

/// An origin a tenant's redirect URLs may point at: `https://host[:port]`, or http on a
/// loopback host (for tests and local development). Held normalised: scheme and host in lower
/// case, the default port left out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedirectOrigin(String);

impl RedirectOrigin {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let bad = || {
            Invalid::new(format!(
                "{s:?} is not an origin: expected https://host[:port] with no path, query or \
                 user (http only on a loopback host)"
            ))
        };
        let uri: http::Uri = s.parse().map_err(|_| bad())?;
        if uri.query().is_some() || !matches!(uri.path(), "" | "/") || s.ends_with('/') {
            return Err(bad());
        }
        Self::of(&uri).ok_or_else(bad)
    }

    /// The origin of an absolute URL, normalised; `None` for anything but https, or http on
    /// a loopback host.
    fn of(uri: &http::Uri) -> Option<Self> {
        let authority = uri.authority()?;
        if authority.as_str().contains('@') {
            return None;
        }
        let host = authority.host().to_ascii_lowercase();
        let scheme = uri.scheme_str()?.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "https" => 443,
            "http" if is_loopback(&host) => 80,
            _ => return None,
        };
        Some(Self(match authority.port_u16() {
            Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
            _ => format!("{scheme}://{host}"),
        }))
    }

    /// Whether `url` is an absolute URL on this origin.
    pub fn allows(&self, url: &str) -> bool {
        url.parse::<http::Uri>()
            .ok()
            .and_then(|uri| Self::of(&uri))
            .is_some_and(|origin| origin == *self)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// `localhost`, or an address in 127.0.0.0/8 or `::1`.
fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A problem with the configuration file, as one line: the file, where in it, the field, and
/// what is wrong. Never includes a secret's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {place}{field}{message}")]
pub struct SettingsError {
    file: String,
    place: String,
    field: String,
    message: String,
}

impl SettingsError {
    fn new(file: &Path, place: &Place, field: &str, message: impl fmt::Display) -> Self {
        // One line, whatever the message: a parser's message may span several.
        let message = message
            .to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            file: file.display().to_string(),
            place: place.to_string(),
            field: if field.is_empty() {
                String::new()
            } else {
                format!("{field}: ")
            },
            message,
        }
    }
}

/// Where in the file a problem is.
enum Place {
    File,
    Line(usize),
    Account(String),
    Tenant(String),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::File => Ok(()),
            Place::Line(n) => write!(f, "line {n}: "),
            Place::Account(name) => write!(f, "account {name}: "),
            Place::Tenant(name) => write!(f, "tenant {name:?}: "),
        }
    }
}

// The file's shape. Unknown keys are errors everywhere, so a typo never silently drops a
// setting.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccount {
    name: String,
    tenant: String,
    provider: String,
    api_key_env: Option<String>,
    webhook_secret_env: Option<OneOrMany>,
    api_base: Option<String>,
    #[serde(default)]
    livemode: bool,
    signature_header: Option<String>,
    timestamp_header: Option<String>,
    message: Option<String>,
    encoding: Option<String>,
    prefix: Option<String>,
    webhook_source_cidrs: Option<Vec<String>>,
    profile_id: Option<i64>,
    region: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    #[serde(default)]
    allowed_redirect_origins: Vec<String>,
    /// Each currency's entry is read on its own, so an error names it.
    #[serde(default)]
    amount_limits: BTreeMap<String, toml::Value>,
    sandbox_webhook_secret_env: Option<String>,
    past_due_grace: Option<String>,
    disputed_access: Option<String>,
    renewal_retries: Option<i64>,
    renewal_retry_window: Option<String>,
    dunning_end: Option<String>,
    trial_end_without_payment_method: Option<String>,
    default_account: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    min: i64,
    max: i64,
}

/// The file read and checked, its tenants not yet found in the database.
#[derive(Debug)]
pub struct Draft {
    file: PathBuf,
    accounts: Vec<(TenantName, Account)>,
    tenants: Vec<(TenantName, TenantSettings)>,
}

/// Reads and checks the file at `path`, with secrets from `env` (the process environment in
/// `serve`; a map in tests).
pub fn read(path: &Path, env: &dyn Fn(&str) -> Option<String>) -> Result<Draft, SettingsError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| SettingsError::new(path, &Place::File, "", format!("cannot be read: {e}")))?;
    parse(path, &text, env)
}

/// Checks the text of a configuration file named `path`.
pub fn parse(
    path: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Draft, SettingsError> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let place = match e.span() {
            Some(span) => Place::Line(text[..span.start.min(text.len())].lines().count().max(1)),
            None => Place::File,
        };
        SettingsError::new(path, &place, "", format!("invalid TOML: {}", e.message()))
    })?;
    let mut draft = Draft {
        file: path.to_owned(),
        accounts: Vec::new(),
        tenants: Vec::new(),
    };
    for (key, value) in table {
        match key.as_str() {
            "account" => {
                let Some(entries) = value.as_array() else {
                    return Err(SettingsError::new(
                        path,
                        &Place::File,
                        "account",
                        "must be an array of tables, written [[account]]",
                    ));
                };
                for (i, entry) in entries.iter().enumerate() {
                    let place = Place::Account(match entry.get("name").and_then(|n| n.as_str()) {
                        Some(name) => format!("{name:?}"),
                        None => format!("#{}", i + 1),
                    });
                    let raw: RawAccount = typed(entry, ACCOUNT_FIELDS)
                        .map_err(|(field, e)| SettingsError::new(path, &place, field, e))?;
                    let checked = account(raw, env)
                        .map_err(|(field, e)| SettingsError::new(path, &place, field, e))?;
                    if draft.accounts.iter().any(|(_, a)| a.name == checked.1.name) {
                        return Err(SettingsError::new(
                            path,
                            &place,
                            "name",
                            "another account has this name; names must be unique",
                        ));
                    }
                    draft.accounts.push(checked);
                }
            }
            "tenant" => {
                let Some(tenants) = value.as_table() else {
                    return Err(SettingsError::new(
                        path,
                        &Place::File,
                        "tenant",
                        "must be a table of tenants, written [tenant.NAME]",
                    ));
                };
                for (name, entry) in tenants {
                    let place = Place::Tenant(name.clone());
                    let tenant = TenantName::parse(name)
                        .map_err(|e| SettingsError::new(path, &place, "", e))?;
                    let raw: RawTenant = typed(entry, TENANT_FIELDS)
                        .map_err(|(field, e)| SettingsError::new(path, &place, field, e))?;
                    let settings = tenant_settings(raw, env)
                        .map_err(|(field, e)| SettingsError::new(path, &place, field, e))?;
                    draft.tenants.push((tenant, settings));
                }
            }
            other => {
                return Err(SettingsError::new(
                    path,
                    &Place::File,
                    "",
                    format!("unknown key {other:?}; expected [[account]] and [tenant.NAME] tables"),
                ));
            }
        }
    }
    draft.check_default_accounts()?;
    Ok(draft)
}

impl Draft {
    /// A default account must be one of the tenant's own: a configured account of it, or its
    /// sandbox account.
    fn check_default_accounts(&self) -> Result<(), SettingsError> {
        for (tenant, settings) in &self.tenants {
            let Some(name) = &settings.default_account else {
                continue;
            };
            let owned = match self.accounts.iter().find(|(_, a)| &a.name == name) {
                Some((owner, _)) => owner == tenant,
                None => *name == AccountName::sandbox_for(tenant.as_str()),
            };
            if !owned {
                return Err(SettingsError::new(
                    &self.file,
                    &Place::Tenant(tenant.as_str().to_owned()),
                    "default_account",
                    format!(
                        "{:?} is neither an account of this tenant nor its sandbox account {:?}",
                        name.as_str(),
                        AccountName::sandbox_for(tenant.as_str()).as_str()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Finds every tenant the file names in `tenants` (the database's, by name); one it lacks
    /// is an error naming the account or tenant section that uses it.
    pub fn resolve(self, tenants: &HashMap<String, TenantId>) -> Result<Settings, SettingsError> {
        let find = |name: &TenantName, place: Place, field: &str| {
            tenants.get(name.as_str()).copied().ok_or_else(|| {
                SettingsError::new(
                    &self.file,
                    &place,
                    field,
                    format!(
                        "no tenant is named {:?} (create it with `coffer tenant create {}`)",
                        name.as_str(),
                        name.as_str()
                    ),
                )
            })
        };
        let mut accounts = Vec::with_capacity(self.accounts.len());
        for (tenant, mut account) in self.accounts.iter().cloned() {
            let place = Place::Account(format!("{:?}", account.name.as_str()));
            account.tenant = find(&tenant, place, "tenant")?;
            accounts.push(account);
        }
        let mut by_tenant = HashMap::new();
        for (tenant, settings) in self.tenants.iter().cloned() {
            let id = find(&tenant, Place::Tenant(tenant.as_str().to_owned()), "")?;
            by_tenant.insert(id, settings);
        }
        Ok(Settings {
            accounts,
            tenants: by_tenant,
            defaults: TenantSettings::default(),
        })
    }
}

type FieldError = (&'static str, String);

/// What a key's value must be.
#[derive(Clone, Copy)]
enum Kind {
    Str,
    Bool,
    Int,
    Strs,
    StrOrStrs,
    Table,
}

const ACCOUNT_FIELDS: &[(&str, Kind)] = &[
    ("name", Kind::Str),
    ("tenant", Kind::Str),
    ("provider", Kind::Str),
    ("api_key_env", Kind::Str),
    ("webhook_secret_env", Kind::StrOrStrs),
    ("api_base", Kind::Str),
    ("livemode", Kind::Bool),
    ("signature_header", Kind::Str),
    ("timestamp_header", Kind::Str),
    ("message", Kind::Str),
    ("encoding", Kind::Str),
    ("prefix", Kind::Str),
    ("webhook_source_cidrs", Kind::Strs),
    ("profile_id", Kind::Int),
    ("region", Kind::Str),
];

const TENANT_FIELDS: &[(&str, Kind)] = &[
    ("allowed_redirect_origins", Kind::Strs),
    ("amount_limits", Kind::Table),
    ("sandbox_webhook_secret_env", Kind::Str),
    ("past_due_grace", Kind::Str),
    ("disputed_access", Kind::Str),
    ("renewal_retries", Kind::Int),
    ("renewal_retry_window", Kind::Str),
    ("dunning_end", Kind::Str),
    ("trial_end_without_payment_method", Kind::Str),
    ("default_account", Kind::Str),
];

/// Deserializes one `[[account]]` or `[tenant.NAME]` table. The value types are checked first,
/// key by key, because serde's message for a wrong type ("invalid type: integer `5`, expected
/// a string") does not say which key; unknown and missing keys are serde's
/// (`deny_unknown_fields`), whose messages name them.
fn typed<T: serde::de::DeserializeOwned>(
    entry: &toml::Value,
    fields: &'static [(&'static str, Kind)],
) -> Result<T, FieldError> {
    let Some(table) = entry.as_table() else {
        return Err(("", "must be a table".into()));
    };
    for &(name, kind) in fields {
        let Some(value) = table.get(name) else {
            continue;
        };
        let strs = |v: &toml::Value| v.as_array().is_some_and(|a| a.iter().all(|s| s.is_str()));
        let (ok, expected) = match kind {
            Kind::Str => (value.is_str(), "a string"),
            Kind::Bool => (value.is_bool(), "true or false"),
            Kind::Int => (value.is_integer(), "an integer"),
            Kind::Strs => (strs(value), "a list of strings"),
            Kind::StrOrStrs => (
                value.is_str() || strs(value),
                "a string or a list of strings",
            ),
            Kind::Table => (value.is_table(), "a table"),
        };
        if !ok {
            return Err((name, format!("must be {expected}")));
        }
    }
    entry
        .clone()
        .try_into()
        .map_err(|e: toml::de::Error| ("", e.message().to_owned()))
}

fn field<T>(name: &'static str, result: Result<T, Invalid>) -> Result<T, FieldError> {
    result.map_err(|e| (name, e.0))
}

/// The secret held by the environment variable `var`, named in field `name`.
fn secret(
    name: &'static str,
    var: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Secret, FieldError> {
    let well_formed = var
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if !well_formed {
        return Err((
            name,
            format!("{var:?} is not an environment variable name (letters, digits and '_')"),
        ));
    }
    match env(var) {
        Some(value) if !value.is_empty() => Ok(Secret::new(value)),
        Some(_) => Err((name, format!("environment variable {var} is empty"))),
        None => Err((name, format!("environment variable {var} is not set"))),
    }
}

fn account(
    raw: RawAccount,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(TenantName, Account), FieldError> {
    let name = field("name", AccountName::parse(&raw.name))?;
    let tenant = field("tenant", TenantName::parse(&raw.tenant))?;
    let provider = field("provider", ProviderKind::parse(&raw.provider))?;
    let sandbox = provider == ProviderKind::Sandbox;

    // Which credentials each provider takes. The sandbox signs with a secret of its own and
    // calls no API; PayTabs signs callbacks with its server key, the API key; a generic HMAC
    // platform may have no API Coffer calls.
    let api_key = match (&raw.api_key_env, provider) {
        (Some(_), ProviderKind::Sandbox) => {
            return Err(("api_key_env", "a sandbox account has no API key".into()));
        }
        (Some(var), _) => Some(secret("api_key_env", var, env)?),
        (None, ProviderKind::Sandbox | ProviderKind::Hmac) => None,
        (None, _) => {
            return Err((
                "api_key_env",
                format!("is required for {provider} accounts"),
            ));
        }
    };
    let secret_vars = match raw.webhook_secret_env {
        None => Vec::new(),
        Some(OneOrMany::One(var)) => vec![var],
        Some(OneOrMany::Many(vars)) if vars.is_empty() => {
            return Err((
                "webhook_secret_env",
                "must name at least one variable".into(),
            ));
        }
        Some(OneOrMany::Many(vars)) => vars,
    };
    let mut webhook_secrets = secret_vars
        .iter()
        .map(|var| secret("webhook_secret_env", var, env))
        .collect::<Result<Vec<_>, _>>()?;
    if webhook_secrets.is_empty() {
        match (provider, &api_key) {
            (ProviderKind::PayTabs, Some(key)) => webhook_secrets.push(key.clone()),
            _ => {
                return Err((
                    "webhook_secret_env",
                    format!("is required for {provider} accounts"),
                ));
            }
        }
    }

    let api_base = match raw.api_base {
        Some(_) if sandbox => {
            return Err(("api_base", "a sandbox account calls no API".into()));
        }
        Some(url) => Some(field("api_base", api_base(&url))?),
        None => None,
    };
    if sandbox && raw.livemode {
        return Err(("livemode", "a sandbox account is never live".into()));
    }

    let hmac = if provider == ProviderKind::Hmac {
        Some(hmac_scheme(
            raw.signature_header,
            raw.timestamp_header,
            raw.message,
            raw.encoding,
            raw.prefix,
        )?)
    } else {
        for (name, value) in [
            ("signature_header", &raw.signature_header),
            ("timestamp_header", &raw.timestamp_header),
            ("message", &raw.message),
            ("encoding", &raw.encoding),
            ("prefix", &raw.prefix),
        ] {
            if value.is_some() {
                return Err((name, "is only for provider = \"hmac\" accounts".into()));
            }
        }
        None
    };

    let paytabs = if provider == ProviderKind::PayTabs {
        Some(paytabs_profile(raw.profile_id, raw.region)?)
    } else {
        if raw.profile_id.is_some() {
            return Err((
                "profile_id",
                "is only for provider = \"paytabs\" accounts".into(),
            ));
        }
        if raw.region.is_some() {
            return Err((
                "region",
                "is only for provider = \"paytabs\" accounts".into(),
            ));
        }
        None
    };

    let webhook_sources = match raw.webhook_source_cidrs {
        None => None,
        Some(ranges) if ranges.is_empty() => {
            return Err((
                "webhook_source_cidrs",
                "must list at least one address range; leave the key out to accept deliveries \
                 from any source"
                    .into(),
            ));
        }
        Some(ranges) => {
            let ranges = ranges
                .iter()
                .map(|r| field("webhook_source_cidrs", Cidr::parse(r)))
                .collect::<Result<Vec<_>, _>>()?;
            Some(field("webhook_source_cidrs", Cidrs::new(ranges))?)
        }
    };

    Ok((
        tenant,
        Account {
            name,
            // Set by `Draft::resolve` once the tenant is found.
            tenant: TenantId::from_uuid(uuid::Uuid::nil()),
            provider,
            api_key,
            webhook_secrets,
            api_base,
            livemode: raw.livemode,
            hmac,
            paytabs,
            webhook_sources,
        },
    ))
}

/// A PayTabs account's merchant profile: both keys are required, the id positive.
fn paytabs_profile(
    profile_id: Option<i64>,
    region: Option<String>,
) -> Result<PayTabsProfile, FieldError> {
    let required = |name: &'static str| (name, "is required for provider = \"paytabs\"".to_owned());
    let profile_id = profile_id.ok_or_else(|| required("profile_id"))?;
    let profile_id = u64::try_from(profile_id).ok().filter(|id| *id > 0).ok_or((
        "profile_id",
        format!("{profile_id} is not a PayTabs profile id (a positive integer)"),
    ))?;
    let region = field(
        "region",
        PayTabsRegion::parse(&region.ok_or_else(|| required("region"))?),
    )?;
    Ok(PayTabsProfile { profile_id, region })
}

/// A provider API base URL: https, or http on a loopback host (tests point accounts at local
/// fakes), with no query or user.
fn api_base(url: &str) -> Result<String, Invalid> {
    let uri: http::Uri = url
        .parse()
        .map_err(|_| Invalid::new(format!("{url:?} is not a URL")))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(Invalid::new(format!("{url:?} is not an absolute URL")));
    };
    if authority.as_str().contains('@') || uri.query().is_some() {
        return Err(Invalid::new(format!(
            "{url:?} must not carry a user or a query"
        )));
    }
    match scheme {
        "https" => {}
        "http" if is_loopback(authority.host()) => {}
        _ => {
            return Err(Invalid::new(format!(
                "{url:?} must be https (http only on a loopback host)"
            )));
        }
    }
    Ok(url.trim_end_matches('/').to_owned())
}

fn header_name(name: &'static str, value: &str) -> Result<String, FieldError> {
    http::HeaderName::from_bytes(value.as_bytes())
        .map(|h| h.as_str().to_owned())
        .map_err(|_| (name, format!("{value:?} is not an HTTP header name")))
}

fn hmac_scheme(
    signature_header: Option<String>,
    timestamp_header: Option<String>,
    message: Option<String>,
    encoding: Option<String>,
    prefix: Option<String>,
) -> Result<HmacScheme, FieldError> {
    let required = |name: &'static str| (name, "is required for provider = \"hmac\"".to_owned());
    let signature_header = header_name(
        "signature_header",
        &signature_header.ok_or_else(|| required("signature_header"))?,
    )?;
    let timestamp_header = timestamp_header
        .map(|h| header_name("timestamp_header", &h))
        .transpose()?;
    let message = match message.ok_or_else(|| required("message"))?.as_str() {
        "{body}" => HmacMessage::Body,
        "{timestamp}.{body}" if timestamp_header.is_some() => HmacMessage::TimestampDotBody,
        "{timestamp}.{body}" => {
            return Err((
                "timestamp_header",
                "is required by message = \"{timestamp}.{body}\"".into(),
            ));
        }
        other => {
            return Err((
                "message",
                format!("{other:?} is not one of \"{{body}}\", \"{{timestamp}}.{{body}}\""),
            ));
        }
    };
    let encoding = match encoding.ok_or_else(|| required("encoding"))?.as_str() {
        "hex" => HmacEncoding::Hex,
        "base64" => HmacEncoding::Base64,
        other => {
            return Err((
                "encoding",
                format!("{other:?} is not one of \"hex\", \"base64\""),
            ));
        }
    };
    let prefix = match prefix {
        Some(p) if p.is_empty() || !p.bytes().all(|b| (0x21..=0x7e).contains(&b)) => {
            return Err((
                "prefix",
                "must be non-empty printable ASCII without spaces".into(),
            ));
        }
        p => p,
    };
    Ok(HmacScheme {
        signature_header,
        timestamp_header,
        message,
        encoding,
        prefix,
    })
}

fn tenant_settings(
    raw: RawTenant,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<TenantSettings, FieldError> {
    let mut origins = Vec::with_capacity(raw.allowed_redirect_origins.len());
    let mut seen = HashSet::new();
    for origin in &raw.allowed_redirect_origins {
        let origin = field("allowed_redirect_origins", RedirectOrigin::parse(origin))?;
        if seen.insert(origin.clone()) {
            origins.push(origin);
        }
    }
    let mut amount_limits = CurrencyLimits::default();
    for (code, limits) in &raw.amount_limits {
        let place = "amount_limits";
        let currency = field(place, Currency::parse(code))?;
        let limits: RawLimits = limits.clone().try_into().map_err(|e: toml::de::Error| {
            (
                place,
                format!(
                    "{code}: {} (expected {{ min = …, max = … }} in minor units)",
                    e.message()
                ),
            )
        })?;
        let limits = AmountLimits::new(limits.min, limits.max)
            .map_err(|e| (place, format!("{code}: {e}")))?;
        amount_limits
            .narrow(currency, limits)
            .map_err(|e| (place, format!("{code}: {e}")))?;
    }
    let sandbox_webhook_secret = raw
        .sandbox_webhook_secret_env
        .map(|var| secret("sandbox_webhook_secret_env", &var, env))
        .transpose()?;
    let past_due_grace = raw
        .past_due_grace
        .map(|s| {
            humantime::parse_duration(&s).map_err(|e| {
                (
                    "past_due_grace",
                    format!("{s:?} is not a duration such as \"3days\" or \"72h\": {e}"),
                )
            })
        })
        .transpose()?;
    let disputed_access = raw
        .disputed_access
        .map(|s| match s.as_str() {
            "allow" => Ok(crate::domain::access::DisputedAccess::Allow),
            "deny" => Ok(crate::domain::access::DisputedAccess::Deny),
            _ => Err((
                "disputed_access",
                format!("{s:?} is neither \"allow\" nor \"deny\""),
            )),
        })
        .transpose()?;
    let renewal_retries = raw
        .renewal_retries
        .map(|n| match u32::try_from(n) {
            Ok(n @ 1..=20) => Ok(n),
            _ => Err(("renewal_retries", format!("{n} is not between 1 and 20"))),
        })
        .transpose()?;
    let renewal_retry_window = raw
        .renewal_retry_window
        .map(|s| {
            let d = humantime::parse_duration(&s).map_err(|e| {
                (
                    "renewal_retry_window",
                    format!("{s:?} is not a duration such as \"7days\" or \"72h\": {e}"),
                )
            })?;
            if d < Duration::from_secs(3_600) || d > Duration::from_secs(60 * 86_400) {
                return Err((
                    "renewal_retry_window",
                    format!("{s:?} is not between 1 hour and 60 days"),
                ));
            }
            Ok(d)
        })
        .transpose()?;
    let dunning_end = raw
        .dunning_end
        .map(|s| {
            crate::domain::subscription::DunningEnd::parse(&s).ok_or_else(|| {
                (
                    "dunning_end",
                    format!("{s:?} is neither \"unpaid\" nor \"canceled\""),
                )
            })
        })
        .transpose()?;
    let trial_end_without_payment_method = raw
        .trial_end_without_payment_method
        .map(|s| {
            crate::domain::subscription::MissingPaymentMethod::parse(&s).ok_or_else(|| {
                (
                    "trial_end_without_payment_method",
                    format!("{s:?} is neither \"cancel\" nor \"pause\""),
                )
            })
        })
        .transpose()?;
    let default_account = raw
        .default_account
        .map(|a| field("default_account", AccountName::parse(&a)))
        .transpose()?;
    Ok(TenantSettings {
        renewal_retries,
        renewal_retry_window,
        dunning_end,
        trial_end_without_payment_method,
        allowed_redirect_origins: origins,
        amount_limits,
        sandbox_webhook_secret,
        past_due_grace,
        disputed_access,
        default_account,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "/etc/coffer.toml";

    fn env(name: &str) -> Option<String> {
        match name {
            "STRIPE_KEY" => Some("sk_test_123".into()),
            "STRIPE_WHSEC" => Some("whsec_abc".into()),
            "STRIPE_WHSEC_OLD" => Some("whsec_old".into()),
            "PAYTABS_KEY" => Some("SJNL-server-key".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn draft(text: &str) -> Result<Draft, String> {
        parse(Path::new(FILE), text, &env).map_err(|e| e.to_string())
    }

    fn err(text: &str) -> String {
        let e = draft(text).expect_err("the file is refused");
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    fn tenants() -> HashMap<String, TenantId> {
        HashMap::from([
            ("acme".to_owned(), TenantId::generate()),
            ("globex".to_owned(), TenantId::generate()),
        ])
    }

    const STRIPE: &str = r#"
        [[account]]
        name = "stripe-main"
        tenant = "acme"
        provider = "stripe"
        api_key_env = "STRIPE_KEY"
        webhook_secret_env = ["STRIPE_WHSEC", "STRIPE_WHSEC_OLD"]
        api_base = "https://api.stripe.com/"
    "#;

    #[test]
    fn a_good_file_resolves() {
        let text = format!(
            r#"{STRIPE}
            [[account]]
            name = "hooks"
            tenant = "globex"
            provider = "hmac"
            webhook_secret_env = "STRIPE_WHSEC"
            signature_header = "X-Signature"
            timestamp_header = "X-Timestamp"
            message = "{{timestamp}}.{{body}}"
            encoding = "base64"
            prefix = "sha256="
            api_base = "http://127.0.0.1:4010"
            livemode = true
            webhook_source_cidrs = ["3.18.12.63/32", "2600:1f18::/32", "10.0.0.7"]

            [tenant.acme]
            allowed_redirect_origins = ["https://shop.acme.example", "http://localhost:3000"]
            sandbox_webhook_secret_env = "STRIPE_WHSEC"
            past_due_grace = "3days"
            renewal_retries = 1
            dunning_end = "canceled"
            default_account = "stripe-main"

            [tenant.acme.amount_limits]
            HUF = {{ min = 1000, max = 1000000 }}
            "#
        );
        let tenants = tenants();
        let settings = draft(&text).unwrap().resolve(&tenants).unwrap();
        let acme = tenants["acme"];
        let [stripe, hooks] = settings.accounts() else {
            panic!("two accounts");
        };
        assert_eq!(stripe.tenant, acme);
        assert_eq!(stripe.provider, ProviderKind::Stripe);
        assert_eq!(stripe.api_key.as_ref().unwrap().expose(), "sk_test_123");
        let secrets: Vec<&str> = stripe.webhook_secrets.iter().map(Secret::expose).collect();
        assert_eq!(secrets, ["whsec_abc", "whsec_old"]);
        assert_eq!(stripe.api_base.as_deref(), Some("https://api.stripe.com"));
        assert!(!stripe.livemode);
        assert!(stripe.hmac.is_none());
        assert!(stripe.webhook_sources.is_none(), "any source");
        assert_eq!(hooks.tenant, tenants["globex"]);
        let sources = hooks.webhook_sources.as_ref().expect("a source list");
        let ranges: Vec<String> = sources.as_slice().iter().map(|c| c.to_string()).collect();
        assert_eq!(ranges, ["3.18.12.63/32", "2600:1f18::/32", "10.0.0.7/32"]);
        for (ip, admitted) in [
            ("3.18.12.63", true),
            ("::ffff:3.18.12.63", true),
            ("2600:1f18:1::9", true),
            ("10.0.0.7", true),
            ("3.18.12.64", false),
            ("10.0.0.8", false),
        ] {
            assert_eq!(sources.contains(ip.parse().unwrap()), admitted, "{ip}");
        }
        assert!(hooks.livemode);
        assert_eq!(
            hooks.hmac,
            Some(HmacScheme {
                signature_header: "x-signature".into(),
                timestamp_header: Some("x-timestamp".into()),
                message: HmacMessage::TimestampDotBody,
                encoding: HmacEncoding::Base64,
                prefix: Some("sha256=".into()),
            })
        );

        let t = settings.tenant(acme);
        let origins: Vec<&str> = t
            .allowed_redirect_origins
            .iter()
            .map(|o| o.as_str())
            .collect();
        assert_eq!(
            origins,
            ["https://shop.acme.example", "http://localhost:3000"]
        );
        assert!(t.allowed_redirect_origins[0].allows("https://SHOP.acme.example:443/done?x=1"));
        assert!(!t.allowed_redirect_origins[0].allows("https://shop.acme.example.evil.com/"));
        assert!(!t.allowed_redirect_origins[0].allows("http://shop.acme.example/"));
        let huf = Currency::parse("HUF").unwrap();
        assert_eq!(
            t.amount_limits.of(huf),
            AmountLimits::new(1000, 1_000_000).unwrap()
        );
        assert_eq!(t.past_due_grace, Some(Duration::from_secs(3 * 86_400)));
        assert_eq!(t.renewal_retries, Some(1));
        assert_eq!(
            t.dunning_end,
            Some(crate::domain::subscription::DunningEnd::Canceled)
        );
        assert_eq!(t.renewal_retry_window, None);
        assert_eq!(t.default_account.as_ref().unwrap().as_str(), "stripe-main");
        assert!(t.sandbox_webhook_secret.is_some());
        // A tenant the file does not name has the defaults.
        let other = settings.tenant(tenants["globex"]);
        assert!(other.allowed_redirect_origins.is_empty());
        assert_eq!(other.amount_limits.of(huf), huf.default_limits());
        // Secrets never print.
        let debug = format!("{settings:?}");
        for secret in ["sk_test_123", "whsec_abc", "whsec_old"] {
            assert!(!debug.contains(secret), "{debug}");
        }
    }

    const PAYTABS: &str = r#"
        [[account]]
        name = "paytabs-main"
        tenant = "acme"
        provider = "paytabs"
        api_key_env = "PAYTABS_KEY"
        profile_id = 123456
        region = "KWT"
    "#;

    #[test]
    fn paytabs_accounts_name_their_profile_and_region() {
        let settings = draft(PAYTABS).unwrap().resolve(&tenants()).unwrap();
        let [paytabs] = settings.accounts() else {
            panic!("one account");
        };
        assert_eq!(paytabs.provider, ProviderKind::PayTabs);
        assert_eq!(
            paytabs.paytabs,
            Some(PayTabsProfile {
                profile_id: 123456,
                region: PayTabsRegion::Kwt,
            })
        );
        // The server key signs the callbacks when no webhook secret is named.
        let secrets: Vec<&str> = paytabs.webhook_secrets.iter().map(Secret::expose).collect();
        assert_eq!(secrets, ["SJNL-server-key"]);
        assert!(paytabs.hmac.is_none());
        // Other providers carry no PayTabs profile.
        let stripe = draft(STRIPE).unwrap().resolve(&tenants()).unwrap();
        assert!(stripe.accounts()[0].paytabs.is_none());
        // Secrets never print.
        assert!(!format!("{settings:?}").contains("SJNL-server-key"));
    }

    #[test]
    fn paytabs_keys_are_checked() {
        let without = |key: &str| {
            PAYTABS
                .lines()
                .filter(|l| !l.trim_start().starts_with(key))
                .collect::<Vec<_>>()
                .join("\n")
        };
        for (text, expected) in [
            (
                without("profile_id"),
                r#"/etc/coffer.toml: account "paytabs-main": profile_id: is required for provider = "paytabs""#,
            ),
            (
                without("region"),
                r#"/etc/coffer.toml: account "paytabs-main": region: is required for provider = "paytabs""#,
            ),
            (
                PAYTABS.replace("\"KWT\"", "\"kwt\""),
                r#"/etc/coffer.toml: account "paytabs-main": region: unknown PayTabs region "kwt"; expected one of ARE, SAU, OMN, JOR, EGY, KWT, IRQ, MAR, QAT, GLOBAL"#,
            ),
            (
                PAYTABS.replace("123456", "0"),
                r#"/etc/coffer.toml: account "paytabs-main": profile_id: 0 is not a PayTabs profile id (a positive integer)"#,
            ),
            (
                PAYTABS.replace("123456", "-4"),
                r#"/etc/coffer.toml: account "paytabs-main": profile_id: -4 is not a PayTabs profile id (a positive integer)"#,
            ),
            (
                PAYTABS.replace("123456", "\"123456\""),
                r#"/etc/coffer.toml: account "paytabs-main": profile_id: must be an integer"#,
            ),
            (
                without("api_key_env"),
                r#"/etc/coffer.toml: account "paytabs-main": api_key_env: is required for paytabs accounts"#,
            ),
            (
                format!("{STRIPE}profile_id = 1\n"),
                r#"/etc/coffer.toml: account "stripe-main": profile_id: is only for provider = "paytabs" accounts"#,
            ),
            (
                format!("{STRIPE}region = \"ARE\"\n"),
                r#"/etc/coffer.toml: account "stripe-main": region: is only for provider = "paytabs" accounts"#,
            ),
        ] {
            assert_eq!(err(&text), expected, "for:\n{text}");
        }
    }

    #[test]
    fn an_empty_file_configures_nothing() {
        let settings = draft("").unwrap().resolve(&HashMap::new()).unwrap();
        assert!(settings.accounts().is_empty());
    }

    #[test]
    fn sandbox_accounts_need_only_a_signing_secret() {
        let text = r#"
            [[account]]
            name = "acme-test"
            tenant = "acme"
            provider = "sandbox"
            webhook_secret_env = "STRIPE_WHSEC"
        "#;
        let settings = draft(text).unwrap().resolve(&tenants()).unwrap();
        assert_eq!(settings.accounts()[0].provider, ProviderKind::Sandbox);
        assert!(settings.accounts()[0].api_key.is_none());
    }

    /// Each problem is one line naming the file, the account or tenant, and the field.
    #[test]
    fn every_problem_names_its_place_and_field() {
        let account = |extra: &str| {
            format!(
                "[[account]]\nname = \"main\"\ntenant = \"acme\"\nprovider = \"stripe\"\n\
                 api_key_env = \"STRIPE_KEY\"\nwebhook_secret_env = \"STRIPE_WHSEC\"\n{extra}"
            )
        };
        let with = |provider: &str, extra: &str| {
            account(extra).replace(
                "provider = \"stripe\"",
                &format!("provider = \"{provider}\""),
            )
        };
        let hmac = |extra: &str| {
            with(
                "hmac",
                &format!("signature_header = \"x-sig\"\nencoding = \"hex\"\n{extra}"),
            )
        };
        let cases: Vec<(String, &str)> = vec![
            (
                with("stripey", ""),
                r#"/etc/coffer.toml: account "main": provider: unknown provider "stripey"; expected one of sandbox, stripe, polar, paytabs, hmac"#,
            ),
            (
                account("").replace("STRIPE_KEY", "NOPE"),
                r#"/etc/coffer.toml: account "main": api_key_env: environment variable NOPE is not set"#,
            ),
            (
                account("").replace("\"STRIPE_WHSEC\"", "[\"STRIPE_WHSEC\", \"EMPTY\"]"),
                r#"/etc/coffer.toml: account "main": webhook_secret_env: environment variable EMPTY is empty"#,
            ),
            (
                account("").replace("STRIPE_KEY", "not a name"),
                r#"/etc/coffer.toml: account "main": api_key_env: "not a name" is not an environment variable name (letters, digits and '_')"#,
            ),
            (
                account("").replace("api_key_env = \"STRIPE_KEY\"\n", ""),
                r#"/etc/coffer.toml: account "main": api_key_env: is required for stripe accounts"#,
            ),
            (
                account("api_base = \"http://api.stripe.com\""),
                r#"/etc/coffer.toml: account "main": api_base: "http://api.stripe.com" must be https (http only on a loopback host)"#,
            ),
            (
                format!("{}\n{}", account(""), account("")),
                r#"/etc/coffer.toml: account "main": name: another account has this name; names must be unique"#,
            ),
            (
                account("signature_headr = \"x\""),
                r#"/etc/coffer.toml: account "main": unknown field `signature_headr`"#,
            ),
            (
                account("signature_header = \"x-sig\""),
                r#"/etc/coffer.toml: account "main": signature_header: is only for provider = "hmac" accounts"#,
            ),
            (
                hmac("").replace("signature_header = \"x-sig\"\n", ""),
                r#"/etc/coffer.toml: account "main": signature_header: is required for provider = "hmac""#,
            ),
            (
                hmac(""),
                r#"/etc/coffer.toml: account "main": message: is required for provider = "hmac""#,
            ),
            (
                hmac("message = \"{timestamp}.{body}\""),
                r#"/etc/coffer.toml: account "main": timestamp_header: is required by message = "{timestamp}.{body}""#,
            ),
            (
                with("sandbox", "").replace("api_key_env = \"STRIPE_KEY\"\n", "")
                    + "livemode = true\n",
                r#"/etc/coffer.toml: account "main": livemode: a sandbox account is never live"#,
            ),
            (
                account("webhook_source_cidrs = [\"3.18.12.63/32\", \"10.0.0.1/8\"]"),
                r#"/etc/coffer.toml: account "main": webhook_source_cidrs: "10.0.0.1/8" is not an address range: host bits are set; did you mean "10.0.0.0/8"?"#,
            ),
            (
                account("webhook_source_cidrs = [\"3.18.12.63/33\"]"),
                r#"/etc/coffer.toml: account "main": webhook_source_cidrs: "3.18.12.63/33" is not an address range: the prefix length must be 0 to 32"#,
            ),
            (
                account("webhook_source_cidrs = [\"stripe.com\"]"),
                r#"/etc/coffer.toml: account "main": webhook_source_cidrs: "stripe.com" is not an address range: expected an IPv4 or IPv6 address, then optionally /prefix-length"#,
            ),
            (
                account("webhook_source_cidrs = [\"::ffff:3.18.12.63\"]"),
                r#"/etc/coffer.toml: account "main": webhook_source_cidrs: "::ffff:3.18.12.63" is not an address range: an IPv4-mapped IPv6 range; write it as IPv4"#,
            ),
            (
                account("webhook_source_cidrs = []"),
                r#"/etc/coffer.toml: account "main": webhook_source_cidrs: must list at least one address range; leave the key out to accept deliveries from any source"#,
            ),
            (
                account("").replace("name = \"main\"\n", ""),
                r#"/etc/coffer.toml: account #1: missing field `name`"#,
            ),
            (
                "[tenant.acme]\nallowed_redirect_origins = [\"https://shop.example/path\"]".into(),
                r#"/etc/coffer.toml: tenant "acme": allowed_redirect_origins: "https://shop.example/path" is not an origin"#,
            ),
            (
                "[tenant.acme]\nallowed_redirect_origins = [\"http://shop.example\"]".into(),
                r#"/etc/coffer.toml: tenant "acme": allowed_redirect_origins: "http://shop.example" is not an origin"#,
            ),
            (
                "[tenant.acme.amount_limits]\nUSD = { min = 1, max = 100 }".into(),
                r#"/etc/coffer.toml: tenant "acme": amount_limits: USD: 1…100 widens USD's limits (50…100000000 minor units); a tenant may only narrow them"#,
            ),
            (
                "[tenant.acme.amount_limits]\nXYZ = { min = 100, max = 1000 }".into(),
                r#"/etc/coffer.toml: tenant "acme": amount_limits: XYZ is not a currency Coffer supports"#,
            ),
            (
                "[tenant.acme]\nrenewal_retries = 0".into(),
                r#"/etc/coffer.toml: tenant "acme": renewal_retries: 0 is not between 1 and 20"#,
            ),
            (
                "[tenant.acme]\nrenewal_retry_window = \"1s\"".into(),
                r#"/etc/coffer.toml: tenant "acme": renewal_retry_window: "1s" is not between 1 hour and 60 days"#,
            ),
            (
                "[tenant.acme]\ndunning_end = \"cancelled\"".into(),
                r#"/etc/coffer.toml: tenant "acme": dunning_end: "cancelled" is neither "unpaid" nor "canceled""#,
            ),
            (
                "[tenant.acme]\ntrial_end_without_payment_method = \"keep\"".into(),
                r#"/etc/coffer.toml: tenant "acme": trial_end_without_payment_method: "keep" is neither "cancel" nor "pause""#,
            ),
            (
                "[tenant.acme]\npast_due_grace = \"3\"".into(),
                r#"/etc/coffer.toml: tenant "acme": past_due_grace: "3" is not a duration"#,
            ),
            (
                "[tenant.acme]\nsandbox_webhook_secret_env = \"NOPE\"".into(),
                r#"/etc/coffer.toml: tenant "acme": sandbox_webhook_secret_env: environment variable NOPE is not set"#,
            ),
            (
                "[tenant.acme]\ndefault_account = \"elsewhere\"".into(),
                r#"/etc/coffer.toml: tenant "acme": default_account: "elsewhere" is neither an account of this tenant nor its sandbox account "acme-sandbox""#,
            ),
            (
                "[tenant.acme]\nallowed_origins = []".into(),
                r#"/etc/coffer.toml: tenant "acme": unknown field `allowed_origins`"#,
            ),
            (
                "[tenant.Acme]\n".into(),
                r#"/etc/coffer.toml: tenant "Acme": "#,
            ),
            (
                "[accounts]\n".into(),
                r#"/etc/coffer.toml: unknown key "accounts"; expected [[account]] and [tenant.NAME] tables"#,
            ),
            (
                "[[account]\nname = 1".into(),
                r#"/etc/coffer.toml: line 1: invalid TOML"#,
            ),
        ];
        for (text, expected) in cases {
            let e = err(&text);
            assert!(
                e.starts_with(expected),
                "got: {e}\nexpected: {expected}\nfor:\n{text}"
            );
        }
    }

    #[test]
    fn unknown_tenants_are_refused_when_resolved() {
        let text = STRIPE.replace("\"acme\"", "\"initech\"");
        let e = draft(&text)
            .unwrap()
            .resolve(&tenants())
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            r#"/etc/coffer.toml: account "stripe-main": tenant: no tenant is named "initech" (create it with `coffer tenant create initech`)"#
        );
        let e = draft("[tenant.initech]\n")
            .unwrap()
            .resolve(&tenants())
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(r#"/etc/coffer.toml: tenant "initech": no tenant is named"#),
            "{e}"
        );
    }

    #[test]
    fn the_default_account_belongs_to_the_tenant() {
        let text = format!("{STRIPE}\n[tenant.globex]\ndefault_account = \"stripe-main\"\n");
        assert!(err(&text).contains("default_account"));
        let ok = format!("{STRIPE}\n[tenant.globex]\ndefault_account = \"globex-sandbox\"\n");
        assert!(draft(&ok).is_ok());
    }

    #[test]
    fn wrong_types_name_their_field() {
        for (text, expected) in [
            (
                STRIPE.replace("api_base = \"https://api.stripe.com/\"", "api_base = 5"),
                r#"/etc/coffer.toml: account "stripe-main": api_base: must be a string"#,
            ),
            (
                STRIPE.replace(
                    "api_base = \"https://api.stripe.com/\"",
                    "livemode = \"no\"",
                ),
                r#"/etc/coffer.toml: account "stripe-main": livemode: must be true or false"#,
            ),
            (
                STRIPE.replace("[\"STRIPE_WHSEC\", \"STRIPE_WHSEC_OLD\"]", "[1]"),
                r#"/etc/coffer.toml: account "stripe-main": webhook_secret_env: must be a string or a list of strings"#,
            ),
            (
                STRIPE.replace(
                    "api_base = \"https://api.stripe.com/\"",
                    "webhook_source_cidrs = \"3.18.12.63/32\"",
                ),
                r#"/etc/coffer.toml: account "stripe-main": webhook_source_cidrs: must be a list of strings"#,
            ),
            (
                "[tenant.acme]\nallowed_redirect_origins = \"https://a.example\"".to_owned(),
                r#"/etc/coffer.toml: tenant "acme": allowed_redirect_origins: must be a list of strings"#,
            ),
            (
                "[tenant.acme.amount_limits]\nHUF = { min = 100, max = \"lots\" }".to_owned(),
                r#"/etc/coffer.toml: tenant "acme": amount_limits: HUF: invalid type: string "lots", expected i64 (expected { min = …, max = … } in minor units)"#,
            ),
        ] {
            assert_eq!(err(&text), expected);
        }
    }

    #[test]
    fn secrets_never_reach_an_error() {
        // A variable that holds something that is not valid for its use must not be echoed.
        let e = err(&STRIPE.replace("api_base = \"https://api.stripe.com/\"", "api_base = 5"));
        assert!(!e.contains("sk_test_123") && !e.contains("whsec"), "{e}");
    }

    #[test]
    fn origins() {
        for good in [
            "https://a.example",
            "https://a.example:8443",
            "http://127.0.0.1:3000",
            "http://[::1]:8080",
        ] {
            assert!(RedirectOrigin::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "a.example",
            "https://",
            "ftp://a.example",
            "https://a.example/x",
            "https://a.example?q",
            "https://u@a.example",
            "http://a.example",
            "",
        ] {
            assert!(RedirectOrigin::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            RedirectOrigin::parse("HTTPS://A.example:443")
                .unwrap()
                .as_str(),
            "https://a.example"
        );
    }
}
