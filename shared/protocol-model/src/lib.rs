//! An exhaustive model of the reservation, payment and wallet protocol. The services' rows,
//! the Redis lock, the wallet RPCs and every request are one state machine whose actions are
//! the atomic steps of the real code, each deciding through the same `protocol` functions the
//! services call; [stateright] explores every interleaving of them, with crashes, lost locks,
//! lost messages and deadlines, and checks the properties in [`model`].
//!
//! The model checks the design, not diesel or fred: [`store`] mirrors the SQL of
//! reservation-svc's store, and conformance tests run both from the same rows.

pub mod check;
pub mod config;
pub mod key;
pub mod model;
pub mod store;
pub mod wallet;

pub use check::{Report, check};
pub use config::{Bug, Config};
pub use model::ProtocolModel;
