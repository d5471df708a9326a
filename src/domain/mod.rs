//! Typed values and rules: ids, customer fields, provider accounts, webhook events, meters,
//! usage events, money, plans, API keys and scopes, pagination, IP address ranges.
//!
//! Nothing here knows protobuf, SQL or HTTP. Every type that holds caller input has a private
//! field and a `parse` that returns `Result`, so a value that exists is a valid one.

pub mod access;
pub mod account;
pub mod auth;
pub mod checkout;
pub mod cidr;
pub mod customer;
pub mod event;
pub mod idempotency;
pub mod ids;
pub mod meter;
pub mod money;
pub mod page;
pub mod payment;
pub mod plan;
pub mod proration;
pub mod subscription;
pub mod usage;
pub mod validation;

pub use validation::{Invalid, Violations};
