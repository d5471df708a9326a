//! The signature verifiers against the providers' own SDKs: every case of
//! `tests/data/webhook-signatures.json` (a copy of `../shared/vectors/`, kept in the repository
//! so a fresh clone tests the same) must come out as its `expected` says, with the clock
//! pinned to the case's `now`.

use std::path::PathBuf;

use coffer::domain::account::Secret;
use coffer::providers::signature::{Check, Header, Rejection, Scheme, verify};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn vectors() -> Value {
    let text = std::fs::read_to_string(repo().join("tests/data/webhook-signatures.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn the_copy_of_the_vectors_is_the_shared_one() {
    let shared = repo().join("../shared/vectors/webhook-signatures.json");
    // CI's clone may have no shared/ beside it; then the copy is all there is.
    if let Ok(shared) = std::fs::read(&shared) {
        let ours = std::fs::read(repo().join("tests/data/webhook-signatures.json")).unwrap();
        assert!(
            shared == ours,
            "tests/data/webhook-signatures.json differs from ../shared/vectors/: copy it again"
        );
    }
}

#[test]
fn signature_vectors_agree_with_the_providers_sdks() {
    let v = vectors();
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
