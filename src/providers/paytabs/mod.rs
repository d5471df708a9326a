//! The PayTabs adapter.
//!
//! - [`webhook`]: callbacks signed with the server key, and their id made of the transaction
//!   and its result.

pub mod amount;
pub mod webhook;

pub use webhook::Webhooks;
