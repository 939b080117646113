//! reservation-svc over a real socket, against a real Postgres and Redis.

mod admission;
mod admission_queue;
mod admission_rules;
mod balance;
mod cancel;
mod catalog;
mod edge;
mod expiry;
mod fallback;
mod helpers;
mod holds;
mod lock;
mod metrics;
mod payment;
mod redis_down;
mod security;
mod server;
mod stalls;
mod topology;
mod validation;
