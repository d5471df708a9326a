//! Webhook signature schemes, verified on the raw request bytes before anything is parsed.
//!
//! Every scheme is an HMAC-SHA256 over some message (the body, or a timestamp and id joined to
//! it) keyed with the account's webhook secret. A delivery is accepted when one of the
//! signatures it carries matches the MAC under one of the account's active secrets (so secrets
//! rotate without downtime), compared in constant time (`Mac::verify_slice`), and, where the
//! scheme signs a timestamp, when that timestamp is within the tolerance of now, either way.
//! The signature is checked before the timestamp, so `stale` is only ever said of a delivery
//! that was signed with a real secret.
//!
//! Everything fails closed: a header that is absent, repeated, not UTF-8 or not in the
//! scheme's format, a secret that cannot make a key, an account with no secret, all end in a
//! [`Rejection`]; no path returns "verified" without a MAC having matched.
//!
//! Schemes (DESIGN.md §5; the cases in `tests/data/webhook-signatures.json` come from the
//! providers' own SDKs):
//!
//! - Stripe: `Stripe-Signature: t=<unix>,v1=<hex>[,v1=<hex>…][,v0=…]`, MAC over `{t}.{body}`
//!   keyed with the whole secret string (`whsec_` included); any `v1` may match, other
//!   versions are ignored. Stripe's SDKs check only the age; Coffer also refuses a timestamp
//!   more than the tolerance ahead.
//! - Standard Webhooks (the sandbox): `webhook-id`, `webhook-timestamp`, `webhook-signature`
//!   (a space-separated list of `v1,<base64>`), MAC over `{id}.{timestamp}.{body}` keyed with
//!   the base64 decoding of the secret after `whsec_`.
//! - Polar: Standard Webhooks headers and message; its SDKs key the MAC with the secret
//!   string's own bytes, and polar-sdk 1.x also with the decoded key, so both are tried.
//! - PayTabs: `signature: <hex>`, MAC over the body keyed with the server key. No timestamp,
//!   so no staleness check is possible; the inbox's de-duplication and the transaction query
//!   before anything is applied are the defence against replays.
//! - Generic HMAC: header names, message, encoding and prefix from [`HmacScheme`].

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::domain::account::{HmacEncoding, HmacMessage, HmacScheme, ProviderKind, Secret};

type HmacSha256 = Hmac<Sha256>;

/// The default tolerance between a signed timestamp and now, either way, in seconds.
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
    /// A header the scheme needs is absent, repeated or not in its format.
    Malformed,
    /// No signature matches any active secret (or the account has no usable secret).
    Mismatch,
    /// The signed timestamp is outside the tolerance.
    Stale,
    /// Verified, but the event's own livemode disagrees with the account's.
    Livemode,
}

impl Rejection {
    pub const ALL: [Rejection; 5] = [
        Rejection::Missing,
        Rejection::Malformed,
        Rejection::Mismatch,
        Rejection::Stale,
        Rejection::Livemode,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Missing => "missing",
            Rejection::Malformed => "malformed",
            Rejection::Mismatch => "mismatch",
            Rejection::Stale => "stale",
            Rejection::Livemode => "livemode",
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

impl<'a> Scheme<'a> {
    /// The scheme of a provider; `None` for an HMAC account without its scheme, which then
    /// verifies nothing.
    pub fn of(provider: ProviderKind, hmac: Option<&'a HmacScheme>) -> Option<Self> {
        Some(match provider {
            ProviderKind::Sandbox => Scheme::StandardWebhooks,
            ProviderKind::Stripe => Scheme::Stripe,
            ProviderKind::Polar => Scheme::Polar,
            ProviderKind::PayTabs => Scheme::PayTabs,
            ProviderKind::Hmac => Scheme::Hmac(hmac?),
        })
    }
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
    /// The largest accepted distance between a signed timestamp and `now`, either way.
    pub tolerance_secs: u64,
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

/// The value of the one header called `name` (case-insensitively): `None` when absent,
/// `Malformed` when repeated (which of two signatures to believe is not a question to answer)
/// or not UTF-8.
pub fn single<'h>(headers: &'h [Header], name: &str) -> Result<Option<&'h str>, Rejection> {
    let mut found = headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name));
    let Some(first) = found.next() else {
        return Ok(None);
    };
    if found.next().is_some() {
        return Err(Rejection::Malformed);
    }
    std::str::from_utf8(&first.value)
        .map(|v| Some(v.trim()))
        .map_err(|_| Rejection::Malformed)
}

fn required<'h>(headers: &'h [Header], name: &str) -> Result<&'h str, Rejection> {
    single(headers, name)?.ok_or(Rejection::Malformed)
}

/// A Unix timestamp in seconds: ASCII digits only, no sign, no fraction.
fn parse_timestamp(s: &str) -> Result<i64, Rejection> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Rejection::Malformed);
    }
    s.parse().map_err(|_| Rejection::Malformed)
}

fn fresh(timestamp: i64, check: Check) -> Result<(), Rejection> {
    if check.now.abs_diff(timestamp) <= check.tolerance_secs {
        Ok(())
    } else {
        Err(Rejection::Stale)
    }
}

/// Whether any of `signatures` is the MAC of the message made of `parts` under `key`,
/// compared in constant time. A key HMAC cannot take (none: HMAC takes any length) would
/// count as no match.
fn matches(key: &[u8], parts: &[&[u8]], signatures: &[Vec<u8>]) -> bool {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return false;
    };
    for part in parts {
        mac.update(part);
    }
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

fn stripe(
    secrets: &[Secret],
    headers: &[Header],
    body: &[u8],
    check: Check,
) -> Result<Verified, Rejection> {
    let header = single(headers, "stripe-signature")?.ok_or(Rejection::Missing)?;
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for item in header.split(',') {
        let (key, value) = item.trim().split_once('=').ok_or(Rejection::Malformed)?;
        match key {
            // Two timestamps leave it unclear which one was signed.
            "t" if timestamp.is_some() => return Err(Rejection::Malformed),
            "t" => timestamp = Some(value),
            "v1" => signatures.push(decode_hex(value).ok_or(Rejection::Malformed)?),
            // v0 (test-mode legacy) and any future scheme are not ours to check.
            _ => {}
        }
    }
    let (Some(timestamp), false) = (timestamp, signatures.is_empty()) else {
        return Err(Rejection::Malformed);
    };
    let t = parse_timestamp(timestamp)?;
    any_secret(
        secrets,
        |s| vec![s.expose().as_bytes().to_vec()],
        &[timestamp.as_bytes(), b".", body],
        &signatures,
    )?;
    fresh(t, check)?;
    Ok(Verified { webhook_id: None })
}

/// Which keys a Standard Webhooks secret gives.
#[derive(Debug, Clone, Copy)]
enum Keys {
    Decoded,
    RawAndDecoded,
}

/// The base64 decoding of a `whsec_` secret (or of the whole secret without the prefix, as
/// the Standard Webhooks libraries do); `None` if it is not base64 or decodes to nothing.
fn decoded_key(secret: &Secret) -> Option<Vec<u8>> {
    let s = secret.expose();
    let encoded = s.strip_prefix("whsec_").unwrap_or(s);
    STANDARD.decode(encoded).ok().filter(|k| !k.is_empty())
}

fn standard(
    secrets: &[Secret],
    headers: &[Header],
    body: &[u8],
    check: Check,
    keys: Keys,
) -> Result<Verified, Rejection> {
    let header = single(headers, "webhook-signature")?.ok_or(Rejection::Missing)?;
    let id = required(headers, "webhook-id")?;
    let timestamp = required(headers, "webhook-timestamp")?;
    if id.is_empty() {
        return Err(Rejection::Malformed);
    }
    let t = parse_timestamp(timestamp)?;
    let mut signatures = Vec::new();
    for entry in header.split_ascii_whitespace() {
        let (version, signature) = entry.split_once(',').ok_or(Rejection::Malformed)?;
        if version == "v1" {
            signatures.push(
                STANDARD
                    .decode(signature)
                    .map_err(|_| Rejection::Malformed)?,
            );
        }
        // v1a (asymmetric) and later versions are not ours to check.
    }
    if signatures.is_empty() {
        return Err(Rejection::Malformed);
    }
    any_secret(
        secrets,
        |s| match keys {
            Keys::Decoded => decoded_key(s).into_iter().collect(),
            Keys::RawAndDecoded => std::iter::once(s.expose().as_bytes().to_vec())
                .chain(decoded_key(s))
                .collect(),
        },
        &[id.as_bytes(), b".", timestamp.as_bytes(), b".", body],
        &signatures,
    )?;
    fresh(t, check)?;
    Ok(Verified {
        webhook_id: Some(id.to_owned()),
    })
}

fn paytabs(secrets: &[Secret], headers: &[Header], body: &[u8]) -> Result<Verified, Rejection> {
    let header = single(headers, "signature")?.ok_or(Rejection::Missing)?;
    let signature = decode_hex(header).ok_or(Rejection::Malformed)?;
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
        HmacEncoding::Hex => decode_hex(encoded),
        HmacEncoding::Base64 => STANDARD.decode(encoded).ok(),
    }
    .ok_or(Rejection::Malformed)?;
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

/// Lower- or upper-case hex of a whole number of bytes.
pub fn decode_hex(s: &str) -> Option<Vec<u8>> {
    fn nibble(b: u8) -> Option<u8> {
        match b {
            b'0'..=b'9' => Some(b - b'0'),
            b'a'..=b'f' => Some(b - b'a' + 10),
            b'A'..=b'F' => Some(b - b'A' + 10),
            _ => None,
        }
    }
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.len().is_multiple_of(2) {
        return None;
    }
    bytes
        .chunks(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

/// Lower-case hex.
pub fn encode_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize] as char);
        out.push(DIGITS[(b & 0xf) as usize] as char);
    }
    out
}

/// Signs like a provider would, for the sandbox's deliveries and for tests.
pub mod sign {
    use super::*;

    fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
        let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
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
        let t = t.to_string();
        let signature = mac(&key, &[id.as_bytes(), b".", t.as_bytes(), b".", body]);
        Some([
            Header::new("webhook-id", id),
            Header::new("webhook-timestamp", t.as_str()),
            Header::new(
                "webhook-signature",
                format!("v1,{}", STANDARD.encode(signature)),
            ),
        ])
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
    fn the_tolerance_is_inclusive_both_ways() {
        let s = secrets(&["whsec_test"]);
        let v = |t| verify(Scheme::Stripe, &s, &stripe_at(t), BODY, CHECK);
        assert!(v(NOW - 300).is_ok(), "age 300 accepted");
        assert_eq!(v(NOW - 301), Err(Rejection::Stale), "age 301 rejected");
        assert!(v(NOW + 300).is_ok());
        assert_eq!(v(NOW + 301), Err(Rejection::Stale), "from the future");
        let wide = Check {
            now: NOW,
            tolerance_secs: 3600,
        };
        assert!(verify(Scheme::Stripe, &s, &stripe_at(NOW - 3000), BODY, wide).is_ok());
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
            (format!("t=-{NOW},v1={sig}"), Rejection::Malformed),
            (format!("t={NOW},t={NOW},v1={sig}"), Rejection::Malformed),
            (format!("t={NOW},v1=zz"), Rejection::Malformed),
            (format!("t={NOW},v1"), Rejection::Malformed),
            (String::new(), Rejection::Malformed),
            (format!("t={NOW},v0={sig}"), Rejection::Malformed),
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
        let raw = {
            let t = NOW.to_string();
            let mut mac = HmacSha256::new_from_slice(WHSEC.as_bytes()).unwrap();
            mac.update(format!("msg_1.{t}.").as_bytes());
            mac.update(BODY);
            let sig = STANDARD.encode(mac.finalize().into_bytes());
            let mut h = headers.clone();
            h[2] = Header::new("webhook-signature", format!("v1,{sig}"));
            h
        };
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
        for bad in ["v1:abc", "v1,***", "v2,abcd", ""] {
            let mut h = good.to_vec();
            h[2] = Header::new("webhook-signature", bad);
            assert_eq!(v(&h), Err(Rejection::Malformed), "{bad:?}");
        }
        // A later version beside a good v1 is ignored.
        let mut h = good.to_vec();
        let sig = std::str::from_utf8(&good[2].value).unwrap().to_owned();
        h[2] = Header::new("webhook-signature", format!("v1a,xyz {sig}"));
        assert!(v(&h).is_ok());
    }

    #[test]
    fn paytabs_signs_the_body_alone() {
        let s = secrets(&["SJNxxxx-server-key"]);
        let sig = sign::body_hex("SJNxxxx-server-key", BODY);
        let h = vec![Header::new("signature", sig.as_str())];
        assert!(verify(Scheme::PayTabs, &s, &h, BODY, CHECK).is_ok());
        let upper = vec![Header::new("Signature", sig.to_uppercase())];
        assert!(verify(Scheme::PayTabs, &s, &upper, BODY, CHECK).is_ok());
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
            let mut mac = HmacSha256::new_from_slice(b"shh").unwrap();
            mac.update(format!("{t}.").as_bytes());
            mac.update(BODY);
            vec![
                Header::new("x-timestamp", t.to_string()),
                Header::new("x-signature", STANDARD.encode(mac.finalize().into_bytes())),
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
    fn an_hmac_account_without_its_scheme_has_no_scheme() {
        assert!(Scheme::of(ProviderKind::Hmac, None).is_none());
        assert!(Scheme::of(ProviderKind::Sandbox, None).is_some());
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(decode_hex("00ff10Ab"), Some(vec![0, 255, 16, 171]));
        assert_eq!(encode_hex(&[0, 255, 16, 171]), "00ff10ab");
        assert_eq!(decode_hex("abc"), None);
        assert_eq!(decode_hex(""), None);
        assert_eq!(decode_hex("0g"), None);
    }
}
