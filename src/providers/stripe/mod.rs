//! The Stripe adapter: everything Coffer knows of Stripe's wire format.
//!
//! - [`webhook`]: `Stripe-Signature` deliveries, their event id, type and livemode, and the
//!   object an event is about.

pub mod webhook;

pub use webhook::Webhooks;
