//! Every statement Coffer runs (the query macros' `.sqlx/` data) that reads or changes a
//! tenant table names the tenant: a `tenant_id` predicate for each such table it reads,
//! updates or deletes, a `tenant_id` column in each insert. That is what keeps tenants apart
//! today, and what lets the tables be distributed by `tenant_id` (ARCHITECTURE.md, Scaling
//! out) with each statement routed to one shard. The exceptions are named below with the
//! reason each is safe; a new statement that needs one must be added here, reviewed.
//!
//! Tenant tables are those whose `CREATE TABLE` in `migrations/` has a `tenant_id` column.

use std::collections::BTreeSet;
use std::path::Path;

/// Statements allowed to touch a tenant table without a tenant predicate: (a fragment that
/// identifies the statement, normalised to single spaces and lower case; why it is safe).
const EXCEPTIONS: &[(&str, &str)] = &[
    (
        "where grain = l.grain and period < l.before and shard <> 0",
        "the sweeper's rollup fold merges past shards of every tenant by design: each row \
         keeps its tenant, and the merge groups and joins on tenant_id",
    ),
    (
        "from api_keys where id = $1",
        "authentication: the key is how the tenant is learnt",
    ),
    (
        "update api_keys set revoked_at = now() where id = $1",
        "revoking a key by its id (admin CLI); answers the tenant",
    ),
    (
        "from webhook_events where account = $1 and provider_event_id = $2",
        "ingestion de-duplication: an account belongs to one tenant",
    ),
    (
        "update webhook_events set status = $2, processed_at",
        "inbox workers settle the rows they claimed, by ctid",
    ),
    (
        "update webhook_events set status = '', next_attempt_at = $2 where ctid",
        "inbox workers lease the rows they claimed, by ctid",
    ),
    (
        "select ctid::text as \"ctid!\", tenant_id, id, account",
        "inbox claim: workers serve every tenant (claimed rows carry their tenant)",
    ),
    (
        "select w.id from webhook_events w where own.id is null",
        "ingestion batch: the rows carry tenant_id; the duplicate probe is by account",
    ),
    (
        "from provider_operations where status in ('', '') and next_resolve_at <= now()",
        "the journal's resolver claims due operations across tenants",
    ),
    (
        "from checkout_sessions where status = '' and expires_at <= $1",
        "the sweeper expires due sessions across tenants",
    ),
    (
        "count(*) as \"count!\", extract(epoch from now() - min(received_at))",
        "the inbox backlog gauge, across tenants",
    ),
    (
        "update webhook_events set payload = ''::bytea",
        "payload retention sweeper, across tenants",
    ),
    (
        "delete from idempotency_keys where ctid in",
        "idempotency key retention sweeper, across tenants",
    ),
    (
        "update idempotency_keys set response = null, expires_at = null",
        "the sweeper scrubs lapsed idempotent answers (portal links), across tenants",
    ),
    (
        "select tenant_id, webhook_secret from sandbox_accounts where account = $1",
        "a sandbox account's secret by its name, which belongs to one tenant",
    ),
    (
        "clock_offset as \"now!\" from sandbox_accounts where account = $1",
        "a sandbox account's clock by its name, which belongs to one tenant (CreateSubscription)",
    ),
    (
        "join sandbox_accounts a on a.account = s.account",
        "sandbox workers (delivery, expiry) read each account's clock by account name",
    ),
    (
        "from usage_push_cursors where unpushed_since is not null or failure is not null",
        "the usage push backlog gauges, across tenants",
    ),
    (
        "from subscription_events e, (select pg_snapshot_xmin(",
        "every replica's change feed reads all tenants' changes to keep its caches fresh",
    ),
    (
        "select xid, seq from subscription_events where xid <",
        "where a replica's change feed starts, across tenants",
    ),
    (
        "delete from subscription_events where ctid in",
        "subscription change outbox retention sweeper, across tenants",
    ),
    (
        "from sandbox_outbox where status = '' and next_attempt_at <= now()",
        "sandbox delivery claim, across tenants",
    ),
];

const KEYWORDS: &[&str] = &[
    "where",
    "set",
    "on",
    "join",
    "inner",
    "left",
    "right",
    "using",
    "order",
    "group",
    "limit",
    "returning",
    "for",
    "values",
    "select",
    "as",
    "cross",
    "full",
    "union",
    "having",
    "offset",
    "default",
    "with",
    "(",
];

#[test]
fn every_statement_on_a_tenant_table_names_the_tenant() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let tables = tenant_tables(&root.join("migrations"));
    assert!(
        tables.contains("customers") && tables.contains("webhook_events"),
        "{tables:?}"
    );
    let mut used = BTreeSet::new();
    let mut failures = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(root.join(".sqlx")).unwrap() {
        let path = entry.unwrap().path();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let query = json["query"].as_str().unwrap();
        let normal = normalise(query);
        checked += 1;
        let problems = unfiltered(&tokens(&normal), &tables);
        if problems.is_empty() {
            continue;
        }
        match EXCEPTIONS.iter().position(|(f, _)| normal.contains(f)) {
            Some(i) => {
                used.insert(i);
            }
            None => failures.push(format!("{}: {problems:?}\n  {normal}", path.display())),
        }
    }
    assert!(checked > 100, "only {checked} statements in .sqlx/");
    assert!(
        failures.is_empty(),
        "statements on tenant tables without a tenant_id predicate:\n{}",
        failures.join("\n")
    );
    // An exception nothing needs any more is stale: remove it.
    let stale: Vec<_> = (0..EXCEPTIONS.len())
        .filter(|i| !used.contains(i))
        .map(|i| EXCEPTIONS[i].0)
        .collect();
    assert!(stale.is_empty(), "stale exceptions: {stale:?}");
}

/// The checker itself, on statements it must refuse and accept.
#[test]
fn the_tenant_check_tells_filtered_from_unfiltered() {
    let tables: BTreeSet<String> = ["customers", "payments"].map(String::from).into();
    let check = |q: &str| unfiltered(&tokens(&normalise(q)), &tables);
    assert!(check("SELECT * FROM customers WHERE tenant_id = $1 AND id = $2").is_empty());
    assert!(check("SELECT * FROM customers c WHERE c.tenant_id = $1").is_empty());
    assert!(check("UPDATE payments SET x = 1 WHERE (tenant_id, id) = ($1, $2)").is_empty());
    assert!(check("INSERT INTO customers (tenant_id, id) VALUES ($1, $2)").is_empty());
    assert!(
        check("SELECT * FROM customers c JOIN payments p ON p.tenant_id = c.tenant_id WHERE c.tenant_id = $1")
            .is_empty()
    );
    assert!(!check("SELECT * FROM customers WHERE id = $1").is_empty());
    assert!(!check("DELETE FROM payments WHERE id = $1").is_empty());
    assert!(!check("INSERT INTO customers (id) VALUES ($1)").is_empty());
    assert!(!check("SELECT tenant_id FROM customers WHERE id = $1").is_empty());
    assert!(
        !check("SELECT * FROM customers c JOIN payments p ON p.id = c.id WHERE c.tenant_id = $1")
            .is_empty()
    );
}

/// Tables whose definition has a `tenant_id` column.
fn tenant_tables(dir: &Path) -> BTreeSet<String> {
    let mut tables = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let sql = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        let mut rest = sql.as_str();
        while let Some(i) = rest.find("CREATE TABLE ") {
            rest = &rest[i + "CREATE TABLE ".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let body = &rest[..rest.find("\n);").unwrap_or(rest.len())];
            if body.contains("tenant_id") {
                tables.insert(name);
            }
        }
    }
    tables
}

/// Lower case, string literals emptied, comments dropped, whitespace single.
fn normalise(query: &str) -> String {
    let mut out = String::new();
    let mut chars = query.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                }
                out.push_str("''");
            }
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        break;
                    }
                }
                out.push(' ');
            }
            c => out.push(c.to_ascii_lowercase()),
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Identifiers (with their qualifier: `c.tenant_id`) and single punctuation characters.
fn tokens(q: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in q.chars() {
        if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '$' {
            word.push(c);
        } else {
            if !word.is_empty() {
                out.push(std::mem::take(&mut word));
            }
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

/// Each tenant table the statement reads, changes or inserts into without naming the tenant.
fn unfiltered(t: &[String], tables: &BTreeSet<String>) -> Vec<String> {
    let mut problems = Vec::new();
    for (i, tok) in t.iter().enumerate() {
        if !matches!(tok.as_str(), "from" | "join" | "update" | "into") {
            continue;
        }
        let Some(table) = t.get(i + 1).filter(|n| tables.contains(n.as_str())) else {
            continue;
        };
        let mut j = i + 2;
        if t.get(j).is_some_and(|w| w == "as") {
            j += 1;
        }
        let alias = match t.get(j) {
            Some(a)
                if !KEYWORDS.contains(&a.as_str())
                    && a.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                a.clone()
            }
            _ => table.clone(),
        };
        if tok == "into" {
            // The column list: from the next "(" to its ")".
            let columns: Vec<&String> = t[i + 2..]
                .iter()
                .skip_while(|w| *w != "(")
                .take_while(|w| *w != ")")
                .collect();
            if !columns.iter().any(|w| *w == "tenant_id") {
                problems.push(format!("insert into {table} without tenant_id"));
            }
            continue;
        }
        let qualified = format!("{alias}.tenant_id");
        let names = |w: &String| *w == qualified || (alias == *table && w == "tenant_id");
        let filtered = t.iter().enumerate().any(|(k, w)| {
            names(w)
                && (t.get(k + 1).is_some_and(|n| n == "=" || n == "in")
                    || (k > 0 && t[k - 1] == "=")
                    || (k > 0 && t[k - 1] == "(" && t.get(k + 1).is_some_and(|n| n == ",")))
        });
        if !filtered {
            problems.push(format!("{table} ({alias}) without a tenant_id predicate"));
        }
    }
    problems
}
