//! What both services use: the generated gRPC code and its descriptor set, telemetry, the
//! contract's rich errors, the gRPC server scaffolding (health, reflection, panics, limits,
//! graceful drain), Prometheus metrics, the Postgres pool and migrations, and, behind the
//! `test-support` feature, per-test databases.

pub mod cli;
pub mod db;
pub mod error;
pub mod metrics;
pub mod proto;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod task;
pub mod telemetry;
pub mod values;

#[cfg(feature = "test-support")]
pub mod test_support;
