//! The Checkout service: protobuf ⇄ domain, nothing else.

use prost::Message;
use tonic::{Request, Response, Status};

use super::customers::{from_timestamp, timestamp};
use super::pb::checkout_server::Checkout;
use super::pb::{self, checkout_line_item, create_checkout_session_request::Customer as Who};
use super::{Fingerprinted, idempotent_call, respond, status, tenant_ctx};
use crate::app::App;
use crate::app::checkout::{CheckoutQuery, CreateCheckout};
use crate::app::idempotency::Replayable;
use crate::domain::Violations;
use crate::domain::account::AccountName;
use crate::domain::checkout::{
    self as domain, CheckoutSession, ItemPrice, LineItem, Mode, NewLineItem, PaymentStatus,
    Status as SessionStatus,
};
use crate::domain::customer::{CustomerRef, DisplayName, ExternalId, Metadata};
use crate::domain::ids::{CheckoutId, CustomerId, PaymentId, PriceId, SubscriptionId};
use crate::domain::money::{Currency, Money};
use crate::domain::page::PageSize;
use crate::domain::plan::Billing;
use crate::settings::TenantSettings;

const CREATE: &str = "/coffer.v1.Checkout/CreateCheckoutSession";
const EXPIRE: &str = "/coffer.v1.Checkout/ExpireCheckoutSession";

pub struct CheckoutService {
    app: App,
}

impl CheckoutService {
    pub fn new(app: App) -> Self {
        Self { app }
    }
}

#[tonic::async_trait]
impl Checkout for CheckoutService {
    #[tracing::instrument(skip_all)]
    async fn create_checkout_session(
        &self,
        request: Request<pb::CreateCheckoutSessionRequest>,
    ) -> Result<Response<pb::CheckoutSession>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), CREATE, request.get_ref())?;
        let settings = self.app.settings.tenant(ctx.tenant);
        let create = parse_create(request.get_ref(), settings).map_err(|v| status::invalid(&v))?;
        let done = self.app.checkout.create(&ctx, call, create).await?;
        Ok(respond(done, |s| to_proto(&s)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_checkout_session(
        &self,
        request: Request<pb::GetCheckoutSessionRequest>,
    ) -> Result<Response<pb::CheckoutSession>, Status> {
        let ctx = tenant_ctx(&request)?;
        let id = CheckoutId::parse(&request.get_ref().id)
            .map_err(|e| status::invalid(&Violations::single("id", e.0)))?;
        let session = self.app.checkout.get(&ctx, id).await?;
        Ok(Response::new(to_proto(&session)))
    }

    #[tracing::instrument(skip_all)]
    async fn list_checkout_sessions(
        &self,
        request: Request<pb::ListCheckoutSessionsRequest>,
    ) -> Result<Response<pb::ListCheckoutSessionsResponse>, Status> {
        let ctx = tenant_ctx(&request)?;
        let req = request.get_ref();
        let mut v = Violations::new();
        let page_size = v.check("page_size", PageSize::parse(req.page_size));
        let customer = if req.customer_id.is_empty() {
            Some(None)
        } else {
            v.check("customer_id", CustomerId::parse(&req.customer_id))
                .map(Some)
        };
        let status = match pb::CheckoutSessionStatus::try_from(req.status) {
            Ok(pb::CheckoutSessionStatus::Unspecified) => Some(None),
            Ok(s) => Some(status_from_proto(s)),
            Err(_) => {
                v.add("status", "unknown status");
                None
            }
        };
        v.finish().map_err(|v| status::invalid(&v))?;
        let query = CheckoutQuery {
            customer: customer.expect("checked"),
            status: status.expect("checked"),
            page_size: page_size.expect("checked"),
            page_token: Some(req.page_token.clone()),
        };
        let page = self.app.checkout.list(&ctx, &query).await?;
        Ok(Response::new(pb::ListCheckoutSessionsResponse {
            checkout_sessions: page.items.iter().map(to_proto).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn expire_checkout_session(
        &self,
        request: Request<pb::ExpireCheckoutSessionRequest>,
    ) -> Result<Response<pb::CheckoutSession>, Status> {
        let ctx = tenant_ctx(&request)?;
        let call = idempotent_call(request.metadata(), EXPIRE, request.get_ref())?;
        let id = CheckoutId::parse(&request.get_ref().id)
            .map_err(|e| status::invalid(&Violations::single("id", e.0)))?;
        let done = self.app.checkout.expire(&ctx, call, id).await?;
        Ok(respond(done, |s| to_proto(&s)))
    }

    #[tracing::instrument(skip_all)]
    async fn verify_checkout_session(
        &self,
        request: Request<pb::VerifyCheckoutSessionRequest>,
    ) -> Result<Response<pb::CheckoutSession>, Status> {
        let ctx = tenant_ctx(&request)?;
        let id = CheckoutId::parse(&request.get_ref().id)
            .map_err(|e| status::invalid(&Violations::single("id", e.0)))?;
        let session = self.app.checkout.verify(&ctx, id).await?;
        Ok(Response::new(to_proto(&session)))
    }

    #[tracing::instrument(skip_all)]
    async fn get_payment(
        &self,
        request: Request<pb::GetPaymentRequest>,
    ) -> Result<Response<pb::Payment>, Status> {
        super::payments::get_payment(&self.app, request).await
    }

    #[tracing::instrument(skip_all)]
    async fn list_payments(
        &self,
        request: Request<pb::ListPaymentsRequest>,
    ) -> Result<Response<pb::ListPaymentsResponse>, Status> {
        super::payments::list_payments(&self.app, request).await
    }

    #[tracing::instrument(skip_all)]
    async fn refund_payment(
        &self,
        request: Request<pb::RefundPaymentRequest>,
    ) -> Result<Response<pb::Refund>, Status> {
        super::payments::refund_payment(&self.app, request).await
    }
}

impl Fingerprinted for pb::CreateCheckoutSessionRequest {
    /// A line item's name and amounts are output only.
    fn clear_output_only(&mut self) {
        for item in &mut self.line_items {
            item.name.clear();
            item.unit_amount = 0;
            item.amount_total = 0;
        }
    }
}

impl Fingerprinted for pb::ExpireCheckoutSessionRequest {}

fn mode_from_proto(m: i32) -> Option<Mode> {
    match pb::CheckoutMode::try_from(m).ok()? {
        pb::CheckoutMode::Unspecified => None,
        pb::CheckoutMode::Payment => Some(Mode::Payment),
        pb::CheckoutMode::Subscription => Some(Mode::Subscription),
    }
}

fn mode_to_proto(m: Mode) -> pb::CheckoutMode {
    match m {
        Mode::Payment => pb::CheckoutMode::Payment,
        Mode::Subscription => pb::CheckoutMode::Subscription,
    }
}

fn status_from_proto(s: pb::CheckoutSessionStatus) -> Option<SessionStatus> {
    match s {
        pb::CheckoutSessionStatus::Unspecified => None,
        pb::CheckoutSessionStatus::Open => Some(SessionStatus::Open),
        pb::CheckoutSessionStatus::Complete => Some(SessionStatus::Complete),
        pb::CheckoutSessionStatus::Expired => Some(SessionStatus::Expired),
    }
}

fn status_to_proto(s: SessionStatus) -> pb::CheckoutSessionStatus {
    match s {
        SessionStatus::Open => pb::CheckoutSessionStatus::Open,
        SessionStatus::Complete => pb::CheckoutSessionStatus::Complete,
        SessionStatus::Expired => pb::CheckoutSessionStatus::Expired,
    }
}

fn payment_status_to_proto(s: PaymentStatus) -> pb::CheckoutPaymentStatus {
    match s {
        PaymentStatus::Unpaid => pb::CheckoutPaymentStatus::Unpaid,
        PaymentStatus::Paid => pb::CheckoutPaymentStatus::Paid,
        PaymentStatus::NoPaymentRequired => pb::CheckoutPaymentStatus::NoPaymentRequired,
    }
}

fn payment_status_from_proto(s: i32) -> Option<PaymentStatus> {
    match pb::CheckoutPaymentStatus::try_from(s).ok()? {
        pb::CheckoutPaymentStatus::Unspecified => None,
        pb::CheckoutPaymentStatus::Unpaid => Some(PaymentStatus::Unpaid),
        pb::CheckoutPaymentStatus::Paid => Some(PaymentStatus::Paid),
        pb::CheckoutPaymentStatus::NoPaymentRequired => Some(PaymentStatus::NoPaymentRequired),
    }
}

/// A success, cancel or return URL: well-formed, and on one of the tenant's allowed origins
/// when it lists any, so Coffer is never an open redirect.
pub(super) fn redirect(
    v: &mut Violations,
    field: &str,
    url: &str,
    settings: &TenantSettings,
    placeholder_allowed: bool,
) -> Option<String> {
    if !placeholder_allowed && url.contains(domain::SESSION_ID_PLACEHOLDER) {
        v.add(
            field,
            "may not hold {CHECKOUT_SESSION_ID} (only success_url may)",
        );
        return None;
    }
    let url = v.check(field, domain::redirect_url(url))?;
    let origins = &settings.allowed_redirect_origins;
    let probe = url.replace(domain::SESSION_ID_PLACEHOLDER, "x");
    if !origins.is_empty() && !origins.iter().any(|o| o.allows(&probe)) {
        v.add(
            field,
            "is not on one of the tenant's allowed_redirect_origins",
        );
        return None;
    }
    Some(url)
}

fn parse_create(
    req: &pb::CreateCheckoutSessionRequest,
    settings: &TenantSettings,
) -> Result<CreateCheckout, Violations> {
    let mut v = Violations::new();
    let customer = match &req.customer {
        Some(Who::CustomerId(id)) => v
            .check("customer_id", CustomerId::parse(id))
            .map(CustomerRef::Id),
        Some(Who::ExternalId(e)) => v
            .check("external_id", ExternalId::parse(e))
            .map(CustomerRef::External),
        None => {
            v.add("customer_id", "set customer_id or external_id");
            None
        }
    };
    let account = if req.account.is_empty() {
        Some(None)
    } else {
        v.check("account", AccountName::parse(&req.account))
            .map(Some)
    };
    let mode = mode_from_proto(req.mode);
    if mode.is_none() {
        v.add("mode", "must be PAYMENT or SUBSCRIPTION");
    }
    let mut items = Vec::with_capacity(req.line_items.len());
    if req.line_items.is_empty() {
        v.add("line_items", "at least one line item is required");
    } else if req.line_items.len() > domain::MAX_LINE_ITEMS {
        v.add(
            "line_items",
            format!("must have at most {} items", domain::MAX_LINE_ITEMS),
        );
    } else {
        for (i, item) in req.line_items.iter().enumerate() {
            let at = format!("line_items[{i}]");
            let price = match &item.price {
                Some(checkout_line_item::Price::PriceId(id)) => v
                    .check(&format!("{at}.price_id"), PriceId::parse(id))
                    .map(ItemPrice::Catalogue),
                Some(checkout_line_item::Price::PriceData(p)) => {
                    if mode == Some(Mode::Subscription) {
                        v.add(
                            &format!("{at}.price_data"),
                            "inline prices are one-time: SUBSCRIPTION mode takes catalogue prices",
                        );
                    }
                    let money = v
                        .check(
                            &format!("{at}.price_data.currency"),
                            Currency::parse(&p.currency),
                        )
                        .and_then(|c| {
                            v.check(
                                &format!("{at}.price_data.amount"),
                                Money::new(p.amount, c, &settings.amount_limits),
                            )
                        });
                    let name = if p.name.is_empty() {
                        v.add(&format!("{at}.price_data.name"), "is required");
                        None
                    } else {
                        v.check(
                            &format!("{at}.price_data.name"),
                            DisplayName::parse(&p.name),
                        )
                    };
                    money
                        .zip(name)
                        .map(|(money, name)| ItemPrice::Inline { money, name })
                }
                None => {
                    v.add(&format!("{at}.price_id"), "set price_id or price_data");
                    None
                }
            };
            let quantity = v.check(&format!("{at}.quantity"), domain::quantity(item.quantity));
            if let (Some(price), Some(quantity)) = (price, quantity) {
                items.push(NewLineItem { price, quantity });
            }
        }
    }
    let success_url = redirect(&mut v, "success_url", &req.success_url, settings, true);
    let cancel_url = redirect(&mut v, "cancel_url", &req.cancel_url, settings, false);
    let expires_in = v.check(
        "expires_in_seconds",
        domain::expires_in(req.expires_in_seconds),
    );
    let trial_days = match req.trial_days {
        None => Some(None),
        Some(d) => match u16::try_from(d)
            .ok()
            .filter(|d| *d <= Billing::MAX_TRIAL_DAYS)
        {
            Some(d) => Some(Some(d)),
            None => {
                v.add(
                    "trial_days",
                    format!("must be between 0 and {}", Billing::MAX_TRIAL_DAYS),
                );
                None
            }
        },
    };
    let metadata = v.check("metadata", Metadata::parse(&req.metadata));
    v.finish()?;
    Ok(CreateCheckout {
        customer: customer.expect("checked"),
        account: account.expect("checked"),
        mode: mode.expect("checked"),
        items,
        success_url: success_url.expect("checked"),
        cancel_url: cancel_url.expect("checked"),
        expires_in: expires_in.expect("checked"),
        trial_days: trial_days.expect("checked"),
        metadata: metadata.expect("checked"),
    })
}

pub fn to_proto(s: &CheckoutSession) -> pb::CheckoutSession {
    pb::CheckoutSession {
        id: s.id.to_string(),
        customer_id: s.customer.to_string(),
        url: s.url.clone(),
        status: status_to_proto(s.status).into(),
        payment_status: payment_status_to_proto(s.payment_status).into(),
        mode: mode_to_proto(s.mode).into(),
        provider_account: s.account.clone(),
        provider_session_id: s.provider_session_id.clone(),
        expires_at: Some(timestamp(s.expires_at)),
        subscription_id: s.subscription_id.map(|i| i.to_string()).unwrap_or_default(),
        payment_id: s.payment_id.map(|i| i.to_string()).unwrap_or_default(),
        line_items: s
            .items
            .iter()
            .map(|i| pb::CheckoutLineItem {
                price: Some(match i.price_id {
                    Some(id) => checkout_line_item::Price::PriceId(id.to_string()),
                    None => checkout_line_item::Price::PriceData(pb::InlinePrice {
                        amount: i.unit.amount(),
                        currency: i.unit.currency().code().to_owned(),
                        name: i.name.clone(),
                    }),
                }),
                quantity: i.quantity.into(),
                name: i.name.clone(),
                unit_amount: i.unit.amount(),
                amount_total: i.amount_total,
            })
            .collect(),
        amount_total: s.amount_total,
        currency: s.currency.code().to_owned(),
        success_url: s.success_url.clone(),
        cancel_url: s.cancel_url.clone(),
        trial_days: s.trial_days.into(),
        metadata: s.metadata.as_map().clone(),
        create_time: Some(timestamp(s.created_at)),
    }
}

/// The session a stored response describes. Only what the response shows is kept (an item's
/// billing is not on the wire and reads back as one-time), which is all a replay re-encodes,
/// so the replay is byte for byte the first answer.
fn from_proto(p: &pb::CheckoutSession) -> Option<CheckoutSession> {
    let currency = Currency::parse(&p.currency).ok()?;
    let items = p
        .line_items
        .iter()
        .map(|i| {
            Some(LineItem {
                price_id: match &i.price {
                    Some(checkout_line_item::Price::PriceId(id)) => Some(PriceId::parse(id).ok()?),
                    _ => None,
                },
                name: i.name.clone(),
                unit: Money::stored(i.unit_amount, currency).ok()?,
                billing: Billing::OneTime,
                quantity: u32::try_from(i.quantity).ok()?,
                amount_total: i.amount_total,
            })
        })
        .collect::<Option<Vec<_>>>()?;
    let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    Some(CheckoutSession {
        id: CheckoutId::parse(&p.id).ok()?,
        customer: CustomerId::parse(&p.customer_id).ok()?,
        account: p.provider_account.clone(),
        mode: mode_from_proto(p.mode)?,
        status: status_from_proto(pb::CheckoutSessionStatus::try_from(p.status).ok()?)?,
        payment_status: payment_status_from_proto(p.payment_status)?,
        items,
        amount_total: p.amount_total,
        currency,
        success_url: p.success_url.clone(),
        cancel_url: p.cancel_url.clone(),
        trial_days: u16::try_from(p.trial_days).ok()?,
        metadata: Metadata::parse(&p.metadata).ok()?,
        expires_at: from_timestamp(p.expires_at.as_ref()?)?,
        url: p.url.clone(),
        provider_session_id: p.provider_session_id.clone(),
        subscription_id: match optional(&p.subscription_id) {
            Some(s) => Some(SubscriptionId::parse(&s).ok()?),
            None => None,
        },
        payment_id: match optional(&p.payment_id) {
            Some(s) => Some(PaymentId::parse(&s).ok()?),
            None => None,
        },
        created_at: from_timestamp(p.create_time.as_ref()?)?,
    })
}

impl Replayable for CheckoutSession {
    fn encode_replay(&self) -> Vec<u8> {
        to_proto(self).encode_to_vec()
    }

    fn decode_replay(bytes: &[u8]) -> Option<Self> {
        from_proto(&pb::CheckoutSession::decode(bytes).ok()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::RedirectOrigin;

    fn request(success_url: &str) -> pb::CreateCheckoutSessionRequest {
        pb::CreateCheckoutSessionRequest {
            customer: Some(Who::ExternalId("org-1".into())),
            mode: pb::CheckoutMode::Payment as i32,
            line_items: vec![pb::CheckoutLineItem {
                price: Some(checkout_line_item::Price::PriceData(pb::InlinePrice {
                    amount: 500,
                    currency: "USD".into(),
                    name: "Setup".into(),
                })),
                quantity: 1,
                ..Default::default()
            }],
            success_url: success_url.into(),
            cancel_url: "https://shop.example/".into(),
            ..Default::default()
        }
    }

    #[test]
    fn every_rpc_field_and_value_is_documented() {
        let missing = crate::grpc::undocumented("coffer/v1/checkout.proto");
        assert!(missing.is_empty(), "undocumented: {missing:?}");
    }

    #[test]
    fn redirects_stay_on_the_allowed_origins() {
        let open = TenantSettings::default();
        assert!(parse_create(&request("https://anywhere.example/ok"), &open).is_ok());
        let narrowed = TenantSettings {
            allowed_redirect_origins: vec![RedirectOrigin::parse("https://shop.example").unwrap()],
            ..Default::default()
        };
        assert!(
            parse_create(
                &request("https://shop.example/ok?s={CHECKOUT_SESSION_ID}"),
                &narrowed
            )
            .is_ok()
        );
        for bad in [
            "https://evil.example/ok",
            "https://shop.example.evil.example/",
            "http://shop.example/ok",
            "//evil.example/ok",
        ] {
            let v = parse_create(&request(bad), &narrowed).unwrap_err();
            assert_eq!(v.list()[0].field, "success_url", "{bad}");
        }
    }

    #[test]
    fn a_response_replays_byte_for_byte() {
        let p = pb::CheckoutSession {
            id: CheckoutId::generate().to_string(),
            customer_id: CustomerId::generate().to_string(),
            url: "http://127.0.0.1:8080/sandbox/checkout/cs_sbx_1".into(),
            status: pb::CheckoutSessionStatus::Open as i32,
            payment_status: pb::CheckoutPaymentStatus::Unpaid as i32,
            mode: pb::CheckoutMode::Payment as i32,
            provider_account: "acme-sandbox".into(),
            provider_session_id: "cs_sbx_1".into(),
            expires_at: Some(prost_types::Timestamp {
                seconds: 1_800_000_000,
                nanos: 0,
            }),
            line_items: vec![pb::CheckoutLineItem {
                price: Some(checkout_line_item::Price::PriceId(
                    PriceId::generate().to_string(),
                )),
                quantity: 2,
                name: "Pro".into(),
                unit_amount: 2_900,
                amount_total: 5_800,
            }],
            amount_total: 5_800,
            currency: "USD".into(),
            success_url: "https://shop.example/ok".into(),
            cancel_url: "https://shop.example/".into(),
            metadata: [("order".to_string(), "7".to_string())].into(),
            create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000,
                nanos: 123_000,
            }),
            ..Default::default()
        };
        let bytes = p.encode_to_vec();
        let session = CheckoutSession::decode_replay(&bytes).unwrap();
        assert_eq!(session.encode_replay(), bytes);
    }
}
