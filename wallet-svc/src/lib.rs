//! wallet-svc: user point balances. Every balance change locks the user's wallet row
//! (`SELECT ... FOR UPDATE`), is idempotent by its key, and is recorded in a ledger whose signed
//! sum always equals the balance.

pub mod config;
pub mod domain;
mod error;
pub mod grpc;
pub mod model;
pub mod startup;
pub mod store;
