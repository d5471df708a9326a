//! PayTabs' PT2 wire format: the JSON bodies of `POST /payment/request` (a hosted payment page,
//! a refund) and `POST /payment/query`, and of their answers and errors. Field names are
//! PayTabs'; nothing here knows Coffer's types beyond what a request is built from.
//!
//! Every request carries the merchant's `profile_id`; the server key travels in the
//! `authorization` header ([`super::client`]). Amounts are decimal strings of major units
//! ([`super::amount`]). Answers are read leniently (unknown fields are ignored, absent
//! optional ones are `None`) but every field Coffer relies on is required.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use super::amount::Decimal;

/// `tran_type` of a hosted page that charges at once.
pub const SALE: &str = "sale";
/// `tran_type` of a refund of an earlier sale.
pub const REFUND: &str = "refund";
/// `tran_class` of a card-not-present payment made on a web page.
pub const ECOM: &str = "ecom";

/// The longest `cart_description` sent; longer ones are cut at a character boundary.
pub const MAX_DESCRIPTION: usize = 128;

/// `POST /payment/request` for a hosted payment page (`tran_type` `sale`).
#[derive(Debug, Serialize)]
pub struct PageRequest<'a> {
    pub profile_id: u64,
    pub tran_type: &'static str,
    pub tran_class: &'static str,
    /// Coffer's checkout id: how the page's transaction is found again
    /// (`payment/query` by `cart_id`) and how its callback names Coffer's session.
    pub cart_id: String,
    pub cart_currency: &'static str,
    pub cart_amount: String,
    pub cart_description: String,
    /// Where PayTabs posts the result server to server. Omitted: Coffer's public webhook URL is
    /// not known to the adapter, so the profile's IPN (set in PayTabs' dashboard to
    /// `https://<sidecar>/webhooks/<account>`) carries the results instead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub callback: Option<&'a str>,
    /// Where the customer's browser is sent (with a POST) once the payment ends, whatever its
    /// result.
    #[serde(rename = "return")]
    pub return_url: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_details: Option<CustomerDetails<'a>>,
    /// Coffer sells no shipped goods through PayTabs: the page asks for no shipping address.
    pub hide_shipping: bool,
    /// Echoed in every answer about the transaction: Coffer keeps the session's expiry here,
    /// since PayTabs' query says nothing of it.
    pub user_defined: UserDefined,
}

/// The buyer, as far as Coffer knows them; PayTabs' page asks for what is missing.
#[derive(Debug, Serialize)]
pub struct CustomerDetails<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email: Option<&'a str>,
}

/// PayTabs' free fields, echoed back in answers and callbacks.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserDefined {
    /// The session's expiry, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udf1: Option<String>,
}

/// `POST /payment/request` for a refund (`tran_type` `refund`) of the sale `tran_ref`.
#[derive(Debug, Serialize)]
pub struct RefundRequest<'a> {
    pub profile_id: u64,
    pub tran_type: &'static str,
    pub tran_class: &'static str,
    pub tran_ref: &'a str,
    /// Coffer's refund id.
    pub cart_id: String,
    pub cart_currency: &'static str,
    pub cart_amount: String,
    pub cart_description: String,
}

/// `POST /payment/query`: one transaction by `tran_ref`, or every transaction of a `cart_id`
/// (exactly one of the two).
#[derive(Debug, Serialize)]
pub struct QueryRequest<'a> {
    pub profile_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tran_ref: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cart_id: Option<&'a str>,
}

/// The answer to a hosted page request: the page and its transaction.
#[derive(Debug, Clone, Deserialize)]
pub struct PageAnswer {
    pub tran_ref: String,
    pub cart_id: String,
    pub cart_currency: String,
    pub cart_amount: Decimal,
    pub redirect_url: String,
}

/// A transaction as PayTabs answers a query, a refund or a callback.
#[derive(Debug, Clone, Deserialize)]
pub struct Transaction {
    pub tran_ref: String,
    /// The sale a refund refunds.
    #[serde(default)]
    pub previous_tran_ref: Option<String>,
    /// `Sale`, `Refund`, `Auth`, ... (PayTabs capitalises them in answers).
    #[serde(default)]
    pub tran_type: Option<String>,
    pub cart_id: String,
    pub cart_currency: String,
    pub cart_amount: Decimal,
    /// Absent while the transaction has no result yet (a page nobody has paid on).
    #[serde(default)]
    pub payment_result: Option<PaymentResult>,
    #[serde(default)]
    pub payment_info: Option<PaymentInfo>,
    #[serde(default)]
    pub user_defined: Option<UserDefined>,
}

impl Transaction {
    /// Whether `tran_type` is `kind` (`sale`, `refund`), as PayTabs spells it in any case.
    pub fn is(&self, kind: &str) -> bool {
        self.tran_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(kind))
    }
}

/// `payment_result`: where the transaction is.
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentResult {
    /// One letter: `A` authorised, `H` on hold, `P` pending, `V` voided, `E` error,
    /// `D` declined, `X` expired, `C` cancelled.
    pub response_status: String,
    /// The acquirer's or PayTabs' code of the result (`G12345`, `831`): a decline's reason.
    #[serde(default, deserialize_with = "text_or_number")]
    pub response_code: Option<String>,
    #[serde(default)]
    pub response_message: Option<String>,
}

/// `payment_info`: the card, masked (`4111 11## #### 1111`).
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentInfo {
    #[serde(default)]
    pub card_scheme: Option<String>,
    #[serde(default)]
    pub payment_description: Option<String>,
}

impl PaymentInfo {
    /// The card's brand and last four digits, when both are there. The masked number's other
    /// digits (its BIN) are never kept.
    pub fn card(&self) -> Option<(String, String)> {
        let brand = self.card_scheme.as_deref()?.trim();
        let digits: Vec<char> = self
            .payment_description
            .as_deref()?
            .chars()
            .rev()
            .filter(|c| !c.is_whitespace())
            .take(4)
            .collect();
        let last4: String = digits.into_iter().rev().collect();
        (!brand.is_empty() && last4.len() == 4 && last4.bytes().all(|b| b.is_ascii_digit()))
            .then(|| (brand.to_ascii_lowercase(), last4))
    }
}

/// The answer to a query by `cart_id`: a list of transactions (one object is taken as a list
/// of one).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Transactions {
    Many(Vec<Transaction>),
    One(Box<Transaction>),
}

impl Transactions {
    pub fn into_vec(self) -> Vec<Transaction> {
        match self {
            Transactions::Many(v) => v,
            Transactions::One(t) => vec![*t],
        }
    }
}

/// PayTabs' error body: `{"code": 206, "message": "Invalid currency code", "trace": "PMNT…"}`.
#[derive(Debug, Clone, Deserialize)]
pub struct ErrorBody {
    #[serde(default, deserialize_with = "text_or_number")]
    pub code: Option<String>,
    #[serde(default)]
    pub message: Option<String>,
    /// PayTabs' id of the request, for its support.
    #[serde(default)]
    pub trace: Option<String>,
}

/// A code PayTabs writes as a string or as a number; `null` is none.
fn text_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    struct V;

    impl Visitor<'_> for V {
        type Value = Option<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or an integer")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(Some(v.to_owned()))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(Some(v.to_string()))
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }

    d.deserialize_any(V)
}

/// `text` cut to at most `max` bytes at a character boundary.
pub fn truncated(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_request_is_written_as_paytabs_documents_it() {
        let body = PageRequest {
            profile_id: 87654,
            tran_type: SALE,
            tran_class: ECOM,
            cart_id: "c0ffee".into(),
            cart_currency: "KWD",
            cart_amount: "1.250".into(),
            cart_description: "1 × Tea".into(),
            callback: None,
            return_url: "https://shop.example/done",
            customer_details: None,
            hide_shipping: true,
            user_defined: UserDefined {
                udf1: Some("2030-01-01T00:00:00Z".into()),
            },
        };
        assert_eq!(
            serde_json::to_value(&body).unwrap(),
            serde_json::json!({
                "profile_id": 87654,
                "tran_type": "sale",
                "tran_class": "ecom",
                "cart_id": "c0ffee",
                "cart_currency": "KWD",
                "cart_amount": "1.250",
                "cart_description": "1 × Tea",
                "return": "https://shop.example/done",
                "hide_shipping": true,
                "user_defined": {"udf1": "2030-01-01T00:00:00Z"},
            })
        );
    }

    #[test]
    fn a_query_answer_is_read() {
        let json = r#"{
            "tran_ref": "TST2204301053491", "merchant_id": 37871, "profile_id": 89644,
            "cart_id": "10", "cart_description": "test", "cart_currency": "EGP",
            "cart_amount": "50.00", "tran_currency": "EGP", "tran_total": "50.00",
            "tran_type": "Sale", "tran_class": "ECom",
            "payment_result": {"response_status": "A", "response_code": "G84417",
                "response_message": "Authorised", "transaction_time": "2022-04-30T11:42:49Z"},
            "payment_info": {"payment_method": "Visa", "card_type": "Credit",
                "card_scheme": "Visa", "payment_description": "4111 11## #### 1111",
                "expiryMonth": 12, "expiryYear": 2030},
            "user_defined": {"udf1": "x"}
        }"#;
        let t: Transaction = serde_json::from_str(json).unwrap();
        assert!(t.is("sale") && !t.is("refund"));
        assert_eq!(t.cart_amount, Decimal("50.00".into()));
        let result = t.payment_result.as_ref().unwrap();
        assert_eq!(result.response_status, "A");
        assert_eq!(result.response_code.as_deref(), Some("G84417"));
        assert_eq!(
            t.payment_info.unwrap().card(),
            Some(("visa".into(), "1111".into()))
        );
        assert_eq!(t.user_defined.unwrap().udf1.as_deref(), Some("x"));
    }

    #[test]
    fn errors_and_lists_are_read() {
        let e: ErrorBody = serde_json::from_str(
            r#"{"code":206,"message":"Invalid currency code","trace":"PMNT0401"}"#,
        )
        .unwrap();
        assert_eq!(e.code.as_deref(), Some("206"));
        let one = r#"{"tran_ref":"T1","cart_id":"c","cart_currency":"USD","cart_amount":"1.00"}"#;
        let many: Transactions = serde_json::from_str(&format!("[{one},{one}]")).unwrap();
        assert_eq!(many.into_vec().len(), 2);
        let single: Transactions = serde_json::from_str(one).unwrap();
        assert_eq!(single.into_vec().len(), 1);
        let none: Transactions = serde_json::from_str("[]").unwrap();
        assert!(none.into_vec().is_empty());
    }

    #[test]
    fn only_a_brand_and_four_digits_are_kept_of_a_card() {
        let info = |scheme: &str, description: &str| PaymentInfo {
            card_scheme: Some(scheme.into()),
            payment_description: Some(description.into()),
        };
        assert_eq!(
            info("MasterCard", "5200 00## #### 0007").card(),
            Some(("mastercard".into(), "0007".into()))
        );
        assert_eq!(info("Visa", "##").card(), None);
        assert_eq!(info("", "4111 11## #### 1111").card(), None);
    }

    #[test]
    fn descriptions_are_cut_at_a_character_boundary() {
        assert_eq!(truncated("abc", 5), "abc");
        assert_eq!(truncated("ab×c", 3), "ab");
        assert_eq!(truncated("ab×c", 4), "ab×");
    }
}
