//! A fake Stripe on loopback that speaks Stripe's published wire format (stripe/openapi
//! `spec3`): form-encoded requests with nested keys (`a[b][0][c]`, `a[]`), `Authorization:
//! Bearer`, JSON answers shaped as Stripe's objects, `Request-Id` on every answer, Stripe's
//! error bodies, `expand[]` (refused for a field that cannot be expanded), lists with
//! `created[gte]`, `starting_after` and `has_more`, Search by metadata, and idempotency: a
//! POST repeated with the same key and parameters replays the stored answer
//! (`Idempotent-Replayed: true`), with other parameters is an `idempotency_error`, and every
//! key's executions are counted. (Requests are executed one at a time, so Stripe's 409 for a
//! key in use by a concurrent request never arises here.)
//!
//! The test drives what a customer and Stripe would do (complete a session, decline a card,
//! open and close a dispute, move a subscription) and posts Stripe's signed events
//! (`Stripe-Signature: t=…,v1=…`) to Coffer's sidecar. Faults: an answer replaced by an error
//! (429 with `Retry-After`, 500, 402 card errors, 400), an answer delayed after the work was
//! done, or the whole API down.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

pub const API_KEY: &str = "sk_test_coffer_fake_key";

/// What a matching request gets instead of its answer.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Stripe's error body with this status, `type` and `code` (and `decline_code`), and a
    /// `Retry-After` when given. Nothing is done.
    Error {
        status: u16,
        kind: &'static str,
        code: Option<&'static str>,
        decline_code: Option<&'static str>,
        retry_after: Option<u64>,
    },
    /// The work is done, then the answer waits this long.
    Slow(Duration),
}

impl Fault {
    pub fn status(status: u16) -> Self {
        let kind = match status {
            429 => "invalid_request_error",
            400 | 404 => "invalid_request_error",
            401 => "authentication_error",
            402 => "card_error",
            _ => "api_error",
        };
        let code = match status {
            429 => Some("rate_limit"),
            _ => None,
        };
        Fault::Error {
            status,
            kind,
            code,
            decline_code: None,
            retry_after: None,
        }
    }

    pub fn rate_limited(retry_after: u64) -> Self {
        Fault::Error {
            status: 429,
            kind: "invalid_request_error",
            code: Some("rate_limit"),
            decline_code: None,
            retry_after: Some(retry_after),
        }
    }

    pub fn card_declined(decline_code: &'static str) -> Self {
        Fault::Error {
            status: 402,
            kind: "card_error",
            code: Some("card_declined"),
            decline_code: Some(decline_code),
            retry_after: None,
        }
    }
}

struct Rule {
    method: Method,
    path: String,
    left: usize,
    fault: Fault,
}

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: Method,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub stripe_version: Option<String>,
    pub status: u16,
    pub at: std::time::Instant,
    /// The request's parameters, nested as Stripe reads them.
    pub params: Value,
}

struct Stored {
    path: String,
    params: Vec<(String, String)>,
    status: u16,
    body: Value,
}

#[derive(Default)]
struct State {
    objects: HashMap<String, Value>,
    /// Creation order (ids), oldest first.
    order: Vec<String>,
    /// A session's creation parameters, for what completing it makes.
    params: HashMap<String, Value>,
    invoice_payments: HashMap<String, Vec<Value>>,
    idempotency: HashMap<String, Stored>,
    executions: HashMap<String, u32>,
    log: Vec<Logged>,
    rules: Vec<Rule>,
    down: bool,
    seq: u64,
    /// Meter events taken, in arrival order, and the identifiers Stripe remembers (for "at
    /// least 24 hours": the test can make it forget them, as a day would).
    meter_events: Vec<Value>,
    identifiers: std::collections::HashSet<String>,
    /// How many seconds an object takes to show in Search (Stripe: "under normal operating
    /// conditions, data is searchable in less than a minute"); 0 shows it at once.
    search_lag: i64,
}

/// The fake, serving until dropped.
#[derive(Clone)]
pub struct FakeStripe {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    _server: Arc<ServerGuard>,
}

struct ServerGuard(tokio::task::JoinHandle<()>);

impl Drop for ServerGuard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn random_id(prefix: &str) -> String {
    format!("{prefix}_test_{}", uuid::Uuid::now_v7().simple())
}

type Failure = (u16, Value);

fn error(
    status: u16,
    kind: &str,
    code: Option<&str>,
    message: &str,
    param: Option<&str>,
) -> Failure {
    let mut e = json!({"type": kind, "message": message});
    if let Some(code) = code {
        e["code"] = json!(code);
    }
    if let Some(param) = param {
        e["param"] = json!(param);
    }
    (status, json!({ "error": e }))
}

fn invalid(message: &str, param: Option<&str>) -> Failure {
    error(400, "invalid_request_error", None, message, param)
}

fn missing(id: &str, param: Option<&str>) -> Failure {
    error(
        404,
        "invalid_request_error",
        Some("resource_missing"),
        &format!("No such object: '{id}'"),
        param,
    )
}

/// Stripe's nested keys (`a[b][0][c]`, `a[]`) as JSON: objects whose keys are all indexes
/// become arrays.
pub fn nest(pairs: &[(String, String)]) -> Value {
    let mut root = Map::new();
    for (key, value) in pairs {
        let (head, rest) = key.split_once('[').unwrap_or((key.as_str(), ""));
        let mut segments = vec![head.to_owned()];
        if !rest.is_empty() {
            let rest = rest.strip_suffix(']').unwrap_or(rest);
            segments.extend(rest.split("][").map(str::to_owned));
        }
        insert(&mut root, &segments, value.clone());
    }
    arrays(Value::Object(root))
}

fn insert(map: &mut Map<String, Value>, segments: &[String], value: String) {
    let mut key = segments[0].clone();
    if key.is_empty() {
        key = map.len().to_string();
    }
    if segments.len() == 1 {
        map.insert(key, Value::String(value));
        return;
    }
    let child = map.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if !child.is_object() {
        *child = Value::Object(Map::new());
    }
    insert(child.as_object_mut().unwrap(), &segments[1..], value);
}

fn arrays(v: Value) -> Value {
    match v {
        Value::Object(map) => {
            let indexed =
                !map.is_empty() && map.keys().all(|k| k.bytes().all(|b| b.is_ascii_digit()));
            if indexed {
                let mut items: Vec<(usize, Value)> = map
                    .into_iter()
                    .map(|(k, v)| (k.parse().unwrap(), arrays(v)))
                    .collect();
                items.sort_by_key(|(i, _)| *i);
                Value::Array(items.into_iter().map(|(_, v)| v).collect())
            } else {
                Value::Object(map.into_iter().map(|(k, v)| (k, arrays(v))).collect())
            }
        }
        other => other,
    }
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn int(v: &Value, key: &str) -> Result<Option<i64>, Failure> {
    match text(v, key) {
        None => Ok(None),
        Some(s) => s
            .parse()
            .map(Some)
            .map_err(|_| invalid(&format!("Invalid integer: {s}"), Some(key))),
    }
}

fn metadata(v: &Value) -> Value {
    v.get("metadata").cloned().unwrap_or_else(|| json!({}))
}

/// The fields Stripe lets a request expand, on the objects the fake keeps.
const EXPANDABLE: [&str; 8] = [
    "latest_invoice",
    "payment_intent",
    "latest_charge",
    "subscription",
    "invoice",
    "customer",
    "charge",
    "payments",
];

impl State {
    fn next(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    fn put(&mut self, object: Value) -> Value {
        let id = object["id"].as_str().unwrap().to_owned();
        if !self.objects.contains_key(&id) {
            self.order.push(id.clone());
        }
        self.objects.insert(id, object.clone());
        object
    }

    fn get(&self, id: &str) -> Option<Value> {
        self.objects.get(id).cloned()
    }

    fn expand(&self, mut v: Value, paths: &[String]) -> Result<Value, Failure> {
        for path in paths {
            let segments: Vec<&str> = path.split('.').collect();
            self.expand_path(&mut v, &segments)?;
        }
        Ok(v)
    }

    fn expand_path(&self, v: &mut Value, segments: &[&str]) -> Result<(), Failure> {
        let Some((first, rest)) = segments.split_first() else {
            return Ok(());
        };
        if v.get("object").and_then(Value::as_str) == Some("list") && *first == "data" {
            if let Some(items) = v.get_mut("data").and_then(Value::as_array_mut) {
                for item in items {
                    self.expand_path(item, rest)?;
                }
            }
            return Ok(());
        }
        if !EXPANDABLE.contains(first) {
            return Err(invalid(
                &format!("This property cannot be expanded ({first})."),
                Some("expand"),
            ));
        }
        if *first == "payments" && text(v, "object") == Some("invoice") {
            let id = text(v, "id").unwrap_or_default().to_owned();
            let data = self.invoice_payments.get(&id).cloned().unwrap_or_default();
            v["payments"] = json!({"object": "list", "data": data, "has_more": false,
                                   "url": format!("/v1/invoice_payments?invoice={id}")});
        } else {
            let Some(field) = v.get(*first) else {
                return Err(invalid(
                    &format!("This property cannot be expanded ({first})."),
                    Some("expand"),
                ));
            };
            if let Some(id) = field.as_str() {
                let object = self.get(id).unwrap_or(Value::Null);
                v[*first] = object;
            }
        }
        match v.get_mut(*first) {
            Some(child) if !child.is_null() => self.expand_path(child, rest),
            _ => Ok(()),
        }
    }

    /// Objects whose id starts with `prefix`, newest first.
    fn newest(&self, prefix: &str) -> Vec<Value> {
        self.order
            .iter()
            .rev()
            .filter(|id| id.starts_with(prefix))
            .filter_map(|id| self.get(id))
            .collect()
    }

    fn list(
        &self,
        prefix: &str,
        query: &Value,
        url: &str,
        keep: impl Fn(&Value) -> bool,
    ) -> Result<Value, Failure> {
        let gte = match query.get("created").and_then(|c| c.get("gte")) {
            Some(Value::String(s)) => Some(
                s.parse::<i64>()
                    .map_err(|_| invalid("Invalid integer", Some("created[gte]")))?,
            ),
            _ => None,
        };
        let limit = int(query, "limit")?.unwrap_or(10);
        if !(1..=100).contains(&limit) {
            return Err(invalid(
                "Invalid limit: must be between 1 and 100",
                Some("limit"),
            ));
        }
        let mut all: Vec<Value> = self
            .newest(prefix)
            .into_iter()
            .filter(|o| gte.is_none_or(|g| o["created"].as_i64().unwrap_or(0) >= g))
            .filter(|o| keep(o))
            .collect();
        if let Some(after) = text(query, "starting_after") {
            let at = all
                .iter()
                .position(|o| o["id"] == after)
                .ok_or_else(|| missing(after, Some("starting_after")))?;
            all.drain(..=at);
        }
        let has_more = all.len() > limit as usize;
        all.truncate(limit as usize);
        Ok(json!({"object": "list", "data": all, "has_more": has_more, "url": url}))
    }

    fn search(&self, prefix: &str, query: &Value, url: &str) -> Result<Value, Failure> {
        // The one form Coffer sends: metadata['key']:'value'.
        let q = text(query, "query")
            .ok_or_else(|| invalid("Missing required param: query.", Some("query")))?;
        let parsed = q
            .strip_prefix("metadata['")
            .and_then(|r| r.split_once("']:'"))
            .and_then(|(k, v)| Some((k, v.strip_suffix('\'')?)));
        let Some((key, value)) = parsed else {
            return Err(invalid(
                &format!("Invalid search query: {q}"),
                Some("query"),
            ));
        };
        let indexed_before = now() - self.search_lag;
        let data: Vec<Value> = self
            .newest(prefix)
            .into_iter()
            .filter(|o| o["metadata"][key] == value)
            .filter(|o| self.search_lag == 0 || o["created"].as_i64().unwrap_or(0) < indexed_before)
            .collect();
        Ok(
            json!({"object": "search_result", "data": data, "has_more": false,
                  "next_page": null, "url": url}),
        )
    }

    /// A price, or the inline `price_data` of a line, as (currency, unit_amount, recurring).
    fn line(&self, item: &Value) -> Result<(String, i64, Option<Value>, i64), Failure> {
        let quantity = int(item, "quantity")?.unwrap_or(1);
        if let Some(price) = text(item, "price") {
            let p = self
                .get(price)
                .ok_or_else(|| missing(price, Some("line_items[0][price]")))?;
            if p["recurring"]["usage_type"] == "metered" && item.get("quantity").is_some() {
                return Err(invalid(
                    "Quantity should not be specified where usage_type is `metered`.",
                    Some("line_items[0][quantity]"),
                ));
            }
            return Ok((
                p["currency"].as_str().unwrap().to_owned(),
                p["unit_amount"].as_i64().unwrap(),
                Some(p["recurring"].clone()).filter(|r| !r.is_null()),
                quantity,
            ));
        }
        let data = item.get("price_data").ok_or_else(|| {
            invalid(
                "You must specify either price or price_data.",
                Some("line_items"),
            )
        })?;
        let currency =
            text(data, "currency").ok_or_else(|| invalid("Missing currency", Some("currency")))?;
        let amount = int(data, "unit_amount")?
            .ok_or_else(|| invalid("Missing unit_amount", Some("unit_amount")))?;
        text(&data["product_data"], "name")
            .ok_or_else(|| invalid("Missing product name", Some("product_data[name]")))?;
        let recurring = data.get("recurring").map(|r| {
            json!({"interval": r["interval"], "interval_count":
                   text(r, "interval_count").and_then(|c| c.parse::<i64>().ok()).unwrap_or(1)})
        });
        Ok((currency.to_owned(), amount, recurring, quantity))
    }

    fn create_session(&mut self, p: &Value) -> Result<Value, Failure> {
        let mode = text(p, "mode")
            .ok_or_else(|| invalid("Missing required param: mode.", Some("mode")))?;
        if !matches!(mode, "payment" | "subscription") {
            return Err(invalid("Invalid mode", Some("mode")));
        }
        text(p, "success_url")
            .ok_or_else(|| invalid("Missing success_url", Some("success_url")))?;
        let items = p["line_items"].as_array().cloned().unwrap_or_default();
        if items.is_empty() {
            return Err(invalid("line_items is required", Some("line_items")));
        }
        let (mut total, mut currency, mut recurring) = (0, None::<String>, false);
        for item in &items {
            let (c, amount, r, quantity) = self.line(item)?;
            if currency.as_ref().is_some_and(|cur| *cur != c) {
                return Err(invalid(
                    "All line items must be in one currency",
                    Some("line_items"),
                ));
            }
            currency = Some(c);
            recurring |= r.is_some();
            total += amount * quantity;
        }
        if mode == "payment" && recurring {
            return Err(invalid(
                "You can not pass recurring prices in payment mode.",
                Some("line_items"),
            ));
        }
        if mode == "subscription" && !recurring {
            return Err(invalid(
                "You must provide at least one recurring price in subscription mode.",
                Some("line_items"),
            ));
        }
        if let Some(customer) = text(p, "customer")
            && self.get(customer).is_none()
        {
            return Err(missing(customer, Some("customer")));
        }
        let now = now();
        let expires_at = int(p, "expires_at")?.unwrap_or(now + 86_400);
        if expires_at < now + 1800 || expires_at > now + 86_400 {
            return Err(invalid(
                "The `expires_at` timestamp must be between 30 minutes and 24 hours from Checkout Session creation.",
                Some("expires_at"),
            ));
        }
        if let Some(days) = p
            .get("subscription_data")
            .and_then(|s| text(s, "trial_period_days"))
            && days.parse::<i64>().map_or(true, |d| d < 1)
        {
            return Err(invalid(
                "trial_period_days must be at least 1",
                Some("subscription_data[trial_period_days]"),
            ));
        }
        let id = random_id("cs");
        let created = now;
        self.next();
        let session = json!({
            "id": id, "object": "checkout.session", "mode": mode, "status": "open",
            "payment_status": "unpaid", "url": format!("https://checkout.stripe.com/c/pay/{id}"),
            "expires_at": expires_at, "created": created, "livemode": false,
            "client_reference_id": p.get("client_reference_id").cloned().unwrap_or(Value::Null),
            "metadata": metadata(p), "customer": p.get("customer").cloned().unwrap_or(Value::Null),
            "amount_total": total, "amount_subtotal": total, "currency": currency,
            "success_url": p["success_url"], "cancel_url": p.get("cancel_url").cloned().unwrap_or(Value::Null),
            "payment_intent": null, "subscription": null, "invoice": null,
        });
        self.params.insert(id, p.clone());
        Ok(self.put(session))
    }

    /// `POST /v1/subscriptions` (`payment_behavior` Stripe's default, `allow_incomplete`):
    /// `trialing` until `trial_end` with `trial_period_days`; else the first invoice is paid
    /// now with the customer's `invoice_settings.default_payment_method`, and a customer with
    /// none is Stripe's 400 `resource_missing`; Stripe's test method `pm_card_chargeCustomerFail`
    /// (attaches, declines every charge) leaves the invoice open and the subscription
    /// `incomplete`. One item: `items[0][price]` and `[quantity]`.
    fn create_subscription(&mut self, p: &Value) -> Result<Value, Failure> {
        let customer_id = text(p, "customer")
            .ok_or_else(|| invalid("Missing required param: customer.", Some("customer")))?
            .to_owned();
        let customer = self
            .get(&customer_id)
            .ok_or_else(|| missing(&customer_id, Some("customer")))?;
        let items = p["items"].as_array().cloned().unwrap_or_default();
        let [item] = items.as_slice() else {
            return Err(invalid(
                "Coffer's fake takes exactly one item.",
                Some("items"),
            ));
        };
        let price_id = text(item, "price")
            .ok_or_else(|| invalid("Missing required param: items[0][price].", Some("items")))?;
        let price = self
            .get(price_id)
            .ok_or_else(|| missing(price_id, Some("items[0][price]")))?;
        let Some(recurring) = price.get("recurring").filter(|r| !r.is_null()).cloned() else {
            return Err(invalid(
                "The price specified is set to `type=one_time` but this field only accepts prices with `type=recurring`.",
                Some("items[0][price]"),
            ));
        };
        let quantity = int(item, "quantity")?.unwrap_or(1);
        let trial = int(p, "trial_period_days")?.unwrap_or(0);
        let card = customer["invoice_settings"]["default_payment_method"].clone();
        if trial == 0 && card.as_str().is_none() {
            return Err(error(
                400,
                "invalid_request_error",
                Some("resource_missing"),
                "This customer has no attached payment source or default payment method. \
                 Please consider adding a default payment method. For more information, visit \
                 https://stripe.com/docs/billing/subscriptions/payment-methods-setting#payment-method-priority.",
                None,
            ));
        }
        let now = now();
        let months = match recurring["interval"].as_str() {
            Some("year") => 12,
            _ => 1,
        } * recurring["interval_count"].as_i64().unwrap_or(1);
        let end = if trial > 0 {
            now + trial * 86_400
        } else {
            now + months * 30 * 86_400
        };
        let metadata = metadata(p);
        let sub_id = random_id("sub");
        let due = if trial > 0 {
            0
        } else {
            price["unit_amount"].as_i64().unwrap_or(0) * quantity
        };
        // Stripe's test card that attaches but declines every charge.
        let declines = trial == 0 && card == "pm_card_chargeCustomerFail";
        let invoice_id = self.subscription_invoice(
            &sub_id,
            &metadata,
            &json!(customer_id),
            (&price, quantity),
            due,
            "subscription_create",
            (now, end),
        );
        if declines {
            self.set_invoice_paid(&invoice_id, false, Some("generic_decline"));
        }
        self.next();
        Ok(self.put(json!({
            "id": sub_id, "object": "subscription",
            "status": if trial > 0 { "trialing" } else if declines { "incomplete" } else { "active" },
            "metadata": metadata,
            "customer": customer_id, "created": now, "start_date": now,
            "trial_start": if trial > 0 { json!(now) } else { Value::Null },
            "trial_end": if trial > 0 { json!(end) } else { Value::Null },
            "cancel_at_period_end": false, "pause_collection": null,
            "default_payment_method": null,
            "items": {"object": "list", "has_more": false, "data": [{
                "id": random_id("si"), "object": "subscription_item",
                "quantity": quantity, "price": price,
                "current_period_start": now, "current_period_end": end,
            }]},
            "schedule": null, "latest_invoice": invoice_id,
        })))
    }

    /// A subscription's invoice, finalized and paid at once by the customer's card when it
    /// charges something (a succeeded payment intent, listed as the invoice's payment): one
    /// line for the item over `period`, `billing_reason` as Stripe sets it
    /// (`subscription_create`, `subscription_cycle`), the subscription's metadata copied to
    /// `parent.subscription_details`. `period_start`/`period_end` are Stripe's "usage period"
    /// (the period before a renewal's, a point for the first invoice). Its id.
    #[allow(clippy::too_many_arguments)]
    fn subscription_invoice(
        &mut self,
        sub_id: &str,
        sub_metadata: &Value,
        customer: &Value,
        item: (&Value, i64),
        amount: i64,
        billing_reason: &str,
        period: (i64, i64),
    ) -> String {
        let (price, quantity) = item;
        let (start, end) = period;
        let usage = if billing_reason == "subscription_cycle" {
            (start - (end - start), start)
        } else {
            (start, start)
        };
        let currency = price["currency"].clone();
        let invoice_id = random_id("in");
        self.next();
        self.put(json!({
            "id": invoice_id, "object": "invoice", "status": "paid", "currency": currency,
            "customer": customer, "amount_due": amount, "amount_paid": amount,
            "amount_remaining": 0, "created": now(), "subscription": null,
            "billing_reason": billing_reason, "collection_method": "charge_automatically",
            "period_start": usage.0, "period_end": usage.1,
            "parent": {"type": "subscription_details", "quote_details": null,
                       "subscription_details": {"subscription": sub_id, "metadata": sub_metadata}},
            "lines": {"object": "list", "has_more": false,
                      "url": format!("/v1/invoices/{invoice_id}/lines"), "data": [{
                "id": random_id("il"), "object": "line_item", "amount": amount,
                "currency": currency, "invoice": invoice_id, "quantity": quantity,
                "period": {"start": start, "end": end},
                "pricing": {"type": "price_details", "unit_amount_decimal":
                            price["unit_amount"].as_i64().unwrap_or(0).to_string(),
                            "price_details": {"price": price["id"], "product": price["product"]}},
                "parent": {"type": "subscription_item_details", "invoice_item_details": null,
                           "subscription_item_details": {"subscription": sub_id,
                               "subscription_item": null, "invoice_item": null,
                               "proration": false, "proration_details": {"credited_items": null}}},
            }]},
        }));
        if amount > 0 {
            let pi = pay(self, amount, &currency, json!({}), customer);
            let payment = json!({
                "id": random_id("inpay"), "object": "invoice_payment", "invoice": invoice_id,
                "status": "paid", "amount_paid": amount, "amount_requested": amount,
                "currency": currency, "is_default": true, "livemode": false, "created": now(),
                "payment": {"type": "payment_intent", "payment_intent": pi},
            });
            self.next();
            self.put(payment.clone());
            self.invoice_payments
                .insert(invoice_id.clone(), vec![payment]);
        }
        invoice_id
    }

    /// The invoice's charge paid, or declined with `decline_code`: the invoice, its invoice
    /// payments, their payment intents and charges moved together. Answers the invoice.
    fn set_invoice_paid(&mut self, id: &str, paid: bool, decline_code: Option<&str>) -> Value {
        let mut invoice = self.get(id).unwrap();
        let due = invoice["amount_due"].as_i64().unwrap();
        invoice["status"] = json!(if paid { "paid" } else { "open" });
        invoice["amount_paid"] = json!(if paid { due } else { 0 });
        invoice["amount_remaining"] = json!(if paid { 0 } else { due });
        let mut payments = self.invoice_payments[id].clone();
        for p in &mut payments {
            p["status"] = json!(if paid { "paid" } else { "open" });
            p["amount_paid"] = json!(if paid { due } else { 0 });
            let pi = p["payment"]["payment_intent"].as_str().unwrap().to_owned();
            let mut intent = self.get(&pi).unwrap();
            intent["status"] = json!(if paid {
                "succeeded"
            } else {
                "requires_payment_method"
            });
            intent["amount_received"] = json!(if paid { due } else { 0 });
            intent["last_payment_error"] = match decline_code {
                Some(code) => json!({"type": "card_error", "code": "card_declined",
                                     "decline_code": code}),
                None => Value::Null,
            };
            let charge = intent["latest_charge"].as_str().unwrap().to_owned();
            self.put(intent);
            let mut c = self.get(&charge).unwrap();
            c["status"] = json!(if paid { "succeeded" } else { "failed" });
            c["paid"] = json!(paid);
            c["failure_code"] = if paid {
                Value::Null
            } else {
                json!("card_declined")
            };
            self.put(c);
            self.put(p.clone());
        }
        self.invoice_payments.insert(id.to_owned(), payments);
        self.put(invoice)
    }

    fn create_refund(&mut self, p: &Value) -> Result<Value, Failure> {
        let pi_id = text(p, "payment_intent")
            .ok_or_else(|| invalid("Missing payment_intent", Some("payment_intent")))?;
        let pi = self
            .get(pi_id)
            .ok_or_else(|| missing(pi_id, Some("payment_intent")))?;
        if pi["status"] != "succeeded" {
            return Err(invalid(
                "This PaymentIntent has not succeeded",
                Some("payment_intent"),
            ));
        }
        let charge_id = pi["latest_charge"].as_str().unwrap().to_owned();
        let mut charge = self.get(&charge_id).unwrap();
        let left = charge["amount"].as_i64().unwrap() - charge["amount_refunded"].as_i64().unwrap();
        if left == 0 {
            return Err(error(
                400,
                "invalid_request_error",
                Some("charge_already_refunded"),
                &format!("Charge {charge_id} has already been refunded."),
                None,
            ));
        }
        let amount = int(p, "amount")?.unwrap_or(left);
        if amount <= 0 || amount > left {
            return Err(error(
                400,
                "invalid_request_error",
                Some("amount_too_large"),
                &format!(
                    "Refund amount ({amount}) is greater than unrefunded amount on charge ({left})"
                ),
                Some("amount"),
            ));
        }
        charge["amount_refunded"] = json!(charge["amount_refunded"].as_i64().unwrap() + amount);
        charge["refunded"] = json!(charge["amount_refunded"] == charge["amount"]);
        self.put(charge);
        self.next();
        Ok(self.put(json!({
            "id": random_id("re"), "object": "refund", "amount": amount, "currency": pi["currency"],
            "status": "succeeded", "payment_intent": pi_id, "charge": charge_id,
            "metadata": metadata(p), "created": now(), "reason": p.get("reason").cloned().unwrap_or(Value::Null),
        })))
    }

    fn create_price(&mut self, p: &Value) -> Result<Value, Failure> {
        let currency =
            text(p, "currency").ok_or_else(|| invalid("Missing currency", Some("currency")))?;
        let amount = int(p, "unit_amount")?
            .ok_or_else(|| invalid("Missing unit_amount", Some("unit_amount")))?;
        let product = match (text(p, "product"), p.get("product_data")) {
            (Some(id), _) => id.to_owned(),
            (None, Some(data)) => {
                let name = text(data, "name")
                    .ok_or_else(|| invalid("Missing name", Some("product_data[name]")))?;
                let id = random_id("prod");
                self.put(
                    json!({"id": id, "object": "product", "name": name, "metadata": metadata(data),
                                "created": now(), "active": true}),
                );
                id
            }
            _ => {
                return Err(invalid(
                    "Either product or product_data is required",
                    Some("product"),
                ));
            }
        };
        let lookup_key = text(p, "lookup_key").map(str::to_owned);
        if let Some(key) = &lookup_key {
            let holder = self
                .newest("price_")
                .into_iter()
                .find(|q| q["lookup_key"] == key.as_str());
            if let Some(mut holder) = holder {
                if text(p, "transfer_lookup_key") != Some("true") {
                    return Err(invalid(
                        &format!("A price (`{}`) already uses that lookup key.", holder["id"]),
                        Some("lookup_key"),
                    ));
                }
                holder["lookup_key"] = Value::Null;
                self.put(holder);
            }
        }
        let recurring = match p.get("recurring") {
            None => None,
            Some(r) => {
                let usage_type = text(r, "usage_type").unwrap_or("licensed");
                let meter = text(r, "meter");
                if usage_type == "metered" {
                    let meter = meter.ok_or_else(|| {
                        invalid("A metered price needs a meter.", Some("recurring[meter]"))
                    })?;
                    self.get(meter)
                        .ok_or_else(|| missing(meter, Some("recurring[meter]")))?;
                }
                Some(json!({"interval": r["interval"], "interval_count":
                   text(r, "interval_count").and_then(|c| c.parse::<i64>().ok()).unwrap_or(1),
                   "usage_type": usage_type, "meter": meter}))
            }
        };
        self.next();
        Ok(self.put(json!({
            "id": random_id("price"), "object": "price", "active": true, "currency": currency,
            "unit_amount": amount, "product": product, "lookup_key": lookup_key,
            "metadata": metadata(p), "recurring": recurring, "created": now(),
            "type": if recurring.is_some() { "recurring" } else { "one_time" },
        })))
    }

    /// `POST /v1/billing/meters`: an active meter; its event name is the account's only one.
    fn create_meter(&mut self, p: &Value) -> Result<Value, Failure> {
        let display = text(p, "display_name").ok_or_else(|| {
            invalid(
                "Missing required param: display_name.",
                Some("display_name"),
            )
        })?;
        let event_name = text(p, "event_name")
            .ok_or_else(|| invalid("Missing required param: event_name.", Some("event_name")))?;
        let formula = text(&p["default_aggregation"], "formula").ok_or_else(|| {
            invalid(
                "Missing required param: default_aggregation[formula].",
                Some("default_aggregation[formula]"),
            )
        })?;
        if !["sum", "count", "last"].contains(&formula) {
            return Err(invalid(
                "Invalid default_aggregation[formula]",
                Some("default_aggregation[formula]"),
            ));
        }
        if self
            .newest("mtr_")
            .iter()
            .any(|m| m["event_name"] == event_name && m["status"] == "active")
        {
            return Err(invalid(
                &format!("An active meter already uses the event name {event_name}."),
                Some("event_name"),
            ));
        }
        let customer_key = text(&p["customer_mapping"], "event_payload_key")
            .unwrap_or("stripe_customer_id")
            .to_owned();
        let value_key = text(&p["value_settings"], "event_payload_key")
            .unwrap_or("value")
            .to_owned();
        self.next();
        Ok(self.put(json!({
            "id": random_id("mtr"), "object": "billing.meter", "display_name": display,
            "event_name": event_name, "status": "active", "created": now(),
            "default_aggregation": {"formula": formula},
            "customer_mapping": {"type": "by_id", "event_payload_key": customer_key},
            "value_settings": {"event_payload_key": value_key},
            "event_time_window": null, "livemode": false,
        })))
    }

    /// `POST /v1/billing/meter_events`: validated at once as Stripe's v1 endpoint does (an
    /// active meter of the event name, a known customer, a whole non-negative value), and
    /// refused when its identifier was taken already.
    fn meter_event(&mut self, p: &Value) -> Result<Value, Failure> {
        let event_name = text(p, "event_name")
            .ok_or_else(|| invalid("Missing required param: event_name.", Some("event_name")))?
            .to_owned();
        let meter = self
            .newest("mtr_")
            .into_iter()
            .find(|m| m["event_name"] == event_name.as_str() && m["status"] == "active")
            .ok_or_else(|| {
                invalid(
                    &format!("No active meter was found with event_name {event_name}."),
                    Some("event_name"),
                )
            })?;
        let payload = &p["payload"];
        let customer_key = meter["customer_mapping"]["event_payload_key"]
            .as_str()
            .unwrap();
        let value_key = meter["value_settings"]["event_payload_key"]
            .as_str()
            .unwrap();
        let customer = text(payload, customer_key)
            .ok_or_else(|| invalid("Missing customer in payload", Some("payload")))?
            .to_owned();
        self.get(&customer)
            .ok_or_else(|| missing(&customer, Some("payload")))?;
        let value = text(payload, value_key).unwrap_or("1");
        let value: i64 = value
            .parse()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| invalid("The value must be a whole number.", Some("payload")))?;
        let identifier = text(p, "identifier")
            .map(str::to_owned)
            .unwrap_or_else(|| random_id("mev"));
        if !self.identifiers.insert(identifier.clone()) {
            return Err(invalid(
                &format!("An event already exists with identifier {identifier}."),
                None,
            ));
        }
        let timestamp = int(p, "timestamp")?.unwrap_or_else(now);
        let event = json!({
            "object": "billing.meter_event", "created": now(), "event_name": event_name,
            "identifier": identifier, "livemode": false, "timestamp": timestamp,
            "payload": {customer_key: customer, value_key: value.to_string()},
        });
        self.meter_events.push(json!({
            "event_name": event_name, "customer": customer, "value": value,
            "identifier": identifier, "timestamp": timestamp,
        }));
        Ok(event)
    }

    /// The proration lines of moving `sub`'s item to `items[0]` (price, quantity) at
    /// `proration_date` (or now), to the second: a credit of the unused time on the old total
    /// and a charge of the remaining time on the new, each rounded to the nearest minor unit
    /// (halves away from zero). Also answers the new price object and quantity.
    fn prorations(
        &self,
        sub: &Value,
        items: &Value,
        proration_date: Option<i64>,
        param: &str,
    ) -> Result<(Vec<Value>, Value, i64), Failure> {
        let asked = items
            .get(0)
            .ok_or_else(|| invalid("Missing items", Some(param)))?;
        let item = &sub["items"]["data"][0];
        if text(asked, "id") != item["id"].as_str() {
            return Err(invalid(
                "Subscription item does not belong to this subscription.",
                Some(&format!("{param}[0][id]")),
            ));
        }
        let new_price = match text(asked, "price") {
            Some(price) => self
                .get(price)
                .ok_or_else(|| missing(price, Some(&format!("{param}[0][price]"))))?,
            None => item["price"].clone(),
        };
        let quantity = int(asked, "quantity")?.unwrap_or(item["quantity"].as_i64().unwrap_or(1));
        let (start, end) = (
            item["current_period_start"].as_i64().unwrap(),
            item["current_period_end"].as_i64().unwrap(),
        );
        let at = proration_date.unwrap_or_else(now);
        if at < start || at > end {
            return Err(invalid(
                "proration_date must be within the current period.",
                Some("proration_date"),
            ));
        }
        let old_total =
            item["price"]["unit_amount"].as_i64().unwrap() * item["quantity"].as_i64().unwrap_or(1);
        let new_total = new_price["unit_amount"].as_i64().unwrap() * quantity;
        let share = |total: i64| -> i64 {
            let (n, d) = (
                i128::from(total) * i128::from(end - at),
                i128::from(end - start),
            );
            (if 2 * (n % d) >= d { n / d + 1 } else { n / d }) as i64
        };
        let line = |amount: i64, description: &str| {
            json!({"id": random_id("il"), "object": "line_item", "amount": amount,
                   "currency": new_price["currency"], "description": description,
                   "period": {"start": at, "end": end},
                   "parent": {"type": "subscription_item_details",
                              "subscription_item_details": {"proration": true,
                                  "subscription": sub["id"], "subscription_item": item["id"]}}})
        };
        Ok((
            vec![
                line(-share(old_total), "Unused time"),
                line(share(new_total), "Remaining time"),
            ],
            new_price,
            quantity,
        ))
    }

    /// A subscription's item moved to another price or quantity, prorated as
    /// `proration_behavior` says: `create_prorations` (the default) leaves pending invoice
    /// items for the next invoice, `always_invoice` invoices them now (paid at once when
    /// positive), `none` prorates nothing.
    fn change_items(&mut self, mut sub: Value, items: &Value, p: &Value) -> Result<Value, Failure> {
        let behavior = text(p, "proration_behavior").unwrap_or("create_prorations");
        if !["create_prorations", "always_invoice", "none"].contains(&behavior) {
            return Err(invalid(
                "Invalid proration_behavior",
                Some("proration_behavior"),
            ));
        }
        let (lines, price, quantity) =
            self.prorations(&sub, items, int(p, "proration_date")?, "items")?;
        let currency = price["currency"].clone();
        match behavior {
            "create_prorations" => {
                for l in &lines {
                    self.next();
                    self.put(json!({"id": random_id("ii"), "object": "invoiceitem",
                                    "amount": l["amount"], "currency": currency,
                                    "proration": true, "subscription": sub["id"],
                                    "customer": sub["customer"], "invoice": null,
                                    "period": l["period"], "date": now()}));
                }
            }
            "always_invoice" => {
                let total: i64 = lines.iter().map(|l| l["amount"].as_i64().unwrap()).sum();
                let due = total.max(0);
                let invoice_id = random_id("in");
                self.next();
                self.put(json!({
                    "id": invoice_id, "object": "invoice", "status": "paid", "currency": currency,
                    "amount_due": due, "amount_paid": due, "created": now(),
                    "subscription": null, "billing_reason": "subscription_update",
                    "customer": sub["customer"],
                    "lines": {"object": "list", "has_more": false, "data": lines},
                    "parent": {"type": "subscription_details", "quote_details": null,
                               "subscription_details": {"subscription": sub["id"],
                                                        "metadata": sub["metadata"]}},
                }));
                if due > 0 {
                    let pi = pay(self, due, &currency, json!({}), &sub["customer"]);
                    self.invoice_payments.insert(
                        invoice_id.clone(),
                        vec![json!({
                            "id": random_id("inpay"), "object": "invoice_payment",
                            "invoice": invoice_id, "status": "paid", "amount_paid": due,
                            "payment": {"type": "payment_intent", "payment_intent": pi},
                        })],
                    );
                }
                sub["latest_invoice"] = json!(invoice_id);
            }
            _ => {}
        }
        sub["items"]["data"][0]["price"] = price;
        sub["items"]["data"][0]["quantity"] = json!(quantity);
        Ok(sub)
    }

    /// The invoice a subscription change would make (`POST /v1/invoices/create_preview`):
    /// with `always_invoice`, the proration lines alone (the invoice made now); otherwise the
    /// next period's invoice — its pending prorations (with `create_prorations`) and the next
    /// period's charge at the new price.
    fn preview_invoice(&self, p: &Value) -> Result<Value, Failure> {
        let sub_id = text(p, "subscription")
            .ok_or_else(|| invalid("Missing subscription", Some("subscription")))?;
        let sub = self
            .get(sub_id)
            .ok_or_else(|| missing(sub_id, Some("subscription")))?;
        if text(p, "customer").is_some_and(|c| sub["customer"] != c) {
            return Err(invalid(
                "The subscription belongs to another customer.",
                Some("customer"),
            ));
        }
        let details = &p["subscription_details"];
        let behavior = text(details, "proration_behavior").unwrap_or("create_prorations");
        let (prorations, price, quantity) = self.prorations(
            &sub,
            &details["items"],
            int(details, "proration_date")?,
            "subscription_details[items]",
        )?;
        let item = &sub["items"]["data"][0];
        let (start, end) = (
            item["current_period_start"].as_i64().unwrap(),
            item["current_period_end"].as_i64().unwrap(),
        );
        let next = json!({"id": random_id("il"), "object": "line_item",
            "amount": price["unit_amount"].as_i64().unwrap() * quantity,
            "currency": price["currency"], "description": "Next period",
            "period": {"start": end, "end": end + (end - start)},
            "parent": {"type": "subscription_item_details",
                       "subscription_item_details": {"proration": false,
                           "subscription": sub["id"], "subscription_item": item["id"]}}});
        let lines: Vec<Value> = match behavior {
            "always_invoice" => prorations,
            "none" => vec![next],
            _ => prorations.into_iter().chain([next]).collect(),
        };
        let total: i64 = lines.iter().map(|l| l["amount"].as_i64().unwrap()).sum();
        Ok(
            json!({"id": null, "object": "invoice", "currency": price["currency"],
                  "amount_due": total.max(0), "total": total, "subscription": null,
                  "customer": sub["customer"],
                  "lines": {"object": "list", "has_more": false, "data": lines}}),
        )
    }

    /// A schedule made from a subscription: one phase, the current one (Stripe refuses a
    /// subscription that already has a schedule).
    fn create_schedule(&mut self, p: &Value) -> Result<Value, Failure> {
        let sub_id = text(p, "from_subscription")
            .ok_or_else(|| invalid("Missing from_subscription", Some("from_subscription")))?;
        let mut sub = self
            .get(sub_id)
            .ok_or_else(|| missing(sub_id, Some("from_subscription")))?;
        if !sub["schedule"].is_null() {
            return Err(invalid(
                "You cannot migrate a subscription that is already attached to a schedule.",
                Some("from_subscription"),
            ));
        }
        let item = &sub["items"]["data"][0];
        let phase = json!({"start_date": item["current_period_start"],
                           "end_date": item["current_period_end"],
                           "items": [{"price": item["price"]["id"], "quantity": item["quantity"]}]});
        let id = random_id("sub_sched");
        self.next();
        let schedule = self.put(json!({"id": id, "object": "subscription_schedule",
            "status": "active", "subscription": sub_id, "end_behavior": "release",
            "current_phase": {"start_date": phase["start_date"], "end_date": phase["end_date"]},
            "phases": [phase], "metadata": {}, "customer": sub["customer"]}));
        sub["schedule"] = json!(id);
        self.put(sub);
        Ok(schedule)
    }

    /// A schedule's phases replaced: the first must start when the current phase started.
    fn update_schedule(&mut self, id: &str, p: &Value) -> Result<Value, Failure> {
        let mut schedule = self.get(id).ok_or_else(|| missing(id, Some("schedule")))?;
        let phases = p["phases"]
            .as_array()
            .cloned()
            .ok_or_else(|| invalid("Missing phases", Some("phases")))?;
        if int(&phases[0], "start_date")? != schedule["current_phase"]["start_date"].as_i64() {
            return Err(invalid(
                "You can not modify the start date of the current phase.",
                Some("phases[0][start_date]"),
            ));
        }
        for (i, phase) in phases.iter().enumerate() {
            let price = text(&phase["items"][0], "price").unwrap_or_default();
            if self.get(price).is_none() {
                return Err(missing(
                    price,
                    Some(&format!("phases[{i}][items][0][price]")),
                ));
            }
        }
        // Stripe fills in each phase's dates: a phase starts when the one before ends, and
        // one without an end lasts one billing period.
        let sub = self
            .get(schedule["subscription"].as_str().unwrap())
            .unwrap();
        let item = &sub["items"]["data"][0];
        let length = item["current_period_end"].as_i64().unwrap()
            - item["current_period_start"].as_i64().unwrap();
        let mut start = schedule["current_phase"]["start_date"].as_i64().unwrap();
        let mut filled = Vec::new();
        for ph in &phases {
            let begins = int(ph, "start_date")?.unwrap_or(start);
            let ends = int(ph, "end_date")?.unwrap_or(begins + length);
            filled.push(json!({"start_date": begins, "end_date": ends,
                               "proration_behavior": ph["proration_behavior"],
                               "items": [{"price": ph["items"][0]["price"],
                                          "quantity": int(&ph["items"][0], "quantity")?.unwrap_or(1)}]}));
            start = ends;
        }
        schedule["phases"] = json!(filled);
        if let Some(b) = text(p, "end_behavior") {
            schedule["end_behavior"] = json!(b);
        }
        if let Some(Value::Object(m)) = p.get("metadata") {
            for (k, v) in m {
                schedule["metadata"][k] = v.clone();
            }
        }
        Ok(self.put(schedule))
    }

    fn execute(&mut self, method: &Method, path: &str, p: &Value) -> Result<Value, Failure> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let expand: Vec<String> = p["expand"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        let get = |this: &Self, id: &str| this.get(id).ok_or_else(|| missing(id, Some("id")));
        let found = match (method.as_str(), segments.as_slice()) {
            ("POST", ["v1", "customers"]) => {
                self.next();
                self.put(
                    json!({"id": random_id("cus"), "object": "customer", "email": p.get("email"),
                                "name": p.get("name"), "metadata": metadata(p), "created": now()}),
                )
            }
            // A billing portal session: its customer must exist, its return_url be given.
            ("POST", ["v1", "billing_portal", "sessions"]) => {
                let customer = text(p, "customer")
                    .ok_or_else(|| invalid("Missing required param: customer.", Some("customer")))?
                    .to_owned();
                if self.get(&customer).is_none() {
                    return Err(missing(&customer, Some("customer")));
                }
                let Some(return_url) = text(p, "return_url").map(str::to_owned) else {
                    return Err(invalid(
                        "Missing required param: return_url.",
                        Some("return_url"),
                    ));
                };
                self.next();
                let id = random_id("bps");
                self.put(json!({"id": id, "object": "billing_portal.session",
                    "customer": customer, "return_url": return_url, "livemode": false,
                    "url": format!("https://billing.stripe.com/p/session/{id}"),
                    "created": now()}))
            }
            ("GET", ["v1", "customers"]) => self.list("cus_", p, "/v1/customers", |_| true)?,
            ("GET", ["v1", "customers", "search"]) => {
                self.search("cus_", p, "/v1/customers/search")?
            }
            ("GET", ["v1", "customers", id]) => get(self, id)?,
            ("POST", ["v1", "prices"]) => self.create_price(p)?,
            ("GET", ["v1", "prices"]) => {
                let keys: Vec<Value> = p["lookup_keys"].as_array().cloned().unwrap_or_default();
                self.list("price_", p, "/v1/prices", |o| {
                    keys.is_empty() || keys.contains(&o["lookup_key"])
                })?
            }
            ("GET", ["v1", "prices", id]) => get(self, id)?,
            ("POST", ["v1", "checkout", "sessions"]) => self.create_session(p)?,
            ("GET", ["v1", "checkout", "sessions"]) => {
                let pi = text(p, "payment_intent").map(str::to_owned);
                let sub = text(p, "subscription").map(str::to_owned);
                self.list("cs_", p, "/v1/checkout/sessions", |o| {
                    pi.as_ref()
                        .is_none_or(|pi| o["payment_intent"] == pi.as_str())
                        && sub.as_ref().is_none_or(|s| o["subscription"] == s.as_str())
                })?
            }
            ("GET", ["v1", "checkout", "sessions", id]) => get(self, id)?,
            ("POST", ["v1", "checkout", "sessions", id, "expire"]) => {
                let mut s = get(self, id)?;
                if s["status"] != "open" {
                    return Err(invalid(
                        "Only Checkout Sessions with a status in [\"open\"] can be expired.",
                        None,
                    ));
                }
                s["status"] = json!("expired");
                s["url"] = Value::Null;
                self.put(s)
            }
            ("GET", ["v1", "payment_intents", "search"]) => {
                self.search("pi_", p, "/v1/payment_intents/search")?
            }
            ("GET", ["v1", "payment_intents", id]) => get(self, id)?,
            ("GET", ["v1", "charges", id]) => get(self, id)?,
            ("POST", ["v1", "subscriptions"]) => self.create_subscription(p)?,
            // `status=all` is the only status Coffer asks; canceled ones are listed with it.
            ("GET", ["v1", "subscriptions"]) => {
                let customer = text(p, "customer").map(str::to_owned);
                // (`sub_sched_…` ids share the prefix.)
                self.list("sub_", p, "/v1/subscriptions", |o| {
                    o["object"] == "subscription"
                        && customer
                            .as_ref()
                            .is_none_or(|c| o["customer"] == c.as_str())
                })?
            }
            ("GET", ["v1", "subscriptions", "search"]) => {
                self.search("sub_", p, "/v1/subscriptions/search")?
            }
            ("GET", ["v1", "subscriptions", id]) => get(self, id)?,
            // Stripe's subscription updates as the lifecycle calls send them: a scheduled cancel
            // and its undoing, collection paused and unpaused; refused once canceled.
            ("POST", ["v1", "subscriptions", id]) => {
                let mut sub = get(self, id)?;
                if sub["status"] == "canceled" {
                    return Err(invalid(
                        "A canceled subscription can only update its cancellation_details and metadata.",
                        None,
                    ));
                }
                if let Some(v) = text(p, "cancel_at_period_end") {
                    sub["cancel_at_period_end"] = json!(v == "true");
                }
                // Metadata is merged key by key, as Stripe does.
                if let Some(Value::Object(m)) = p.get("metadata") {
                    for (k, v) in m {
                        sub["metadata"][k] = v.clone();
                    }
                }
                if let Some(items) = p.get("items") {
                    sub = self.change_items(sub, items, p)?;
                }
                match p.get("pause_collection") {
                    Some(Value::String(empty)) if empty.is_empty() => {
                        sub["pause_collection"] = Value::Null;
                    }
                    Some(pause) => sub["pause_collection"] = pause.clone(),
                    None => {}
                }
                self.put(sub)
            }
            // Stripe's resume of a `paused` subscription: active again, and with
            // `billing_cycle_anchor=now` a new period from now (the fake invoices nothing).
            ("POST", ["v1", "subscriptions", id, "resume"]) => {
                let mut sub = get(self, id)?;
                if sub["status"] != "paused" {
                    return Err(invalid(
                        "Subscription cannot be resumed because it is not paused.",
                        None,
                    ));
                }
                sub["status"] = json!("active");
                if text(p, "billing_cycle_anchor") == Some("now") {
                    let now = now();
                    let item = &mut sub["items"]["data"][0];
                    let length = item["current_period_end"].as_i64().unwrap_or(now)
                        - item["current_period_start"].as_i64().unwrap_or(now);
                    item["current_period_start"] = json!(now);
                    item["current_period_end"] = json!(now + length.max(30 * 86_400));
                }
                self.put(sub)
            }
            ("DELETE", ["v1", "subscriptions", id]) => {
                let mut sub = get(self, id)?;
                if sub["status"] == "canceled" {
                    return Err(invalid("This subscription is already canceled.", None));
                }
                sub["status"] = json!("canceled");
                sub["canceled_at"] = json!(now());
                sub["cancel_at_period_end"] = json!(false);
                self.put(sub)
            }
            ("GET", ["v1", "invoices", id]) => get(self, id)?,
            // Filtered by `invoice`, or by `payment[type]` and `payment[payment_intent]`.
            ("GET", ["v1", "invoice_payments"]) => {
                let invoice = text(p, "invoice").map(str::to_owned);
                let by = p.get("payment").cloned();
                if let Some(by) = &by
                    && text(by, "type").is_none()
                {
                    return Err(invalid(
                        "Missing required param: payment[type].",
                        Some("payment[type]"),
                    ));
                }
                self.list("inpay_", p, "/v1/invoice_payments", |o| {
                    invoice.as_ref().is_none_or(|i| o["invoice"] == i.as_str())
                        && by.as_ref().is_none_or(|b| {
                            o["payment"]["type"] == b["type"]
                                && b.get("payment_intent")
                                    .is_none_or(|pi| o["payment"]["payment_intent"] == *pi)
                        })
                })?
            }
            ("POST", ["v1", "invoices", "create_preview"]) => self.preview_invoice(p)?,
            ("GET", ["v1", "invoiceitems"]) => {
                let sub = text(p, "subscription").map(str::to_owned);
                self.list("ii_", p, "/v1/invoiceitems", |o| {
                    sub.as_ref().is_none_or(|s| o["subscription"] == s.as_str())
                })?
            }
            ("POST", ["v1", "subscription_schedules"]) => self.create_schedule(p)?,
            ("GET", ["v1", "subscription_schedules", id]) => get(self, id)?,
            ("POST", ["v1", "subscription_schedules", id]) => self.update_schedule(id, p)?,
            ("POST", ["v1", "subscription_schedules", id, "release"]) => {
                let mut schedule = get(self, id)?;
                if schedule["status"] != "active" && schedule["status"] != "not_started" {
                    return Err(invalid(
                        "You cannot release a subscription schedule that is currently in the `released` status.",
                        None,
                    ));
                }
                let sub_id = schedule["subscription"].as_str().unwrap().to_owned();
                let mut sub = get(self, &sub_id)?;
                sub["schedule"] = Value::Null;
                self.put(sub);
                schedule["status"] = json!("released");
                schedule["released_subscription"] = json!(sub_id);
                self.put(schedule)
            }
            ("POST", ["v1", "refunds"]) => self.create_refund(p)?,
            ("GET", ["v1", "refunds"]) => self.list("re_", p, "/v1/refunds", |_| true)?,
            ("GET", ["v1", "refunds", id]) => get(self, id)?,
            ("GET", ["v1", "disputes", id]) => get(self, id)?,
            ("POST", ["v1", "billing", "meters"]) => self.create_meter(p)?,
            ("GET", ["v1", "billing", "meters"]) => {
                let status = text(p, "status").map(str::to_owned);
                self.list("mtr_", p, "/v1/billing/meters", |m| {
                    status.as_ref().is_none_or(|s| m["status"] == s.as_str())
                })?
            }
            ("GET", ["v1", "billing", "meters", id]) => get(self, id)?,
            ("POST", ["v1", "billing", "meter_events"]) => self.meter_event(p)?,
            _ => {
                return Err(error(
                    404,
                    "invalid_request_error",
                    None,
                    &format!("Unrecognized request URL ({method}: {path})."),
                    None,
                ));
            }
        };
        self.expand(found, &expand)
    }
}

fn json_response(status: u16, body: &Value, replayed: bool) -> Response {
    let mut response = (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        "request-id",
        format!("req_{}", uuid::Uuid::now_v7().simple())
            .parse()
            .unwrap(),
    );
    if replayed {
        headers.insert("idempotent-replayed", "true".parse().unwrap());
    }
    response
}

impl FakeStripe {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let handler_state = state.clone();
        let router = axum::Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let state = handler_state.clone();
                async move { handle(state, method, uri, headers, body).await }
            },
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            addr,
            state,
            _server: Arc::new(ServerGuard(server)),
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// The next `times` requests of `method` to `path` (a path ending in `/` matches every
    /// path under it) get `fault`.
    pub fn fail(&self, method: Method, path: &str, times: usize, fault: Fault) {
        self.with(|s| {
            s.rules.push(Rule {
                method,
                path: path.to_owned(),
                left: times,
                fault,
            })
        });
    }

    /// The meter events Stripe took, in arrival order: `{event_name, customer, value,
    /// identifier, timestamp}`.
    pub fn meter_events(&self) -> Vec<Value> {
        self.with(|s| s.meter_events.clone())
    }

    /// What the meter of `event_name` bills `customer` for, by its formula: the sum or the
    /// count of the events, or the value of the newest (by timestamp, then arrival).
    pub fn meter_total(&self, event_name: &str, customer: &str) -> i64 {
        self.with(|s| {
            let meter = s
                .newest("mtr_")
                .into_iter()
                .find(|m| m["event_name"] == event_name)
                .expect("the meter exists");
            let events: Vec<&Value> = s
                .meter_events
                .iter()
                .filter(|e| e["event_name"] == event_name && e["customer"] == customer)
                .collect();
            match meter["default_aggregation"]["formula"].as_str().unwrap() {
                "sum" => events.iter().map(|e| e["value"].as_i64().unwrap()).sum(),
                "count" => events.len() as i64,
                _ => events
                    .iter()
                    .enumerate()
                    .max_by_key(|(i, e)| (e["timestamp"].as_i64().unwrap(), *i))
                    .map(|(_, e)| e["value"].as_i64().unwrap())
                    .unwrap_or(0),
            }
        })
    }

    /// Stripe forgets its idempotency keys (after 24 hours); identifiers are kept.
    pub fn forget_idempotency_keys(&self) {
        self.with(|s| s.idempotency.clear());
    }

    pub fn clear_faults(&self) {
        self.with(|s| s.rules.clear());
    }

    /// Every request answers 500 while `down`.
    pub fn set_down(&self, down: bool) {
        self.with(|s| s.down = down);
    }

    /// The requests of `method` to `path` (as [`FakeStripe::fail`] matches) seen so far.
    pub fn requests(&self, method: Method, path: &str) -> Vec<Logged> {
        self.with(|s| {
            s.log
                .iter()
                .filter(|l| l.method == method && matches(path, &l.path))
                .cloned()
                .collect()
        })
    }

    pub fn all_requests(&self) -> Vec<Logged> {
        self.with(|s| s.log.clone())
    }

    /// How many times the request under `key` was executed (replays are not executions).
    pub fn executions(&self, key: &str) -> u32 {
        self.with(|s| s.executions.get(key).copied().unwrap_or(0))
    }

    /// The objects whose id starts with `prefix` (`cs_`, `cus_`, `price_`), newest first.
    pub fn objects(&self, prefix: &str) -> Vec<Value> {
        self.with(|s| s.newest(prefix))
    }

    pub fn object(&self, id: &str) -> Value {
        self.with(|s| s.get(id).unwrap_or_else(|| panic!("the fake has no {id}")))
    }

    /// A session's creation parameters, nested as Stripe reads them.
    pub fn session_params(&self, id: &str) -> Value {
        self.with(|s| s.params[id].clone())
    }

    /// Changes a stored object as Stripe would.
    pub fn update(&self, id: &str, f: impl FnOnce(&mut Value)) -> Value {
        self.with(|s| {
            let mut o = s.get(id).unwrap();
            f(&mut o);
            s.put(o)
        })
    }

    /// The customer pays the session with a card that succeeds: its payment intent and
    /// charge (payment mode), or its subscription and first invoice (subscription mode).
    pub fn complete_session(&self, id: &str) -> Value {
        self.with(|s| {
            let mut session = s.get(id).unwrap();
            let params = s.params[id].clone();
            let total = session["amount_total"].as_i64().unwrap();
            let currency = session["currency"].clone();
            let now = now();
            if session["mode"] == "payment" {
                let pi = pay(s, total, &currency, params["payment_intent_data"]["metadata"].clone(), &session["customer"]);
                // A card declined before: the same payment intent succeeds with the new charge.
                let pi = match session["payment_intent"].as_str() {
                    Some(earlier) => {
                        let mut intent = s.get(earlier).unwrap();
                        intent["status"] = json!("succeeded");
                        intent["last_payment_error"] = Value::Null;
                        let charge = s.get(&pi).unwrap()["latest_charge"].as_str().unwrap().to_owned();
                        let mut c = s.get(&charge).unwrap();
                        c["payment_intent"] = json!(earlier);
                        s.put(c);
                        intent["latest_charge"] = json!(charge);
                        s.objects.remove(&pi);
                        s.order.retain(|id| *id != pi);
                        s.put(intent);
                        earlier.to_owned()
                    }
                    None => pi,
                };
                session["payment_intent"] = json!(pi);
                session["payment_status"] = json!("paid");
            } else {
                let trial = params["subscription_data"]["trial_period_days"]
                    .as_str()
                    .and_then(|d| d.parse::<i64>().ok())
                    .unwrap_or(0);
                let first_recurring = params["line_items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find_map(|item| s.line(item).ok().and_then(|(_, _, r, _)| r))
                    .unwrap();
                // The item's price: the line's price object (Coffer's mirrored prices), or one
                // Stripe makes of the line's inline price_data.
                let first_line = params["line_items"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|item| s.line(item).ok().and_then(|(_, _, r, _)| r).is_some())
                    .cloned()
                    .unwrap();
                let item_quantity = int(&first_line, "quantity").unwrap().unwrap_or(1);
                let item_price = match text(&first_line, "price") {
                    Some(price) => s.get(price).unwrap(),
                    None => {
                        let (currency, amount, recurring, _) = s.line(&first_line).unwrap();
                        s.next();
                        s.put(json!({"id": random_id("price"), "object": "price",
                                     "currency": currency, "unit_amount": amount,
                                     "recurring": recurring, "active": true, "metadata": {},
                                     "lookup_key": null}))
                    }
                };
                let months = match first_recurring["interval"].as_str().unwrap() {
                    "year" => 12,
                    _ => 1,
                } * first_recurring["interval_count"].as_i64().unwrap_or(1);
                let end = if trial > 0 { now + trial * 86_400 } else { now + months * 30 * 86_400 };
                let sub_id = random_id("sub");
                let sub_metadata = params["subscription_data"]["metadata"].clone();
                s.next();
                s.put(json!({
                    "id": sub_id, "object": "subscription",
                    "status": if trial > 0 { "trialing" } else { "active" },
                    "metadata": if sub_metadata.is_null() { json!({}) } else { sub_metadata.clone() },
                    "customer": session["customer"], "created": now, "start_date": now,
                    "trial_start": if trial > 0 { json!(now) } else { Value::Null },
                    "trial_end": if trial > 0 { json!(end) } else { Value::Null },
                    "cancel_at_period_end": false, "pause_collection": null,
                    "items": {"object": "list", "has_more": false, "data": [{
                        "id": random_id("si"), "object": "subscription_item",
                        "quantity": item_quantity, "price": item_price,
                        "current_period_start": now, "current_period_end": end,
                    }]},
                    "schedule": null, "latest_invoice": null,
                }));
                let paid = if trial > 0 { 0 } else { total };
                let invoice_id = s.subscription_invoice(
                    &sub_id,
                    &sub_metadata,
                    &session["customer"],
                    (&item_price, item_quantity),
                    paid,
                    "subscription_create",
                    (now, end),
                );
                // The first invoice is the subscription's latest, as on Stripe.
                let mut sub = s.get(&sub_id).unwrap();
                sub["latest_invoice"] = json!(invoice_id);
                s.put(sub);
                session["subscription"] = json!(sub_id);
                session["invoice"] = json!(invoice_id);
                session["payment_status"] = json!(if paid > 0 { "paid" } else { "no_payment_required" });
            }
            session["status"] = json!("complete");
            session["url"] = Value::Null;
            s.put(session)
        })
    }

    /// The customer's card is declined with `decline_code` (payment mode): the session stays
    /// open, its payment intent asks for another payment method.
    pub fn decline_session(&self, id: &str, decline_code: &str) -> Value {
        self.with(|s| {
            let mut session = s.get(id).unwrap();
            let params = s.params[id].clone();
            let pi = pay(
                s,
                session["amount_total"].as_i64().unwrap(),
                &session["currency"].clone(),
                params["payment_intent_data"]["metadata"].clone(),
                &session["customer"],
            );
            let mut intent = s.get(&pi).unwrap();
            intent["status"] = json!("requires_payment_method");
            intent["last_payment_error"] = json!({"type": "card_error", "code": "card_declined",
                                                  "decline_code": decline_code});
            let charge = intent["latest_charge"].as_str().unwrap().to_owned();
            s.put(intent);
            let mut c = s.get(&charge).unwrap();
            c["status"] = json!("failed");
            c["paid"] = json!(false);
            c["failure_code"] = json!("card_declined");
            s.put(c);
            session["payment_intent"] = json!(pi);
            s.put(session)
        })
    }

    /// A chargeback of the payment intent's charge, needing a response.
    pub fn open_dispute(&self, payment_intent: &str, amount: i64, reason: &str) -> Value {
        self.with(|s| {
            let pi = s.get(payment_intent).unwrap();
            let charge = pi["latest_charge"].clone();
            s.next();
            s.put(json!({
                "id": random_id("dp"), "object": "dispute", "amount": amount, "currency": pi["currency"],
                "status": "needs_response", "reason": reason, "payment_intent": payment_intent,
                "charge": charge, "created": now(), "livemode": false, "metadata": {},
                "is_charge_refundable": false,
            }))
        })
    }

    /// The subscription's period ends and the next begins (what Stripe's clock does): a
    /// schedule's next phase takes effect (its price and quantity), and a schedule with no
    /// phase left releases the subscription. Answers the subscription.
    pub fn roll_period(&self, id: &str) -> Value {
        self.with(|s| {
            let mut sub = s.get(id).unwrap();
            let item = sub["items"]["data"][0].clone();
            let (start, end) = (
                item["current_period_start"].as_i64().unwrap(),
                item["current_period_end"].as_i64().unwrap(),
            );
            sub["items"]["data"][0]["current_period_start"] = json!(end);
            sub["items"]["data"][0]["current_period_end"] = json!(end + (end - start));
            if let Some(schedule_id) = sub["schedule"].as_str().map(str::to_owned) {
                let mut schedule = s.get(&schedule_id).unwrap();
                let phases = schedule["phases"].as_array().cloned().unwrap_or_default();
                if let Some(next) = phases.get(1) {
                    let price = s.get(next["items"][0]["price"].as_str().unwrap()).unwrap();
                    sub["items"]["data"][0]["price"] = price;
                    sub["items"]["data"][0]["quantity"] = next["items"][0]["quantity"].clone();
                    schedule["phases"] = json!(phases[1..]);
                }
                if schedule["phases"].as_array().unwrap().len() <= 1 {
                    schedule["status"] = json!("released");
                    schedule["released_subscription"] = json!(id);
                    sub["schedule"] = Value::Null;
                }
                s.put(schedule);
            }
            s.put(sub)
        })
    }

    /// A renewal whose payment fails (what Stripe's clock does when the card is declined):
    /// the period renews ([`FakeStripe::renew`]) and its invoice's charge is declined
    /// ([`FakeStripe::decline_invoice`]); the invoice stays `open`, collected automatically,
    /// attempted once and due to be tried again in three days (`next_payment_attempt`, Smart
    /// Retries' schedule), and the subscription is `past_due` with it as its `latest_invoice`.
    /// Answers the invoice, as `invoice.payment_failed` carries it.
    pub fn fail_renewal(&self, id: &str) -> Value {
        let invoice = self.renew(id);
        let invoice_id = invoice["id"].as_str().unwrap().to_owned();
        self.decline_invoice(&invoice_id, "insufficient_funds");
        self.with(|s| {
            let mut invoice = s.get(&invoice_id).unwrap();
            invoice["attempted"] = json!(true);
            invoice["attempt_count"] = json!(1);
            invoice["next_payment_attempt"] = json!(now() + 3 * 86_400);
            invoice["auto_advance"] = json!(true);
            let invoice = s.put(invoice);
            let mut sub = s.get(id).unwrap();
            sub["status"] = json!("past_due");
            s.put(sub);
            invoice
        })
    }

    /// Stripe tries the open invoice again and the card is declined again. On the `last` try
    /// its retries have run out: `next_payment_attempt` is null, and with the dashboard's "leave
    /// the subscription past-due" the subscription stays `past_due` and the invoice `open`.
    /// Answers the invoice.
    pub fn retry_fails(&self, invoice: &str, last: bool) -> Value {
        self.with(|s| {
            let mut inv = s.get(invoice).unwrap();
            inv["attempt_count"] = json!(inv["attempt_count"].as_i64().unwrap() + 1);
            inv["next_payment_attempt"] = if last {
                Value::Null
            } else {
                json!(now() + 3 * 86_400)
            };
            s.put(inv)
        })
    }

    /// Objects take `secs` to show in Search (0: at once), as Stripe's Search may lag.
    pub fn set_search_lag(&self, secs: i64) {
        self.with(|s| s.search_lag = secs);
    }

    /// The subscription renews (Stripe's clock reaching its period's end): the next period
    /// begins ([`FakeStripe::roll_period`]) and its `subscription_cycle` invoice is paid with
    /// the customer's card. Answers the invoice.
    pub fn renew(&self, id: &str) -> Value {
        let sub = self.roll_period(id);
        self.with(|s| {
            let item = &sub["items"]["data"][0];
            let quantity = item["quantity"].as_i64().unwrap_or(1);
            let amount = item["price"]["unit_amount"].as_i64().unwrap() * quantity;
            let period = (
                item["current_period_start"].as_i64().unwrap(),
                item["current_period_end"].as_i64().unwrap(),
            );
            let invoice = s.subscription_invoice(
                id,
                &sub["metadata"],
                &sub["customer"],
                (&item["price"], quantity),
                amount,
                "subscription_cycle",
                period,
            );
            let mut sub = sub.clone();
            sub["latest_invoice"] = json!(invoice);
            s.put(sub);
            s.get(&invoice).unwrap()
        })
    }

    /// The invoice's charge is declined with `decline_code` (a renewal's card failing): the
    /// invoice stays `open`, its payment intent asks for another payment method, its charge
    /// failed and its invoice payment is `open`. Answers the invoice.
    pub fn decline_invoice(&self, id: &str, decline_code: &str) -> Value {
        self.set_invoice_paid(id, false, Some(decline_code))
    }

    /// Stripe's retry of the invoice succeeds with the same payment intent. Answers the
    /// invoice.
    pub fn pay_invoice(&self, id: &str) -> Value {
        self.set_invoice_paid(id, true, None)
    }

    fn set_invoice_paid(&self, id: &str, paid: bool, decline_code: Option<&str>) -> Value {
        self.with(|s| s.set_invoice_paid(id, paid, decline_code))
    }

    /// Builds Stripe's event of `event_type` about `object` (as it is now, or a snapshot).
    pub fn event(&self, event_type: &str, object: Value) -> Value {
        let n = self.with(|s| s.next());
        json!({
            "id": format!("evt_test_{n:06}{}", uuid::Uuid::now_v7().simple()),
            "object": "event", "api_version": coffer::providers::stripe::client::API_VERSION,
            "created": now(), "livemode": false, "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": event_type, "data": {"object": object},
        })
    }

    /// Signs `event` with `secret` as Stripe does and POSTs it to `url`; the answer's status.
    pub async fn deliver(&self, url: &str, secret: &str, event: &Value) -> u16 {
        let body = event.to_string();
        let signature = coffer::providers::signature::sign::stripe(secret, now(), body.as_bytes());
        coffer::providers::outbound::client_builder()
            .no_proxy()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap()
            .post(url)
            .header("content-type", "application/json; charset=utf-8")
            .header(
                "user-agent",
                "Stripe/1.0 (+https://stripe.com/docs/webhooks)",
            )
            .header("stripe-signature", signature)
            .body(body)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }
}

/// A payment intent that succeeded, with its charge by a Visa ending 4242; its id.
fn pay(s: &mut State, amount: i64, currency: &Value, metadata: Value, customer: &Value) -> String {
    let pi = random_id("pi");
    let charge = random_id("ch");
    s.next();
    s.put(json!({
        "id": charge, "object": "charge", "amount": amount, "amount_captured": amount,
        "amount_refunded": 0, "currency": currency, "payment_intent": pi, "paid": true,
        "refunded": false, "status": "succeeded", "disputed": false, "created": now(),
        "failure_code": null, "metadata": {},
        "payment_method_details": {"type": "card", "card": {"brand": "visa", "last4": "4242"}},
    }));
    s.next();
    s.put(json!({
        "id": pi, "object": "payment_intent", "amount": amount, "amount_received": amount,
        "currency": currency, "status": "succeeded", "customer": customer, "created": now(),
        "metadata": if metadata.is_null() { json!({}) } else { metadata },
        "latest_charge": charge, "last_payment_error": null,
    }));
    pi
}

fn matches(rule: &str, path: &str) -> bool {
    if rule.ends_with('/') {
        path.starts_with(rule)
    } else {
        path == rule
    }
}

async fn handle(
    state: Arc<Mutex<State>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let key = header("idempotency-key");
    let version = header("stripe-version");
    let raw = if method == Method::POST {
        body.to_vec()
    } else {
        uri.query().unwrap_or_default().as_bytes().to_vec()
    };
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&raw).into_owned().collect();
    let params = nest(&pairs);

    let (status, body, replayed, slow) = {
        let mut s = state.lock().unwrap();
        let s = &mut *s;
        let mut slow = None;
        let mut answer: Option<(u16, Value, bool)> = None;
        if header("authorization").as_deref() != Some(&format!("Bearer {API_KEY}")) {
            answer = Some((
                401,
                error(
                    401,
                    "authentication_error",
                    None,
                    "Invalid API Key provided: sk_test_****",
                    None,
                )
                .1,
                false,
            ));
        }
        if answer.is_none()
            && method == Method::POST
            && headers.get("content-type").and_then(|v| v.to_str().ok())
                != Some("application/x-www-form-urlencoded")
        {
            answer = Some((
                400,
                invalid("Stripe takes form-encoded bodies", None).1,
                false,
            ));
        }
        if answer.is_none()
            && let Some(rule) = s
                .rules
                .iter_mut()
                .find(|r| r.left > 0 && r.method == method && matches(&r.path, &path))
        {
            rule.left -= 1;
            match rule.fault.clone() {
                Fault::Error {
                    status,
                    kind,
                    code,
                    decline_code,
                    retry_after,
                } => {
                    let (_, mut body) =
                        error(status, kind, code, "a fault the test asked for", None);
                    if let Some(d) = decline_code {
                        body["error"]["decline_code"] = json!(d);
                    }
                    let mut response = json_response(status, &body, false);
                    if let Some(r) = retry_after {
                        response
                            .headers_mut()
                            .insert("retry-after", r.to_string().parse().unwrap());
                    }
                    s.log.push(Logged {
                        method: method.clone(),
                        path: path.clone(),
                        idempotency_key: key.clone(),
                        stripe_version: version.clone(),
                        status,
                        at: std::time::Instant::now(),
                        params: params.clone(),
                    });
                    return response;
                }
                Fault::Slow(d) => slow = Some(d),
            }
        }
        if answer.is_none() && s.down {
            answer = Some((
                500,
                error(
                    500,
                    "api_error",
                    None,
                    "Stripe is down (the test said so)",
                    None,
                )
                .1,
                false,
            ));
        }
        if answer.is_none() {
            answer = Some(match (&key, method == Method::POST) {
                (Some(k), true) => match s.idempotency.get(k) {
                    Some(stored) if stored.path == path && stored.params == pairs => {
                        (stored.status, stored.body.clone(), true)
                    }
                    Some(_) => (
                        400,
                        error(
                            400,
                            "idempotency_error",
                            None,
                            "Keys for idempotent requests can only be used with the same parameters they were first used with.",
                            None,
                        )
                        .1,
                        false,
                    ),
                    None => {
                        let (status, body) = match s.execute(&method, &path, &params) {
                            Ok(v) => (200, v),
                            Err(f) => f,
                        };
                        *s.executions.entry(k.clone()).or_default() += 1;
                        s.idempotency.insert(
                            k.clone(),
                            Stored {
                                path: path.clone(),
                                params: pairs.clone(),
                                status,
                                body: body.clone(),
                            },
                        );
                        (status, body, false)
                    }
                },
                _ => match s.execute(&method, &path, &params) {
                    Ok(v) => (200, v, false),
                    Err((status, body)) => (status, body, false),
                },
            });
        }
        let (status, body, replayed) = answer.unwrap();
        s.log.push(Logged {
            method: method.clone(),
            path: path.clone(),
            idempotency_key: key.clone(),
            stripe_version: version.clone(),
            status,
            at: std::time::Instant::now(),
            params: params.clone(),
        });
        (status, body, replayed, slow)
    };
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
    }
    json_response(status, &body, replayed)
}
