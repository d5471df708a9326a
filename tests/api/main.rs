//! Integration tests: real Postgres, real sockets, real tonic clients. One binary, so the
//! crate links once.

mod access;
mod auth;
mod bench;
mod binary;
mod checkout;
mod config;
mod config_file;
mod customers;
mod dev;
mod e2e;
mod events;
mod group_commit;
mod health;
mod helpers;
mod idempotency;
mod inbox;
mod meters;
mod payments;
mod paytabs;
mod pgbouncer;
mod plans;
mod polar;
mod policy;
mod sandbox_delivery;
mod sandbox_page;
mod serving;
mod signatures;
mod sql_tenancy;
mod stripe;
mod tenancy;
mod tls;
mod usage;
mod validation;
mod webhooks;
