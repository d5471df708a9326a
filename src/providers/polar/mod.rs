//! The Polar adapter.
//!
//! - [`webhook`]: Standard Webhooks deliveries keyed as Polar's SDKs key them.

pub mod webhook;

pub use webhook::Webhooks;
