//! A fake Polar on loopback that speaks Polar's published wire format (its OpenAPI schema,
//! polarsource/polar `docs/openapi`): `Authorization: Bearer <organization access token>` or
//! 401 `{"error": "invalid_token"}`; JSON both ways; collections at paths ending in `/` (the
//! other spelling is a 307 to it, as FastAPI answers); lists as `{"items", "pagination"}`
//! with `page`, `limit` (at most 100), `sorting`, `metadata[key]=value` and field filters;
//! `Polar-Version` one of the versions it serves, or a bare 404 `{"detail": "Not Found"}` as
//! for a path it does not serve; validation errors as 422 `{"error":
//! "RequestValidationError", "detail": [{loc, msg, type, input}]}`; Polar's own errors as
//! `{"error": "<Name>", "detail": "<text>"}` (a missing object: 404 `ResourceNotFound`).
//!
//! It keeps its objects in memory, counts creates, records every request (and whether it
//! carried an `Idempotency-Key`), can be told to fail ([`Fault`]), plays the buyer
//! ([`FakePolar::pay`]) and delivers webhooks signed as Polar signs them (Standard Webhooks
//! headers, the MAC keyed with the secret string's own bytes, as Polar's SDKs verify).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State as Extract;
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use coffer::providers::signature::sign;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use uuid::Uuid;

/// The organization access token the fake accepts.
pub const TOKEN: &str = "polar_oat_fake_organization_token";
/// The webhook secret the fake signs with, as Polar's dashboard shows it.
pub const WEBHOOK_SECRET: &str = "polar_whs_fake_webhook_secret";

/// The API versions Polar serves (`Polar-Version`; without one, the first).
const API_VERSIONS: &[&str] = &["2026-04", "2026-10"];

const COLLECTIONS: &[&str] = &[
    "customers",
    "products",
    "checkouts",
    "orders",
    "refunds",
    "subscriptions",
    "customer-sessions",
    "meters",
];

/// How a request the fake was told about fails.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status and JSON body, doing nothing.
    Answer(u16, Value),
    /// Do what was asked, then answer only after this long (past the client's timeout).
    Slow(Duration),
    /// Do what was asked, then answer once the test says so.
    Hold(Arc<Notify>),
}

struct Armed {
    method: Method,
    /// The exact path, or a prefix when it ends with `*`.
    path: String,
    times: usize,
    fault: Fault,
}

impl Armed {
    fn matches(&self, method: &Method, path: &str) -> bool {
        self.times > 0
            && self.method == method
            && match self.path.strip_suffix('*') {
                Some(prefix) => path.starts_with(prefix),
                None => self.path == path,
            }
    }
}

/// One request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub path: String,
    pub query: String,
    pub idempotency_key: Option<String>,
    /// `Polar-Version`, the API version asked for.
    pub version: Option<String>,
    /// The JSON body, when it had one (`Null` otherwise).
    pub body: Value,
}

#[derive(Default)]
struct State {
    /// Objects per collection, oldest first.
    objects: HashMap<&'static str, Vec<Value>>,
    creates: HashMap<&'static str, usize>,
    faults: Vec<Armed>,
    seen: Vec<Seen>,
    /// The last timestamp handed out, in microseconds: every change gets a later one.
    last_micros: i128,
    /// Events ingested (`POST /v1/events/ingest`), in arrival order, de-duplicated by
    /// `external_id` as Polar does.
    events: Vec<Value>,
}

type Shared = Arc<Mutex<State>>;

/// A running fake Polar. Stops when dropped.
pub struct FakePolar {
    pub addr: SocketAddr,
    state: Shared,
    task: JoinHandle<()>,
}

impl Drop for FakePolar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_response(status: u16, body: &Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

fn validation(loc: &[Value], msg: &str, kind: &str, input: &Value) -> Response {
    json_response(
        422,
        &json!({
            "error": "RequestValidationError",
            "detail": [{"loc": loc, "msg": msg, "type": kind, "input": input}],
        }),
    )
}

fn missing(field: &str) -> Response {
    validation(
        &[json!("body"), json!(field)],
        "Field required",
        "missing",
        &Value::Null,
    )
}

fn not_found() -> Response {
    json_response(
        404,
        &json!({"error": "ResourceNotFound", "detail": "Not found"}),
    )
}

fn polar_error(status: u16, name: &str, detail: &str) -> Response {
    json_response(status, &json!({"error": name, "detail": detail}))
}

impl State {
    fn now(&mut self) -> String {
        let real = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
        self.last_micros = real.max(self.last_micros + 1);
        OffsetDateTime::from_unix_timestamp_nanos(self.last_micros * 1_000)
            .unwrap()
            .format(&Rfc3339)
            .unwrap()
    }

    fn later(&mut self, by: Duration) -> String {
        (OffsetDateTime::now_utc() + by).format(&Rfc3339).unwrap()
    }

    fn list(&mut self, collection: &'static str) -> &mut Vec<Value> {
        self.objects.entry(collection).or_default()
    }

    fn find(&mut self, collection: &'static str, id: &str) -> Option<&mut Value> {
        self.list(collection).iter_mut().find(|o| o["id"] == id)
    }

    fn insert(&mut self, collection: &'static str, object: Value) -> Value {
        *self.creates.entry(collection).or_default() += 1;
        self.list(collection).push(object.clone());
        object
    }

    fn touch(&mut self, collection: &'static str, id: &str, change: impl FnOnce(&mut Value)) {
        let now = self.now();
        let object = self.find(collection, id).expect("the object exists");
        change(object);
        object["modified_at"] = json!(now);
    }
}

/// A list answer for `items` under the query's filters and pagination.
fn list(items: &[Value], query: &[(String, String)]) -> Response {
    let mut page = 1usize;
    let mut limit = 10usize;
    let mut filters = Vec::new();
    for (key, value) in query {
        match key.as_str() {
            "page" => page = value.parse().unwrap_or(1),
            "limit" => limit = value.parse().unwrap_or(10),
            "sorting" => {}
            _ => filters.push((key.clone(), value.clone())),
        }
    }
    if !(1..=100).contains(&limit) {
        return validation(
            &[json!("query"), json!("limit")],
            "Input should be less than or equal to 100",
            "less_than_equal",
            &json!(limit),
        );
    }
    let matching: Vec<&Value> = items
        .iter()
        .rev() // newest first: every list's default (and Coffer's) sorting, -created_at
        .filter(|item| {
            filters.iter().all(|(key, value)| {
                let field = match key
                    .strip_prefix("metadata[")
                    .and_then(|k| k.strip_suffix(']'))
                {
                    Some(meta) => &item["metadata"][meta],
                    None => &item[key.as_str()],
                };
                match field {
                    Value::String(s) => s == value,
                    Value::Bool(b) => b.to_string() == *value,
                    Value::Number(n) => n.to_string() == *value,
                    _ => false,
                }
            })
        })
        .collect();
    let total = matching.len();
    let items: Vec<&Value> = matching
        .into_iter()
        .skip((page - 1) * limit)
        .take(limit)
        .collect();
    json_response(
        200,
        &json!({
            "items": items,
            "pagination": {"total_count": total, "max_page": total.div_ceil(limit).max(1)},
        }),
    )
}

async fn handle(
    Extract(state): Extract<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query: Vec<(String, String)> = reqwest::Url::parse(&format!("http://fake{uri}"))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let slow = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            method: method.clone(),
            path: path.clone(),
            query: uri.query().unwrap_or_default().to_owned(),
            idempotency_key: headers
                .get("idempotency-key")
                .map(|v| v.to_str().unwrap().to_owned()),
            version: headers
                .get("polar-version")
                .map(|v| v.to_str().unwrap().to_owned()),
            body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        });
        // Polar's version middleware: an API version it does not serve is a bare 404.
        if let Some(v) = headers.get("polar-version")
            && !API_VERSIONS.contains(&v.to_str().unwrap_or_default())
        {
            return json_response(404, &json!({"detail": "Not Found"}));
        }
        let authorized = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some(&format!("Bearer {TOKEN}"));
        if !authorized {
            return json_response(
                401,
                &json!({"error": "invalid_token", "error_description": "The access token is invalid"}),
            );
        }
        match s.faults.iter_mut().find(|f| f.matches(&method, &path)) {
            Some(armed) => {
                armed.times -= 1;
                match armed.fault.clone() {
                    Fault::Answer(status, body) => return json_response(status, &body),
                    other => Some(other),
                }
            }
            None => None,
        }
    };
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => {
                return validation(
                    &[json!("body")],
                    "JSON decode error",
                    "json_invalid",
                    &json!({}),
                );
            }
        }
    };
    let response = {
        let mut s = state.lock().unwrap();
        route(&mut s, &method, &path, &query, &body)
    };
    match slow {
        Some(Fault::Slow(wait)) => tokio::time::sleep(wait).await,
        Some(Fault::Hold(release)) => release.notified().await,
        _ => {}
    }
    response
}

fn route(
    s: &mut State,
    method: &Method,
    path: &str,
    query: &[(String, String)],
    body: &Value,
) -> Response {
    let Some(rest) = path.strip_prefix("/v1/") else {
        return json_response(404, &json!({"detail": "Not Found"}));
    };
    let segments: Vec<&str> = rest.split('/').collect();
    let get = |s: &mut State, collection: &'static str, id: &str| match s.find(collection, id) {
        Some(o) => json_response(200, o),
        None => not_found(),
    };
    match (method.clone(), segments.as_slice()) {
        (Method::GET, ["customers", "external", external]) => {
            match s
                .list("customers")
                .iter()
                .find(|c| c["external_id"] == *external)
            {
                Some(c) => json_response(200, c),
                None => not_found(),
            }
        }
        (Method::GET, ["customers", id]) if !id.is_empty() => get(s, "customers", id),
        (Method::POST, ["customers", ""]) => create_customer(s, body),
        (Method::GET, ["products", ""]) => list(s.list("products"), query),
        (Method::GET, ["products", id]) => get(s, "products", id),
        (Method::POST, ["products", ""]) => create_product(s, body),
        (Method::GET, ["checkouts", ""]) => list(s.list("checkouts"), query),
        (Method::POST, ["checkouts", ""]) => create_checkout(s, body),
        (Method::GET, ["checkouts", id]) => get(s, "checkouts", id),
        (Method::GET, ["orders", ""]) => list(s.list("orders"), query),
        (Method::GET, ["orders", id]) => get(s, "orders", id),
        (Method::GET, ["refunds", ""]) => list(s.list("refunds"), query),
        (Method::POST, ["refunds", ""]) => create_refund(s, body),
        (Method::GET, ["subscriptions", ""]) => list(s.list("subscriptions"), query),
        (Method::GET, ["subscriptions", id]) => get(s, "subscriptions", id),
        (Method::PATCH, ["subscriptions", id]) => update_subscription(s, id, body),
        (Method::DELETE, ["subscriptions", id]) => revoke_subscription(s, id),
        (Method::POST, ["customer-sessions", ""]) => create_customer_session(s, body),
        (Method::POST, ["meters", ""]) => create_meter(s, body),
        (Method::GET, ["meters", ""]) => list(s.list("meters"), query),
        (Method::GET, ["meters", id]) => get(s, "meters", id),
        (Method::POST, ["events", "ingest"]) => ingest(s, body),
        (_, [collection]) if COLLECTIONS.contains(collection) => (
            StatusCode::TEMPORARY_REDIRECT,
            [(header::LOCATION, format!("{path}/"))],
        )
            .into_response(),
        _ => json_response(404, &json!({"detail": "Not Found"})),
    }
}

/// `MeterCreate`: a name, a filter of clauses and an aggregation (`func`, `property`).
fn create_meter(s: &mut State, body: &Value) -> Response {
    for field in ["name", "filter", "aggregation"] {
        if body[field].is_null() {
            return missing(field);
        }
    }
    let func = body["aggregation"]["func"].as_str().unwrap_or_default();
    if !["count", "sum", "max", "min", "avg", "unique"].contains(&func) {
        return validation(
            &[json!("body"), json!("aggregation"), json!("func")],
            "Input should be 'count', 'sum', 'max', 'min', 'avg' or 'unique'",
            "enum",
            &body["aggregation"]["func"],
        );
    }
    let now = s.now();
    let meter = json!({
        "id": Uuid::now_v7().to_string(),
        "created_at": now,
        "modified_at": null,
        "name": body["name"],
        "filter": body["filter"],
        "aggregation": body["aggregation"],
        "organization_id": ORGANIZATION,
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
    });
    json_response(201, &s.insert("meters", meter))
}

/// `POST /v1/events/ingest`: each event needs a name and a customer; one whose
/// `external_id` Polar has already is skipped and counted as a duplicate.
fn ingest(s: &mut State, body: &Value) -> Response {
    let Some(events) = body["events"].as_array() else {
        return missing("events");
    };
    for (i, e) in events.iter().enumerate() {
        if !e["name"].is_string()
            || !(e["external_customer_id"].is_string() || e["customer_id"].is_string())
        {
            return validation(
                &[json!("body"), json!("events"), json!(i)],
                "An event needs a name and a customer",
                "value_error",
                e,
            );
        }
    }
    let (mut inserted, mut duplicates) = (0, 0);
    for e in events {
        let known = e["external_id"].is_string()
            && s.events
                .iter()
                .any(|k| k["external_id"] == e["external_id"]);
        if known {
            duplicates += 1;
        } else {
            inserted += 1;
            s.events.push(e.clone());
        }
    }
    json_response(
        200,
        &json!({"inserted": inserted, "duplicates": duplicates}),
    )
}

fn create_customer(s: &mut State, body: &Value) -> Response {
    let Some(email) = body["email"].as_str() else {
        return missing("email");
    };
    if s.list("customers").iter().any(|c| c["email"] == email) {
        return validation(
            &[json!("body"), json!("email")],
            "A customer with this email address already exists.",
            "value_error",
            &json!(email),
        );
    }
    let external = body["external_id"].clone();
    if !external.is_null()
        && s.list("customers")
            .iter()
            .any(|c| c["external_id"] == external)
    {
        return validation(
            &[json!("body"), json!("external_id")],
            "A customer with this external ID already exists.",
            "value_error",
            &external,
        );
    }
    let now = s.now();
    let customer = json!({
        "id": Uuid::now_v7().to_string(),
        "created_at": now,
        "modified_at": null,
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
        "external_id": external,
        "email": email,
        "email_verified": false,
        "type": "individual",
        "name": body["name"].clone(),
        "billing_name": null,
        "billing_address": null,
        "tax_id": null,
        "organization_id": ORGANIZATION,
        "deleted_at": null,
        "first_user_event_at": null,
        "avatar_url": null,
    });
    json_response(201, &s.insert("customers", customer))
}

const ORGANIZATION: &str = "7f1d0a6e-6a53-4e8e-9a55-3a0f1c2b3d4e";

fn price_object(s: &mut State, product: &str, price: &Value, source: &str) -> Value {
    let now = s.now();
    json!({
        "id": Uuid::now_v7().to_string(),
        "created_at": now,
        "modified_at": null,
        "source": source,
        "amount_type": price["amount_type"],
        "price_currency": price["price_currency"].as_str().unwrap_or("usd"),
        "tax_behavior": price["tax_behavior"],
        "is_archived": false,
        "product_id": product,
        "price_amount": price["price_amount"],
        "meter_id": price.get("meter_id").cloned().unwrap_or(Value::Null),
        "unit_amount": price.get("unit_amount").cloned().unwrap_or(Value::Null),
    })
}

/// Why `prices` (a list of fixed prices) is refused, if it is.
fn check_prices(prices: &Value, loc: &[Value]) -> Option<Response> {
    let Some(list) = prices.as_array().filter(|l| !l.is_empty()) else {
        return Some(validation(
            loc,
            "List should have at least 1 item",
            "too_short",
            prices,
        ));
    };
    for (i, p) in list.iter().enumerate() {
        let mut at = loc.to_vec();
        at.push(json!(i));
        if p["amount_type"] == "metered_unit" {
            if !p["meter_id"].is_string() || !p["unit_amount"].is_string() {
                return Some(validation(&at, "Invalid metered price", "value_error", p));
            }
            continue;
        }
        if p["amount_type"] != "fixed" || !p["price_amount"].is_i64() {
            return Some(validation(&at, "Invalid fixed price", "value_error", p));
        }
        if p["price_amount"].as_i64() < Some(50) {
            return Some(validation(
                &at,
                "Price amount must be at least 50",
                "greater_than_equal",
                p,
            ));
        }
    }
    None
}

fn create_product(s: &mut State, body: &Value) -> Response {
    let Some(name) = body["name"].as_str() else {
        return missing("name");
    };
    if let Some(e) = check_prices(&body["prices"], &[json!("body"), json!("prices")]) {
        return e;
    }
    let id = Uuid::now_v7().to_string();
    let now = s.now();
    let prices: Vec<Value> = body["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| price_object(s, &id, p, "catalog"))
        .collect();
    let recurring = body
        .get("recurring_interval")
        .cloned()
        .unwrap_or(Value::Null);
    let product = json!({
        "id": id,
        "created_at": now,
        "modified_at": null,
        "trial_interval": body.get("trial_interval").cloned().unwrap_or(Value::Null),
        "trial_interval_count": body.get("trial_interval_count").cloned().unwrap_or(Value::Null),
        "name": name,
        "description": null,
        "visibility": body.get("visibility").cloned().unwrap_or(json!("public")),
        "recurring_interval": recurring,
        "recurring_interval_count": body.get("recurring_interval_count").cloned().unwrap_or(Value::Null),
        "is_recurring": !recurring.is_null(),
        "is_archived": false,
        "organization_id": ORGANIZATION,
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
        "prices": prices,
        "benefits": [],
        "medias": [],
        "attached_custom_fields": [],
    });
    json_response(201, &s.insert("products", product))
}

fn create_checkout(s: &mut State, body: &Value) -> Response {
    let Some(products) = body["products"].as_array().filter(|p| !p.is_empty()) else {
        return missing("products");
    };
    let mut chosen = Vec::new();
    for (i, id) in products.iter().enumerate() {
        match id.as_str().and_then(|id| s.find("products", id)) {
            Some(p) => chosen.push(p.clone()),
            None => {
                return validation(
                    &[json!("body"), json!("products"), json!(i)],
                    "Product does not exist.",
                    "value_error",
                    id,
                );
            }
        }
    }
    let product = chosen[0].clone();
    let product_id = product["id"].as_str().unwrap().to_owned();
    let mut price = product["prices"][0].clone();
    if let Some(adhoc) = body.get("prices").filter(|p| !p.is_null()) {
        for key in adhoc
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or(vec![])
        {
            if !products.iter().any(|p| p == key) {
                return validation(
                    &[json!("body"), json!("prices"), json!(key)],
                    "Product is not in the checkout's products.",
                    "value_error",
                    adhoc,
                );
            }
        }
        if let Some(list) = adhoc.get(&product_id) {
            let loc = [json!("body"), json!("prices"), json!(product_id)];
            if let Some(e) = check_prices(list, &loc) {
                return e;
            }
            price = price_object(s, &product_id, &list[0], "ad_hoc");
        }
    }
    let currency = price["price_currency"].clone();
    if !body["currency"].is_null() && body["currency"] != currency {
        return validation(
            &[json!("body"), json!("currency")],
            "Currency does not match the price's.",
            "value_error",
            &body["currency"],
        );
    }
    if let Some(customer) = body["customer_id"].as_str()
        && s.find("customers", customer).is_none()
    {
        return validation(
            &[json!("body"), json!("customer_id")],
            "Customer does not exist.",
            "value_error",
            &body["customer_id"],
        );
    }
    let recurring = product["is_recurring"].as_bool().unwrap_or(false);
    let allow_trial = body["allow_trial"].as_bool().unwrap_or(true);
    let (trial_interval, trial_count) = if !recurring || !allow_trial {
        (Value::Null, Value::Null)
    } else if !body["trial_interval"].is_null() {
        (
            body["trial_interval"].clone(),
            body["trial_interval_count"].clone(),
        )
    } else {
        (
            product["trial_interval"].clone(),
            product["trial_interval_count"].clone(),
        )
    };
    // A metered price charges in arrears: nothing now.
    let amount = price["price_amount"].as_i64().unwrap_or(0);
    let secret = format!("polar_c_{}", Uuid::now_v7().simple());
    let now = s.now();
    let expires = s.later(Duration::from_secs(24 * 3600));
    let checkout = json!({
        "id": Uuid::now_v7().to_string(),
        "created_at": now,
        "modified_at": null,
        "payment_processor": "stripe",
        "status": "open",
        "client_secret": secret,
        "url": format!("https://sandbox.polar.sh/checkout/{secret}"),
        "expires_at": expires,
        "success_url": body["success_url"],
        "return_url": body["return_url"],
        "embed_origin": null,
        "amount": amount,
        "discount_amount": 0,
        "net_amount": amount,
        "tax_amount": null,
        "total_amount": amount,
        "currency": currency,
        "allow_trial": body["allow_trial"],
        "active_trial_interval": trial_interval,
        "active_trial_interval_count": trial_count,
        "trial_end": null,
        "organization_id": ORGANIZATION,
        "product_id": product_id,
        "product_price_id": price["id"],
        "discount_id": null,
        "allow_discount_codes": body["allow_discount_codes"].as_bool().unwrap_or(true),
        "is_payment_required": trial_interval.is_null(),
        "customer_id": body["customer_id"],
        "external_customer_id": body["external_customer_id"],
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
        "products": chosen.iter().map(|p| json!({"id": p["id"], "name": p["name"], "is_recurring": p["is_recurring"]})).collect::<Vec<_>>(),
        "product": {"id": product_id, "name": product["name"], "is_recurring": recurring},
        "product_price": price,
        "subscription_id": null,
    });
    json_response(201, &s.insert("checkouts", checkout))
}

fn create_refund(s: &mut State, body: &Value) -> Response {
    let Some(order_id) = body["order_id"].as_str() else {
        return missing("order_id");
    };
    let Some(amount) = body["amount"].as_i64() else {
        return missing("amount");
    };
    if body["reason"].as_str().is_none() {
        return missing("reason");
    }
    let Some(order) = s.find("orders", order_id).cloned() else {
        return validation(
            &[json!("body"), json!("order_id")],
            "Order not found.",
            "value_error",
            &body["order_id"],
        );
    };
    if order["status"] == "refunded" {
        return polar_error(403, "RefundedAlready", "Order is already fully refunded.");
    }
    let refundable = order["refundable_amount"].as_i64().unwrap();
    if amount < 1 || amount > refundable {
        return validation(
            &[json!("body"), json!("amount")],
            "Refund amount exceeds remaining order balance.",
            "value_error",
            &json!(amount),
        );
    }
    let now = s.now();
    let refund = json!({
        "created_at": now,
        "modified_at": null,
        "id": Uuid::now_v7().to_string(),
        "metadata": body.get("metadata").cloned().unwrap_or(json!({})),
        "status": "succeeded",
        "reason": body["reason"],
        "amount": amount,
        "tax_amount": 0,
        "currency": order["currency"],
        "organization_id": ORGANIZATION,
        "order_id": order_id,
        "subscription_id": order["subscription_id"],
        "customer_id": order["customer_id"],
        "revoke_benefits": body["revoke_benefits"].as_bool().unwrap_or(false),
        "dispute": null,
    });
    s.touch("orders", order_id, |o| {
        let refunded = o["refunded_amount"].as_i64().unwrap() + amount;
        let net = o["net_amount"].as_i64().unwrap();
        o["refunded_amount"] = json!(refunded);
        o["refundable_amount"] = json!(net - refunded);
        o["status"] = json!(if refunded >= net {
            "refunded"
        } else {
            "partially_refunded"
        });
    });
    json_response(201, &s.insert("refunds", refund))
}

fn update_subscription(s: &mut State, id: &str, body: &Value) -> Response {
    let Some(sub) = s.find("subscriptions", id).cloned() else {
        return not_found();
    };
    if sub["status"] == "canceled" {
        return polar_error(
            403,
            "AlreadyCanceledSubscription",
            "This subscription is already canceled or will be at the end of the period.",
        );
    }
    if let Some(cancel) = body.get("cancel_at_period_end").and_then(Value::as_bool) {
        if cancel && sub["cancel_at_period_end"] == true {
            return polar_error(
                403,
                "AlreadyCanceledSubscription",
                "This subscription is already canceled or will be at the end of the period.",
            );
        }
        s.touch("subscriptions", id, |sub| {
            sub["cancel_at_period_end"] = json!(cancel);
            sub["ends_at"] = if cancel {
                sub["current_period_end"].clone()
            } else {
                Value::Null
            };
        });
    } else if let Some(product) = body.get("product_id").and_then(Value::as_str) {
        if s.find("products", product).is_none() {
            return validation(
                &[json!("body"), json!("product_id")],
                "Product does not exist.",
                "value_error",
                &body["product_id"],
            );
        }
        // Polar's SubscriptionProrationBehavior; absent: the organization's default (prorate).
        let behavior = match body.get("proration_behavior") {
            None | Some(Value::Null) => "prorate",
            Some(b) => match b.as_str() {
                Some(b @ ("invoice" | "prorate" | "next_period" | "reset")) => b,
                _ => {
                    return validation(
                        &[json!("body"), json!("proration_behavior")],
                        "Input should be 'invoice', 'prorate', 'next_period' or 'reset'",
                        "enum",
                        b,
                    );
                }
            },
        };
        let product = product.to_owned();
        s.touch("subscriptions", id, |sub| {
            if behavior == "next_period" {
                // Scheduled: applied when the next period starts.
                sub["pending_update"] = json!({"product_id": product,
                                               "applies_at": sub["current_period_end"]});
            } else {
                sub["product_id"] = json!(product);
                sub["product"] = json!({"id": product});
                sub["pending_update"] = Value::Null;
            }
        });
    } else {
        return validation(&[json!("body")], "No update given.", "value_error", body);
    }
    json_response(200, s.find("subscriptions", id).unwrap())
}

fn revoke_subscription(s: &mut State, id: &str) -> Response {
    let Some(sub) = s.find("subscriptions", id).cloned() else {
        return not_found();
    };
    if sub["status"] == "canceled" {
        return polar_error(
            403,
            "AlreadyCanceledSubscription",
            "This subscription is already revoked.",
        );
    }
    let now = s.now();
    s.touch("subscriptions", id, |sub| {
        sub["status"] = json!("canceled");
        sub["ended_at"] = json!(now);
        sub["canceled_at"] = json!(now);
    });
    json_response(200, s.find("subscriptions", id).unwrap())
}

fn create_customer_session(s: &mut State, body: &Value) -> Response {
    let Some(external) = body["external_customer_id"].as_str() else {
        return missing("external_customer_id");
    };
    let Some(customer) = s
        .list("customers")
        .iter()
        .find(|c| c["external_id"] == external)
        .cloned()
    else {
        return validation(
            &[json!("body"), json!("external_customer_id")],
            "Customer does not exist.",
            "value_error",
            &body["external_customer_id"],
        );
    };
    let token = format!("polar_cst_{}", Uuid::now_v7().simple());
    let now = s.now();
    let expires = s.later(Duration::from_secs(3600));
    let session = json!({
        "created_at": now,
        "modified_at": null,
        "id": Uuid::now_v7().to_string(),
        "token": token,
        "expires_at": expires,
        "return_url": body["return_url"],
        "customer_portal_url": format!("https://sandbox.polar.sh/acme/portal?customer_session_token={token}"),
        "customer_id": customer["id"],
        "customer": customer,
    });
    json_response(201, &s.insert("customer-sessions", session))
}

impl FakePolar {
    pub async fn start() -> Self {
        let state: Shared = Arc::default();
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { addr, state, task }
    }

    /// Fails the next `times` requests of `method` to `path` (a prefix when it ends in `*`).
    pub fn fail(&self, method: Method, path: &str, times: usize, fault: Fault) {
        self.state.lock().unwrap().faults.push(Armed {
            method,
            path: path.to_owned(),
            times,
            fault,
        });
    }

    /// Disarms every fault.
    pub fn recover(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Objects made through the API in `collection`.
    pub fn creates(&self, collection: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.creates
            .iter()
            .find(|(k, _)| **k == collection)
            .map_or(0, |(_, n)| *n)
    }

    /// Every object of `collection`, oldest first.
    pub fn all(&self, collection: &'static str) -> Vec<Value> {
        self.state.lock().unwrap().list(collection).clone()
    }

    pub fn object(&self, collection: &'static str, id: &str) -> Value {
        self.state
            .lock()
            .unwrap()
            .find(collection, id)
            .cloned()
            .unwrap_or_else(|| panic!("no {collection} {id} on the fake"))
    }

    /// Changes subscription `id` as Polar itself would (its clock, its dashboard); answers it.
    pub fn update_subscription(&self, id: &str, change: impl FnOnce(&mut Value)) -> Value {
        let mut s = self.state.lock().unwrap();
        s.touch("subscriptions", id, change);
        s.find("subscriptions", id).unwrap().clone()
    }

    /// The requests seen, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.state.lock().unwrap().seen.clone()
    }

    /// How many requests of `method` to exactly `path` were seen.
    pub fn count(&self, method: Method, path: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.method == method && s.path == path)
            .count()
    }

    /// The buyer pays checkout `id`: it succeeds, Polar makes its order (paid, or a zero trial
    /// order) and, for a recurring product, its subscription, both with the checkout's
    /// metadata. Returns (order id, subscription id).
    /// The events ingested, in arrival order.
    pub fn events(&self) -> Vec<Value> {
        self.state.lock().unwrap().events.clone()
    }

    /// What the meter `meter` bills the customer of external id `customer` for: its filter's
    /// `name eq` clause picks the events, its aggregation (`sum` or `max`) adds up their
    /// `metadata[property]`.
    pub fn meter_total(&self, meter: &str, customer: &str) -> f64 {
        let s = self.state.lock().unwrap();
        let m = s
            .objects
            .get("meters")
            .and_then(|ms| ms.iter().find(|m| m["id"] == meter))
            .expect("the meter exists")
            .clone();
        let name = m["filter"]["clauses"][0]["value"].clone();
        let property = m["aggregation"]["property"].as_str().unwrap().to_owned();
        let values = s
            .events
            .iter()
            .filter(|e| e["name"] == name && e["external_customer_id"] == customer)
            .map(|e| e["metadata"][&property].as_f64().unwrap());
        match m["aggregation"]["func"].as_str().unwrap() {
            "sum" => values.sum(),
            "max" => values.fold(0.0, f64::max),
            other => panic!("the fake does not add up {other}"),
        }
    }

    pub fn pay(&self, id: &str) -> (String, Option<String>) {
        let mut s = self.state.lock().unwrap();
        let checkout = s.find("checkouts", id).expect("a checkout").clone();
        s.touch("checkouts", id, |c| c["status"] = json!("succeeded"));
        let now = s.now();
        let trial_days = checkout["active_trial_interval_count"].as_i64();
        let recurring = checkout["product"]["is_recurring"] == true;
        let amount = checkout["amount"].as_i64().unwrap();
        let customer = checkout["customer_id"].clone();
        let subscription = recurring.then(|| {
            let start = OffsetDateTime::now_utc();
            let (status, end, trial_end) = match trial_days {
                Some(days) => {
                    let end = start + Duration::from_secs(days as u64 * 86_400);
                    ("trialing", end, json!(end.format(&Rfc3339).unwrap()))
                }
                None => (
                    "active",
                    start + Duration::from_secs(30 * 86_400),
                    Value::Null,
                ),
            };
            let sub = json!({
                "created_at": now,
                "modified_at": null,
                "id": Uuid::now_v7().to_string(),
                "amount": amount,
                "currency": checkout["currency"],
                "recurring_interval": "month",
                "recurring_interval_count": 1,
                "status": status,
                "current_period_start": start.format(&Rfc3339).unwrap(),
                "current_period_end": end.format(&Rfc3339).unwrap(),
                "trial_start": if trial_days.is_some() { json!(now) } else { Value::Null },
                "trial_end": trial_end,
                "cancel_at_period_end": false,
                "canceled_at": null,
                "started_at": now,
                "ends_at": null,
                "ended_at": null,
                "customer_id": customer,
                "product_id": checkout["product_id"],
                "discount_id": null,
                "checkout_id": id,
                "metadata": checkout["metadata"],
            });
            s.list("subscriptions").push(sub.clone());
            sub["id"].as_str().unwrap().to_owned()
        });
        let net = if trial_days.is_some() { 0 } else { amount };
        let order = json!({
            "id": Uuid::now_v7().to_string(),
            "created_at": now,
            "modified_at": null,
            "status": "paid",
            "paid": true,
            "subtotal_amount": net,
            "discount_amount": 0,
            "net_amount": net,
            "tax_amount": 0,
            "total_amount": net,
            "applied_balance_amount": 0,
            "due_amount": 0,
            "refunded_amount": 0,
            "refunded_tax_amount": 0,
            "currency": checkout["currency"],
            "billing_reason": if recurring { "subscription_create" } else { "purchase" },
            "customer_id": customer,
            "product_id": checkout["product_id"],
            "discount_id": null,
            "subscription_id": subscription,
            "checkout_id": id,
            "metadata": checkout["metadata"],
            "refundable_amount": net,
            "refundable_tax_amount": 0,
        });
        s.list("orders").push(order.clone());
        (order["id"].as_str().unwrap().to_owned(), subscription)
    }

    /// POSTs a webhook of `event_type` about `data` to `url`, signed as Polar signs; the
    /// answer's status.
    pub async fn deliver(&self, url: &str, event_type: &str, data: Value) -> u16 {
        let now = OffsetDateTime::now_utc();
        let body = json!({
            "type": event_type,
            "timestamp": now.format(&Rfc3339).unwrap(),
            "data": data,
        })
        .to_string();
        let id = format!("msg_{}", Uuid::now_v7().simple());
        let headers = sign::standard_keyed(
            WEBHOOK_SECRET.as_bytes(),
            &id,
            now.unix_timestamp(),
            body.as_bytes(),
        );
        let mut request = coffer::providers::outbound::client_builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(url)
            .header("content-type", "application/json")
            .body(body);
        for h in headers {
            request = request.header(h.name.as_str(), h.value);
        }
        request.send().await.unwrap().status().as_u16()
    }
}
