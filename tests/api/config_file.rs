//! coffer.toml with the real binary: a bad file stops `serve` with one line naming the file,
//! the account and the field; a good one starts, and its secrets never reach the logs.

use std::process::Command;

use crate::binary::{BIN, Served, TempDir, acme, db_url};
use crate::helpers::TestDb;

const GOOD: &str = r#"
[[account]]
name = "acme-stripe"
tenant = "acme"
provider = "stripe"
api_key_env = "COFFER_TEST_STRIPE_KEY"
webhook_secret_env = ["COFFER_TEST_STRIPE_WHSEC", "COFFER_TEST_STRIPE_WHSEC_OLD"]
api_base = "http://127.0.0.1:9"

[[account]]
name = "acme-test"
tenant = "acme"
provider = "sandbox"
webhook_secret_env = "COFFER_TEST_STRIPE_WHSEC"
webhook_source_cidrs = ["127.0.0.1/32", "::1"]

[[account]]
name = "acme-paytabs"
tenant = "acme"
provider = "paytabs"
api_key_env = "COFFER_TEST_STRIPE_KEY"
profile_id = 87654
region = "SAU"

[tenant.acme]
allowed_redirect_origins = ["https://shop.acme.example"]
default_account = "acme-stripe"

[tenant.acme.amount_limits]
HUF = { min = 100, max = 1000000000 }
"#;

const SECRETS: [(&str, &str); 3] = [
    ("COFFER_TEST_STRIPE_KEY", "sk_test_never_logged"),
    ("COFFER_TEST_STRIPE_WHSEC", "whsec_never_logged"),
    ("COFFER_TEST_STRIPE_WHSEC_OLD", "whsec_old_never_logged"),
];

/// Runs `coffer serve --config <file with text>` to its exit; (exit code, stderr).
fn serve_with(db: &TestDb, dir: &TempDir, text: &str, via_env: bool) -> (Option<i32>, String) {
    let path = dir.0.join("coffer.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.arg("serve")
        .args(["--grpc-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"])
        .env("DATABASE_URL", db_url(db))
        .env("COFFER_STATE_DIR", &dir.0)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        // anyhow prints a backtrace when these ask for one; the error is one line without.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .envs(SECRETS);
    if via_env {
        cmd.env("COFFER_CONFIG", &path);
    } else {
        cmd.arg("--config").arg(&path);
    }
    let out = cmd.output().expect("running coffer");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn a_bad_file_stops_serve_with_one_line() {
    let db = TestDb::new().await;
    let _ = acme(&db).await;
    let dir = TempDir::new();
    let file = dir.0.join("coffer.toml").display().to_string();
    let cases = [
        (
            GOOD.replace("provider = \"stripe\"", "provider = \"stripey\""),
            format!(
                "{file}: account \"acme-stripe\": provider: unknown provider \"stripey\"; expected one of sandbox, stripe, polar, paytabs, hmac"
            ),
        ),
        (
            GOOD.replace("COFFER_TEST_STRIPE_KEY", "COFFER_TEST_UNSET"),
            format!(
                "{file}: account \"acme-stripe\": api_key_env: environment variable COFFER_TEST_UNSET is not set"
            ),
        ),
        (
            GOOD.replace("http://127.0.0.1:9", "http://api.stripe.com"),
            format!(
                "{file}: account \"acme-stripe\": api_base: \"http://api.stripe.com\" must be https (http only on a loopback host)"
            ),
        ),
        // Found only once the database is open.
        (
            GOOD.replace(
                "name = \"acme-test\"\ntenant = \"acme\"",
                "name = \"acme-test\"\ntenant = \"initech\"",
            ),
            format!(
                "{file}: account \"acme-test\": tenant: no tenant is named \"initech\" (create it with `coffer tenant create initech`)"
            ),
        ),
        (
            GOOD.replace(
                "api_base = \"http://127.0.0.1:9\"",
                "api_base = \"http://127.0.0.1:9\"\nwebhook_source_cidrs = [\"3.18.12.0/16\"]",
            ),
            format!(
                "{file}: account \"acme-stripe\": webhook_source_cidrs: \"3.18.12.0/16\" is not an address range: host bits are set; did you mean \"3.18.0.0/16\"?"
            ),
        ),
        (
            GOOD.replace("region = \"SAU\"\n", ""),
            format!(
                "{file}: account \"acme-paytabs\": region: is required for provider = \"paytabs\""
            ),
        ),
        (
            GOOD.replace(
                "api_base = \"http://127.0.0.1:9\"",
                "api_base = \"http://127.0.0.1:9\"\nprofile_id = 87654",
            ),
            format!(
                "{file}: account \"acme-stripe\": profile_id: is only for provider = \"paytabs\" accounts"
            ),
        ),
        (
            GOOD.replace("name = \"acme-test\"", "name = \"acme-stripe\""),
            format!(
                "{file}: account \"acme-stripe\": name: another account has this name; names must be unique"
            ),
        ),
    ];
    for (i, (text, line)) in cases.into_iter().enumerate() {
        let (code, stderr) = serve_with(&db, &dir, &text, i % 2 == 0);
        assert_eq!(code, Some(1), "{stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("Error: "))
            .collect();
        assert_eq!(errors, [format!("Error: {line}")], "{stderr}");
        // Nothing else but JSON log lines.
        for l in stderr.lines().filter(|l| !l.starts_with("Error: ")) {
            assert!(l.starts_with('{') || l.is_empty(), "{l}");
        }
        for (_, secret) in SECRETS {
            assert!(!stderr.contains(secret), "{stderr}");
        }
    }
}

#[tokio::test]
async fn a_good_file_starts_and_its_secrets_stay_out_of_the_logs() {
    let db = TestDb::new().await;
    let _ = acme(&db).await;
    let dir = TempDir::new();
    let path = dir.0.join("coffer.toml");
    std::fs::write(&path, GOOD).unwrap();
    let env: Vec<(&str, String)> = SECRETS.iter().map(|(k, v)| (*k, v.to_string())).collect();
    let served = Served::start(&db, &dir.0, &["--config", path.to_str().unwrap()], &env).await;
    served.sigterm();
    let (code, logs) = served.wait().await;
    assert_eq!(code, Some(0), "{logs}");
    assert!(logs.contains("\"accounts\":3"), "{logs}");
    for (_, secret) in SECRETS {
        assert!(!logs.contains(secret), "{logs}");
    }
}
