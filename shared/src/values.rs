//! Request values both services parse the same way: valid by construction, so nothing past
//! the gRPC adapter checks them again.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

/// Why a value was rejected, worded for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub &'static str);

/// Declares a newtype over a positive `i64` id.
#[macro_export]
macro_rules! positive_id {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(i64);

        impl $name {
            pub fn parse(value: i64) -> Result<Self, $crate::values::InvalidValue> {
                if value > 0 {
                    Ok(Self(value))
                } else {
                    Err($crate::values::InvalidValue("must be greater than 0"))
                }
            }

            pub fn get(self) -> i64 {
                self.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

positive_id!(
    /// A user, as the caller's identity system numbers them.
    UserId
);

/// Parses a request's `google.protobuf.Timestamp`, the one way every request field of that type
/// is read: `nanos` within `0..=999_999_999` (protobuf's own rule, negative seconds included:
/// they count forward from a whole second; chrono would otherwise take `1e9..2e9` as a leap
/// second) and `seconds` within the years 1 to 9999 (protobuf's range, which Postgres stores).
pub fn parse_timestamp(value: &prost_types::Timestamp) -> Result<DateTime<Utc>, InvalidValue> {
    // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const SECONDS: std::ops::RangeInclusive<i64> = -62_135_596_800..=253_402_300_799;
    const NANOS: std::ops::RangeInclusive<i32> = 0..=999_999_999;
    if !NANOS.contains(&value.nanos) {
        return Err(InvalidValue("nanos must be between 0 and 999999999"));
    }
    let out_of_range = InvalidValue("must be a timestamp between the years 1 and 9999");
    if !SECONDS.contains(&value.seconds) {
        return Err(out_of_range);
    }
    let nanos = u32::try_from(value.nanos).map_err(|_| out_of_range.clone())?;
    DateTime::from_timestamp(value.seconds, nanos).ok_or(out_of_range)
}

/// The page sizes of one listing: `default` rows when a request asks for 0, at most `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageLimits {
    pub default: u16,
    pub max: u16,
    /// The caller's error for a size outside `0..=max`.
    pub out_of_range: &'static str,
}

/// Rows per page, within the limits of its listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u16);

impl PageSize {
    /// Most listings: 50 rows unless asked otherwise, at most 1000.
    pub const ROWS: PageLimits = PageLimits {
        default: 50,
        max: 1000,
        out_of_range: "must be between 0 and 1000",
    };

    /// A size within [`PageSize::ROWS`].
    pub fn parse(value: i32) -> Result<Self, InvalidValue> {
        Self::parse_within(value, Self::ROWS)
    }

    pub fn parse_within(value: i32, limits: PageLimits) -> Result<Self, InvalidValue> {
        match u16::try_from(value) {
            Ok(0) => Ok(Self(limits.default)),
            Ok(size) if size <= limits.max => Ok(Self(size)),
            _ => Err(InvalidValue(limits.out_of_range)),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }

    /// The rows to ask the database for: one more than the page, to tell whether another follows.
    pub fn query_limit(self) -> i64 {
        i64::from(self.0) + 1
    }
}

/// A row's place in the order of a keyset listing, as its page tokens carry it.
pub trait Position: Sized + Copy {
    /// The position as text without `:`.
    fn to_text(self) -> String;
    /// What [`Position::to_text`] wrote; `None` for anything else.
    fn from_text(text: &str) -> Option<Self>;
}

/// A row id, the position in listings ordered by id alone.
impl Position for i64 {
    fn to_text(self) -> String {
        self.to_string()
    }

    fn from_text(text: &str) -> Option<Self> {
        text.parse().ok().filter(|id| *id > 0)
    }
}

/// Where the next page of a keyset listing starts: right after `last`, the position of the
/// previous page's last row, among the rows of `owner` (a user, a concert, a schedule; 0 for a
/// listing of everything). Opaque to callers (base64 of `<listing>:<owner>:<position>`); a
/// token of another listing or owner, or not made by us, is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor<P = i64> {
    pub owner: i64,
    pub last: P,
}

impl<P: Position> PageCursor<P> {
    /// The token of this cursor in the listing named `listing`.
    pub fn encode(self, listing: &str) -> String {
        URL_SAFE_NO_PAD.encode(format!("{listing}:{}:{}", self.owner, self.last.to_text()))
    }

    /// Parses a token from a previous page of `owner`'s listing `listing`; empty means the
    /// first page.
    pub fn decode(token: &str, listing: &str, owner: i64) -> Result<Option<Self>, InvalidValue> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = || InvalidValue("is not a token from a previous page of this listing");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let plain = String::from_utf8(bytes).map_err(|_| invalid())?;
        let mut parts = plain.split(':');
        let (Some(found_listing), Some(found_owner), Some(last), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        let found_owner = found_owner.parse::<i64>().map_err(|_| invalid())?;
        let last = P::from_text(last).ok_or_else(invalid)?;
        if found_listing != listing || found_owner != owner {
            return Err(invalid());
        }
        Ok(Some(Self { owner, last }))
    }
}

/// One page of a keyset listing and where the next one starts, if another follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, P = i64> {
    pub rows: Vec<T>,
    pub next: Option<PageCursor<P>>,
}

impl<T, P> Page<T, P> {
    /// Cuts one page from `rows`, a keyset listing of `owner`'s rows in its order that was
    /// asked for [`PageSize::query_limit`] rows (the extra row tells whether another page
    /// follows). `position` names a row's place in the order.
    pub fn cut(mut rows: Vec<T>, size: PageSize, owner: i64, position: impl Fn(&T) -> P) -> Self {
        let size = usize::from(size.get());
        let more = rows.len() > size;
        rows.truncate(size);
        let next = match rows.last() {
            Some(last) if more => Some(PageCursor {
                owner,
                last: position(last),
            }),
            _ => None,
        };
        Self { rows, next }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_page_says_where_the_next_starts_only_when_there_is_one() {
        let size = PageSize::parse(2).expect("a size");
        let page = Page::cut(vec![9, 8, 7], size, 7, |id| *id);
        assert_eq!(page.rows, [9, 8]);
        assert_eq!(page.next, Some(PageCursor { owner: 7, last: 8 }));
        let page = Page::cut(vec![9, 8], size, 7, |id| *id);
        assert_eq!((page.rows.len(), page.next), (2, None));
    }

    #[test]
    fn timestamps_take_nanos_within_one_second_and_years_1_to_9999() {
        let at = |seconds, nanos| parse_timestamp(&prost_types::Timestamp { seconds, nanos });
        assert_eq!(
            at(1_900_000_000, 999_999_999).map(|at| at.timestamp_subsec_nanos()),
            Ok(999_999_999)
        );
        assert!(at(-62_135_596_800, 0).is_ok() && at(253_402_300_799, 0).is_ok());
        // A second whose last one a leap second would follow, as chrono reads 1e9..2e9.
        for nanos in [1_000_000_000, 1_500_000_000, i32::MAX, -1, i32::MIN] {
            assert!(at(1_900_000_019, nanos).is_err(), "{nanos}");
        }
        assert!(at(-62_135_596_801, 0).is_err() && at(253_402_300_800, 0).is_err());
    }

    #[test]
    fn ids_are_positive() {
        assert!(UserId::parse(1).is_ok());
        assert!(UserId::parse(0).is_err());
        assert!(UserId::parse(i64::MIN).is_err());
    }

    #[test]
    fn page_sizes_default_to_50_and_stop_at_1000() {
        assert_eq!(PageSize::parse(0).map(PageSize::get), Ok(50));
        assert_eq!(PageSize::parse(1000).map(PageSize::get), Ok(1000));
        assert!(PageSize::parse(1001).is_err());
        assert!(PageSize::parse(-1).is_err());
        let seats = PageLimits {
            default: 500,
            max: 5000,
            out_of_range: "must be between 0 and 5000",
        };
        assert_eq!(PageSize::parse_within(0, seats).map(PageSize::get), Ok(500));
        assert_eq!(
            PageSize::parse_within(5000, seats).map(PageSize::get),
            Ok(5000)
        );
        assert!(PageSize::parse_within(5001, seats).is_err());
        assert!(PageSize::parse_within(i32::MAX, seats).is_err());
    }

    #[test]
    fn a_cursor_round_trips_for_its_own_listing_and_owner_only() {
        let cursor = PageCursor { owner: 7, last: 42 };
        let token = cursor.encode("tx");
        assert_eq!(PageCursor::decode(&token, "tx", 7), Ok(Some(cursor)));
        assert!(PageCursor::<i64>::decode(&token, "tx", 8).is_err());
        assert!(PageCursor::<i64>::decode(&token, "rsv", 7).is_err());
    }

    #[test]
    fn garbage_tokens_are_rejected() {
        let malformed = [
            "%%%".to_owned(),
            "not base64!".to_owned(),
            URL_SAFE_NO_PAD.encode("tx:7:-1"),
            URL_SAFE_NO_PAD.encode("tx:7:1:1"),
            URL_SAFE_NO_PAD.encode("tx:seven:1"),
            URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ];
        for token in &malformed {
            assert!(
                PageCursor::<i64>::decode(token, "tx", 7).is_err(),
                "{token} accepted"
            );
        }
    }
}
