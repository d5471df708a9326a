//! PayTabs' transactions as the port's objects.
//!
//! A hosted page and its payment are one PayTabs transaction (`tran_type` `Sale`), named by
//! its `tran_ref` and carrying Coffer's checkout id as `cart_id`; a refund is a transaction of
//! its own (`Refund`), carrying Coffer's refund id as `cart_id` and the sale's `tran_ref` as
//! `previous_tran_ref`. Its `payment_result.response_status` says where it is:
//!
//! | status | session | payment | refund |
//! |---|---|---|---|
//! | `A` authorised | COMPLETE, paid | succeeded | succeeded |
//! | `H` on hold, `P` pending | open | requires action (PROVIDER_PENDING) | pending |
//! | `D` declined, `E` error, `V` voided, `C` cancelled | open (Coffer's clock expires it) | failed, `response_code` its failure code | failed |
//! | `X` expired | EXPIRED (its payment expires with it) | failed | failed |
//! | no result yet (nobody paid on the page) | open | none yet | pending |
//!
//! PayTabs sends no object versions: an object's `version` is the time it was read, in
//! microseconds, so of two reads of one object the later one wins wherever they are applied
//! (to within the replicas' clock skew).

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

use super::wire::{PaymentResult, REFUND, Transaction, UserDefined};
use crate::domain::checkout::{PaymentStatus, Status};
use crate::domain::ids::{CheckoutId, RefundId};
use crate::domain::money::Currency;
use crate::domain::payment::RefundStatus;
use crate::providers::{
    ObjectKind, PaymentOutcome, ProviderCheckout, ProviderError, ProviderPayment, ProviderRefund,
};

/// `payment_result.response_status`, read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TranStatus {
    Authorised,
    OnHold,
    Pending,
    Declined,
    Error,
    Voided,
    Cancelled,
    Expired,
}

impl TranStatus {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "A" => TranStatus::Authorised,
            "H" => TranStatus::OnHold,
            "P" => TranStatus::Pending,
            "D" => TranStatus::Declined,
            "E" => TranStatus::Error,
            "V" => TranStatus::Voided,
            "C" => TranStatus::Cancelled,
            "X" => TranStatus::Expired,
            _ => return None,
        })
    }

    /// The order in which transactions of one `cart_id` are preferred: money taken first, then
    /// money that may still be taken, then the rest.
    fn rank(status: Option<Self>) -> u8 {
        match status {
            Some(TranStatus::Authorised) => 0,
            Some(TranStatus::OnHold | TranStatus::Pending) => 1,
            None => 3,
            Some(_) => 2,
        }
    }
}

/// The status of a transaction's result, `None` while it has none.
pub fn status(t: &Transaction) -> Result<Option<TranStatus>, ProviderError> {
    let Some(PaymentResult {
        response_status, ..
    }) = &t.payment_result
    else {
        return Ok(None);
    };
    TranStatus::parse(response_status.trim())
        .map(Some)
        .ok_or_else(|| {
            unreadable(format!(
                "transaction {} has a response_status PayTabs does not document: {response_status:?}",
                t.tran_ref
            ))
        })
}

/// The time of a read, as a version: see the module docs.
pub fn read_now() -> i64 {
    let micros = OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000;
    i64::try_from(micros).unwrap_or(i64::MAX)
}

/// What Coffer puts in `user_defined` of a page, to read back from any answer about it.
pub fn user_defined(expires_at: OffsetDateTime) -> UserDefined {
    UserDefined {
        udf1: expires_at.format(&Rfc3339).ok(),
    }
}

fn unreadable(message: String) -> ProviderError {
    ProviderError::definitive("unreadable_answer", message)
}

fn currency(t: &Transaction) -> Result<Currency, ProviderError> {
    Currency::parse(&t.cart_currency).map_err(|e| {
        unreadable(format!(
            "transaction {}: cart_currency {:?}: {}",
            t.tran_ref, t.cart_currency, e.0
        ))
    })
}

fn minor(t: &Transaction) -> Result<i64, ProviderError> {
    t.cart_amount
        .minor(currency(t)?)
        .map_err(|e| unreadable(format!("transaction {}: cart_amount: {e}", t.tran_ref)))
}

/// Coffer's id of a transaction's object, as its `cart_id` carries it: the checkout's id
/// (`checkout_…`) for a sale, the refund's (`refund_…`) for a refund.
pub fn cart_id(kind: ObjectKind, id: Uuid) -> String {
    match kind {
        ObjectKind::Refund => RefundId::from_uuid(id).to_string(),
        _ => CheckoutId::from_uuid(id).to_string(),
    }
}

fn coffer_id(t: &Transaction) -> Option<Uuid> {
    if t.is(REFUND) {
        RefundId::parse(&t.cart_id).ok().map(|id| id.as_uuid())
    } else {
        CheckoutId::parse(&t.cart_id).ok().map(|id| id.as_uuid())
    }
}

fn required_coffer_id(t: &Transaction) -> Result<Uuid, ProviderError> {
    coffer_id(t).ok_or_else(|| {
        ProviderError::definitive(
            "not_coffers",
            format!(
                "transaction {} was not made by Coffer (its cart_id is not a Coffer id)",
                t.tran_ref
            ),
        )
    })
}

/// A sale's payment; `None` while nobody has paid on its page.
pub fn payment(t: &Transaction, version: i64) -> Result<Option<ProviderPayment>, ProviderError> {
    let Some(status) = status(t)? else {
        return Ok(None);
    };
    let outcome = match status {
        TranStatus::Authorised => PaymentOutcome::Succeeded,
        TranStatus::OnHold | TranStatus::Pending => PaymentOutcome::RequiresAction,
        TranStatus::Declined
        | TranStatus::Error
        | TranStatus::Voided
        | TranStatus::Cancelled
        | TranStatus::Expired => PaymentOutcome::Failed,
    };
    let failure_code = (outcome == PaymentOutcome::Failed).then(|| {
        t.payment_result
            .as_ref()
            .and_then(|r| r.response_code.clone())
            .filter(|c| !c.is_empty())
            .unwrap_or_else(|| format!("paytabs_{status:?}").to_ascii_lowercase())
    });
    Ok(Some(ProviderPayment {
        renewal: None,
        period_end: None,
        subscription: None,
        id: t.tran_ref.clone(),
        client_reference: required_coffer_id(t)?,
        amount: minor(t)?,
        currency: currency(t)?.code().to_owned(),
        status: outcome,
        failure_code,
        card: t.payment_info.as_ref().and_then(|i| i.card()),
        // Refunds are PayTabs transactions of their own, applied as Coffer's refunds.
        amount_refunded: 0,
        version,
    }))
}

/// A sale as a checkout session. `url` is the page's, when the answer is the page's creation;
/// a query does not say it, so it is empty and Coffer keeps the one it recorded. The expiry is
/// the one Coffer sent in `user_defined`; one without it (not Coffer's) is due now.
pub fn session(
    t: &Transaction,
    url: String,
    version: i64,
) -> Result<ProviderCheckout, ProviderError> {
    let status = status(t)?;
    let (session, paid) = match status {
        Some(TranStatus::Authorised) => (Status::Complete, PaymentStatus::Paid),
        Some(TranStatus::Expired) => (Status::Expired, PaymentStatus::Unpaid),
        _ => (Status::Open, PaymentStatus::Unpaid),
    };
    let payment = match status {
        // An expired session's payment expires with it.
        Some(TranStatus::Expired) => None,
        _ if coffer_id(t).is_some() => payment(t, version)?,
        _ => None,
    };
    let expires_at = t
        .user_defined
        .as_ref()
        .and_then(|u| u.udf1.as_deref())
        .and_then(|s| OffsetDateTime::parse(s, &Rfc3339).ok())
        .unwrap_or_else(OffsetDateTime::now_utc);
    Ok(ProviderCheckout {
        id: t.tran_ref.clone(),
        client_reference: coffer_id(t),
        url,
        status: session,
        payment_status: paid,
        expires_at,
        version,
        payment,
        subscription: None,
    })
}

/// A refund transaction.
pub fn refund(t: &Transaction, version: i64) -> Result<ProviderRefund, ProviderError> {
    let status = match status(t)? {
        Some(TranStatus::Authorised) => RefundStatus::Succeeded,
        Some(TranStatus::OnHold | TranStatus::Pending) | None => RefundStatus::Pending,
        Some(_) => RefundStatus::Failed,
    };
    let payment = t.previous_tran_ref.clone().ok_or_else(|| {
        unreadable(format!(
            "refund {} names no previous_tran_ref (the sale it refunds)",
            t.tran_ref
        ))
    })?;
    Ok(ProviderRefund {
        id: t.tran_ref.clone(),
        payment,
        client_reference: required_coffer_id(t)?,
        amount: minor(t)?,
        status,
        version,
    })
}

/// Of the transactions of one `cart_id` (answered by a query by `cart_id`), the one of type
/// `kind` that says most: money taken, then money that may be taken, then failures, then
/// transactions with no result yet.
pub fn best<'a>(
    found: &'a [Transaction],
    cart_id: &str,
    kind: &str,
) -> Result<Option<&'a Transaction>, ProviderError> {
    let mut best: Option<(u8, &Transaction)> = None;
    for t in found.iter().filter(|t| t.cart_id == cart_id && t.is(kind)) {
        let rank = TranStatus::rank(status(t)?);
        if best.is_none_or(|(r, _)| rank < r) {
            best = Some((rank, t));
        }
    }
    Ok(best.map(|(_, t)| t))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::paytabs::amount::Decimal;
    use crate::providers::paytabs::wire::PaymentInfo;

    const UUID: &str = "0193a4a0-7a43-7cc2-9c8e-5b0f1f6d1e01";

    fn cart() -> String {
        cart_id(ObjectKind::CheckoutSession, Uuid::parse_str(UUID).unwrap())
    }

    fn sale(status: Option<&str>, code: Option<&str>) -> Transaction {
        Transaction {
            tran_ref: "TST2233".into(),
            previous_tran_ref: None,
            tran_type: Some("Sale".into()),
            cart_id: cart(),
            cart_currency: "KWD".into(),
            cart_amount: Decimal("12.345".into()),
            payment_result: status.map(|s| PaymentResult {
                response_status: s.into(),
                response_code: code.map(str::to_owned),
                response_message: None,
            }),
            payment_info: Some(PaymentInfo {
                card_scheme: Some("Visa".into()),
                payment_description: Some("4111 11## #### 1111".into()),
            }),
            user_defined: Some(user_defined(
                OffsetDateTime::from_unix_timestamp(1_900_000_000).unwrap(),
            )),
        }
    }

    #[test]
    fn results_map_as_the_table_says() {
        let s = session(&sale(Some("A"), Some("G1")), String::new(), 7).unwrap();
        assert_eq!(
            (s.status, s.payment_status),
            (Status::Complete, PaymentStatus::Paid)
        );
        let p = s.payment.unwrap();
        assert_eq!(p.status, PaymentOutcome::Succeeded);
        assert_eq!((p.amount, p.currency.as_str()), (12_345, "KWD"));
        assert_eq!(p.failure_code, None);
        assert_eq!(p.card, Some(("visa".into(), "1111".into())));
        assert_eq!(p.client_reference.to_string(), UUID);
        assert!(cart().starts_with("checkout_"));
        assert_eq!(s.expires_at.unix_timestamp(), 1_900_000_000);

        for letter in ["H", "P"] {
            let s = session(&sale(Some(letter), None), String::new(), 7).unwrap();
            assert_eq!(s.status, Status::Open);
            assert_eq!(s.payment.unwrap().status, PaymentOutcome::RequiresAction);
        }
        for letter in ["D", "E", "V", "C"] {
            let s = session(&sale(Some(letter), Some("831")), String::new(), 7).unwrap();
            assert_eq!(s.status, Status::Open, "{letter}");
            let p = s.payment.unwrap();
            assert_eq!(p.status, PaymentOutcome::Failed);
            assert_eq!(p.failure_code.as_deref(), Some("831"));
        }
        let expired = session(&sale(Some("X"), None), String::new(), 7).unwrap();
        assert_eq!(expired.status, Status::Expired);
        assert!(expired.payment.is_none());
        assert_eq!(
            payment(&sale(Some("X"), None), 7)
                .unwrap()
                .unwrap()
                .failure_code
                .as_deref(),
            Some("paytabs_expired")
        );
        let unpaid = session(&sale(None, None), String::new(), 7).unwrap();
        assert_eq!(unpaid.status, Status::Open);
        assert!(unpaid.payment.is_none());
        assert!(matches!(
            session(&sale(Some("Q"), None), String::new(), 7),
            Err(ProviderError::Definitive { .. })
        ));
    }

    #[test]
    fn amounts_are_read_exactly_or_refused() {
        let mut t = sale(Some("A"), None);
        t.cart_amount = Decimal("12.3456".into());
        assert!(matches!(
            payment(&t, 1),
            Err(ProviderError::Definitive { code, .. }) if code == "unreadable_answer"
        ));
        t.cart_amount = Decimal("12.3".into());
        assert_eq!(payment(&t, 1).unwrap().unwrap().amount, 12_300);
    }

    #[test]
    fn refunds_name_their_sale() {
        let mut t = sale(Some("A"), None);
        t.tran_type = Some("Refund".into());
        t.tran_ref = "TST9".into();
        assert!(refund(&t, 1).is_err(), "no previous_tran_ref");
        t.previous_tran_ref = Some("TST2233".into());
        assert!(refund(&t, 1).is_err(), "a checkout's id is no refund's");
        t.cart_id = cart_id(ObjectKind::Refund, Uuid::parse_str(UUID).unwrap());
        let r = refund(&t, 1).unwrap();
        assert_eq!(r.client_reference.to_string(), UUID);
        assert_eq!(
            (r.id.as_str(), r.payment.as_str(), r.amount, r.status),
            ("TST9", "TST2233", 12_345, RefundStatus::Succeeded)
        );
        t.payment_result = None;
        assert_eq!(refund(&t, 1).unwrap().status, RefundStatus::Pending);
    }

    #[test]
    fn the_transaction_that_says_most_is_chosen() {
        let mut declined = sale(Some("D"), None);
        declined.tran_ref = "T-D".into();
        let mut paid = sale(Some("A"), None);
        paid.tran_ref = "T-A".into();
        let mut other = sale(Some("A"), None);
        other.cart_id = "another".into();
        let mut refund = sale(Some("A"), None);
        refund.tran_type = Some("Refund".into());
        let found = [declined.clone(), refund, other, paid];
        assert_eq!(
            best(&found, &cart(), "sale").unwrap().unwrap().tran_ref,
            "T-A"
        );
        assert_eq!(
            best(&found[..1], &cart(), "sale")
                .unwrap()
                .unwrap()
                .tran_ref,
            "T-D"
        );
        assert!(best(&found, "nothing", "sale").unwrap().is_none());
    }

    #[test]
    fn reads_are_versioned_by_their_time() {
        let a = read_now();
        let b = read_now();
        assert!(a > 1_700_000_000_000_000 && b >= a);
    }
}
