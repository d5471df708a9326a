//! Coffer: a payments and billing microservice.
//!
//! Internal services call Coffer over gRPC to manage customers and usage meters (and, as the
//! service grows, checkouts, subscriptions and the rest of usage). Everything Coffer knows
//! lives in Postgres.
//!
//! # Module map
//!
//! - [`grpc`]: the gRPC surface — protobuf ⇄ domain, `Status` mapping, the auth and telemetry
//!   layers. Nothing else.
//! - [`app`]: use cases, one module per service: transactions, idempotency, authentication,
//!   tenant administration, background workers.
//! - [`domain`]: typed values and rules (ids, emails, keys, scopes, page tokens). Knows neither
//!   protobuf nor SQL nor HTTP.
//! - [`store`]: all SQL, and the pool and migrations.
//! - [`startup`]: wires the listeners, health, reflection, admin HTTP and workers together, and
//!   drains them on shutdown ([`shutdown`]).
//! - [`config`], [`telemetry`], [`metrics`]: flags, logs and traces (and the W3C header
//!   carriers both the gRPC layer and the providers use), Prometheus.
//! - [`retry`]: backoff with full jitter, for every loop that tries again later.
//! - [`settings`]: coffer.toml, the provider accounts and per-tenant settings, read at start.
//! - [`providers`]: the provider port and one adapter per provider (sandbox, Stripe, Polar,
//!   PayTabs, generic HMAC): webhook schemes, event reading, outbound calls.
//! - [`webhooks`]: the public HTTP sidecar, `POST /webhooks/{account}` → `IngestEvent`.
//! - [`pg_local`]: finds or starts a Postgres for `serve --dev` and the tests.
//! - [`bench`]: the load generator behind `coffer bench`.
//!
//! Dependencies point inwards: `grpc` → `app` → `domain`, with `app` using `store` and
//! `providers`; `providers` never uses `app` or `grpc`, and `webhooks` speaks to the core only
//! over gRPC.

pub mod admin;
pub mod app;
pub mod bench;
pub mod config;
pub mod dev;
pub mod domain;
pub mod grpc;
pub mod metrics;
pub mod pg_local;
pub mod providers;
pub mod retry;
pub mod settings;
pub mod shutdown;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod webhooks;
