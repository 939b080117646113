//! The waiting room ([`protocol::admission::Room`]) explored in every interleaving of its
//! steps. In production each step is one Lua script on Redis, run by whichever replica serves
//! the request (or runs the tick), so the steps of all replicas run one at a time in some
//! order, each on Redis's clock (`TIME`), which may step back on a failover. Here one action is
//! one such script: a user enters (with a draw from a small set, so draws tie), looks at their
//! place (`GetPosition`: the claim, then the standing), leaves, or has their turn released
//! (paid, cancelled, hold expired); a tick runs (every replica runs the same script on the same
//! state, so one action stands for a tick by any of them); the clock moves forward by a step,
//! or back once. The room's settings are tiny so that a step of the clock earns one token, and
//! the claim window and a token's life span a couple of steps: each setting is crossed within a
//! few actions. One exploration covers several settings (one whose cap binds, one whose rate
//! does).
//!
//! The properties read the room as its users and `GetRoomStatus` see it, after every step and
//! against what they read before it, and against a record kept apart from the room
//! ([`History`]: each entrant's draw before the opening, when it opened, the numbers skipped).
//! [`Room`]'s methods are the reference the Lua scripts follow, so the seeded bugs
//! ([`AdmissionBug`]) are variant steps written here, each caught by a property.
//!
//! Not modelled: the Lua scripts themselves and their Redis keys (they follow [`Room`] line by
//! line, and reservation-svc's `tests/api/admission_rules.rs` runs both on the same steps), rooms reconfigured midway (the ETA bounds hold only while the settings stay), and
//! more users, numbers or time than the bounds of an [`AdmissionConfig`].

use protocol::admission::{
    self, Entry, MAX_ACTIVE, MICRO_TOKENS, Millis, Room, RoomConfig, Slot, Standing,
};
use stateright::{Model, Property};

/// A user, by index; their id in the room is `index + 1`.
pub type User = usize;

fn id(user: User) -> i64 {
    i64::try_from(user).map_or(i64::MAX, |user| user + 1)
}

/// The bounds of an exploration of the waiting room.
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// The room's settings; each is explored from its own initial state.
    pub rooms: Vec<RoomConfig>,
    pub users: usize,
    /// The draws an entrant before the opening may get.
    pub draws: Vec<i64>,
    /// Most numbers given in a run (entering again after a turn takes a new one).
    pub numbers: i64,
    /// How far the clock moves forward in one step.
    pub step_ms: Millis,
    /// The clock never moves past this.
    pub horizon_ms: Millis,
    /// How far the clock may step back, once.
    pub step_back_ms: Option<Millis>,
    /// How often the service ticks, which the ETA's upper bound adds.
    pub tick_ms: Millis,
    pub bug: Option<AdmissionBug>,
}

/// Seeded bugs of the waiting room, each a variant of one of [`Room`]'s steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdmissionBug {
    /// A tick that calls numbers while the bucket has tokens, without counting free slots:
    /// more slots are taken than `max_active`.
    TickIgnoresSlots,
    /// `Enter` gives a waiting user a new number at the back: their old one is nobody's yet
    /// still counted as waiting, to be called with nobody to claim it.
    EnterRenumbersWaiting,
    /// `Leave` after the opening also removes a drawn entrant from the early set, which
    /// renumbers every entrant drawn after them: they no longer hold their draw's rank, and
    /// the leaver's number, marked left, is now another's.
    LeaveAfterOpeningRenumbers,
    /// A claim that adds the claimed slot without removing the called one: one turn takes two
    /// slots.
    ClaimKeepsCalledSlot,
    /// A refill that moves the bucket's time back with a clock that stepped back, so the same
    /// span earns its tokens twice: numbers are called faster than the bucket fills.
    RefillFollowsClockBack,
    /// A look that reads the standing before it claims: a called user is told their turn is
    /// over while their claim takes the slot.
    LookAnswersBeforeClaim,
}

impl AdmissionBug {
    pub const ALL: [Self; 6] = [
        Self::TickIgnoresSlots,
        Self::EnterRenumbersWaiting,
        Self::LeaveAfterOpeningRenumbers,
        Self::ClaimKeepsCalledSlot,
        Self::RefillFollowsClockBack,
        Self::LookAnswersBeforeClaim,
    ];
}

/// A step of the clock earns one token; a claim window spans two steps and a turn three.
const fn room(burst: i64, max_active: i64) -> RoomConfig {
    RoomConfig {
        rate_milli_per_s: 1_000,
        burst,
        max_active,
        claim_window_ms: 2_000,
        token_ttl_ms: 3_000,
        opens_at_ms: 1_000,
    }
}

impl AdmissionConfig {
    /// What every commit is checked with: three users, two draws, three numbers, the clock
    /// from before the opening to three steps after it and back one step once; a room whose one
    /// slot binds (burst 2) and one whose rate does (burst 1, two slots).
    pub fn per_commit() -> Self {
        Self {
            rooms: vec![room(2, 1), room(1, 2)],
            users: 3,
            draws: vec![0, 1],
            numbers: 3,
            step_ms: 1_000,
            horizon_ms: 4_000,
            step_back_ms: Some(1_000),
            tick_ms: 1_000,
            bug: None,
        }
    }

    /// A deeper exploration: a fourth number (a user enters again after everyone entered) and
    /// a step more of the clock, past the end of a turn claimed after the opening's first call.
    pub fn deep() -> Self {
        Self {
            numbers: 4,
            horizon_ms: 5_000,
            ..Self::per_commit()
        }
    }

    pub fn with_bug(mut self, bug: AdmissionBug) -> Self {
        self.bug = Some(bug);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AdmissionState {
    /// Which of [`AdmissionConfig::rooms`] the room runs with.
    pub settings: usize,
    pub room: Room,
    pub clock: Clock,
    pub history: History,
}

/// Redis's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Clock {
    pub now: Millis,
    /// The latest time it has shown.
    pub latest: Millis,
    pub stepped_back: bool,
}

/// What the properties compare the room with, kept apart from it: the model's own record, and
/// whether a step broke a rule that compares the room before it and after it (each such rule
/// is judged on every step, by [`AdmissionModel::judge`], and kept here for its property).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct History {
    /// Each user's draw if they entered before the opening (and did not leave before it), as
    /// they entered: the first draw counts.
    pub draws: Vec<Option<i64>>,
    /// When the room opened (its bucket full).
    pub opened_at: Option<Millis>,
    /// Numbers passed over by ticks because their users had left.
    pub skipped: i64,
    /// A user's number changed while they waited or held their turn.
    pub renumbered: bool,
    /// A user's place, or a bound of their ETA, went up while they kept their number.
    pub place_rose: bool,
    /// `served` went down.
    pub served_fell: bool,
    /// A user whose called number's window was open looked or entered, and was not told they
    /// are admitted for a whole turn.
    pub claim_missed: bool,
}

/// The room as its users read it at one moment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Observed {
    pub served: i64,
    /// Each user's place, if they hold a number.
    pub places: Vec<Option<Place>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Place {
    pub number: i64,
    /// Numbers still to call before theirs, while it waits.
    pub ahead: Option<i64>,
    /// Their number was called and they hold no turn: they may enter again.
    pub over: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AdmissionAction {
    Enter {
        user: User,
        draw: i64,
    },
    Look(User),
    Leave(User),
    /// The user's turn is over: paid, cancelled, or their hold expired.
    Release(User),
    /// A tick, by any replica.
    Tick,
    Advance(Millis),
    StepBack(Millis),
}

/// The waiting room's steps, within the bounds of an [`AdmissionConfig`].
#[derive(Debug, Clone)]
pub struct AdmissionModel {
    pub config: AdmissionConfig,
}

impl AdmissionModel {
    pub fn new(config: AdmissionConfig) -> Self {
        Self { config }
    }

    fn room_config(&self, state: &AdmissionState) -> RoomConfig {
        self.config.rooms[state.settings]
    }

    fn users(&self) -> impl Iterator<Item = User> + use<> {
        0..self.config.users
    }

    fn observe(&self, room: &Room, now: Millis) -> Observed {
        let places = self
            .users()
            .map(|user| {
                let number = room.number_of(id(user))?;
                let standing = room.standing(id(user), now);
                Some(Place {
                    number,
                    ahead: match standing {
                        Standing::Waiting { ahead, .. } => Some(ahead),
                        _ => None,
                    },
                    over: matches!(standing, Standing::Expired { .. }),
                })
            })
            .collect();
        Observed {
            served: room.served,
            places,
        }
    }

    /// `Enter`, as the room does it or as a seeded bug does.
    fn enter(
        &self,
        room: &mut Room,
        config: &RoomConfig,
        user: i64,
        draw: i64,
        now: Millis,
    ) -> Standing {
        if self.config.bug == Some(AdmissionBug::EnterRenumbersWaiting) {
            room.open_if_due(config, now);
            if room.opened.is_some() {
                room.claim(config, user, now);
                if matches!(room.standing(user, now), Standing::Waiting { .. }) {
                    room.late += 1;
                    room.tickets.insert(user, Entry::Number(room.issued()));
                    return room.standing(user, now);
                }
            }
        }
        room.enter(config, user, draw, now)
    }

    fn look(&self, room: &mut Room, config: &RoomConfig, user: i64, now: Millis) -> Standing {
        if self.config.bug == Some(AdmissionBug::ClaimKeepsCalledSlot) {
            room.open_if_due(config, now);
            if let Some(number) = room.number_of(user)
                && number <= room.served
                && room
                    .slots
                    .get(&Slot::Called(number))
                    .is_some_and(|&until| until > now)
            {
                room.slots
                    .insert(Slot::Claimed(user), now + config.token_ttl_ms);
            }
            return room.standing(user, now);
        }
        if self.config.bug == Some(AdmissionBug::LookAnswersBeforeClaim) {
            room.open_if_due(config, now);
            let answer = room.standing(user, now);
            room.claim(config, user, now);
            return answer;
        }
        room.look(config, user, now)
    }

    fn leave(&self, room: &mut Room, config: &RoomConfig, user: i64, now: Millis) {
        room.leave(config, user, now);
        if self.config.bug == Some(AdmissionBug::LeaveAfterOpeningRenumbers)
            && room.opened.is_some()
        {
            room.early.retain(|&(_, entrant)| entrant != user);
        }
    }

    fn tick(&self, room: &mut Room, config: &RoomConfig, now: Millis) -> admission::Tick {
        match self.config.bug {
            Some(AdmissionBug::TickIgnoresSlots) => {
                let uncapped = RoomConfig {
                    max_active: MAX_ACTIVE,
                    ..*config
                };
                room.tick(&uncapped, now)
            }
            Some(AdmissionBug::RefillFollowsClockBack) => {
                room.open_if_due(config, now);
                if room.opened.is_some() && now < room.bucket_at {
                    room.bucket_at = now;
                }
                room.tick(config, now)
            }
            _ => room.tick(config, now),
        }
    }

    /// Whether a look or an entry by `user` at `now` must claim their turn: their number is
    /// called and its window is still open.
    fn may_claim(room: &Room, user: i64, now: Millis) -> bool {
        room.opened.is_some()
            && room.number_of(user).is_some_and(|number| {
                number <= room.served
                    && room
                        .slots
                        .get(&Slot::Called(number))
                        .is_some_and(|&until| until > now)
            })
    }

    /// Judges the rules that compare a step's before and after: a user keeps their number
    /// until their turn is over; while they keep it, their place and both bounds of their ETA
    /// never go up (the settings stay); `served` never goes down.
    fn judge(
        &self,
        config: &RoomConfig,
        before: &Observed,
        after: &Observed,
        history: &mut History,
    ) {
        if after.served < before.served {
            history.served_fell = true;
        }
        for (place, was) in after.places.iter().zip(&before.places) {
            let (Some(place), Some(was)) = (place, was) else {
                continue;
            };
            if place.number != was.number {
                if !was.over {
                    history.renumbered = true;
                }
                continue;
            }
            let rose = match (place.ahead, was.ahead) {
                (Some(ahead), Some(was)) => {
                    let (fastest, slowest) = self.eta(config, ahead);
                    let (was_fastest, was_slowest) = self.eta(config, was);
                    ahead > was || fastest > was_fastest || slowest > was_slowest
                }
                // Called, then waiting again with the same number.
                (Some(_), None) => true,
                _ => false,
            };
            if rose {
                history.place_rose = true;
            }
        }
    }

    fn eta(&self, config: &RoomConfig, ahead: i64) -> (i64, i64) {
        admission::eta_seconds(config, ahead, self.config.tick_ms)
    }
}

impl Model for AdmissionModel {
    type State = AdmissionState;
    type Action = AdmissionAction;

    fn init_states(&self) -> Vec<AdmissionState> {
        (0..self.config.rooms.len())
            .map(|settings| AdmissionState {
                settings,
                room: Room::default(),
                clock: Clock {
                    now: 0,
                    latest: 0,
                    stepped_back: false,
                },
                history: History {
                    draws: vec![None; self.config.users],
                    opened_at: None,
                    skipped: 0,
                    renumbered: false,
                    place_rose: false,
                    served_fell: false,
                    claim_missed: false,
                },
            })
            .collect()
    }

    fn actions(&self, state: &AdmissionState, actions: &mut Vec<AdmissionAction>) {
        let config = self.room_config(state);
        let now = state.clock.now;
        // The draw orders only entrants before the opening.
        let draws = if state.room.opened.is_none() && now < config.opens_at_ms {
            &self.config.draws[..]
        } else {
            &self.config.draws[..1]
        };
        for user in self.users() {
            for &draw in draws {
                actions.push(AdmissionAction::Enter { user, draw });
            }
            actions.push(AdmissionAction::Look(user));
            actions.push(AdmissionAction::Leave(user));
            actions.push(AdmissionAction::Release(user));
        }
        actions.push(AdmissionAction::Tick);
        if now + self.config.step_ms <= self.config.horizon_ms {
            actions.push(AdmissionAction::Advance(self.config.step_ms));
        }
        if let Some(back) = self.config.step_back_ms
            && !state.clock.stepped_back
            && now >= back
        {
            actions.push(AdmissionAction::StepBack(back));
        }
    }

    fn next_state(&self, last: &AdmissionState, action: AdmissionAction) -> Option<AdmissionState> {
        let config = self.room_config(last);
        let mut state = last.clone();
        let now = state.clock.now;
        let room = &mut state.room;
        match action {
            AdmissionAction::Enter { user, draw } => {
                let must_claim = Self::may_claim(room, id(user), now);
                let answer = self.enter(room, &config, id(user), draw, now);
                if room.opened.is_none() {
                    state.history.draws[user].get_or_insert(draw);
                }
                if must_claim && !admitted_for_a_turn(answer, &config, now) {
                    state.history.claim_missed = true;
                }
            }
            AdmissionAction::Look(user) => {
                let must_claim = Self::may_claim(room, id(user), now);
                let answer = self.look(room, &config, id(user), now);
                if must_claim && !admitted_for_a_turn(answer, &config, now) {
                    state.history.claim_missed = true;
                }
            }
            AdmissionAction::Leave(user) => {
                self.leave(room, &config, id(user), now);
                if room.opened.is_none() {
                    state.history.draws[user] = None;
                }
            }
            AdmissionAction::Release(user) => {
                // A hold of this turn, made now.
                room.release(&config, id(user), now);
            }
            AdmissionAction::Tick => {
                let done = self.tick(room, &config, now);
                state.history.skipped += done.skipped;
            }
            AdmissionAction::Advance(step) => {
                state.clock.now += step;
                state.clock.latest = state.clock.latest.max(state.clock.now);
            }
            AdmissionAction::StepBack(back) => {
                state.clock.now -= back;
                state.clock.stepped_back = true;
            }
        }
        if state.history.opened_at.is_none() && state.room.opened.is_some() {
            state.history.opened_at = Some(now);
        }
        if state.room.issued() > self.config.numbers {
            return None;
        }
        let before = self.observe(&last.room, now);
        let after = self.observe(&state.room, state.clock.now);
        self.judge(&config, &before, &after, &mut state.history);
        // A step that changed nothing leads nowhere new.
        (state != *last).then_some(state)
    }

    fn properties(&self) -> Vec<Property<Self>> {
        vec![
            Property::always(
                "no more slots are taken than max_active",
                |model: &Self, state: &AdmissionState| {
                    let max_active = model.room_config(state).max_active;
                    i64::try_from(state.room.slots.len()).is_ok_and(|taken| taken <= max_active)
                },
            ),
            Property::always(
                "no two users hold the same number",
                |model: &Self, state: &AdmissionState| {
                    let mut numbers: Vec<i64> = model
                        .users()
                        .filter_map(|user| state.room.number_of(id(user)))
                        .collect();
                    let held = numbers.len();
                    numbers.sort_unstable();
                    numbers.dedup();
                    numbers.len() == held
                },
            ),
            Property::always(
                "every number held is one given, and no more are served than given",
                |model: &Self, state: &AdmissionState| {
                    let room = &state.room;
                    (0..=room.issued()).contains(&room.served)
                        && model.users().all(|user| {
                            room.number_of(id(user))
                                .is_none_or(|number| (1..=room.issued()).contains(&number))
                        })
                },
            ),
            Property::always(
                "every number still to call is one waiting user's or marked left, and counted \
                 as waiting",
                |model: &Self, state: &AdmissionState| uncalled_numbers_add_up(model, state),
            ),
            Property::always(
                "a user's number changes only once their turn is over",
                |_: &Self, state: &AdmissionState| !state.history.renumbered,
            ),
            Property::always(
                "a user's place and both ETA bounds never go up while they keep their number",
                |_: &Self, state: &AdmissionState| !state.history.place_rose,
            ),
            Property::always(
                "numbers are never called back",
                |_: &Self, state: &AdmissionState| !state.history.served_fell,
            ),
            Property::always(
                "the entrants before the opening are numbered 1.. in the order of their draws",
                |model: &Self, state: &AdmissionState| drawn_in_order(model, state),
            ),
            Property::always(
                "a called user who looks within the claim window is admitted for a turn",
                |_: &Self, state: &AdmissionState| !state.history.claim_missed,
            ),
            Property::always(
                "numbers are called no faster than the bucket fills, however the clock steps",
                |model: &Self, state: &AdmissionState| {
                    let config = model.room_config(state);
                    let Some(opened_at) = state.history.opened_at else {
                        return state.room.served == 0;
                    };
                    let called = state.room.served - state.history.skipped;
                    let earned = config.rate_milli_per_s * (state.clock.latest - opened_at);
                    called * MICRO_TOKENS <= config.full_bucket() + earned
                },
            ),
            Property::sometimes(
                "two entrants before the opening draw the same",
                |_: &Self, state: &AdmissionState| {
                    state.room.opened.is_some()
                        && state
                            .room
                            .early
                            .iter()
                            .zip(state.room.early.iter().skip(1))
                            .any(|(first, second)| first.0 == second.0)
                },
            ),
            Property::sometimes(
                "a user is admitted",
                |model: &Self, state: &AdmissionState| {
                    model.users().any(|user| {
                        matches!(
                            state.room.standing(id(user), state.clock.now),
                            Standing::Admitted { .. }
                        )
                    })
                },
            ),
            Property::sometimes(
                "a called number's window ends unclaimed",
                |_: &Self, state: &AdmissionState| {
                    state.room.slots.iter().any(|(slot, &until)| {
                        matches!(slot, Slot::Called(_)) && until <= state.clock.now
                    })
                },
            ),
            Property::sometimes(
                "a number whose user left is skipped",
                |_: &Self, state: &AdmissionState| state.history.skipped > 0,
            ),
            Property::sometimes(
                "every slot is taken while numbers wait",
                |model: &Self, state: &AdmissionState| {
                    let room = &state.room;
                    i64::try_from(room.slots.len())
                        .is_ok_and(|taken| taken == model.room_config(state).max_active)
                        && room.served < room.issued()
                },
            ),
            Property::sometimes(
                "the bucket is empty while a slot is free and numbers wait",
                |model: &Self, state: &AdmissionState| {
                    let room = &state.room;
                    room.opened.is_some()
                        && room.bucket < MICRO_TOKENS
                        && i64::try_from(room.slots.len())
                            .is_ok_and(|taken| taken < model.room_config(state).max_active)
                        && room.served < room.issued()
                },
            ),
            Property::sometimes(
                "the clock steps back behind the bucket's last refill",
                |_: &Self, state: &AdmissionState| {
                    state.room.opened.is_some() && state.clock.now < state.room.bucket_at
                },
            ),
            Property::sometimes(
                "an entrant before the opening waits nearer the head than at the opening",
                |model: &Self, state: &AdmissionState| {
                    let room = &state.room;
                    room.served > 0
                        && model.users().any(|user| {
                            state.history.draws[user].is_some()
                                && matches!(
                                    room.standing(id(user), state.clock.now),
                                    Standing::Waiting { .. }
                                )
                                && room.number_of(id(user)) <= room.opened
                        })
                },
            ),
            Property::sometimes(
                "an entrant before the opening queues again at the back",
                |_: &Self, state: &AdmissionState| {
                    let room = &state.room;
                    room.opened.is_some_and(|opened| {
                        state.history.draws.iter().zip(0..).any(|(draw, user)| {
                            draw.is_some()
                                && room
                                    .number_of(id(user))
                                    .is_some_and(|number| number > opened)
                        })
                    })
                },
            ),
        ]
    }
}

/// The answer to a look or an entry that claimed a turn at `now`: admitted until a whole turn
/// from now.
fn admitted_for_a_turn(answer: Standing, config: &RoomConfig, now: Millis) -> bool {
    matches!(answer, Standing::Admitted { until, .. } if until == now + config.token_ttl_ms)
}

/// After the opening, each number not called yet is held by exactly one user, who waits, or is
/// marked as left; nothing else is; and the room's count of waiting users is theirs.
fn uncalled_numbers_add_up(model: &AdmissionModel, state: &AdmissionState) -> bool {
    let room = &state.room;
    if room.opened.is_none() {
        return true;
    }
    let numbers: Vec<Option<i64>> = model.users().map(|user| room.number_of(id(user))).collect();
    let each_once = (room.served + 1..=room.issued()).all(|number| {
        let holders = numbers.iter().filter(|&&held| held == Some(number)).count();
        holders + usize::from(room.left.contains(&number)) == 1
    });
    let left_uncalled = room
        .left
        .iter()
        .all(|&number| number > room.served && number <= room.issued());
    let waiting = model
        .users()
        .filter(|&user| {
            matches!(
                room.standing(id(user), state.clock.now),
                Standing::Waiting { .. }
            )
        })
        .count();
    each_once
        && left_uncalled
        && usize::try_from(room.counters(state.clock.now).waiting) == Ok(waiting)
}

/// Once the room is open, the users who entered before it (by the model's own record) are as
/// many as it numbered, and each holds the number of their rank by (draw, user), or none (they
/// left), or one given after the opening (they entered again).
fn drawn_in_order(model: &AdmissionModel, state: &AdmissionState) -> bool {
    let Some(opened) = state.room.opened else {
        return true;
    };
    let mut drawn: Vec<(i64, User)> = model
        .users()
        .filter_map(|user| state.history.draws[user].map(|draw| (draw, user)))
        .collect();
    drawn.sort_unstable();
    usize::try_from(opened) == Ok(drawn.len())
        && drawn.iter().zip(1..).all(|(&(_, user), rank)| {
            state
                .room
                .number_of(id(user))
                .is_none_or(|number| number == rank || number > opened)
        })
}
