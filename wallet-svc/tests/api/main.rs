//! wallet-svc over a real socket, against a real Postgres.

mod batching;
mod cancellation;
mod concurrency;
mod helpers;
mod idempotency;
mod limits;
mod listing;
mod metrics;
mod refund;
mod security;
mod server;
mod stalls;
mod validation;
