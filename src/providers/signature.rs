//! Webhook signature schemes, verified on the raw request bytes before anything is parsed.
//!
//! Every scheme is an HMAC-SHA256 over some message (the body, or a timestamp and id joined to
//! it) keyed with the account's webhook secret. A delivery is accepted when one of the
//! signatures it carries matches the MAC under one of the account's active secrets (so secrets
//! rotate without downtime), compared in constant time, and, where the scheme signs a
//! timestamp, when that timestamp is within the tolerance of now in the direction(s) the
//! provider's SDKs check. The signature is checked before the timestamp's age, so `stale` is
//! only ever said of a delivery that was signed with a real secret.
//!
//! Everything fails closed: a header that is absent, repeated or not in the scheme's format, a
//! secret that cannot make a key, an account with no secret, all end in a [`Rejection`]; no
//! path returns "verified" without a MAC having matched.
//!
//! Schemes (DESIGN.md §5; the shared vectors, `../shared/vectors/webhook-signatures.json`,
//! come from the providers' own SDKs):
//!
//! - Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…][,v0=…]`, MAC over `{t}.{body}`
//!   keyed with the whole secret string (`whsec_` included); any `v1` may match, other
//!   versions are ignored. Only the age is checked: a timestamp from the future is accepted.
//! - Standard Webhooks (the sandbox): `webhook-id`, `webhook-timestamp`, `webhook-signature`
//!   (a space-separated list of `v1,<base64>`), MAC over `{id}.{timestamp}.{body}` keyed with
//!   the base64 decoding of the secret after `whsec_`. Checked both ways.
//! - Polar: Standard Webhooks headers and message; its SDKs key the MAC with the secret
//!   string's own bytes, and polar-sdk 1.x also with the decoded key, so both are tried.
//! - PayTabs: `signature: <hex>`, MAC over the body keyed with the server key. No timestamp,
//!   so no staleness check is possible; the inbox's de-duplication and the transaction query
//!   before anything is applied are the defence against replays.
//! - Generic HMAC: header names, message, encoding and prefix from [`HmacScheme`].
//!
//! # What the SDKs accept, and the rules taken from them
//!
//! Stripe, Standard Webhooks and Polar deliveries are accepted exactly when every official
//! verifier of the provider accepts them: stripe-python's `WebhookSignature.verify_header` and
//! stripe-node's `Webhooks` signature helper; standardwebhooks (python 1.1, node 1.1); for
//! Polar, polar-sdk 1.x's own verifier and the standardwebhooks verifiers its older SDKs
//! (polar-sdk 0.x, @polar-sh/sdk) call. Each verifier's parsing is followed as written (no
//! trimming, no case folding, its own number parser); where they would disagree on a delivery,
//! it is refused. The rules that follow, each with the SDK behaviour it comes from:
//!
//! Stripe (`t` and `v1` are items of the header split on `,`; an item's key is the text
//! before its first `=`, its value the text between the first `=` and the next `=`):
//!
//! - Items are not trimmed: ` v1=…` is not a `v1` item (both SDKs compare keys as split).
//! - A `v1` matches only if it is the lower-case hex of the MAC, byte for byte (both compare
//!   the hex strings); upper-case or other non-matching text is a non-match, not a refusal,
//!   so another `v1` may still match. A `v1` item with no `=`, with an empty value (node throws
//!   on it, python compares it) or with a value outside ASCII (python raises on it, node may)
//!   refuses the delivery, whatever the others say.
//! - `t`: python reads the first `t` with `int()`, node the last with `parseInt(…, 10)`; the
//!   delivery is accepted only when both give the same integer (so `t=+1767225600` and
//!   `t=01767225600` are read as 1767225600, and `t=1_767`, `t=12abc`, `t=1.5` are refused),
//!   and that integer, not the header's text, is what was signed (`"%d.%s"`,
//!   `` `${t}.${payload}` ``). A `t` item with no `=` (python raises), a value outside ASCII,
//!   node's "no timestamp" `-1`, or one past 2^53 (where node's numbers stop being exact) is
//!   refused.
//! - The body must be non-empty (node's verifier refuses an empty string payload, and neither
//!   SDK's `constructEvent` parses one), UTF-8 (python decodes it strictly, node with
//!   replacement) and must not start with a byte-order mark (node's decoder drops it before
//!   signing, python keeps it).
//! - Age: refused when `now - t > tolerance`; a future `t` is accepted, as both SDKs do.
//!
//! Standard Webhooks and Polar:
//!
//! - `webhook-id`, `webhook-timestamp` and `webhook-signature` must be present and non-empty
//!   (the SDKs' "missing required headers"); the id must be ASCII, since the SDKs sign the id
//!   as the web framework decoded it (Latin-1 in Node's `http` and in WSGI/ASGI), which agrees
//!   with the bytes sent only for ASCII.
//! - `webhook-timestamp`: python reads it with `float()`, node with `parseInt(…, 10)`; both
//!   must succeed and sign the same integer (python the floor of its microsecond-rounded
//!   datetime, polar-sdk 1.x the floor of the float, node the parsed integer). So
//!   `1767225600.5` is read as 1767225600 and signed as such, while `1_767_225_600`,
//!   `1.7672256e9` or a fraction that rounds up to the next second are refused. The value must be ASCII, within
//!   python's datetime range (years 1-9999), and a fraction is accepted only below 2^33 s,
//!   where python's rounding cannot reach the next second. Age: refused when any verifier
//!   finds it more than the tolerance from now, either way (python compares the fraction too:
//!   `now + tolerance` plus half a second is too new).
//! - `webhook-signature` is split on single spaces, each entry on `,`. Node accepts an entry
//!   `v1,<base64>` whose text is the canonical base64 of the MAC; python raises (refusing the
//!   delivery) on an entry before its match that does not split into exactly two parts, or
//!   whose `v1` signature its lenient base64 decoder rejects; polar-sdk 1.x splits on any
//!   whitespace and decodes strictly. The delivery is accepted when every verifier finds the
//!   match; a non-canonical base64 spelling of the MAC (which python would decode) is
//!   therefore not a match.
//! - The body must be UTF-8 (python decodes it strictly).
//! - Polar's keys: the secret string's bytes (every Polar SDK) and, for a `whsec_` secret, its
//!   decoding (polar-sdk 1.x alone, kept as DESIGN §5 says); every verifier's parsing above
//!   applies whichever key matched.
//!
//! Every verifier compares in constant time; so does this module (`subtle`, `Mac::verify_slice`).
//! Header values reach this module as bytes; `,`, `=` and spaces are ASCII, so splitting the
//! bytes splits the header exactly as the SDKs split the decoded string.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::domain::account::{HmacEncoding, HmacMessage, HmacScheme, Secret};

type HmacSha256 = Hmac<Sha256>;

/// The default tolerance between a signed timestamp and now, in seconds.
pub const DEFAULT_TOLERANCE_SECS: u64 = 300;

/// One request header as it arrived: names compare case-insensitively, values are bytes
/// (HTTP does not promise UTF-8), and order and repeats are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: String,
    pub value: Vec<u8>,
}

impl Header {
    pub fn new(name: impl Into<String>, value: impl Into<Vec<u8>>) -> Self {
        Self {
            name: name.into(),
            value: value.into(),
        }
    }
}

/// Why a delivery was refused. The names are the `reason` label of the rejection counter and
/// the `reason` metadata of the gRPC error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rejection {
    /// The scheme's signature header is absent.
    Missing,
    /// A header the scheme needs is absent, repeated or not in its format, or the body is not
    /// what the scheme signs (see the module's rules).
    Malformed,
    /// No signature matches any active secret (or the account has no usable secret).
    Mismatch,
    /// The signed timestamp is outside the tolerance.
    Stale,
    /// Verified, but the event's own livemode disagrees with the account's.
    Livemode,
    /// Verified, but the payload's event id or type cannot be read.
    Unparseable,
}

impl Rejection {
    pub const ALL: [Rejection; 6] = [
        Rejection::Missing,
        Rejection::Malformed,
        Rejection::Mismatch,
        Rejection::Stale,
        Rejection::Livemode,
        Rejection::Unparseable,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::Mismatch => "mismatch",
            Rejection::Stale => "stale",
            Rejection::Livemode => "livemode",
            Rejection::Unparseable => "unparseable",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How an account's deliveries are signed.
#[derive(Debug, Clone, Copy)]
pub enum Scheme<'a> {
    Stripe,
    /// Standard Webhooks with the decoded `whsec_` key (the sandbox).
    StandardWebhooks,
    /// Standard Webhooks headers, tried with the raw secret bytes and the decoded key.
    Polar,
    PayTabs,
    Hmac(&'a HmacScheme),
}

/// What a verified delivery's headers said, for reading the event afterwards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The Standard Webhooks `webhook-id` (signed, so trustworthy), for the schemes that have
    /// one.
    pub webhook_id: Option<String>,
}

/// When to verify, and with what tolerance.
#[derive(Debug, Clone, Copy)]
pub struct Check {
    /// Now, in Unix seconds (injected, so tests pin it).
    pub now: i64,
    /// The largest accepted distance between a signed timestamp and `now`, in the direction(s)
    /// the scheme checks.
    pub tolerance_secs: u64,
}

impl Check {
    fn tolerance(self) -> i128 {
        i128::from(self.tolerance_secs)
    }

    /// Older than the tolerance: `now - t > tolerance`.
    fn too_old(self, t: i64) -> bool {
        i128::from(self.now) - i128::from(t) > self.tolerance()
    }
}

/// Verifies a delivery's signature against every active secret.
pub fn verify(
    scheme: Scheme<'_>,
    secrets: &[Secret],
    headers: &[Header],
    body: &[u8],
    check: Check,
) -> Result<Verified, Rejection> {
    match scheme {
        Scheme::Stripe => stripe(secrets, headers, body, check),
        Scheme::StandardWebhooks => standard(secrets, headers, body, check, Keys::Decoded),
        Scheme::Polar => standard(secrets, headers, body, check, Keys::RawAndDecoded),
        Scheme::PayTabs => paytabs(secrets, headers, body),
        Scheme::Hmac(hmac) => generic(hmac, secrets, headers, body, check),
    }
}

/// The value of the one header called `name` (case-insensitively), as it came: `None` when
/// absent, `Malformed` when repeated (which of two signatures to believe is not a question to
/// answer).
fn single_raw<'h>(headers: &'h [Header], name: &str) -> Result<Option<&'h [u8]>, Rejection> {
    let mut found = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
    let Some(first) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(Rejection::Malformed);
    }
    Ok(Some(&first.value))
}

/// As [`single_raw`], UTF-8 and trimmed, for the schemes no SDK defines (PayTabs, generic
/// HMAC): `Malformed` when not UTF-8.
pub fn single<'h>(headers: &'h [Header], name: &str) -> Result<Option<&'h str>, Rejection> {
    single_raw(headers, name)?
        .map(|v| {
            std::str::from_utf8(v)
                .map(str::trim)
                .map_err(|_| Rejection::Malformed)
        })
        .transpose()
}

fn required<'h>(headers: &'h [Header], name: &str) -> Result<&'h str, Rejection> {
    single(headers, name)?.ok_or(Rejection::Malformed)
}

/// A Unix timestamp in seconds for the generic scheme: ASCII digits only, no sign, no
/// fraction.
fn parse_timestamp(s: &str) -> Result<i64, Rejection> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::Malformed);
    }
    s.parse().map_err(|_| Rejection::Malformed)
}

/// Within the tolerance of now, either way.
fn fresh(timestamp: i64, check: Check) -> Result<(), Rejection> {
    if check.now.abs_diff(timestamp) <= check.tolerance_secs {
        Ok(())
    } else {
        Err(Rejection::Stale)
    }
}

fn mac(key: &[u8], parts: &[&[u8]]) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(key).ok()?;
    for part in parts {
        mac.update(part);
    }
    Some(mac)
}

/// Whether any of `signatures` is the MAC of the message made of `parts` under `key`,
/// compared in constant time. A key HMAC cannot take (none: HMAC takes any length) would
/// count as no match.
fn matches(key: &[u8], parts: &[&[u8]], signatures: &[Vec<u8>]) -> bool {
    let Some(mac) = mac(key, parts) else {
        return false;
    };
    signatures
        .iter()
        .any(|sig| mac.clone().verify_slice(sig).is_ok())
}

/// Whether any active secret, as the keys `keys_of` makes of it, signed the message.
fn any_secret(
    secrets: &[Secret],
    keys_of: impl Fn(&Secret) -> Vec<Vec<u8>>,
    parts: &[&[u8]],
    signatures: &[Vec<u8>],
) -> Result<(), Rejection> {
    let matched = secrets
        .iter()
        .flat_map(keys_of)
        .any(|key| matches(&key, parts, signatures));
    if matched {
        Ok(())
    } else {
        Err(Rejection::Mismatch)
    }
}

/// The MAC of `parts` under `key`, as bytes.
fn digest(key: &[u8], parts: &[&[u8]]) -> Option<Vec<u8>> {
    Some(mac(key, parts)?.finalize().into_bytes().to_vec())
}

/// `a == b` in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// The body as the SDKs read it: UTF-8, decoded strictly (python), else refused.
fn utf8_body(body: &[u8]) -> Result<(), Rejection> {
    std::str::from_utf8(body)
        .map(drop)
        .map_err(|_| Rejection::Malformed)
}

/// One `key=value` item of a `Stripe-Signature`: the value is the text between the first `=`
/// and the next (python's `split("=", 2)[1]`, node's `split("=")[1]`), `None` without `=`.
fn stripe_item(item: &[u8]) -> (&[u8], Option<&[u8]>) {
    let mut parts = item.split(|&b| b == b'=');
    let key = parts.next().unwrap_or_default();
    (key, parts.next())
}

fn stripe(
    secrets: &[Secret],
    headers: &[Header],
    body: &[u8],
    check: Check,
) -> Result<Verified, Rejection> {
    let header = single_raw(headers, "stripe-signature")?.ok_or(Rejection::Missing)?;
    let mut timestamps = Vec::new();
    let mut signatures = Vec::new();
    for item in header.split(|&b| b == b',') {
        match stripe_item(item) {
            // python's list comprehension indexes every `t` item's value, so one without `=`
            // raises; node would read it as NaN.
            (b"t", value) => timestamps.push(value.ok_or(Rejection::Malformed)?),
            // node throws on an absent or empty value (`secureCompare` needs two strings);
            // python raises on an absent one, and on one outside ASCII (`compare_digest`).
            (b"v1", Some(value)) if !value.is_empty() && value.is_ascii() => signatures.push(value),
            (b"v1", _) => return Err(Rejection::Malformed),
            // v0 (test-mode legacy) and any future scheme are not ours to check.
            _ => {}
        }
    }
    // python reads the first `t`, node the last: both must give the same integer.
    let (Some(first), Some(last)) = (timestamps.first(), timestamps.last()) else {
        return Err(Rejection::Malformed);
    };
    let t = match (sdk::py_int(first), sdk::js_parse_int(last)) {
        (Some(p), Some(n)) if p == n && n != -1 => p,
        _ => return Err(Rejection::Malformed),
    };
    if signatures.is_empty() {
        return Err(Rejection::Malformed);
    }
    if body.is_empty() || body.starts_with(b"\xEF\xBB\xBF") {
        return Err(Rejection::Malformed);
    }
    utf8_body(body)?;
    let signed = t.to_string();
    let matched = secrets.iter().any(|secret| {
        digest(secret.expose().as_bytes(), &[signed.as_bytes(), b".", body]).is_some_and(
            |expected| {
                let expected = encode_hex(&expected);
                signatures.iter().any(|sig| same(expected.as_bytes(), sig))
            },
        )
    });
    if !matched {
        return Err(Rejection::Mismatch);
    }
    if check.too_old(t) {
        return Err(Rejection::Stale);
    }
    Ok(Verified { webhook_id: None })
}

/// Which keys a Standard Webhooks secret gives.
#[derive(Debug, Clone, Copy)]
enum Keys {
    Decoded,
    RawAndDecoded,
}

/// The base64 decoding of a `whsec_` secret (or of the whole secret without the prefix, as
/// the Standard Webhooks libraries do); `None` if it is not canonical padded base64 (which
/// every SDK decodes alike) or decodes to nothing.
fn decoded_key(secret: &Secret) -> Option<Vec<u8>> {
    let s = secret.expose();
    let encoded = s.strip_prefix("whsec_").unwrap_or(s);
    STANDARD.decode(encoded).ok().filter(|k| !k.is_empty())
}

/// A `webhook-timestamp` as every verifier reads it: the integer they all sign, and whether
/// any of them finds it outside the tolerance.
struct StandardTimestamp {
    signed: i64,
    stale: bool,
}

fn standard_timestamp(
    value: &[u8],
    check: Check,
    polar: bool,
) -> Result<StandardTimestamp, Rejection> {
    let n = sdk::js_parse_int(value).ok_or(Rejection::Malformed)?;
    let f = sdk::py_float(value).ok_or(Rejection::Malformed)?;
    let (sec, micros) = sdk::py_fromtimestamp(f).ok_or(Rejection::Malformed)?;
    // Past 2^33 s python's `timestamp()` of a datetime with microseconds may round up to the
    // next second; no real delivery is there.
    if micros != 0 && sec.unsigned_abs() >= 1 << 33 {
        return Err(Rejection::Malformed);
    }
    // polar-sdk 1.x signs `math.floor(float(value))`.
    if sec != n || (polar && f.floor() != n as f64) {
        return Err(Rejection::Malformed);
    }
    let (now, tolerance) = (i128::from(check.now), check.tolerance());
    // node: integers; python: the datetime, to the microsecond; polar-sdk 1.x: the float.
    let node = now - i128::from(n) > tolerance || i128::from(n) > now + tolerance;
    let exact = i128::from(sec) * 1_000_000 + i128::from(micros);
    let python = exact < (now - tolerance) * 1_000_000 || exact > (now + tolerance) * 1_000_000;
    let polar_float = polar && (f < (now - tolerance) as f64 || f > (now + tolerance) as f64);
    Ok(StandardTimestamp {
        signed: n,
        stale: node || python || polar_float,
    })
}

fn standard(
    secrets: &[Secret],
    headers: &[Header],
    body: &[u8],
    check: Check,
    keys: Keys,
) -> Result<Verified, Rejection> {
    let polar = matches!(keys, Keys::RawAndDecoded);
    let header = single_raw(headers, "webhook-signature")?.ok_or(Rejection::Missing)?;
    let id = single_raw(headers, "webhook-id")?.ok_or(Rejection::Malformed)?;
    let timestamp = single_raw(headers, "webhook-timestamp")?.ok_or(Rejection::Malformed)?;
    if header.is_empty() || id.is_empty() || timestamp.is_empty() || !id.is_ascii() {
        return Err(Rejection::Malformed);
    }
    let timestamp = standard_timestamp(timestamp, check, polar)?;
    utf8_body(body)?;
    // A list no verifier could read, whatever the key: no `v1` entry at all, or an entry
    // python's verifier raises on.
    let signed = timestamp.signed.to_string();
    let parts: [&[u8]; 5] = [id, b".", signed.as_bytes(), b".", body];
    let accepted = secrets
        .iter()
        .flat_map(|s| match keys {
            Keys::Decoded => decoded_key(s).into_iter().collect::<Vec<_>>(),
            Keys::RawAndDecoded => std::iter::once(s.expose().as_bytes().to_vec())
                .chain(decoded_key(s))
                .collect(),
        })
        .filter_map(|key| digest(&key, &parts))
        .any(|expected| {
            sdk::node_standard(header, &STANDARD.encode(&expected))
                && sdk::python_standard(header, Some(&expected)) == sdk::Python::Matches
                && (!polar || sdk::polar_v1(header, &expected))
        });
    if !accepted {
        // A list no verifier could read, whatever the key, is malformed: no `v1` entry at all,
        // or an entry python's verifier raises on (it does so only before its match, which is
        // why this is asked only now).
        let unreadable =
            !sdk::has_v1_entry(header) || sdk::python_standard(header, None) == sdk::Python::Raises;
        return Err(if unreadable {
            Rejection::Malformed
        } else {
            Rejection::Mismatch
        });
    }
    if timestamp.stale {
        return Err(Rejection::Stale);
    }
    Ok(Verified {
        // ASCII, checked above.
        webhook_id: Some(String::from_utf8_lossy(id).into_owned()),
    })
}

/// A hex signature: lower case only, so each MAC has one spelling (as with base64, whose
/// decoder takes only the canonical one) and changing any byte of it is a refusal.
fn lower_hex(s: &str) -> Result<Vec<u8>, Rejection> {
    if s.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(Rejection::Malformed);
    }
    decode_hex(s).ok_or(Rejection::Malformed)
}

fn paytabs(secrets: &[Secret], headers: &[Header], body: &[u8]) -> Result<Verified, Rejection> {
    let header = single(headers, "signature")?.ok_or(Rejection::Missing)?;
    let signature = lower_hex(header)?;
    any_secret(
        secrets,
        |s| vec![s.expose().as_bytes().to_vec()],
        &[body],
        &[signature],
    )?;
    Ok(Verified { webhook_id: None })
}

fn generic(
    scheme: &HmacScheme,
    secrets: &[Secret],
    headers: &[Header],
    body: &[u8],
    check: Check,
) -> Result<Verified, Rejection> {
    let header = single(headers, &scheme.signature_header)?.ok_or(Rejection::Missing)?;
    let encoded = match &scheme.prefix {
        Some(prefix) => header
            .strip_prefix(prefix.as_str())
            .ok_or(Rejection::Malformed)?,
        None => header,
    };
    let signature = match scheme.encoding {
        HmacEncoding::Hex => lower_hex(encoded)?,
        HmacEncoding::Base64 => STANDARD.decode(encoded).map_err(|_| Rejection::Malformed)?,
    };
    let keys = |s: &Secret| vec![s.expose().as_bytes().to_vec()];
    match scheme.message {
        HmacMessage::Body => {
            any_secret(secrets, keys, &[body], &[signature])?;
        }
        HmacMessage::TimestampDotBody => {
            // Only a signed timestamp says anything about age; a platform that signs the body
            // alone gets no staleness check even if it sends a time.
            let name = scheme
                .timestamp_header
                .as_deref()
                .ok_or(Rejection::Malformed)?;
            let timestamp = required(headers, name)?;
            let t = parse_timestamp(timestamp)?;
            any_secret(
                secrets,
                keys,
                &[timestamp.as_bytes(), b".", body],
                &[signature],
            )?;
            fresh(t, check)?;
        }
    }
    Ok(Verified { webhook_id: None })
}

/// Lower- or upper-case hex of a whole, non-zero number of bytes.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    hex::decode(s).ok().filter(|b| !b.is_empty())
}

/// Lower-case hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

/// How the SDKs' own parsers read what they are given, on ASCII (anything else is refused
/// before these are asked). Each returns `None` where its SDK would fail, or where this
/// module refuses to follow it (noted on each).
mod sdk {
    use subtle::ConstantTimeEq;

    /// The whitespace python's `int()`/`float()` strip and node's `parseInt` skips, on ASCII:
    /// tab, line feed, vertical tab, form feed, carriage return, space.
    fn number_space(b: u8) -> bool {
        matches!(b, b'\t'..=b'\r' | b' ')
    }

    /// What python's `str.split()` splits on, on ASCII: the above and 0x1c-0x1f.
    fn split_space(b: u8) -> bool {
        number_space(b) | matches!(b, 0x1c..=0x1f)
    }

    /// Integers both languages hold exactly (node's numbers are doubles).
    const EXACT: i128 = 1 << 53;

    fn trim(s: &[u8]) -> &[u8] {
        let start = s.iter().position(|&b| !number_space(b)).unwrap_or(s.len());
        let end = s
            .iter()
            .rposition(|&b| !number_space(b))
            .map_or(start, |i| i + 1);
        &s[start..end]
    }

    /// `(negative, rest)` after an optional sign.
    fn sign(s: &[u8]) -> (bool, &[u8]) {
        match s.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, s),
        }
    }

    /// Python's `digit (["_"] digit)*` (PEP 515), the digits without the underscores.
    fn py_digits(s: &[u8]) -> Option<Vec<u8>> {
        if s.first().is_none_or(|b| !b.is_ascii_digit()) || s.last() == Some(&b'_') {
            return None;
        }
        let mut out = Vec::with_capacity(s.len());
        let mut underscore = false;
        for &b in s {
            match b {
                b'0'..=b'9' => {
                    out.push(b);
                    underscore = false;
                }
                b'_' if !underscore => underscore = true,
                _ => return None,
            }
        }
        Some(out)
    }

    fn value(negative: bool, digits: &[u8]) -> Option<i64> {
        let mut v: i128 = 0;
        for &d in digits {
            v = v * 10 + i128::from(d - b'0');
            if v > EXACT {
                return None;
            }
        }
        i64::try_from(if negative { -v } else { v }).ok()
    }

    /// python `int(s)` (base 10), which refuses more than 4 300 digits
    /// (`sys.int_info.default_max_str_digits`). `None` also past 2^53.
    pub fn py_int(s: &[u8]) -> Option<i64> {
        if !s.is_ascii() {
            return None;
        }
        let (negative, rest) = sign(trim(s));
        let digits = py_digits(rest)?;
        if digits.len() > 4300 {
            return None;
        }
        value(negative, &digits)
    }

    /// node `parseInt(s, 10)`: leading whitespace, a sign, the longest run of digits; the rest
    /// is ignored. `None` for NaN, and past 2^53.
    pub fn js_parse_int(s: &[u8]) -> Option<i64> {
        if !s.is_ascii() {
            return None;
        }
        let start = s.iter().position(|&b| !number_space(b)).unwrap_or(s.len());
        let (negative, rest) = sign(&s[start..]);
        let end = rest
            .iter()
            .position(|b| !b.is_ascii_digit())
            .unwrap_or(rest.len());
        if end == 0 {
            return None;
        }
        value(negative, &rest[..end])
    }

    /// python `float(s)` for finite decimal numbers (underscores, fraction and exponent as
    /// python takes them); `None` where python raises, and for `inf`/`nan`, which no verifier
    /// accepts as a time.
    pub fn py_float(s: &[u8]) -> Option<f64> {
        if !s.is_ascii() {
            return None;
        }
        let (negative, rest) = sign(trim(s));
        let (mantissa, exponent) = match rest.iter().position(|&b| b == b'e' || b == b'E') {
            Some(i) => (&rest[..i], Some(&rest[i + 1..])),
            None => (rest, None),
        };
        let (int_part, frac_part) = match mantissa.iter().position(|&b| b == b'.') {
            Some(i) => (&mantissa[..i], Some(&mantissa[i + 1..])),
            None => (mantissa, None),
        };
        let int_digits = if int_part.is_empty() {
            Vec::new()
        } else {
            py_digits(int_part)?
        };
        let frac_digits = match frac_part {
            None | Some([]) => Vec::new(),
            Some(f) => py_digits(f)?,
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return None;
        }
        let mut text = String::with_capacity(s.len() + 4);
        if negative {
            text.push('-');
        }
        text.push_str(std::str::from_utf8(&int_digits).ok()?);
        text.push('.');
        text.push_str(std::str::from_utf8(&frac_digits).ok()?);
        text.push('0');
        if let Some(exponent) = exponent {
            let (negative, digits) = sign(exponent);
            text.push('e');
            if negative {
                text.push('-');
            }
            text.push_str(std::str::from_utf8(&py_digits(digits)?).ok()?);
        }
        // Correctly rounded, as python's is.
        text.parse::<f64>().ok().filter(|f| f.is_finite())
    }

    /// python `datetime.fromtimestamp(f, timezone.utc)`: whole seconds and microseconds, the
    /// fraction rounded half to even (CPython's `_PyTime_DoubleToDenominator`); `None` outside
    /// the years 1-9999, where python raises.
    pub fn py_fromtimestamp(f: f64) -> Option<(i64, u32)> {
        const MIN: f64 = -62_135_596_800.0; // 0001-01-01T00:00:00Z
        const MAX: f64 = 253_402_300_799.0; // 9999-12-31T23:59:59Z
        let mut int_part = f.trunc();
        let mut micros = ((f - int_part) * 1e6).round_ties_even();
        if micros >= 1e6 {
            micros -= 1e6;
            int_part += 1.0;
        } else if micros < 0.0 {
            micros += 1e6;
            int_part -= 1.0;
        }
        if !(MIN..=MAX).contains(&int_part) {
            return None;
        }
        // In range, so exact.
        Some((int_part as i64, micros as u32))
    }

    /// Whether a `webhook-signature` has an entry whose version (the text before its first
    /// `,`) is `v1`.
    pub fn has_v1_entry(header: &[u8]) -> bool {
        header
            .split(|&b| b == b' ')
            .any(|entry| entry.split(|&b| b == b',').next() == Some(b"v1"))
    }

    /// The standardwebhooks node verifier: an entry (split on single spaces) whose
    /// `split(",")` gives `v1` and exactly the expected base64 text.
    pub fn node_standard(header: &[u8], expected: &str) -> bool {
        header.split(|&b| b == b' ').any(|entry| {
            let mut parts = entry.split(|&b| b == b',');
            parts.next() == Some(b"v1")
                && parts
                    .next()
                    .is_some_and(|sig| bool::from(sig.ct_eq(expected.as_bytes())))
        })
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Python {
        Matches,
        NoMatch,
        Raises,
    }

    /// The standardwebhooks python verifier, entry by entry until its first match: an entry
    /// that does not unpack into `(version, signature)`, or a `v1` signature its lenient
    /// base64 decoder rejects, raises. `expected: None` looks only for what raises.
    pub fn python_standard(header: &[u8], expected: Option<&[u8]>) -> Python {
        for entry in header.split(|&b| b == b' ') {
            let mut parts = entry.split(|&b| b == b',');
            let (Some(version), Some(signature), None) = (parts.next(), parts.next(), parts.next())
            else {
                return Python::Raises;
            };
            if version != b"v1" {
                continue;
            }
            let Some(decoded) = b64decode(signature, false) else {
                return Python::Raises;
            };
            if expected.is_some_and(|e| bool::from(decoded.ct_eq(e))) {
                return Python::Matches;
            }
        }
        Python::NoMatch
    }

    /// polar-sdk 1.x: entries split on whitespace runs, `partition(",")`, a `v1` signature
    /// decoded strictly (an entry that fails is skipped). An entry with a byte outside ASCII
    /// is skipped too: python would split it further on Unicode whitespace, in a way that
    /// depends on how the framework decoded the header.
    pub fn polar_v1(header: &[u8], expected: &[u8]) -> bool {
        header
            .split(|&b| split_space(b))
            .filter(|entry| !entry.is_empty() && entry.is_ascii())
            .any(|entry| {
                let Some(comma) = entry.iter().position(|&b| b == b',') else {
                    return false;
                };
                &entry[..comma] == b"v1"
                    && b64decode(&entry[comma + 1..], true)
                        .is_some_and(|decoded| bool::from(decoded.ct_eq(expected)))
            })
    }

    /// python `base64.b64decode(s)` (`strict: false`) or `b64decode(s, validate=True)`
    /// (`strict: true`), following CPython's `binascii.a2b_base64`: the lenient decoder skips
    /// characters outside the alphabet and stops at the padding that completes a quantum;
    /// the strict one refuses them, leading or discontinuous padding, and anything after the
    /// padding. Neither checks the unused bits of the last character. A string outside ASCII
    /// raises before decoding.
    pub fn b64decode(s: &[u8], strict: bool) -> Option<Vec<u8>> {
        if !s.is_ascii() || (strict && s.first() == Some(&b'=')) {
            return None;
        }
        let mut out = Vec::with_capacity(s.len() / 4 * 3 + 3);
        let (mut quad_pos, mut left, mut pads) = (0u8, 0u8, 0u8);
        let mut padding_started = false;
        for (i, &c) in s.iter().enumerate() {
            if c == b'=' {
                padding_started = true;
                if quad_pos >= 2 {
                    pads += 1;
                    if quad_pos + pads >= 4 {
                        if strict && i + 1 < s.len() {
                            return None;
                        }
                        return Some(out);
                    }
                }
                continue;
            }
            let v = match c {
                b'A'..=b'Z' => c - b'A',
                b'a'..=b'z' => c - b'a' + 26,
                b'0'..=b'9' => c - b'0' + 52,
                b'+' => 62,
                b'/' => 63,
                _ if strict => return None,
                _ => continue,
            };
            if strict && padding_started {
                return None;
            }
            pads = 0;
            match quad_pos {
                0 => {
                    quad_pos = 1;
                    left = v;
                }
                1 => {
                    quad_pos = 2;
                    out.push((left << 2) | (v >> 4));
                    left = v & 0x0f;
                }
                2 => {
                    quad_pos = 3;
                    out.push((left << 4) | (v >> 2));
                    left = v & 0x03;
                }
                _ => {
                    quad_pos = 0;
                    out.push((left << 6) | v);
                    left = 0;
                }
            }
        }
        (quad_pos == 0).then_some(out)
    }
}

/// Signs like a provider would, for the sandbox's deliveries and for tests.
pub mod sign {
    use super::*;

    fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        super::digest(key, parts).expect("HMAC takes any key length")
    }

    /// The `Stripe-Signature` value for `body` signed at `t`.
    pub fn stripe(secret: &str, t: i64, body: &[u8]) -> String {
        let t = t.to_string();
        format!(
            "t={t},v1={}",
            encode_hex(&mac(secret.as_bytes(), &[t.as_bytes(), b".", body]))
        )
    }

    /// The Standard Webhooks headers (`webhook-id`, `webhook-timestamp`,
    /// `webhook-signature`) for `body`, keyed with the decoded `whsec_` secret.
    pub fn standard(secret: &str, id: &str, t: i64, body: &[u8]) -> [Header; 3] {
        standard_with(&Secret::new(secret), id, t, body).expect("a base64 whsec_ secret")
    }

    /// As [`standard`], for a secret that may not be a `whsec_` key (an operator's override):
    /// `None` when it gives no key, so the caller reports it instead of panicking.
    pub fn standard_with(secret: &Secret, id: &str, t: i64, body: &[u8]) -> Option<[Header; 3]> {
        let key = decoded_key(secret)?;
        Some(standard_keyed(&key, id, t, body))
    }

    /// The Standard Webhooks headers keyed with `key` itself (Polar's SDKs key with the
    /// secret string's bytes).
    pub fn standard_keyed(key: &[u8], id: &str, t: i64, body: &[u8]) -> [Header; 3] {
        let t = t.to_string();
        let signature = mac(key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]);
        [
            Header::new("webhook-id", id),
            Header::new("webhook-timestamp", t.as_str()),
            Header::new(
                "webhook-signature",
                format!("v1,{}", STANDARD.encode(signature)),
            ),
        ]
    }

    /// The hex HMAC-SHA256 of `body` (PayTabs' `signature`; generic HMAC platforms).
    pub fn body_hex(secret: &str, body: &[u8]) -> String {
        encode_hex(&mac(secret.as_bytes(), &[body]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_767_225_630;
    const CHECK: Check = Check {
        now: NOW,
        tolerance_secs: DEFAULT_TOLERANCE_SECS,
    };
    const BODY: &[u8] = br#"{"id":"evt_1","type":"checkout.session.completed","livemode":false}"#;
    const WHSEC: &str = "whsec_CIDVmpcN1wy5sTTCIMm7V5T3QOHMbcGZgb+aVYruOUo=";

    fn secrets(s: &[&str]) -> Vec<Secret> {
        s.iter().map(|s| Secret::new(*s)).collect()
    }

    fn stripe_at(t: i64) -> Vec<Header> {
        vec![Header::new(
            "Stripe-Signature",
            sign::stripe("whsec_test", t, BODY),
        )]
    }

    #[test]
    fn stripe_checks_only_the_age_and_standard_webhooks_both_ways() {
        let s = secrets(&["whsec_test"]);
        let v = |t| verify(Scheme::Stripe, &s, &stripe_at(t), BODY, CHECK);
        assert!(v(NOW - 300).is_ok(), "age 300 accepted");
        assert_eq!(v(NOW - 301), Err(Rejection::Stale), "age 301 rejected");
        assert!(v(NOW + 301).is_ok(), "the future is not Stripe's concern");
        assert!(v(NOW + 86_400 * 365).is_ok());
        let wide = Check {
            now: NOW,
            tolerance_secs: 3600,
        };
        assert!(verify(Scheme::Stripe, &s, &stripe_at(NOW - 3000), BODY, wide).is_ok());

        let s = secrets(&[WHSEC]);
        let v = |t| {
            let h = sign::standard(WHSEC, "msg_1", t, BODY);
            verify(Scheme::StandardWebhooks, &s, &h, BODY, CHECK)
        };
        assert!(v(NOW - 300).is_ok());
        assert!(v(NOW + 300).is_ok());
        assert_eq!(v(NOW - 301), Err(Rejection::Stale));
        assert_eq!(v(NOW + 301), Err(Rejection::Stale), "from the future");
    }

    #[test]
    fn any_active_secret_verifies() {
        let headers = stripe_at(NOW);
        let rotated = secrets(&["whsec_new", "whsec_test"]);
        assert!(verify(Scheme::Stripe, &rotated, &headers, BODY, CHECK).is_ok());
        let gone = secrets(&["whsec_new"]);
        assert_eq!(
            verify(Scheme::Stripe, &gone, &headers, BODY, CHECK),
            Err(Rejection::Mismatch)
        );
        // No secret at all verifies nothing.
        assert_eq!(
            verify(Scheme::Stripe, &[], &headers, BODY, CHECK),
            Err(Rejection::Mismatch)
        );
        let standard = sign::standard(WHSEC, "msg_1", NOW, BODY);
        assert_eq!(
            verify(Scheme::StandardWebhooks, &[], &standard, BODY, CHECK),
            Err(Rejection::Mismatch)
        );
    }

    #[test]
    fn stale_is_said_only_of_real_signatures() {
        let forged = vec![Header::new(
            "stripe-signature",
            sign::stripe("whsec_other", NOW - 1000, BODY),
        )];
        assert_eq!(
            verify(
                Scheme::Stripe,
                &secrets(&["whsec_test"]),
                &forged,
                BODY,
                CHECK
            ),
            Err(Rejection::Mismatch)
        );
        let forged = sign::standard("whsec_MDEyMzQ1Njc4OQ==", "msg_1", NOW + 1000, BODY);
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &secrets(&[WHSEC]),
                &forged,
                BODY,
                CHECK
            ),
            Err(Rejection::Mismatch)
        );
    }

    #[test]
    fn header_names_are_case_insensitive_and_repeats_are_refused() {
        let s = secrets(&["whsec_test"]);
        let value = sign::stripe("whsec_test", NOW, BODY);
        for name in ["stripe-signature", "STRIPE-SIGNATURE", "Stripe-Signature"] {
            let h = vec![
                Header::new("x-other", "1"),
                Header::new(name, value.as_str()),
            ];
            assert!(
                verify(Scheme::Stripe, &s, &h, BODY, CHECK).is_ok(),
                "{name}"
            );
        }
        let twice = vec![
            Header::new("stripe-signature", value.as_str()),
            Header::new("Stripe-Signature", value.as_str()),
        ];
        assert_eq!(
            verify(Scheme::Stripe, &s, &twice, BODY, CHECK),
            Err(Rejection::Malformed)
        );
        let not_utf8 = vec![Header::new("stripe-signature", vec![0xff, 0xfe])];
        assert_eq!(
            verify(Scheme::Stripe, &s, &not_utf8, BODY, CHECK),
            Err(Rejection::Malformed)
        );
        let mut h = sign::standard(WHSEC, "msg_1", NOW, BODY).to_vec();
        h.push(Header::new("Webhook-Id", "msg_2"));
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &secrets(&[WHSEC]),
                &h,
                BODY,
                CHECK
            ),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn stripe_headers_that_are_not_in_format() {
        let s = secrets(&["whsec_test"]);
        let good = sign::stripe("whsec_test", NOW, BODY);
        let sig = good.split_once(",v1=").unwrap().1;
        for (value, expected) in [
            (format!("t={NOW}"), Rejection::Malformed),
            (format!("v1={sig}"), Rejection::Malformed),
            (format!("t=abc,v1={sig}"), Rejection::Malformed),
            (
                format!("t={NOW},t={},v1={sig}", NOW + 1),
                Rejection::Malformed,
            ),
            (format!("t={NOW},v1"), Rejection::Malformed),
            (format!("t,t={NOW},v1={sig}"), Rejection::Malformed),
            (String::new(), Rejection::Malformed),
            (format!("t={NOW},v0={sig}"), Rejection::Malformed),
            (format!("t={NOW},v1=zz"), Rejection::Mismatch),
            (format!("t={NOW},v1={}", &sig[..62]), Rejection::Mismatch),
        ] {
            let h = vec![Header::new("stripe-signature", value.as_str())];
            assert_eq!(
                verify(Scheme::Stripe, &s, &h, BODY, CHECK),
                Err(expected),
                "{value:?}"
            );
        }
        assert_eq!(
            verify(Scheme::Stripe, &s, &[], BODY, CHECK),
            Err(Rejection::Missing)
        );
    }

    #[test]
    fn standard_webhooks_and_polar_keys() {
        let headers = sign::standard(WHSEC, "msg_1", NOW, BODY);
        let s = secrets(&[WHSEC]);
        assert_eq!(
            verify(Scheme::StandardWebhooks, &s, &headers, BODY, CHECK)
                .unwrap()
                .webhook_id
                .as_deref(),
            Some("msg_1")
        );
        // Polar accepts the decoded key too.
        assert!(verify(Scheme::Polar, &s, &headers, BODY, CHECK).is_ok());
        // The sandbox never accepts the raw-bytes key.
        let raw = sign::standard_keyed(WHSEC.as_bytes(), "msg_1", NOW, BODY);
        assert!(verify(Scheme::Polar, &s, &raw, BODY, CHECK).is_ok());
        assert_eq!(
            verify(Scheme::StandardWebhooks, &s, &raw, BODY, CHECK),
            Err(Rejection::Mismatch)
        );
        // A secret that is not base64 gives the sandbox no key: nothing verifies.
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &secrets(&["whsec_!!"]),
                &headers,
                BODY,
                CHECK
            ),
            Err(Rejection::Mismatch)
        );
    }

    #[test]
    fn standard_webhooks_headers_that_are_not_in_format() {
        let s = secrets(&[WHSEC]);
        let good = sign::standard(WHSEC, "msg_1", NOW, BODY);
        let v = |h: &[Header]| verify(Scheme::StandardWebhooks, &s, h, BODY, CHECK);
        assert_eq!(v(&good[..2]), Err(Rejection::Missing));
        assert_eq!(v(&good[1..]), Err(Rejection::Malformed), "no webhook-id");
        assert_eq!(
            v(&[good[0].clone(), good[2].clone()]),
            Err(Rejection::Malformed),
            "no timestamp"
        );
        for (bad, reason) in [
            ("v1:abc", Rejection::Malformed),
            ("v2,abcd", Rejection::Malformed),
            ("", Rejection::Malformed),
            ("v1,abc", Rejection::Malformed),
            // python's lenient decoder makes nothing of it, without raising.
            ("v1,***", Rejection::Mismatch),
        ] {
            let mut h = good.to_vec();
            h[2] = Header::new("webhook-signature", bad);
            assert_eq!(v(&h), Err(reason), "{bad:?}");
        }
        // A later version beside a good v1 is ignored.
        let mut h = good.to_vec();
        let sig = std::str::from_utf8(&good[2].value).unwrap().to_owned();
        h[2] = Header::new("webhook-signature", format!("v1a,xyz {sig}"));
        assert!(v(&h).is_ok());
        for (name, value) in [("webhook-id", ""), ("webhook-timestamp", "")] {
            let h: Vec<Header> = good
                .iter()
                .map(|g| {
                    if g.name == name {
                        Header::new(name, value)
                    } else {
                        g.clone()
                    }
                })
                .collect();
            assert_eq!(v(&h), Err(Rejection::Malformed), "empty {name}");
        }
    }

    #[test]
    fn paytabs_signs_the_body_alone() {
        let s = secrets(&["SJNxxxx-server-key"]);
        let sig = sign::body_hex("SJNxxxx-server-key", BODY);
        let h = vec![Header::new("signature", sig.as_str())];
        assert!(verify(Scheme::PayTabs, &s, &h, BODY, CHECK).is_ok());
        // One spelling per MAC: lower-case hex.
        let upper = vec![Header::new("Signature", sig.to_uppercase())];
        assert_eq!(
            verify(Scheme::PayTabs, &s, &upper, BODY, CHECK),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            verify(Scheme::PayTabs, &s, &h, b"{}", CHECK),
            Err(Rejection::Mismatch)
        );
        assert_eq!(
            verify(Scheme::PayTabs, &s, &[], BODY, CHECK),
            Err(Rejection::Missing)
        );
        let bad = vec![Header::new("signature", "not hex")];
        assert_eq!(
            verify(Scheme::PayTabs, &s, &bad, BODY, CHECK),
            Err(Rejection::Malformed)
        );
    }

    #[test]
    fn generic_hmac_as_configured() {
        let s = secrets(&["shh"]);
        let body_hex = HmacScheme {
            signature_header: "x-hub-signature-256".into(),
            timestamp_header: None,
            message: HmacMessage::Body,
            encoding: HmacEncoding::Hex,
            prefix: Some("sha256=".into()),
        };
        let sig = sign::body_hex("shh", BODY);
        let h = vec![Header::new("X-Hub-Signature-256", format!("sha256={sig}"))];
        assert!(verify(Scheme::Hmac(&body_hex), &s, &h, BODY, CHECK).is_ok());
        let unprefixed = vec![Header::new("x-hub-signature-256", sig.as_str())];
        assert_eq!(
            verify(Scheme::Hmac(&body_hex), &s, &unprefixed, BODY, CHECK),
            Err(Rejection::Malformed)
        );
        assert_eq!(
            verify(Scheme::Hmac(&body_hex), &s, &[], BODY, CHECK),
            Err(Rejection::Missing)
        );

        let timed = HmacScheme {
            signature_header: "x-signature".into(),
            timestamp_header: Some("x-timestamp".into()),
            message: HmacMessage::TimestampDotBody,
            encoding: HmacEncoding::Base64,
            prefix: None,
        };
        let signed_at = |t: i64| {
            let mac = digest(b"shh", &[format!("{t}.").as_bytes(), BODY]).unwrap();
            vec![
                Header::new("x-timestamp", t.to_string()),
                Header::new("x-signature", STANDARD.encode(mac)),
            ]
        };
        assert!(verify(Scheme::Hmac(&timed), &s, &signed_at(NOW), BODY, CHECK).is_ok());
        assert_eq!(
            verify(Scheme::Hmac(&timed), &s, &signed_at(NOW - 301), BODY, CHECK),
            Err(Rejection::Stale)
        );
        assert_eq!(
            verify(Scheme::Hmac(&timed), &s, &signed_at(NOW)[1..], BODY, CHECK),
            Err(Rejection::Malformed),
            "no timestamp header"
        );
    }

    #[test]
    fn every_rejection_has_its_own_label() {
        let labels: std::collections::BTreeSet<_> =
            Rejection::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(labels.len(), Rejection::ALL.len());
        assert!(labels.contains("unparseable"));
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(decode_hex("00ff10Ab"), Some(vec![0, 255, 16, 171]));
        assert_eq!(encode_hex(&[0, 255, 16, 171]), "00ff10ab");
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex(""), None);
        assert_eq!(decode_hex("0g"), None);
    }

    /// The emulated parsers against what CPython 3.11 and node 20 answer (each expectation
    /// was checked with the real interpreters).
    #[test]
    fn the_sdk_parsers_answer_as_python_and_node_do() {
        use sdk::*;
        // int(): whitespace, a sign, underscores between digits; nothing else.
        assert_eq!(py_int(b" +0012\t"), Some(12));
        assert_eq!(py_int(b"1_767"), Some(1767));
        for bad in [
            &b"1__7"[..],
            b"_1",
            b"1_",
            b"1.0",
            b"12abc",
            b"",
            b"0x10",
            b"\x1c5",
        ] {
            assert_eq!(py_int(bad), None, "{bad:?}");
        }
        assert_eq!(py_int(&[b'0'; 4301]), None, "over python's 4 300 digits");
        // parseInt(s, 10): leading whitespace, a sign, the digits that follow.
        assert_eq!(js_parse_int(b" +12abc"), Some(12));
        assert_eq!(js_parse_int(b"1_767"), Some(1));
        assert_eq!(js_parse_int(b"-0"), Some(0));
        assert_eq!(js_parse_int(b"0x10"), Some(0));
        for nan in [&b"abc"[..], b"", b"\x1c5", b"+ 5", b".5"] {
            assert_eq!(js_parse_int(nan), None, "{nan:?}");
        }
        // float().
        assert_eq!(py_float(b" 1767225600.5 "), Some(1_767_225_600.5));
        assert_eq!(py_float(b"5."), Some(5.0));
        assert_eq!(py_float(b".5"), Some(0.5));
        assert_eq!(py_float(b"1_0.5e1_0"), Some(105_000_000_000.0));
        for bad in [&b"."[..], b"inf", b"nan", b"1e", b"1__0", b"5._5", b"1e999"] {
            assert_eq!(py_float(bad), None, "{bad:?}");
        }
        // datetime.fromtimestamp: microseconds rounded half to even, carried into seconds.
        assert_eq!(
            py_fromtimestamp(1_767_225_600.999_999_5),
            Some((1_767_225_601, 0))
        );
        assert_eq!(
            py_fromtimestamp(1_767_225_600.999_999_4),
            Some((1_767_225_600, 999_999))
        );
        assert_eq!(py_fromtimestamp(-5.5), Some((-6, 500_000)));
        assert_eq!(py_fromtimestamp(253_402_300_799.999_999_6), None);
        // b64decode: lenient skips what is not base64 and stops at the padding.
        assert_eq!(b64decode(b"***", false), Some(vec![]));
        assert_eq!(b64decode(b"YQ==YQ==", false), Some(b"a".to_vec()));
        assert_eq!(b64decode(b"Y=Q==", false), Some(b"a".to_vec()));
        assert_eq!(b64decode(b"YQ", false), None);
        assert_eq!(b64decode(b"abc", false), None);
        assert_eq!(b64decode("YQ==é".as_bytes(), false), None);
        // validate=True.
        assert_eq!(b64decode(b"YQ==", true), Some(b"a".to_vec()));
        assert_eq!(b64decode(b"YR==", true), Some(b"a".to_vec()), "unused bits");
        assert_eq!(b64decode(b"AAAA=", true), Some(vec![0, 0, 0]));
        for bad in [&b"YQ==\n"[..], b"YQ", b"YQ=A", b"=YQ=", b"YQ==YQ=="] {
            assert_eq!(b64decode(bad, true), None, "{bad:?}");
        }
    }
}
