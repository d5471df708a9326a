//! The signature verifiers against the providers' own SDKs.
//!
//! - Every case of the shared vectors, `../shared/vectors/webhook-signatures.json` beside the
//!   repository (made with the SDKs), must come out as its `expected` says, with the clock
//!   pinned to the case's `now`. The file is read where it is, never copied; a checkout
//!   without it fails unless `COFFER_SKIP_SHARED_VECTORS=1` (CI always has it).
//! - One case for each edge where the SDKs' own parsing decides (`providers::signature`'s
//!   module doc lists the rules), named after what it shows.
//! - Properties of every scheme: a correctly signed delivery verifies, one changed byte of the
//!   body, the timestamp or the signature is a refusal, and nothing panics.

use std::path::PathBuf;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use coffer::domain::account::{HmacEncoding, HmacMessage, HmacScheme, Secret};
use coffer::providers::signature::{Check, Header, Rejection, Scheme, sign, verify};
use hmac::{Hmac, KeyInit, Mac};
use proptest::prelude::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The shared vectors, or `None` when they are absent and `COFFER_SKIP_SHARED_VECTORS=1`
/// says that is expected; absent otherwise is a failure, not a silent pass.
pub fn shared_vectors() -> Option<Value> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/vectors/webhook-signatures.json");
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(serde_json::from_str(&text).expect("the shared vectors are JSON")),
        Err(e) if std::env::var("COFFER_SKIP_SHARED_VECTORS").as_deref() == Ok("1") => {
            eprintln!(
                "skipped: {} ({e}), and COFFER_SKIP_SHARED_VECTORS=1",
                path.display()
            );
            None
        }
        Err(e) => panic!(
            "{} cannot be read ({e}): the signature vectors live in shared/ beside the \
             repository (CI always has it); set COFFER_SKIP_SHARED_VECTORS=1 to skip them \
             knowingly",
            path.display()
        ),
    }
}

#[test]
fn signature_vectors_agree_with_the_providers_sdks() {
    let Some(v) = shared_vectors() else { return };
    let cases = v["cases"].as_array().unwrap();
    assert!(cases.len() >= 21, "{} cases", cases.len());
    let mut seen = std::collections::BTreeMap::<&str, usize>::new();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let payload = case["payload"].as_str().unwrap().as_bytes();
        assert_eq!(
            coffer::providers::signature::encode_hex(&Sha256::digest(payload)),
            case["payload_sha256"].as_str().unwrap(),
            "{name}: payload"
        );
        let headers: Vec<Header> = case["headers"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| Header::new(k.as_str(), v.as_str().unwrap()))
            .collect();
        let group = name.split('/').next().unwrap();
        let scheme = match group {
            "stripe" => Scheme::Stripe,
            "standard_webhooks" => Scheme::StandardWebhooks,
            "polar" => Scheme::Polar,
            other => panic!("{name}: no scheme for the group {other:?}"),
        };
        *seen.entry(group).or_default() += 1;
        let check = Check {
            now: case["now"].as_i64().unwrap(),
            tolerance_secs: case["tolerance_s"].as_u64().unwrap(),
        };
        let secrets = [Secret::new(case["secret"].as_str().unwrap())];
        let got = verify(scheme, &secrets, &headers, payload, check);
        let expected = case["expected"].as_str().unwrap();
        match expected {
            "accept" => assert!(got.is_ok(), "{name}: expected accept, got {got:?}"),
            "reject" => {
                // And for the reason the case is named after.
                let reason = match name.rsplit('/').next().unwrap() {
                    "stale_timestamp" => Some(Rejection::Stale),
                    "malformed_header" => Some(Rejection::Malformed),
                    "wrong_secret" | "tampered_body" => Some(Rejection::Mismatch),
                    _ => None,
                };
                assert!(got.is_err(), "{name}: expected reject, got {got:?}");
                if let Some(reason) = reason {
                    assert_eq!(got, Err(reason), "{name}");
                }
            }
            other => panic!("{name}: unknown expectation {other:?}"),
        }
    }
    assert_eq!(seen.len(), 3, "{seen:?}");
}

// ---------------------------------------------------------------------------------------------
// The SDKs' edges, one by one.

const NOW: i64 = 1_767_225_630;
const T: i64 = 1_767_225_600;
const CHECK: Check = Check {
    now: NOW,
    tolerance_secs: 300,
};
const BODY: &[u8] = br#"{"id":"evt_1","type":"invoice.paid","livemode":false}"#;
const STRIPE: &str = "whsec_test_secret";
const WHSEC: &str = "whsec_CIDVmpcN1wy5sTTCIMm7V5T3QOHMbcGZgb+aVYruOUo=";
const POLAR: &str = "polar_whs_Yp3aSecretOfPolar";

fn mac(key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().to_vec()
}

/// The lower-case hex MAC Stripe sends for `{signed}.{body}`.
fn stripe_hex(signed: &str, body: &[u8]) -> String {
    hex::encode(mac(STRIPE.as_bytes(), &[signed.as_bytes(), b".", body]))
}

fn stripe(header: &str, body: &[u8]) -> Result<(), Rejection> {
    let h = [Header::new("Stripe-Signature", header)];
    verify(Scheme::Stripe, &[Secret::new(STRIPE)], &h, body, CHECK).map(drop)
}

fn good() -> String {
    stripe_hex(&T.to_string(), BODY)
}

/// Both SDKs check only the age (python `timestamp < time.time() - tolerance`, node
/// `timestampAge > tolerance`), so a timestamp from the future is accepted.
#[test]
fn stripe_accepts_a_timestamp_from_the_future() {
    for t in [NOW + 301, NOW + 86_400 * 365] {
        let sig = stripe_hex(&t.to_string(), BODY);
        assert_eq!(stripe(&format!("t={t},v1={sig}"), BODY), Ok(()), "{t}");
    }
    let t = NOW - 300;
    let sig = stripe_hex(&t.to_string(), BODY);
    assert_eq!(stripe(&format!("t={t},v1={sig}"), BODY), Ok(()), "age 300");
    let t = NOW - 301;
    let sig = stripe_hex(&t.to_string(), BODY);
    assert_eq!(
        stripe(&format!("t={t},v1={sig}"), BODY),
        Err(Rejection::Stale),
        "age 301"
    );
}

/// Both SDKs split on `,` and `=` and compare keys as split: ` v1=` is not the v1 scheme
/// and ` t=` not the timestamp.
#[test]
fn stripe_items_are_not_trimmed() {
    let sig = good();
    assert_eq!(
        stripe(&format!("t={T}, v1={sig}"), BODY),
        Err(Rejection::Malformed),
        "no v1 item"
    );
    assert_eq!(
        stripe(&format!("v1={sig}, t={T}"), BODY),
        Err(Rejection::Malformed),
        "no t item"
    );
    // A space inside the value is part of the value: not the hex.
    assert_eq!(
        stripe(&format!("t={T},v1= {sig}"), BODY),
        Err(Rejection::Mismatch)
    );
    // The number parsers skip the whitespace around t themselves (int(), parseInt).
    assert_eq!(stripe(&format!("t= {T} ,v1={sig}"), BODY), Ok(()));
}

/// Both SDKs compare the lower-case hex string they computed with each v1 as text.
#[test]
fn stripe_upper_case_hex_is_a_non_match() {
    let sig = good();
    assert_eq!(
        stripe(&format!("t={T},v1={}", sig.to_uppercase()), BODY),
        Err(Rejection::Mismatch)
    );
    assert_eq!(
        stripe(&format!("t={T},v1={},v1={sig}", sig.to_uppercase()), BODY),
        Ok(()),
        "any v1 may match"
    );
}

/// A v1 that is not hex is compared like any other and simply does not match (python
/// `secure_compare`, node `secureCompare`), so another v1 may still match.
#[test]
fn stripe_a_non_hex_v1_beside_a_matching_one_is_only_a_non_match() {
    let sig = good();
    assert_eq!(stripe(&format!("t={T},v1=zz,v1={sig}"), BODY), Ok(()));
    assert_eq!(stripe(&format!("t={T},v1={sig},v1=zz"), BODY), Ok(()));
    assert_eq!(
        stripe(&format!("t={T},v1=zz"), BODY),
        Err(Rejection::Mismatch)
    );
}

/// node's `secureCompare` throws on an empty or absent value (whichever v1 matched), python
/// indexes every v1's value (a bare `v1` raises) and `compare_digest` raises on non-ASCII text.
#[test]
fn stripe_an_empty_bare_or_non_ascii_v1_refuses_the_delivery() {
    let sig = good();
    for extra in ["v1=", "v1", "v1=é0"] {
        for header in [
            format!("t={T},{extra},v1={sig}"),
            format!("t={T},v1={sig},{extra}"),
        ] {
            assert_eq!(stripe(&header, BODY), Err(Rejection::Malformed), "{header}");
        }
    }
}

/// python signs `"%d.%s" % (int(t), payload)`, node `` `${parseInt(t)}.${payload}` ``: the
/// integer, not the header's text.
#[test]
fn stripe_signs_the_integer_both_sdks_parse() {
    let sig = good();
    for t in [
        format!("+{T}"),
        format!("0{T}"),
        format!("000{T}"),
        format!(" {T}"),
        format!("{T} "),
        format!("\t{T}"),
    ] {
        assert_eq!(stripe(&format!("t={t},v1={sig}"), BODY), Ok(()), "{t:?}");
        // Signed over the text instead, it is not what either SDK computes.
        if t != T.to_string() {
            let text = stripe_hex(&t, BODY);
            assert_eq!(
                stripe(&format!("t={t},v1={text}"), BODY),
                Err(Rejection::Mismatch),
                "{t:?}"
            );
        }
    }
}

/// Where python's `int()` and node's `parseInt(…, 10)` read different numbers (or python
/// raises), the SDKs would disagree: refused, whatever was signed.
#[test]
fn stripe_timestamps_the_sdks_read_differently_are_refused() {
    for t in [
        "1_767_225_600",        // int() 1767225600, parseInt 1
        "1767225600.0",         // int() raises, parseInt 1767225600
        "1767225600abc",        // int() raises
        "0x69556380",           // int() raises, parseInt 0
        "",                     // both fail
        "\u{1c}1767225600",     // int() raises, parseInt NaN
        "99999999999999999999", // past 2^53: node's number is not python's
    ] {
        for signed in [t.to_owned(), T.to_string(), "1".to_owned(), "0".to_owned()] {
            let sig = stripe_hex(&signed, BODY);
            assert_eq!(
                stripe(&format!("t={t},v1={sig}"), BODY),
                Err(Rejection::Malformed),
                "{t:?} signed as {signed:?}"
            );
        }
    }
}

/// `-1` is node's "no timestamp" (`details.timestamp === -1`).
#[test]
fn stripe_minus_one_is_nodes_no_timestamp() {
    let sig = stripe_hex("-1", BODY);
    assert_eq!(
        stripe(&format!("t=-1,v1={sig}"), BODY),
        Err(Rejection::Malformed)
    );
}

/// python reads the first `t` (and raises on any `t` without `=`), node the last: only a
/// header on which both read the same integer is accepted.
#[test]
fn stripe_a_repeated_t_must_read_the_same_in_both_sdks() {
    let sig = good();
    assert_eq!(stripe(&format!("t={T},t={T},v1={sig}"), BODY), Ok(()));
    assert_eq!(stripe(&format!("t={T},v1={sig},t=+{T}"), BODY), Ok(()));
    assert_eq!(
        stripe(&format!("t={T},t=1,t={T},v1={sig}"), BODY),
        Ok(()),
        "neither SDK reads a middle t"
    );
    for header in [
        format!("t={},t={T},v1={sig}", T + 1),
        format!("t={T},t={},v1={sig}", T + 1),
        format!("t=abc,t={T},v1={sig}"),
        format!("t={T},t=abc,v1={sig}"),
        format!("t,t={T},v1={sig}"),
    ] {
        assert_eq!(stripe(&header, BODY), Err(Rejection::Malformed), "{header}");
    }
}

/// A value is the text between the first `=` and the next (python `split("=", 2)[1]`, node
/// `split("=")[1]`).
#[test]
fn stripe_a_value_ends_at_the_next_equals_sign() {
    let sig = good();
    assert_eq!(stripe(&format!("t={T}=x,v1={sig}=junk"), BODY), Ok(()));
    assert_eq!(
        stripe(&format!("t={T},v1==={sig}"), BODY),
        Err(Rejection::Malformed),
        "an empty value"
    );
}

/// Bodies the two SDKs would sign differently: node decodes a Buffer with a `TextDecoder`
/// that drops a leading byte-order mark and replaces bad UTF-8, python decodes strictly
/// (`payload.decode("utf-8")`); node's verifier refuses an empty payload.
#[test]
fn stripe_bodies_the_sdks_sign_differently_are_refused() {
    for body in [&b""[..], b"\xEF\xBB\xBF{}", b"{\"a\":\"\xff\"}"] {
        let sig = stripe_hex(&T.to_string(), body);
        assert_eq!(
            stripe(&format!("t={T},v1={sig}"), body),
            Err(Rejection::Malformed),
            "{body:?}"
        );
    }
    let utf8 = "{\"name\":\"Zoë\"}".as_bytes();
    let sig = stripe_hex(&T.to_string(), utf8);
    assert_eq!(stripe(&format!("t={T},v1={sig}"), utf8), Ok(()));
}

fn standard_headers(id: &str, t: &str, signature: &str) -> Vec<Header> {
    vec![
        Header::new("webhook-id", id),
        Header::new("webhook-timestamp", t),
        Header::new("webhook-signature", signature),
    ]
}

/// The base64 MAC for `{id}.{signed}.{body}` under `key`.
fn standard_b64(key: &[u8], id: &str, signed: &str, body: &[u8]) -> String {
    STANDARD.encode(mac(
        key,
        &[id.as_bytes(), b".", signed.as_bytes(), b".", body],
    ))
}

fn sandbox_key() -> Vec<u8> {
    STANDARD.decode(&WHSEC[6..]).unwrap()
}

fn sandbox(t: &str, signature: &str, body: &[u8]) -> Result<(), Rejection> {
    let h = standard_headers("msg_1", t, signature);
    verify(
        Scheme::StandardWebhooks,
        &[Secret::new(WHSEC)],
        &h,
        body,
        CHECK,
    )
    .map(drop)
}

fn polar(t: &str, signature: &str, body: &[u8]) -> Result<(), Rejection> {
    let h = standard_headers("msg_1", t, signature);
    verify(Scheme::Polar, &[Secret::new(POLAR)], &h, body, CHECK).map(drop)
}

fn sandbox_sig(signed: i64) -> String {
    format!(
        "v1,{}",
        standard_b64(&sandbox_key(), "msg_1", &signed.to_string(), BODY)
    )
}

/// Both SDKs refuse a timestamp too old or too new (python compares datetimes, node
/// integers); python compares the fraction too, so `now + tolerance` and a half is too new.
#[test]
fn standard_webhooks_check_the_tolerance_both_ways() {
    for (t, ok) in [
        (NOW - 300, true),
        (NOW + 300, true),
        (NOW - 301, false),
        (NOW + 301, false),
    ] {
        let got = sandbox(&t.to_string(), &sandbox_sig(t), BODY);
        assert_eq!(got.is_ok(), ok, "{t}: {got:?}");
        if !ok {
            assert_eq!(got, Err(Rejection::Stale));
        }
    }
    let edge = NOW + 300;
    assert_eq!(
        sandbox(&format!("{edge}.5"), &sandbox_sig(edge), BODY),
        Err(Rejection::Stale),
        "python: now + 300.5 is too new"
    );
    let old = NOW - 300;
    assert_eq!(
        sandbox(&format!("{old}.5"), &sandbox_sig(old), BODY),
        Ok(()),
        "age 299.5"
    );
}

/// python `float()` then the floor of its datetime, node `parseInt(…, 10)`: a fraction is
/// read by both as the integer before it, and that integer is what is signed.
#[test]
fn standard_webhooks_read_a_fractional_timestamp_as_its_integer() {
    let sig = sandbox_sig(T);
    for t in [
        format!("{T}.5"),
        format!("{T}."),
        format!("{T}.0000001"),
        format!("+{T}"),
        format!("0{T}"),
        format!(" {T}"),
        format!("{T}\t"),
    ] {
        assert_eq!(sandbox(&t, &sig, BODY), Ok(()), "{t:?}");
        assert_eq!(polar(&t, &polar_sig(&t_int(&t)), BODY), Ok(()), "{t:?}");
    }
}

fn t_int(t: &str) -> String {
    t.trim()
        .trim_start_matches('+')
        .split('.')
        .next()
        .unwrap()
        .trim_start_matches('0')
        .to_owned()
}

fn polar_sig(signed: &str) -> String {
    format!(
        "v1,{}",
        standard_b64(POLAR.as_bytes(), "msg_1", signed, BODY)
    )
}

/// Where python's `float()` (and its microsecond rounding) and node's `parseInt` read
/// different integers, or one of them fails: refused, whatever was signed.
#[test]
fn standard_webhooks_timestamps_the_sdks_read_differently_are_refused() {
    for t in [
        "1_767_225_600",          // float() 1767225600.0, parseInt 1
        "1.7672256e9",            // float() 1767225600.0, parseInt 1
        "1767225600.9999996",     // python rounds to the next second, node does not
        "1767225600.99999999999", // float() is 1767225601.0
        "1767225600abc",          // float() raises
        ".5",                     // parseInt NaN
        "",                       // missing
        "inf",
        "99999999999999", // past python's year 9999
    ] {
        for signed in [T.to_string(), (T + 1).to_string(), "1".to_owned()] {
            let sig = format!(
                "v1,{}",
                standard_b64(&sandbox_key(), "msg_1", &signed, BODY)
            );
            assert_eq!(
                sandbox(t, &sig, BODY),
                Err(Rejection::Malformed),
                "{t:?} signed as {signed}"
            );
        }
    }
    // An exponent both read alike (float() 1767225600.0, parseInt 1767225600) is accepted.
    assert_eq!(sandbox("1767225600e0", &sandbox_sig(T), BODY), Ok(()));
}

/// Both split the list on single spaces; python unpacks every entry it reaches into exactly
/// `(version, signature)` and raises otherwise, until its first match.
#[test]
fn standard_webhooks_split_the_list_on_single_spaces() {
    let sig = sandbox_sig(T);
    let t = T.to_string();
    assert_eq!(sandbox(&t, &format!("{sig} v1a,xyz"), BODY), Ok(()));
    assert_eq!(sandbox(&t, &format!("v1a,xyz {sig}"), BODY), Ok(()));
    assert_eq!(
        sandbox(&t, &format!("{sig}  junk"), BODY),
        Ok(()),
        "python matched before the empty entry"
    );
    assert_eq!(sandbox(&t, &format!("{sig} "), BODY), Ok(()));
    for header in [
        format!("junk {sig}"),     // python: no comma to unpack
        format!("v1a,x  {sig}"),   // python: the empty entry between the spaces
        format!(" {sig}"),         // the same, first
        format!("v1,x,y {sig}"),   // python: three parts
        format!("v1a,xyz\t{sig}"), // a tab is not a separator: one entry, three parts
    ] {
        assert_eq!(
            sandbox(&t, &header, BODY),
            Err(Rejection::Malformed),
            "{header:?}"
        );
    }
    // node reads `v1,<sig>,x` as `v1` and `<sig>`, python raises on it.
    assert_eq!(
        sandbox(&t, &format!("{sig},x"), BODY),
        Err(Rejection::Malformed)
    );
}

/// node compares the base64 text itself; python decodes leniently, skipping characters
/// outside the alphabet and raising on bad padding.
#[test]
fn standard_webhooks_accept_only_the_canonical_base64() {
    let t = T.to_string();
    let canonical = standard_b64(&sandbox_key(), "msg_1", &t, BODY);
    let unpadded = canonical.trim_end_matches('=');
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let last = alphabet.find(unpadded.chars().last().unwrap()).unwrap();
    let other_bits = format!(
        "{}{}=",
        &unpadded[..unpadded.len() - 1],
        &alphabet[(last ^ 1)..=(last ^ 1)]
    );
    for (signature, reason) in [
        (format!("v1,{other_bits}"), Rejection::Mismatch), // python would decode it
        (format!("v1,!{canonical}"), Rejection::Mismatch), // python too
        (format!("v1,{unpadded}"), Rejection::Malformed),  // python: incorrect padding
    ] {
        assert_eq!(sandbox(&t, &signature, BODY), Err(reason), "{signature}");
    }
    // A python-only match first, then the canonical one: both find theirs.
    assert_eq!(
        sandbox(&t, &format!("v1,!{canonical} v1,{canonical}"), BODY),
        Ok(())
    );
    // Garbage python decodes to nothing, without raising, before the match.
    assert_eq!(sandbox(&t, &format!("v1,*** v1,{canonical}"), BODY), Ok(()));
    // Garbage python raises on, before the match.
    assert_eq!(
        sandbox(&t, &format!("v1,abc v1,{canonical}"), BODY),
        Err(Rejection::Malformed)
    );
}

/// The SDKs sign the id as the web framework decoded it (Latin-1 in Node's `http`, WSGI and
/// ASGI), which is the bytes sent only for ASCII; an empty id is their "missing required
/// headers".
#[test]
fn standard_webhooks_the_id_must_be_present_and_ascii() {
    let t = T.to_string();
    for id in ["msg é", ""] {
        let sig = format!("v1,{}", standard_b64(&sandbox_key(), id, &t, BODY));
        let h = standard_headers(id, &t, &sig);
        assert_eq!(
            verify(
                Scheme::StandardWebhooks,
                &[Secret::new(WHSEC)],
                &h,
                BODY,
                CHECK
            ),
            Err(Rejection::Malformed),
            "{id:?}"
        );
    }
    // Any ASCII id is signed as sent, spaces included.
    let sig = format!("v1,{}", standard_b64(&sandbox_key(), " msg 1", &t, BODY));
    let h = standard_headers(" msg 1", &t, &sig);
    assert!(
        verify(
            Scheme::StandardWebhooks,
            &[Secret::new(WHSEC)],
            &h,
            BODY,
            CHECK
        )
        .is_ok()
    );
}

/// python decodes the body strictly (`data.decode()`); a byte-order mark is kept by both.
#[test]
fn standard_webhooks_the_body_must_be_utf8() {
    let t = T.to_string();
    for (body, ok) in [
        (&b"{\"a\":\"\xff\"}"[..], false),
        (b"\xEF\xBB\xBF{}", true),
        (b"", true),
    ] {
        let sig = format!("v1,{}", standard_b64(&sandbox_key(), "msg_1", &t, body));
        assert_eq!(sandbox(&t, &sig, body).is_ok(), ok, "{body:?}");
    }
}

/// polar-sdk 1.x decodes each signature strictly (`b64decode(…, validate=True)`) and splits
/// on whitespace runs; where only python's lenient match and node's read of `v1,<sig>,x`
/// agree, Polar refuses what the sandbox's scheme accepts.
#[test]
fn polar_decodes_strictly_where_the_other_verifiers_do_not() {
    let t = T.to_string();
    let raw = standard_b64(POLAR.as_bytes(), "msg_1", &t, BODY);
    let header = format!("v1,!{raw} v1,{raw},x");
    assert_eq!(polar(&t, &header, BODY), Err(Rejection::Malformed));
    let decoded = standard_b64(&sandbox_key(), "msg_1", &t, BODY);
    let header = format!("v1,!{decoded} v1,{decoded},x");
    assert_eq!(
        sandbox(&t, &header, BODY),
        Ok(()),
        "the sandbox's verifiers"
    );
    // Polar's keys: the secret's own bytes, and a whsec_ secret's decoding.
    assert_eq!(polar(&t, &format!("v1,{raw}"), BODY), Ok(()));
    let h = standard_headers("msg_1", &t, &format!("v1,{decoded}"));
    assert!(verify(Scheme::Polar, &[Secret::new(WHSEC)], &h, BODY, CHECK).is_ok());
}

// ---------------------------------------------------------------------------------------------
// Properties.

/// A scheme under test, with the secret it is keyed with.
#[derive(Debug, Clone)]
enum Case {
    Stripe,
    Standard,
    Polar,
    PayTabs,
    HexBody,
    Base64Timed,
}

const CASES: [Case; 6] = [
    Case::Stripe,
    Case::Standard,
    Case::Polar,
    Case::PayTabs,
    Case::HexBody,
    Case::Base64Timed,
];

fn hex_body_scheme() -> HmacScheme {
    HmacScheme {
        signature_header: "x-hub-signature-256".into(),
        timestamp_header: None,
        message: HmacMessage::Body,
        encoding: HmacEncoding::Hex,
        prefix: Some("sha256=".into()),
    }
}

fn base64_timed_scheme() -> HmacScheme {
    HmacScheme {
        signature_header: "x-signature".into(),
        timestamp_header: Some("x-timestamp".into()),
        message: HmacMessage::TimestampDotBody,
        encoding: HmacEncoding::Base64,
        prefix: Some("v1=".into()),
    }
}

/// Where a delivery's parts are, so one byte of each can be changed.
struct Signed {
    headers: Vec<Header>,
    /// (header index, byte range) of the timestamp, when the scheme signs one.
    timestamp: Option<(usize, std::ops::Range<usize>)>,
    /// (header index, byte range) of the signature.
    signature: (usize, std::ops::Range<usize>),
}

fn secret_of(case: &Case, secret: &str, key: &[u8]) -> String {
    match case {
        Case::Standard => format!("whsec_{}", STANDARD.encode(key)),
        _ => secret.to_owned(),
    }
}

fn signed(case: &Case, secret: &str, key: &[u8], id: &str, t: i64, body: &[u8]) -> Signed {
    let ts = t.to_string();
    match case {
        Case::Stripe => {
            let value = sign::stripe(secret, t, body);
            let sig_at = value.find(",v1=").unwrap() + 4;
            Signed {
                timestamp: Some((0, 2..2 + ts.len())),
                signature: (0, sig_at..value.len()),
                headers: vec![Header::new("Stripe-Signature", value)],
            }
        }
        Case::Standard | Case::Polar => {
            let headers = match case {
                Case::Standard => {
                    sign::standard(&secret_of(case, secret, key), id, t, body).to_vec()
                }
                _ => sign::standard_keyed(secret.as_bytes(), id, t, body).to_vec(),
            };
            let sig_len = headers[2].value.len();
            Signed {
                timestamp: Some((1, 0..ts.len())),
                signature: (2, 3..sig_len),
                headers,
            }
        }
        Case::PayTabs => {
            let value = sign::body_hex(secret, body);
            Signed {
                timestamp: None,
                signature: (0, 0..value.len()),
                headers: vec![Header::new("signature", value)],
            }
        }
        Case::HexBody => {
            let value = format!("sha256={}", sign::body_hex(secret, body));
            Signed {
                timestamp: None,
                signature: (0, 7..value.len()),
                headers: vec![Header::new("X-Hub-Signature-256", value)],
            }
        }
        Case::Base64Timed => {
            let value = format!(
                "v1={}",
                STANDARD.encode(mac(secret.as_bytes(), &[ts.as_bytes(), b".", body]))
            );
            Signed {
                timestamp: Some((0, 0..ts.len())),
                signature: (1, 3..value.len()),
                headers: vec![
                    Header::new("x-timestamp", ts.as_str()),
                    Header::new("x-signature", value),
                ],
            }
        }
    }
}

fn run(
    case: &Case,
    secret: &str,
    key: &[u8],
    headers: &[Header],
    body: &[u8],
    check: Check,
) -> Result<(), Rejection> {
    let hex_body = hex_body_scheme();
    let timed = base64_timed_scheme();
    let scheme = match case {
        Case::Stripe => Scheme::Stripe,
        Case::Standard => Scheme::StandardWebhooks,
        Case::Polar => Scheme::Polar,
        Case::PayTabs => Scheme::PayTabs,
        Case::HexBody => Scheme::Hmac(&hex_body),
        Case::Base64Timed => Scheme::Hmac(&timed),
    };
    let secrets = [Secret::new(secret_of(case, secret, key))];
    verify(scheme, &secrets, headers, body, check).map(drop)
}

/// Bodies every scheme signs: non-empty UTF-8 that does not start with a byte-order mark
/// (Stripe's SDKs disagree on those), here JSON-like text.
fn body() -> impl Strategy<Value = Vec<u8>> {
    "[ -~]{1,300}".prop_map(String::into_bytes)
}

fn delivery() -> impl Strategy<Value = (usize, String, Vec<u8>, String, i64, Vec<u8>)> {
    (
        0..CASES.len(),
        "[A-Za-z0-9_]{8,40}",
        proptest::collection::vec(any::<u8>(), 16..40),
        "msg_[A-Za-z0-9]{1,30}",
        -300i64..=300,
        body(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// What the scheme's signer produces verifies, within the tolerance.
    #[test]
    fn a_correctly_signed_delivery_verifies(
        (i, secret, key, id, offset, body) in delivery()
    ) {
        let case = &CASES[i];
        let t = NOW + offset;
        let s = signed(case, &secret, &key, &id, t, &body);
        prop_assert_eq!(run(case, &secret, &key, &s.headers, &body, CHECK), Ok(()));
    }

    /// One changed byte of the body, anywhere, to anything: refused.
    #[test]
    fn one_changed_byte_of_the_body_is_refused(
        (i, secret, key, id, offset, body) in delivery(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let case = &CASES[i];
        let s = signed(case, &secret, &key, &id, NOW + offset, &body);
        let mut changed = body.clone();
        let at = at.index(changed.len());
        prop_assume!(changed[at] != byte);
        changed[at] = byte;
        prop_assert!(run(case, &secret, &key, &s.headers, &changed, CHECK).is_err());
    }

    /// One changed byte of the signed timestamp, to anything: refused.
    #[test]
    fn one_changed_byte_of_the_timestamp_is_refused(
        (i, secret, key, id, offset, body) in delivery(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let case = &CASES[i];
        let s = signed(case, &secret, &key, &id, NOW + offset, &body);
        let Some((h, range)) = s.timestamp.clone() else { return Ok(()) };
        let at = range.start + at.index(range.len());
        let mut headers = s.headers.clone();
        prop_assume!(headers[h].value[at] != byte);
        headers[h].value[at] = byte;
        prop_assert!(run(case, &secret, &key, &headers, &body, CHECK).is_err());
    }

    /// One changed byte of the signature, to anything: refused (one spelling per MAC).
    #[test]
    fn one_changed_byte_of_the_signature_is_refused(
        (i, secret, key, id, offset, body) in delivery(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let case = &CASES[i];
        let s = signed(case, &secret, &key, &id, NOW + offset, &body);
        let (h, range) = s.signature.clone();
        let at = range.start + at.index(range.len());
        let mut headers = s.headers.clone();
        prop_assume!(headers[h].value[at] != byte);
        headers[h].value[at] = byte;
        prop_assert!(run(case, &secret, &key, &headers, &body, CHECK).is_err());
    }

    /// Arbitrary headers (the names the schemes read, and others, with random bytes) and
    /// arbitrary bodies: an answer, never a panic.
    #[test]
    fn arbitrary_headers_and_bodies_never_panic(
        i in 0..CASES.len(),
        headers in proptest::collection::vec(
            (
                prop::sample::select(vec![
                    "stripe-signature", "webhook-id", "webhook-timestamp", "webhook-signature",
                    "signature", "x-hub-signature-256", "x-signature", "x-timestamp", "other",
                ]),
                prop_oneof![
                    proptest::collection::vec(any::<u8>(), 0..80),
                    "[ -~]{0,80}".prop_map(String::into_bytes),
                    "(t|v1|v0|x)=[ -~]{0,20}(,(t|v1)=[0-9a-fA-F+ ._=-]{0,70}){0,3}"
                        .prop_map(String::into_bytes),
                    "(v1|v1a|x)?,?[A-Za-z0-9+/= ,]{0,60}( v1,[A-Za-z0-9+/=]{0,48}){0,3}"
                        .prop_map(String::into_bytes),
                    "[ \t+-]?[0-9_.eE]{0,20}[ \t]?".prop_map(String::into_bytes),
                ],
            ),
            0..6,
        ),
        body in proptest::collection::vec(any::<u8>(), 0..200),
        now in any::<i64>(),
        tolerance in any::<u64>(),
    ) {
        let headers: Vec<Header> = headers
            .into_iter()
            .map(|(name, value)| Header::new(name, value))
            .collect();
        let check = Check { now, tolerance_secs: tolerance };
        // The answer itself is not the point; reaching it is.
        let _ = run(&CASES[i], "secret", b"0123456789abcdef", &headers, &body, check);
    }
}
