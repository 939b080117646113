//! The service's vocabulary, at the bottom of its layers: ids and values that are valid by
//! construction (a handler parses a request into these once, and nothing past that point
//! checks them again), the requests, the entities, and the outcomes of each step. `grpc`,
//! `domain` and `store` all speak it; it imports none of them.

use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
pub use protocol::reservation::{SeatView, Status};
pub use shared::error::Listing;
pub use shared::values::{InvalidValue, Page, PageCursor, PageLimits, PageSize, Position, UserId};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

shared::positive_id!(
    /// A concert.
    ConcertId
);
shared::positive_id!(
    /// One performance date of a concert.
    ScheduleId
);
shared::positive_id!(
    /// A reservation of one seat.
    ReservationId
);

/// Every concert, oldest first (by id).
pub const CONCERTS_LISTING: Listing = Listing {
    name: "cn",
    owner_field: "",
    sizes: PageSize::ROWS,
};

/// A concert's schedules, by start, then id ([`SchedulePosition`]).
pub const SCHEDULES_LISTING: Listing = Listing {
    name: "sch",
    owner_field: "concert_id",
    sizes: PageSize::ROWS,
};

/// A schedule's seats, by number: 500 a page unless asked otherwise, at most 5000.
pub const SEATS_LISTING: Listing = Listing {
    name: "seat",
    owner_field: "schedule_id",
    sizes: PageLimits {
        default: 500,
        max: 5000,
        out_of_range: "must be between 0 and 5000",
    },
};

/// A user's reservations, newest first.
pub const RESERVATIONS_LISTING: Listing = Listing {
    name: "rsv",
    owner_field: "user_id",
    sizes: PageSize::ROWS,
};

/// A concert's title: 1 to 200 characters, at least one of them visible ([`is_visible`]), and
/// no NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Title(String);

impl Title {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(value: String) -> Result<Self, InvalidValue> {
        if !value.chars().any(is_visible) {
            return Err(InvalidValue(
                "must not be blank: only whitespace or invisible characters",
            ));
        }
        if value.chars().count() > Self::MAX_CHARS {
            return Err(InvalidValue("must be at most 200 characters"));
        }
        if value.contains('\0') {
            return Err(InvalidValue("must not contain NUL characters"));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether `c` shows as something: neither whitespace (Unicode `White_Space`) nor a control
/// (`Cc`) or format (`Cf`) character. `Cf` holds the invisible ones a blank-looking title is
/// made of: zero-width space, non-joiner and joiner (U+200B..U+200D), word joiner (U+2060),
/// byte-order mark (U+FEFF), soft hyphen (U+00AD), bidirectional marks and the like. std has
/// no general category, hence `unicode-properties` (unicode-rs, already built for Postgres's
/// SASLprep). The rule is by category, not a list, so it follows Unicode as the crate does.
fn is_visible(c: char) -> bool {
    !c.is_whitespace()
        && !matches!(
            c.general_category(),
            GeneralCategory::Control | GeneralCategory::Format
        )
}

/// Seats of a schedule: `1 ..= 100_000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatCount(i32);

impl SeatCount {
    pub const MAX: i32 = 100_000;

    pub fn parse(value: i32) -> Result<Self, InvalidValue> {
        if (1..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(InvalidValue("must be between 1 and 100000"))
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// A seat's price in points: `0 ..= 1_000_000_000`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price(i64);

impl Price {
    pub const MAX: i64 = 1_000_000_000;

    pub fn parse(value: i64) -> Result<Self, InvalidValue> {
        if (0..=Self::MAX).contains(&value) {
            Ok(Self(value))
        } else {
            Err(InvalidValue("must be between 0 and 1000000000 points"))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// A payment attempt of a reservation, counted from 1: each `HELD -> PAYING` begins the next,
/// and its wallet key names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PayAttempt(i32);

impl PayAttempt {
    pub fn parse(value: i32) -> Result<Self, InvalidValue> {
        if value >= 1 {
            Ok(Self(value))
        } else {
            Err(InvalidValue("must be at least 1"))
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// A seat number, at least 1; whether it exists depends on its schedule's seat count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatNo(i32);

impl SeatNo {
    pub fn parse(value: i32) -> Result<Self, InvalidValue> {
        if value >= 1 {
            Ok(Self(value))
        } else {
            Err(InvalidValue(
                "must be between 1 and the schedule's seat count",
            ))
        }
    }

    pub fn get(self) -> i32 {
        self.0
    }
}

/// A seat's place in its schedule's listing.
impl Position for SeatNo {
    fn to_text(self) -> String {
        self.0.to_string()
    }

    fn from_text(text: &str) -> Option<Self> {
        Self::parse(text.parse().ok()?).ok()
    }
}

/// A schedule's place in its concert's listing: by start (to the microsecond, as stored), then
/// id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulePosition {
    pub starts_at: DateTime<Utc>,
    pub id: ScheduleId,
}

impl Position for SchedulePosition {
    fn to_text(self) -> String {
        format!("{}.{}", self.starts_at.timestamp_micros(), self.id.get())
    }

    fn from_text(text: &str) -> Option<Self> {
        let (micros, id) = text.split_once('.')?;
        let micros: i64 = micros.parse().ok()?;
        // Within the years every stored start is in (1 to 9999), as a request's are read.
        let starts_at = shared::values::parse_timestamp(&prost_types::Timestamp {
            seconds: micros.div_euclid(1_000_000),
            nanos: i32::try_from(micros.rem_euclid(1_000_000) * 1_000).ok()?,
        })
        .ok()?;
        Some(Self {
            starts_at,
            id: ScheduleId::parse(id.parse().ok()?).ok()?,
        })
    }
}

/// A new schedule of a concert, with its seats `1..=seat_count`.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    pub concert_id: ConcertId,
    pub starts_at: DateTime<Utc>,
    pub seat_count: SeatCount,
    pub seat_price: Price,
}

/// The default of [`HoldTerms::max_per_user`] (`MAX_ACTIVE_HOLDS_PER_USER`).
pub const DEFAULT_MAX_ACTIVE_HOLDS_PER_USER: NonZeroU32 = match NonZeroU32::new(4) {
    Some(max) => max,
    None => unreachable!(),
};

/// What a hold is granted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HoldTerms {
    /// How long it keeps its seat.
    pub ttl: Duration,
    /// The most reservations one user may have HELD (and not lapsed) or PAYING on one
    /// schedule; a hold beyond them is refused.
    pub max_per_user: NonZeroU32,
}

/// A user asking for a seat of a schedule.
#[derive(Debug, Clone, Copy)]
pub struct HoldRequest {
    pub user_id: UserId,
    pub schedule_id: ScheduleId,
    pub seat_no: SeatNo,
}

/// A user acting on one of their reservations (paying it, cancelling it).
#[derive(Debug, Clone, Copy)]
pub struct OwnerRequest {
    pub reservation_id: ReservationId,
    pub user_id: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Concert {
    pub id: ConcertId,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub id: ScheduleId,
    pub concert_id: ConcertId,
    pub starts_at: DateTime<Utc>,
    pub seat_count: SeatCount,
    pub seat_price: Price,
    /// Seats neither held nor sold right now.
    pub available_seats: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seat {
    pub seat_no: SeatNo,
    pub price: Price,
    pub status: SeatView,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub id: ReservationId,
    pub user_id: UserId,
    pub schedule_id: ScheduleId,
    pub seat_no: SeatNo,
    pub price: Price,
    /// As of the read: a hold past its expiry reads as `Expired`, swept or not.
    pub status: Status,
    pub expires_at: DateTime<Utc>,
    pub payment_transaction_id: Option<i64>,
    pub created_at: DateTime<Utc>,
}

/// A page of a user's reservations, newest first.
pub type ReservationPage = Page<Reservation>;

/// A page of the concerts, oldest first.
pub type ConcertPage = Page<Concert>;

/// A page of a concert's schedules, by start.
pub type SchedulePage = Page<Schedule, SchedulePosition>;

/// A page of a schedule's seats, by number.
pub type SeatPage = Page<Seat, SeatNo>;

/// The wallet keys of one reservation's payments (`protocol::payment::use_key`): the reservation
/// and its random nonce (none for a reservation made before nonces existed), so that no other
/// reservation, in this database or another sharing the wallet, ever has the same keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentKeys {
    reservation: i64,
    nonce: Option<String>,
}

impl PaymentKeys {
    pub fn new(reservation: i64, nonce: Option<&str>) -> Self {
        Self {
            reservation,
            nonce: nonce.map(str::to_owned),
        }
    }

    /// The key of the attempt's `Use`.
    pub fn use_key(&self, attempt: PayAttempt) -> String {
        protocol::payment::use_key(self.nonce(), self.reservation, attempt.get())
    }

    /// The key of the reservation's refund.
    pub fn refund_key(&self) -> String {
        protocol::payment::refund_key(self.nonce(), self.reservation)
    }

    fn nonce(&self) -> &str {
        self.nonce.as_deref().unwrap_or_default()
    }
}

/// One attempt to pay a reservation: its wallet `Use` debits `price` from `payer` under the
/// attempt's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaymentAttempt {
    pub reservation: ReservationId,
    pub attempt: PayAttempt,
    pub payer: UserId,
    pub price: Price,
    pub schedule_id: ScheduleId,
    pub seat_no: SeatNo,
    pub keys: PaymentKeys,
}

/// How a hold ended.
#[derive(Debug)]
pub enum HoldOutcome {
    Held(Reservation),
    ScheduleNotFound,
    SeatOutOfRange {
        seat_count: i32,
    },
    Taken,
    /// The seat's lock in Postgres is another hold's (a hold without a Redis lock).
    Locked,
    /// The performance has begun.
    PerformanceStarted,
    /// The user already has `max` reservations of the schedule held or being paid for.
    HoldLimit {
        max: u32,
    },
}

/// Why a payment or a cancellation is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotOwner,
    HoldExpired,
    /// Cancelled or expired (or, for a cancellation, paying).
    InvalidState,
}

/// How the start of a payment ended.
#[derive(Debug)]
pub enum BeginOutcome {
    /// Send this attempt's `Use`.
    Pay(PaymentAttempt),
    Confirmed(Reservation),
    NotFound,
    Refused(Refusal),
}

/// What the reply to an attempt's `Use` did.
#[derive(Debug)]
pub enum SettleOutcome {
    Confirmed(Reservation),
    /// Refused for insufficient balance: back to `HELD`, or `EXPIRED` if the hold ran out.
    Refused,
    StillPaying,
    /// The reservation moved on without this debit, or can no longer be honoured: refund the
    /// `Use` made under `use_key`.
    Refund {
        payer: UserId,
        use_key: String,
    },
    /// The reservation moved on; nothing was debited.
    Moved,
}

/// A paid reservation that a cancellation must refund first.
#[derive(Debug)]
pub struct PaidReservation {
    pub payer: UserId,
    pub price: Price,
    /// The key of the `Use` that paid it (none for a free seat).
    pub use_key: Option<String>,
    /// The key its refund is asked under.
    pub refund_key: String,
}

/// How a cancellation ended.
#[derive(Debug)]
pub enum CancelOutcome {
    Cancelled(Reservation),
    NotFound,
    /// Paid: refund it, then cancel again with the refund done.
    RefundFirst(PaidReservation),
    Refused(Refusal),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_positions_round_trip_and_refuse_what_no_page_made() {
        let position = SchedulePosition {
            starts_at: DateTime::from_timestamp_micros(1_900_000_000_123_456).expect("a time"),
            id: ScheduleId::parse(42).expect("an id"),
        };
        assert_eq!(
            SchedulePosition::from_text(&position.to_text()),
            Some(position)
        );
        let before_year_1 = "-62135596800000001.4";
        let year_10000 = "253402300800000000.4";
        for text in [
            "",
            "1.0",
            "1.-4",
            "x.4",
            "1",
            "99999999999999999999.4",
            before_year_1,
            year_10000,
        ] {
            assert_eq!(SchedulePosition::from_text(text), None, "{text}");
        }
        let seat = SeatNo::parse(5_000).expect("a seat");
        assert_eq!(SeatNo::from_text(&seat.to_text()), Some(seat));
        for text in ["0", "-1", "99999999999", "5.0"] {
            assert_eq!(SeatNo::from_text(text), None, "{text}");
        }
    }

    #[test]
    fn titles_are_not_blank_and_at_most_200_characters() {
        assert!(Title::parse("BTS".into()).is_ok());
        assert!(Title::parse("가".repeat(200)).is_ok());
        assert!(Title::parse("가".repeat(201)).is_err());
        assert!(Title::parse(String::new()).is_err());
        assert!(Title::parse(" \t ".into()).is_err());
        assert!(Title::parse("a\0b".into()).is_err());
    }

    #[test]
    fn a_title_of_only_invisible_characters_is_blank() {
        for blank in [
            "\u{200B}",
            "\u{200B}\u{200C}\u{200D}",
            " \u{2060} \u{FEFF}\u{00AD}",
            "\u{3000}\u{00A0}\u{2028}",
            "\u{202E}\u{2066}\u{2069}",
            "\u{7}\u{1b}\u{85}",
            "\u{E0001}\u{E0041}",
        ] {
            assert!(Title::parse(blank.into()).is_err(), "{blank:?}");
        }
        // Visible characters with invisible ones around them are a title.
        for title in ["\u{200B}BTS\u{200B}", "\u{FEFF}가", "👩\u{200D}🎤", "-"] {
            assert!(Title::parse(title.into()).is_ok(), "{title:?}");
        }
    }

    #[test]
    fn seat_counts_and_prices_stay_in_their_ranges() {
        assert!(SeatCount::parse(1).is_ok() && SeatCount::parse(100_000).is_ok());
        assert!(SeatCount::parse(0).is_err() && SeatCount::parse(100_001).is_err());
        assert!(Price::parse(0).is_ok() && Price::parse(1_000_000_000).is_ok());
        assert!(Price::parse(-1).is_err() && Price::parse(1_000_000_001).is_err());
    }
}

/// A waiting room as every replica knows it: its schedule, settings, and their version (the
/// moment they were last changed, in microseconds), so that the newest settings win in Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoomSettings {
    pub schedule_id: i64,
    pub config: protocol::admission::RoomConfig,
    pub version: i64,
}
