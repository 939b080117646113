//! An exhaustive model of the reservation, payment and wallet protocol. The services' rows,
//! the Redis lock, the wallet RPCs and every request are one state machine whose actions are
//! the atomic steps of the real code, each deciding through the same `protocol` functions the
//! services call; [stateright] explores every interleaving of them, with crashes, lost locks,
//! lost messages and deadlines, a hold's time running out and the performance beginning at any
//! moment, and checks the properties in [`model`]. Every deciding transaction of
//! reservation-svc reads its clock under the seat's lock, in the step that decides: a seeded
//! bug that reads it earlier (Postgres `now()`, the transaction's start) is caught.
//!
//! In that model a wallet call is one atomic transaction ([`wallet`]). [`wallet_model`] is a
//! second, smaller model of wallet-svc's own transactions, statement by statement under
//! Postgres row locks: wallet creation (a user starts without a wallet row), batches of one
//! user's movements under one lock, two replicas, and clients that send uses, refunds (before
//! their use, too) and charges concurrently. It checks the wallet's invariants and that every
//! batch does exactly what [`wallet`] does for its movements one by one, which is what lets
//! the protocol model take a wallet call as one step.
//!
//! [`admission_model`] is a third: the waiting room's reference state machine
//! ([`protocol::admission::Room`]), each of its steps one atomic Redis script, explored in every
//! interleaving of a few users entering (with tied draws), looking, leaving and having their
//! turn released, ticks, and a clock that crosses the opening, claim windows and turns and
//! steps back once. It checks the cap on slots, one number per user, that every number still to
//! call is one waiting user's or marked left, that places and ETA bounds never go up, that
//! entrants before the opening are numbered by their draws, that a claim within its window
//! admits, and that numbers are called no faster than the bucket fills.
//!
//! The models check the design, not diesel or fred: [`store`] mirrors the SQL of
//! reservation-svc's store, [`wallet`] and [`wallet_model`] wallet-svc's, and conformance tests
//! run both from the same rows.

pub mod admission_model;
pub mod check;
pub mod config;
pub mod key;
pub mod model;
pub mod store;
pub mod wallet;
pub mod wallet_model;

pub use admission_model::{AdmissionBug, AdmissionConfig, AdmissionModel};
pub use check::{
    Report, check, check_admission, check_admission_bug, check_bug, check_until, check_wallet,
};
pub use config::{Bug, Config};
pub use model::ProtocolModel;
pub use wallet_model::{WalletConfig, WalletModel};
