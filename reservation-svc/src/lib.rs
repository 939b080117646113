//! reservation-svc: concerts, schedules, seats, seat holds, payment through wallet-svc and
//! cancellation. A hold takes a Redis lock on its
//! seat (losers of a stampede answer at once), then Postgres decides under the seat's row lock,
//! with a partial unique index as the final guard against double booking.

pub mod admission;
pub mod config;
pub mod domain;
mod error;
pub mod grpc;
pub mod lock;
pub mod metrics;
pub mod model;
pub mod reconciler;
pub mod startup;
pub mod store;
pub mod sweeper;
pub mod wallet_balance;
pub mod wallet_client;
