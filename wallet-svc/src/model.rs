//! The wallet's vocabulary, at the bottom of its layers: values that are valid by construction
//! (a handler parses a request into these once, and nothing past that point checks them
//! again), the movements asked for, the ledger's rows, and how a movement ended. `grpc`,
//! `domain` and `store` all speak it; it imports none of them.

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use shared::auth::Caller;

pub use protocol::wallet::Refusal;
pub use protocol::wallet::{MAX_AMOUNT, MAX_BALANCE};
pub use shared::error::Listing;
pub use shared::values::{InvalidValue, Page, PageCursor, PageSize, UserId};

/// A user's ledger, newest first.
pub const TRANSACTIONS_LISTING: Listing = Listing {
    name: "tx",
    owner_field: "user_id",
    sizes: PageSize::ROWS,
};

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
        if value.contains('\0') {
            return Err(InvalidValue("must not contain NUL characters"));
        }
        Ok(Self(value))
    }

    pub fn as_str(&self) -> &str {
        &self.0
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
pub type TransactionPage = Page<Transaction>;

/// One requested change of a user's balance, under the caller's idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MoneyMovement {
    pub user_id: UserId,
    pub key: IdempotencyKey,
    /// Whose keys `key` (and a refund's `use_key`) are among.
    pub scope: KeyScope,
    pub kind: MovementKind,
}

/// Whose idempotency keys a movement's are: each caller has keys of its own, so no caller can
/// replay, pre-empt or refund another's. A key is stored as `<owner> <key>` (keys hold no
/// space); keys written before callers were told apart, and those of unchecked (`INSECURE`)
/// calls, are stored bare: the unscoped keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct KeyScope {
    owner: String,
    /// Whether a key not found among the owner's is looked for among the unscoped keys: so for
    /// payment services, whose payments in flight when scopes came must keep their keys.
    sees_unscoped: bool,
}

impl KeyScope {
    /// The keys of `owner` (empty: the unscoped keys).
    pub fn of(owner: String, sees_unscoped: bool) -> Self {
        Self {
            owner,
            sees_unscoped,
        }
    }

    /// Whose keys `caller`'s are. Each user's and each service's are their own; the payment
    /// services (`payment_service`: the caller is one) share one key space, so that a payment
    /// retried under another certificate identity (after a rename of the trust domain, say)
    /// keeps its key, and they, like unchecked (`INSECURE`) calls, also find the keys written
    /// before keys had owners.
    pub fn of_caller(caller: &Caller, payment_service: bool) -> Self {
        match caller {
            Caller::Unchecked => Self::of("insecure".to_owned(), true),
            _ if payment_service => Self::of("payment-services".to_owned(), true),
            Caller::User { id, .. } => Self::of(format!("user:{id}"), false),
            Caller::Service { identity } => Self::of(format!("service:{identity}"), false),
        }
    }

    /// `key` as stored.
    pub fn stored(&self, key: &IdempotencyKey) -> String {
        if self.owner.is_empty() {
            key.as_str().to_owned()
        } else {
            format!("{} {}", self.owner, key.as_str())
        }
    }

    /// `key` among the unscoped keys, where this scope looks too.
    pub fn unscoped(&self, key: &IdempotencyKey) -> Option<String> {
        (self.sees_unscoped && !self.owner.is_empty()).then(|| key.as_str().to_owned())
    }
}

/// A stored key as its caller sent it.
pub fn shown_key(stored: &str) -> &str {
    stored.rsplit_once(' ').map_or(stored, |(_, key)| key)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MovementKind {
    Charge {
        amount: Points,
    },
    Use {
        amount: Points,
        reference: Reference,
    },
    /// Gives back the whole amount of the user's `Use` made under `use_key`.
    Refund {
        use_key: IdempotencyKey,
    },
}

impl MoneyMovement {
    /// SHA-256 of the request, so a replay (same key, same request) can be told from a reuse
    /// of the key for something else. Fields are length-prefixed, so no two requests collide
    /// by concatenation.
    pub fn fingerprint(&self) -> Vec<u8> {
        let mut hasher = Sha256::new();
        let mut field = |bytes: &[u8]| {
            hasher.update((bytes.len() as u64).to_be_bytes());
            hasher.update(bytes);
        };
        field(&self.user_id.get().to_be_bytes());
        match &self.kind {
            MovementKind::Charge { amount } => {
                field(b"charge");
                field(&amount.get().to_be_bytes());
            }
            MovementKind::Use { amount, reference } => {
                field(b"use");
                field(&amount.get().to_be_bytes());
                field(reference.as_str().as_bytes());
            }
            MovementKind::Refund { use_key } => {
                field(b"refund");
                field(use_key.as_str().as_bytes());
            }
        }
        hasher.finalize().to_vec()
    }
}

/// How a movement ended.
#[derive(Debug, Clone)]
pub enum MovementOutcome {
    Applied(Transaction),
    /// The key's first outcome, answered again.
    Replayed(Transaction),
    Refused(Refusal),
    KeyReused,
    UnknownUse,
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
        assert!(Reference::parse("a\0b".into()).is_err());
    }
}
