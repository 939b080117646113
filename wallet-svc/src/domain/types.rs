//! Values that are valid by construction: a handler parses a request into these once, and
//! nothing past that point checks them again.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};

pub use protocol::wallet::{MAX_AMOUNT, MAX_BALANCE};

/// Why a value was rejected, worded for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(&'static str);

/// A user id, always positive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserId(i64);

impl UserId {
    pub fn parse(value: i64) -> Result<Self, InvalidValue> {
        if value > 0 {
            Ok(Self(value))
        } else {
            Err(InvalidValue("must be greater than 0"))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// An amount one operation moves: `1 ..= MAX_AMOUNT` points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Points(i64);

impl Points {
    pub fn parse(value: i64) -> Result<Self, InvalidValue> {
        if (1..=MAX_AMOUNT).contains(&value) {
            Ok(Self(value))
        } else {
            Err(InvalidValue("must be between 1 and 1000000000 points"))
        }
    }

    pub fn get(self) -> i64 {
        self.0
    }
}

/// The caller's name for one operation: 1 to 128 characters of `A-Z a-z 0-9 _ - . :`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 128;

    pub fn parse(value: String) -> Result<Self, InvalidValue> {
        if value.is_empty() {
            return Err(InvalidValue("must not be empty"));
        }
        if value.len() > Self::MAX_LEN {
            return Err(InvalidValue("must be at most 128 characters"));
        }
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':');
        if !value.chars().all(allowed) {
            return Err(InvalidValue("may contain only A-Z a-z 0-9 _ - . :"));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Free text a `Use` carries for its caller: 0 to 256 characters.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reference(String);

impl Reference {
    pub const MAX_CHARS: usize = 256;

    pub fn parse(value: String) -> Result<Self, InvalidValue> {
        if value.chars().count() > Self::MAX_CHARS {
            return Err(InvalidValue("must be at most 256 characters"));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Rows per page: `0` asks for the default of 50; at most 1000.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageSize(u16);

impl PageSize {
    pub const DEFAULT: u16 = 50;
    pub const MAX: u16 = 1000;

    pub fn parse(value: i32) -> Result<Self, InvalidValue> {
        match value {
            0 => Ok(Self(Self::DEFAULT)),
            1..=1000 => Ok(Self(u16::try_from(value).unwrap_or(Self::MAX))),
            _ => Err(InvalidValue("must be between 0 and 1000")),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

/// Where the next page of a user's ledger starts: below this transaction id. Opaque to callers
/// (base64 of `t1:<user>:<id>`); a token of another user, or not made by us, is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageCursor {
    pub user_id: UserId,
    pub before_id: i64,
}

impl PageCursor {
    const VERSION: &'static str = "t1";

    pub fn encode(self) -> String {
        let plain = format!(
            "{}:{}:{}",
            Self::VERSION,
            self.user_id.get(),
            self.before_id
        );
        URL_SAFE_NO_PAD.encode(plain)
    }

    /// Parses a token from a previous page of `user_id`'s listing; empty means the first page.
    pub fn decode(token: &str, user_id: UserId) -> Result<Option<Self>, InvalidValue> {
        if token.is_empty() {
            return Ok(None);
        }
        let invalid = InvalidValue("is not a token from a previous page of this listing");
        let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid.clone())?;
        let plain = String::from_utf8(bytes).map_err(|_| invalid.clone())?;
        let mut parts = plain.split(':');
        let (Some(version), Some(user), Some(before), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid);
        };
        let user = user.parse::<i64>().map_err(|_| invalid.clone())?;
        let before_id = before.parse::<i64>().map_err(|_| invalid.clone())?;
        if version != Self::VERSION || user != user_id.get() || before_id <= 0 {
            return Err(invalid);
        }
        Ok(Some(Self { user_id, before_id }))
    }
}

/// What a ledger row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionKind {
    Charge,
    Use,
    Refund,
}

impl TransactionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "CHARGE",
            Self::Use => "USE",
            Self::Refund => "REFUND",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "CHARGE" => Some(Self::Charge),
            "USE" => Some(Self::Use),
            "REFUND" => Some(Self::Refund),
            _ => None,
        }
    }
}

/// One ledger row: a movement that was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    pub id: i64,
    pub user_id: i64,
    pub kind: TransactionKind,
    /// Always positive; `kind` gives the direction.
    pub amount: i64,
    pub balance_after: i64,
    pub idempotency_key: String,
    pub reference: String,
    pub created_at: DateTime<Utc>,
}

/// A page of a user's ledger, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionPage {
    pub transactions: Vec<Transaction>,
    pub next: Option<PageCursor>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_accept_the_contract_alphabet_only() {
        assert!(IdempotencyKey::parse("order-1_a.b:c".into()).is_ok());
        assert!(IdempotencyKey::parse("x".repeat(128)).is_ok());
        assert!(IdempotencyKey::parse(String::new()).is_err());
        assert!(IdempotencyKey::parse("x".repeat(129)).is_err());
        assert!(IdempotencyKey::parse("with space".into()).is_err());
        assert!(IdempotencyKey::parse("ключ".into()).is_err());
    }

    #[test]
    fn references_count_characters_not_bytes() {
        assert!(Reference::parse("é".repeat(256)).is_ok());
        assert!(Reference::parse("é".repeat(257)).is_err());
    }

    #[test]
    fn a_cursor_round_trips_for_its_own_user_only() {
        let user = UserId::parse(7).expect("valid");
        let other = UserId::parse(8).expect("valid");
        let cursor = PageCursor {
            user_id: user,
            before_id: 42,
        };
        let token = cursor.encode();
        assert_eq!(PageCursor::decode(&token, user), Ok(Some(cursor)));
        assert!(PageCursor::decode(&token, other).is_err());
    }

    #[test]
    fn garbage_tokens_are_rejected() {
        let user = UserId::parse(7).expect("valid");
        for token in [
            "%%%",
            "dDE6Nzo",
            "not base64!",
            &URL_SAFE_NO_PAD.encode("t1:7:-1"),
            &URL_SAFE_NO_PAD.encode("t1:7:1:1"),
            &URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
        ] {
            assert!(PageCursor::decode(token, user).is_err(), "{token} accepted");
        }
    }
}
