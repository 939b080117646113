//! The waiting room of an on-sale: who gets which ticket number, when numbers are called, how
//! many called users may be active at once, and what a user's place in the queue reads as.
//!
//! A room is one schedule's queue. Its state lives in Redis and every step on it is one Lua
//! script, so the steps of all replicas run one at a time, in some order; [`Room`] is that state
//! and its methods are the steps, written here once as the reference that the scripts follow
//! line by line (the services' conformance test runs both on the same steps and compares).
//! Times are milliseconds since the Unix epoch on Redis's clock, passed in; the clock may step
//! back (a failover to another server) and no rule depends on it going forward.
//!
//! * **Numbers, not ranks**: each user has at most one live number; a user's place is their
//!   number less the numbers already called (`served`), so nothing is ever renumbered.
//! * **Before the opening** entrants are only collected, each with a random draw; at the opening
//!   they are numbered 1.. in the order of their draws (arriving early gives no advantage), and
//!   later entrants are numbered after them in the order they arrive.
//! * **Admission** is a token bucket (`rate`, `burst`) with a cap on active users: a tick calls
//!   the next numbers while the bucket has tokens and fewer than `max_active` slots are taken.
//!   A called number takes a slot for `claim_window`; its user claims it (and gets a token valid
//!   for `token_ttl`, the slot's new life) or loses it. Leaving, paying, cancelling and a hold's
//!   expiry free the slot at once; a number that left before it was called is skipped.

use std::collections::{BTreeMap, BTreeSet};

/// Milliseconds since the Unix epoch, on Redis's clock.
pub type Millis = i64;

/// A bucket's content in millionths of a token: a rate in thousandths per second over a span in
/// milliseconds adds whole millionths, so refills are exact integers.
pub const MICRO_TOKENS: i64 = 1_000_000;

/// The most numbers one tick looks at (called or skipped as left), so a run of numbers whose
/// users all left costs several ticks rather than one long script.
pub const MAX_STEPS_PER_TICK: i64 = 1_000;

/// A room's settings, as `ConfigureRoom` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RoomConfig {
    /// Admissions per second, in thousandths (600 a minute is 10,000).
    pub rate_milli_per_s: i64,
    /// Admissions a full bucket allows at once (at least a second of the rate: see
    /// [`RoomConfig::full_bucket`]).
    pub burst: i64,
    /// Most users called and not yet done at once.
    pub max_active: i64,
    /// How long a called user has to claim their turn.
    pub claim_window_ms: Millis,
    /// How long a claimed turn (and its admission token) lasts.
    pub token_ttl_ms: Millis,
    /// When the queue opens; entrants before it are shuffled.
    pub opens_at_ms: Millis,
}

/// Why a room's settings are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigError {
    Rate,
    Burst,
    MaxActive,
    ClaimWindow,
    TokenTtl,
}

impl ConfigError {
    /// The `ConfigureRoom` field of the setting.
    pub const fn field(self) -> &'static str {
        match self {
            Self::Rate => "rate_per_s",
            Self::Burst => "burst",
            Self::MaxActive => "max_active",
            Self::ClaimWindow => "claim_window",
            Self::TokenTtl => "token_ttl",
        }
    }

    /// The setting's bounds, as a client reads them.
    pub const fn bounds(self) -> &'static str {
        match self {
            Self::Rate => "must be at least 0.001 and at most 1,000 admissions per second",
            Self::Burst => "must be 1 to 1,000,000",
            Self::MaxActive => "must be 1 to 10,000,000",
            Self::ClaimWindow => "must be 1 s to 1 h",
            Self::TokenTtl => "must be 1 s to 24 h",
        }
    }
}

/// The largest settings a room takes: with them no sum or product of the steps leaves the
/// integers a Lua number holds exactly (2^53).
/// 1,000 a second: a tick calls at most [`MAX_STEPS_PER_TICK`] numbers, and a full bucket
/// (a second of the rate) must fit in one tick.
pub const MAX_RATE_MILLI_PER_S: i64 = 1_000_000;
pub const MAX_BURST: i64 = 1_000_000;
pub const MAX_ACTIVE: i64 = 10_000_000;
pub const MAX_CLAIM_WINDOW_MS: Millis = 3_600_000;
pub const MAX_TOKEN_TTL_MS: Millis = 24 * 3_600_000;

impl RoomConfig {
    /// Checks every setting against its bounds, naming each one that is out of them.
    pub fn check(&self) -> Vec<ConfigError> {
        let mut bad = Vec::new();
        if !(1..=MAX_RATE_MILLI_PER_S).contains(&self.rate_milli_per_s) {
            bad.push(ConfigError::Rate);
        }
        if !(1..=MAX_BURST).contains(&self.burst) {
            bad.push(ConfigError::Burst);
        }
        if !(1..=MAX_ACTIVE).contains(&self.max_active) {
            bad.push(ConfigError::MaxActive);
        }
        if !(1_000..=MAX_CLAIM_WINDOW_MS).contains(&self.claim_window_ms) {
            bad.push(ConfigError::ClaimWindow);
        }
        if !(1_000..=MAX_TOKEN_TTL_MS).contains(&self.token_ttl_ms) {
            bad.push(ConfigError::TokenTtl);
        }
        bad
    }

    /// The bucket when full, in millionths of a token: the burst, or a second of the rate if
    /// that is more, so that ticks up to a second apart call every number the rate allows.
    pub const fn full_bucket(&self) -> i64 {
        let burst = self.burst * MICRO_TOKENS;
        let second = self.rate_milli_per_s * 1_000;
        if burst > second { burst } else { second }
    }
}

/// A user's entry in the ticket table after the opening.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Entry {
    /// A number taken after the opening.
    Number(i64),
    /// The user's number (a drawn one too) is given up: left, or taken again later.
    Void,
}

/// What takes an active slot: a called number not claimed yet, or a user who claimed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Slot {
    Called(i64),
    Claimed(i64),
}

/// One room's whole state, as the Redis keys of the room hold it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Room {
    /// How many entered before the opening, fixed by the first step at or after `opens_at`;
    /// `None` until then.
    pub opened: Option<i64>,
    /// Entrants before the opening, by (draw, user): a sorted set scored by the draw, ties
    /// ordered by the user, as Redis orders members of equal score.
    pub early: BTreeSet<(i64, i64)>,
    /// Numbers taken after the opening.
    pub late: i64,
    /// Users' entries after the opening; a drawn user without one has their rank's number.
    pub tickets: BTreeMap<i64, Entry>,
    /// Every number up to this one has been called (or skipped).
    pub served: i64,
    /// The bucket, in millionths of a token, as of `bucket_at`.
    pub bucket: i64,
    pub bucket_at: Millis,
    /// Taken slots, each with the moment it ends.
    pub slots: BTreeMap<Slot, Millis>,
    /// Numbers whose users left before they were called.
    pub left: BTreeSet<i64>,
}

/// Where a user stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Standing {
    /// No live number (never entered, left, or their turn is over).
    Absent,
    /// Entered before the opening: numbered at it.
    BeforeOpening,
    /// Waiting with this number; `ahead` numbers are still to be called before it.
    Waiting { number: i64, ahead: i64 },
    /// Called and claimed: their turn (and token) lasts until `until`.
    Admitted { number: i64, until: Millis },
    /// Called, not claimed within the window, or their turn ended: the user may enter again
    /// and queue at the back.
    Expired { number: i64 },
}

/// What a tick did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tick {
    /// Numbers called, each now holding a slot.
    pub admitted: i64,
    /// Numbers passed over because their users had left.
    pub skipped: i64,
}

/// A room's counters, as `GetRoomStatus` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    pub opened: bool,
    /// Numbers given (at the opening and since), or before it, entrants so far.
    pub issued: i64,
    pub served: i64,
    /// Users with a number not called yet (before the opening: entrants).
    pub waiting: i64,
    /// Slots taken.
    pub active: i64,
}

impl Room {
    /// Opens the room if it is time: the entrants so far are numbered by their draws.
    pub fn open_if_due(&mut self, config: &RoomConfig, now: Millis) {
        if self.opened.is_none() && now >= config.opens_at_ms {
            self.opened = Some(i64::try_from(self.early.len()).unwrap_or(i64::MAX));
            self.bucket = config.full_bucket();
            self.bucket_at = now;
        }
    }

    /// Numbers given so far.
    pub fn issued(&self) -> i64 {
        self.opened.unwrap_or(0) + self.late
    }

    /// The user's live number, if they have one.
    pub fn number_of(&self, user: i64) -> Option<i64> {
        match self.tickets.get(&user) {
            Some(Entry::Number(number)) => Some(*number),
            Some(Entry::Void) => None,
            None => {
                self.opened?;
                let rank = self
                    .early
                    .iter()
                    .position(|&(_, entrant)| entrant == user)?;
                Some(i64::try_from(rank).unwrap_or(i64::MAX) + 1)
            }
        }
    }

    fn entered_early(&self, user: i64) -> Option<(i64, i64)> {
        self.early
            .iter()
            .copied()
            .find(|&(_, entrant)| entrant == user)
    }

    /// Where the user stands at `now`; a called number still unclaimed reads as admitted once
    /// [`Room::claim`] has run, which every read of the user's place does first.
    pub fn standing(&self, user: i64, now: Millis) -> Standing {
        if self.opened.is_none() {
            return if self.entered_early(user).is_some() {
                Standing::BeforeOpening
            } else {
                Standing::Absent
            };
        }
        let Some(number) = self.number_of(user) else {
            return Standing::Absent;
        };
        if number > self.served {
            return Standing::Waiting {
                number,
                ahead: number - self.served - 1,
            };
        }
        match self.slots.get(&Slot::Claimed(user)) {
            Some(&until) if until > now => Standing::Admitted { number, until },
            _ => Standing::Expired { number },
        }
    }

    /// Claims the user's called number if its window is still open: the slot becomes the
    /// user's for `token_ttl`. Anything else is left as it is.
    pub fn claim(&mut self, config: &RoomConfig, user: i64, now: Millis) {
        let Some(number) = self.number_of(user) else {
            return;
        };
        if number > self.served {
            return;
        }
        if let Some(&until) = self.slots.get(&Slot::Called(number))
            && until > now
        {
            self.slots.remove(&Slot::Called(number));
            self.slots
                .insert(Slot::Claimed(user), now + config.token_ttl_ms);
        }
    }

    /// `Enter`: the user's standing, with a number if they had none (or their turn is over),
    /// and their turn claimed if it has come. `draw` orders them if they enter before the
    /// opening.
    pub fn enter(&mut self, config: &RoomConfig, user: i64, draw: i64, now: Millis) -> Standing {
        self.open_if_due(config, now);
        if self.opened.is_none() {
            if self.entered_early(user).is_none() {
                self.early.insert((draw, user));
            }
            return Standing::BeforeOpening;
        }
        self.claim(config, user, now);
        match self.standing(user, now) {
            Standing::Absent | Standing::Expired { .. } => {
                self.late += 1;
                let number = self.issued();
                self.tickets.insert(user, Entry::Number(number));
                self.standing(user, now)
            }
            standing => standing,
        }
    }

    /// `GetPosition` and a position stream's look: the user's standing, their turn claimed if
    /// it has come.
    pub fn look(&mut self, config: &RoomConfig, user: i64, now: Millis) -> Standing {
        self.open_if_due(config, now);
        self.claim(config, user, now);
        self.standing(user, now)
    }

    /// `Leave`: gives up the user's number or turn, freeing its slot at once. Answers whether
    /// the user had anything to give up.
    pub fn leave(&mut self, config: &RoomConfig, user: i64, now: Millis) -> bool {
        self.open_if_due(config, now);
        if self.opened.is_none() {
            return match self.entered_early(user) {
                Some(entrant) => self.early.remove(&entrant),
                None => false,
            };
        }
        let Some(number) = self.number_of(user) else {
            return false;
        };
        self.tickets.insert(user, Entry::Void);
        if number > self.served {
            self.left.insert(number);
        } else {
            self.slots.remove(&Slot::Called(number));
            self.slots.remove(&Slot::Claimed(user));
        }
        true
    }

    /// A hold the user made at `held_at` is over (paid, cancelled, expired): their turn is
    /// over if the hold was made in it, and its slot is freed at once; their number stays, as
    /// used. A hold of an earlier turn (made before this turn was claimed, `token_ttl` before
    /// its slot ends) leaves the turn alone.
    pub fn release(&mut self, config: &RoomConfig, user: i64, held_at: Millis) -> bool {
        match self.slots.get(&Slot::Claimed(user)) {
            Some(&until) if until - config.token_ttl_ms <= held_at => {
                self.slots.remove(&Slot::Claimed(user));
                true
            }
            _ => false,
        }
    }

    /// A tick: refills the bucket, frees slots whose time is up, and calls the next numbers
    /// while the bucket has a token and a slot is free. Any replica may run it at any moment.
    pub fn tick(&mut self, config: &RoomConfig, now: Millis) -> Tick {
        self.open_if_due(config, now);
        let mut done = Tick::default();
        if self.opened.is_none() {
            return done;
        }
        self.refill(config, now);
        self.slots.retain(|_, until| *until > now);
        let mut free = config.max_active - i64::try_from(self.slots.len()).unwrap_or(i64::MAX);
        let mut steps = 0;
        while free > 0
            && self.bucket >= MICRO_TOKENS
            && self.served < self.issued()
            && steps < MAX_STEPS_PER_TICK
        {
            self.served += 1;
            steps += 1;
            if self.left.remove(&self.served) {
                done.skipped += 1;
                continue;
            }
            self.slots
                .insert(Slot::Called(self.served), now + config.claim_window_ms);
            self.bucket -= MICRO_TOKENS;
            free -= 1;
            done.admitted += 1;
        }
        done
    }

    /// Adds what the rate has earned since `bucket_at`, up to the burst. A clock that stepped
    /// back earns nothing until it passes `bucket_at` again.
    fn refill(&mut self, config: &RoomConfig, now: Millis) {
        if now <= self.bucket_at {
            return;
        }
        let full = config.full_bucket();
        let elapsed = now - self.bucket_at;
        // Past this span the bucket is full whatever it held: the product below stays small.
        let fills_in = full / config.rate_milli_per_s + 1;
        self.bucket = if elapsed >= fills_in {
            full
        } else {
            (self.bucket + elapsed * config.rate_milli_per_s).min(full)
        };
        self.bucket_at = now;
    }

    /// The room's counters at `now` (slots whose time is up are not counted).
    pub fn counters(&self, now: Millis) -> Counters {
        let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        let active = count(self.slots.values().filter(|&&until| until > now).count());
        match self.opened {
            None => Counters {
                opened: false,
                issued: 0,
                served: 0,
                waiting: count(self.early.len()),
                active,
            },
            Some(_) => Counters {
                opened: true,
                issued: self.issued(),
                served: self.served,
                waiting: self.issued() - self.served - count(self.left.len()),
                active,
            },
        }
    }
}

/// How long a user `ahead` numbers from their turn may wait, in seconds: at least what the rate
/// allows after a full bucket; at most the rate's time for them and everyone ahead, plus, for
/// every `max_active` of them, a slot's longest life (called and claimed only at the end of
/// the window, then held a whole turn), plus a tick's delay. Both bounds grow with `ahead`, and
/// a user's `ahead` never grows, so neither bound ever goes up for them while the settings stay.
pub fn eta_seconds(config: &RoomConfig, ahead: i64, tick_ms: Millis) -> (i64, i64) {
    let called = ahead.max(0) + 1;
    let at_once = config.full_bucket() / MICRO_TOKENS;
    let fastest = (called - at_once).max(0) * 1_000 / config.rate_milli_per_s;
    let rate = config.rate_milli_per_s;
    let by_rate_ms = (called * 1_000_000 + rate - 1) / rate;
    let slot_life_ms = config.claim_window_ms + config.token_ttl_ms;
    let by_cap_ms = (called + config.max_active - 1) / config.max_active * slot_life_ms;
    let slowest_ms = by_rate_ms + by_cap_ms + tick_ms;
    (fastest, ((slowest_ms + 999) / 1_000).max(fastest))
}

/// When to ask again, in milliseconds: a second near the head, up to half a minute far back,
/// half the earliest time the user's turn may come in between. Grows with `ahead`.
pub fn refresh_after_ms(config: &RoomConfig, ahead: i64) -> i64 {
    let (fastest, _) = eta_seconds(config, ahead, 0);
    (fastest * 1_000 / 2).clamp(1_000, 30_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> RoomConfig {
        RoomConfig {
            rate_milli_per_s: 10_000,
            burst: 2,
            max_active: 3,
            claim_window_ms: 10_000,
            token_ttl_ms: 60_000,
            opens_at_ms: 1_000,
        }
    }

    #[test]
    fn entrants_before_the_opening_are_numbered_by_their_draws_and_later_ones_by_arrival() {
        let config = config();
        let mut room = Room::default();
        assert_eq!(room.enter(&config, 7, 30, 0), Standing::BeforeOpening);
        assert_eq!(room.enter(&config, 8, 10, 1), Standing::BeforeOpening);
        assert_eq!(room.enter(&config, 8, 99, 2), Standing::BeforeOpening);
        assert_eq!(
            room.enter(&config, 9, 0, 1_000),
            Standing::Waiting {
                number: 3,
                ahead: 2
            }
        );
        assert_eq!(room.number_of(8), Some(1));
        assert_eq!(room.number_of(7), Some(2));
        assert_eq!(room.enter(&config, 7, 0, 1_001), room.standing(7, 1_001));
        assert_eq!(room.issued(), 3);
    }

    #[test]
    fn a_tick_calls_no_more_than_the_bucket_and_the_free_slots_allow() {
        let config = RoomConfig {
            rate_milli_per_s: 1_000,
            ..config()
        };
        let mut room = Room::default();
        for user in 1..=10 {
            room.enter(&config, user, 0, 2_000);
        }
        assert_eq!(room.tick(&config, 2_000).admitted, 2, "the burst");
        assert_eq!(room.tick(&config, 2_500).admitted, 0, "half a token");
        assert_eq!(room.tick(&config, 3_000).admitted, 1, "one slot left");
        assert_eq!(room.tick(&config, 5_000).admitted, 0, "every slot taken");
        assert_eq!(room.counters(5_000).active, 3);
        // Claimed or not, slots end: unclaimed ones after the window.
        room.claim(&config, 1, 5_000);
        assert!(
            !room.release(&config, 1, 4_999),
            "a hold of an earlier turn"
        );
        assert!(room.release(&config, 1, 5_000));
        assert_eq!(room.tick(&config, 5_000).admitted, 1);
        assert_eq!(room.standing(2, 12_001), Standing::Expired { number: 2 });
        assert_eq!(room.tick(&config, 12_001).admitted, 1, "one window over");
        assert_eq!(room.tick(&config, 12_100).admitted, 0);
        assert_eq!(room.tick(&config, 13_000).admitted, 1, "and the next");
    }

    #[test]
    fn a_full_bucket_holds_at_least_a_second_of_the_rate() {
        let config = config();
        assert_eq!(config.full_bucket(), 10 * MICRO_TOKENS);
        let bursty = RoomConfig {
            burst: 50,
            ..config
        };
        assert_eq!(bursty.full_bucket(), 50 * MICRO_TOKENS);
    }

    #[test]
    fn numbers_whose_users_left_are_skipped_without_a_slot() {
        let config = config();
        let mut room = Room::default();
        for user in 1..=4 {
            room.enter(&config, user, 0, 2_000);
        }
        assert!(room.leave(&config, 1, 2_000));
        assert!(room.leave(&config, 2, 2_000));
        assert!(!room.leave(&config, 2, 2_000));
        let tick = room.tick(&config, 2_000);
        assert_eq!((tick.admitted, tick.skipped), (2, 2));
        assert_eq!(room.counters(2_000).waiting, 0);
        // Entering again after leaving queues at the back.
        assert_eq!(
            room.enter(&config, 1, 0, 2_000),
            Standing::Waiting {
                number: 5,
                ahead: 0
            }
        );
    }

    #[test]
    fn a_clock_that_steps_back_earns_no_tokens() {
        let config = config();
        let mut room = Room::default();
        room.open_if_due(&config, 10_000);
        room.bucket = 0;
        room.refill(&config, 9_000);
        assert_eq!(room.bucket, 0);
        room.refill(&config, 10_100);
        assert_eq!(room.bucket, MICRO_TOKENS);
        room.refill(&config, i64::MAX / 2);
        assert_eq!(room.bucket, config.full_bucket());
    }

    #[test]
    fn the_eta_bounds_grow_with_the_place_in_the_queue() {
        let config = config();
        let mut last = (0, 0);
        for ahead in 0..500 {
            let eta = eta_seconds(&config, ahead, 500);
            assert!(
                eta.0 <= eta.1 && eta.0 >= last.0 && eta.1 >= last.1,
                "{ahead}: {eta:?}"
            );
            last = eta;
            assert!(refresh_after_ms(&config, ahead) >= refresh_after_ms(&config, ahead - 1));
        }
    }
}
