//! Generic HMAC platforms: any billing platform that signs its webhooks with an HMAC, with the
//! header names, signed message, encoding and prefix configured per account. They only send
//! webhooks: Coffer makes no calls to them (the capability table says none).
//!
//! - [`webhook`]: deliveries verified as the account's scheme says.

pub mod webhook;

pub use webhook::Webhooks;
