//! What both services use: the generated gRPC code and its descriptor set, telemetry, the
//! contract's rich errors, TLS and callers' identities, the gRPC server scaffolding (health, reflection, panics, limits,
//! graceful drain), Prometheus metrics, the Postgres pool and migrations, and, behind the
//! `test-support` feature, per-test databases.

pub mod auth;
pub mod calls;
pub mod cli;
pub mod connection;
pub mod db;
pub mod error;
pub mod metrics;
pub mod pipeline;
pub mod proto;
pub mod reload;
pub mod security;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod task;
pub mod telemetry;
pub mod tls;
pub mod values;

#[cfg(feature = "test-support")]
pub mod test_pki;
#[cfg(feature = "test-support")]
pub mod test_support;
