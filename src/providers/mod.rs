//! Payment providers: the only place that speaks a provider's wire format.
//!
//! This version holds the inbound side, the webhooks: [`signature`] verifies a delivery's
//! signature under each provider's scheme (Stripe, Standard Webhooks for the sandbox, Polar,
//! PayTabs, generic HMAC platforms) on the raw bytes, before anything is parsed; [`webhook`]
//! then reads what the inbox needs from a verified delivery (the provider's event id, its type,
//! its livemode). The outbound side (the `Provider` trait, the operations journal, the
//! sandbox) comes with the checkout work.

pub mod signature;
pub mod webhook;
