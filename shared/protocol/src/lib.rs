//! Every decision of the wallet, reservation and payment lifecycle and of the waiting room, as pure functions over plain
//! values: no I/O, no clock (callers pass `now`), no async. The services gather the facts inside
//! one transaction, ask these functions what to do, and apply the answer in that transaction;
//! the model checker calls the very same functions in every interleaving.

pub mod admission;
pub mod payment;
pub mod reservation;
pub mod wallet;
