//! Integration tests: real Postgres, real sockets, real tonic clients. One binary, so the
//! crate links once.

mod auth;
mod binary;
mod combine;
mod config;
mod customers;
mod dev;
mod health;
mod helpers;
mod idempotency;
mod tenancy;
mod validation;
