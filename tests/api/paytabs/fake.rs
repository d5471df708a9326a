//! A fake PayTabs on loopback, following PayTabs' published PT2 wire format: `POST
//! /payment/request` (a hosted page with `tran_type` `sale`, or a `refund` of a sale) and
//! `POST /payment/query` (by `tran_ref`, or by `cart_id` answering a list), JSON, the server
//! key in the `authorization` header, the profile id in the body; errors as `{code, message,
//! trace}` (401 code 1 for a wrong key, 400 for a validation error, 409 code 4 for a repeated
//! `cart_id` when told to).
//!
//! It keeps transactions in memory, records every request it was sent, and can be told to fail
//! the next requests of an endpoint (a status and body, or a delay after which it still does
//! the work). The test plays the customer on the page ([`Fake::pay`]) and makes it POST a
//! callback to Coffer's sidecar as PayTabs does ([`Fake::callback`]): the transaction's JSON
//! with `merchant_id` and `profile_id`, signed in a `signature` header with the hex
//! HMAC-SHA256 of the raw body keyed with the server key.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

pub const SERVER_KEY: &str = "SJNLT2Z6-JHTW9GBN2W-KZBN9LMGKD";
pub const PROFILE_ID: u64 = 87654;
pub const MERCHANT_ID: u64 = 37871;

/// An endpoint of the fake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Endpoint {
    Request,
    Query,
}

/// What the fake does instead of (or before) its work, once.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer this status and JSON body, doing nothing.
    Answer(u16, Value),
    /// Do the work, then answer only after this long.
    Delay(Duration),
}

/// A request the fake was sent.
#[derive(Debug, Clone)]
pub struct Seen {
    pub endpoint: Endpoint,
    pub authorization: Option<String>,
    pub idempotency_key: Option<String>,
    pub body: Value,
}

#[derive(Default)]
struct State_ {
    /// By `tran_ref`, in creation order.
    transactions: BTreeMap<String, Value>,
    next: u64,
    seen: Vec<Seen>,
    faults: BTreeMap<Endpoint, VecDeque<Fault>>,
}

/// The fake's handle: its address and its state.
#[derive(Clone)]
pub struct Fake {
    pub addr: SocketAddr,
    state: Arc<Mutex<State_>>,
}

fn error(status: u16, code: u32, message: &str) -> (u16, Value) {
    (
        status,
        json!({"code": code, "message": message, "trace": "PMNT0401.FAKE.0001"}),
    )
}

/// The exponent PayTabs uses for a currency it takes (ISO 4217).
fn exponent(currency: &str) -> Option<u32> {
    match currency {
        "JPY" => Some(0),
        "KWD" | "BHD" | "OMR" | "JOD" => Some(3),
        "USD" | "AED" | "SAR" | "EGP" | "QAR" | "EUR" => Some(2),
        _ => None,
    }
}

/// A decimal string of major units as minor units, as PayTabs would read it: no more fraction
/// digits than the currency has.
fn minor(amount: &str, currency: &str) -> Option<i64> {
    let exp = exponent(currency)? as usize;
    let (whole, fraction) = amount.split_once('.').unwrap_or((amount, ""));
    if whole.is_empty() || fraction.len() > exp {
        return None;
    }
    let digits = format!("{whole}{fraction:0<exp$}");
    digits.parse().ok()
}

fn major(minor: i64, currency: &str) -> String {
    let exp = exponent(currency).unwrap();
    if exp == 0 {
        return minor.to_string();
    }
    let scale = 10i64.pow(exp);
    format!(
        "{}.{:0width$}",
        minor / scale,
        minor % scale,
        width = exp as usize
    )
}

impl Fake {
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State_::default()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route("/payment/request", post(request))
            .route("/payment/query", post(query))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { addr, state }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes the next request to `endpoint` meet `fault`; several queue up.
    pub fn fail_next(&self, endpoint: Endpoint, fault: Fault) {
        let mut s = self.state.lock().unwrap();
        s.faults.entry(endpoint).or_default().push_back(fault);
    }

    /// Drops every queued fault.
    pub fn heal(&self) {
        self.state.lock().unwrap().faults.clear();
    }

    /// Every request the fake was sent, oldest first.
    pub fn seen(&self, endpoint: Endpoint) -> Vec<Seen> {
        let s = self.state.lock().unwrap();
        s.seen
            .iter()
            .filter(|r| r.endpoint == endpoint)
            .cloned()
            .collect()
    }

    /// The transactions of `cart_id` of `tran_type` (`Sale`, `Refund`).
    pub fn transactions(&self, cart_id: &str, tran_type: &str) -> Vec<Value> {
        let s = self.state.lock().unwrap();
        s.transactions
            .values()
            .filter(|t| t["cart_id"] == cart_id && t["tran_type"] == tran_type)
            .cloned()
            .collect()
    }

    pub fn transaction(&self, tran_ref: &str) -> Value {
        self.state.lock().unwrap().transactions[tran_ref].clone()
    }

    /// The customer on the page of `tran_ref`: its result becomes `status` (`A`, `D`, ...)
    /// with `code`, paid with a Visa ending 1111.
    pub fn pay(&self, tran_ref: &str, status: &str, code: &str) {
        let mut s = self.state.lock().unwrap();
        let t = s.transactions.get_mut(tran_ref).expect("a known tran_ref");
        t["payment_result"] = json!({
            "response_status": status,
            "response_code": code,
            "response_message": if status == "A" { "Authorised" } else { "Declined" },
            "acquirer_ref": "TRAN0001.FAKE",
            "cvv_result": " ",
            "avs_result": " ",
            "transaction_time": "2026-01-01T10:00:00Z",
        });
        t["payment_info"] = json!({
            "payment_method": "Visa",
            "card_type": "Credit",
            "card_scheme": "Visa",
            "payment_description": "4111 11## #### 1111",
            "expiryMonth": 12,
            "expiryYear": 2030,
        });
    }

    /// The callback PayTabs sends for `tran_ref` now: its JSON as the IPN carries it.
    pub fn callback_body(&self, tran_ref: &str) -> Value {
        let mut t = self.transaction(tran_ref);
        t["merchant_id"] = json!(MERCHANT_ID);
        t["profile_id"] = json!(PROFILE_ID);
        t["ipn_trace"] = json!("IPNS0001.FAKE");
        t
    }

    /// POSTs `body` to Coffer's sidecar for `account`, signed with `key` as PayTabs signs
    /// (`signature`: hex HMAC-SHA256 of the raw body with the server key); the status.
    pub async fn post_callback(
        &self,
        sidecar: SocketAddr,
        account: &str,
        body: &Value,
        key: &str,
    ) -> StatusCode {
        let raw = serde_json::to_vec(body).unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).unwrap();
        mac.update(&raw);
        let signature = hex::encode(mac.finalize().into_bytes());
        let response = coffer::providers::outbound::client_builder()
            .no_proxy()
            .build()
            .unwrap()
            .post(format!("http://{sidecar}/webhooks/{account}"))
            .header("content-type", "application/json")
            .header("signature", signature)
            .body(raw)
            .send()
            .await
            .unwrap();
        StatusCode::from_u16(response.status().as_u16()).unwrap()
    }

    /// The callback of `tran_ref` as it is now, signed with the right key.
    pub async fn callback(&self, sidecar: SocketAddr, account: &str, tran_ref: &str) -> StatusCode {
        let body = self.callback_body(tran_ref);
        self.post_callback(sidecar, account, &body, SERVER_KEY)
            .await
    }
}

fn respond(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// Records the request and takes its fault, if one is queued; `Err` is the answer to give.
async fn admit(
    state: &Mutex<State_>,
    endpoint: Endpoint,
    headers: &HeaderMap,
    raw: &Bytes,
) -> Result<(Value, Option<Duration>), Response> {
    let body: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let fault = {
        let mut s = state.lock().unwrap();
        s.seen.push(Seen {
            endpoint,
            authorization: header("authorization"),
            idempotency_key: header("idempotency-key"),
            body: body.clone(),
        });
        s.faults.get_mut(&endpoint).and_then(|q| q.pop_front())
    };
    let delay = match fault {
        Some(Fault::Answer(status, body)) => return Err(respond(status, body)),
        Some(Fault::Delay(d)) => Some(d),
        None => None,
    };
    if header("authorization").as_deref() != Some(SERVER_KEY) {
        let (s, b) = error(
            401,
            1,
            "Authentication failed. Check authentication header.",
        );
        return Err(respond(s, b));
    }
    if header("content-type").as_deref() != Some("application/json") || !body.is_object() {
        let (s, b) = error(400, 2, "Invalid request");
        return Err(respond(s, b));
    }
    if body["profile_id"] != json!(PROFILE_ID) {
        let (s, b) = error(400, 113, "Profile ID is invalid");
        return Err(respond(s, b));
    }
    Ok((body, delay))
}

async fn finish(delay: Option<Duration>, status: u16, body: Value) -> Response {
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    respond(status, body)
}

async fn request(
    State(state): State<Arc<Mutex<State_>>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let (body, delay) = match admit(&state, Endpoint::Request, &headers, &raw).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let (status, answer) = {
        let mut s = state.lock().unwrap();
        match (body["tran_type"].as_str(), body["tran_class"].as_str()) {
            (Some("sale"), Some("ecom")) => page(&mut s, &body),
            (Some("refund"), Some("ecom")) => refund(&mut s, &body),
            _ => error(400, 5, "Invalid transaction type or class"),
        }
    };
    finish(delay, status, answer).await
}

fn cart(body: &Value) -> Result<(String, String, String, i64), (u16, Value)> {
    let text = |k: &str| body[k].as_str().map(str::to_owned);
    let (Some(cart_id), Some(currency), Some(description)) = (
        text("cart_id"),
        text("cart_currency"),
        text("cart_description"),
    ) else {
        return Err(error(400, 2, "Missing cart details"));
    };
    if exponent(&currency).is_none() {
        return Err(error(400, 206, "Invalid currency code"));
    }
    let Some(amount) = text("cart_amount")
        .and_then(|a| minor(&a, &currency))
        .filter(|a| *a > 0)
    else {
        return Err(error(400, 207, "Invalid cart amount"));
    };
    Ok((cart_id, currency, description, amount))
}

fn page(s: &mut State_, body: &Value) -> (u16, Value) {
    let (cart_id, currency, description, amount) = match cart(body) {
        Ok(c) => c,
        Err(e) => return e,
    };
    s.next += 1;
    let tran_ref = format!("TST{:013}", 2_000_000 + s.next);
    let t = json!({
        "tran_ref": tran_ref,
        "tran_type": "Sale",
        "tran_class": "ECom",
        "cart_id": cart_id,
        "cart_description": description,
        "cart_currency": currency,
        "cart_amount": major(amount, &currency),
        "tran_currency": currency,
        "tran_total": major(amount, &currency),
        "return": body["return"],
        "user_defined": body.get("user_defined").cloned().unwrap_or(json!({})),
    });
    s.transactions.insert(tran_ref.clone(), t.clone());
    let mut answer = t;
    answer["redirect_url"] = json!(format!(
        "https://secure.paytabs.com/payment/page/{tran_ref}"
    ));
    answer["profileId"] = json!(PROFILE_ID);
    answer["merchantId"] = json!(MERCHANT_ID);
    answer["serviceId"] = json!(2);
    answer["trace"] = json!("PMNT0101.FAKE");
    (200, answer)
}

fn refund(s: &mut State_, body: &Value) -> (u16, Value) {
    let (cart_id, currency, description, amount) = match cart(body) {
        Ok(c) => c,
        Err(e) => return e,
    };
    let Some(sale_ref) = body["tran_ref"].as_str() else {
        return error(400, 2, "Missing tran_ref");
    };
    let Some(sale) = s.transactions.get(sale_ref).cloned() else {
        return error(400, 4001, "Transaction not found");
    };
    if sale["payment_result"]["response_status"] != "A" {
        return error(400, 4002, "Transaction is not refundable");
    }
    if sale["cart_currency"] != currency.as_str() {
        return error(400, 206, "Invalid currency code");
    }
    let refunded: i64 = s
        .transactions
        .values()
        .filter(|t| {
            t["previous_tran_ref"] == sale_ref && t["payment_result"]["response_status"] == "A"
        })
        .map(|t| minor(t["cart_amount"].as_str().unwrap(), &currency).unwrap())
        .sum();
    let sale_amount = minor(sale["cart_amount"].as_str().unwrap(), &currency).unwrap();
    if refunded + amount > sale_amount {
        return error(400, 4003, "Refund amount exceeds the remaining amount");
    }
    s.next += 1;
    let tran_ref = format!("TST{:013}", 2_000_000 + s.next);
    let t = json!({
        "tran_ref": tran_ref,
        "previous_tran_ref": sale_ref,
        "tran_type": "Refund",
        "tran_class": "ECom",
        "cart_id": cart_id,
        "cart_description": description,
        "cart_currency": currency,
        "cart_amount": major(amount, &currency),
        "tran_currency": currency,
        "tran_total": major(amount, &currency),
        "payment_result": {
            "response_status": "A",
            "response_code": "G77803",
            "response_message": "Authorised",
            "transaction_time": "2026-01-01T11:00:00Z",
        },
    });
    s.transactions.insert(tran_ref, t.clone());
    (200, t)
}

async fn query(
    State(state): State<Arc<Mutex<State_>>>,
    headers: HeaderMap,
    raw: Bytes,
) -> Response {
    let (body, delay) = match admit(&state, Endpoint::Query, &headers, &raw).await {
        Ok(b) => b,
        Err(response) => return response,
    };
    let (status, answer) = {
        let s = state.lock().unwrap();
        match (body["tran_ref"].as_str(), body["cart_id"].as_str()) {
            (Some(tran_ref), None) => match s.transactions.get(tran_ref) {
                Some(t) => (200, t.clone()),
                None => error(400, 4001, "Transaction not found"),
            },
            (None, Some(cart_id)) => (
                200,
                Value::Array(
                    s.transactions
                        .values()
                        .filter(|t| t["cart_id"] == cart_id)
                        .cloned()
                        .collect(),
                ),
            ),
            _ => error(400, 2, "Either tran_ref or cart_id is required"),
        }
    };
    finish(delay, status, answer).await
}
