//! Requests parsed into domain values (every bad field reported at once, as `INVALID_ARGUMENT`
//! with a `BadRequest`), and domain values turned into messages.

use shared::all_valid;
use shared::error::{FieldViolations, invalid_field};
use shared::proto::timestamp;
use shared::proto::wallet::v1 as pb;
use tonic::Status;

use crate::model::{
    IdempotencyKey, KeyScope, MoneyMovement, MovementKind, Points, Reference, TRANSACTIONS_LISTING,
    Transaction, TransactionKind, TransactionPage, UserId,
};

pub struct BalanceQuery {
    pub user_id: UserId,
}

impl TryFrom<pb::GetBalanceRequest> for BalanceQuery {
    type Error = Status;

    fn try_from(request: pb::GetBalanceRequest) -> Result<Self, Status> {
        let user_id = UserId::parse(request.user_id)
            .map_err(|error| invalid_field("user_id", error.to_string()))?;
        Ok(Self { user_id })
    }
}

impl TryFrom<pb::ChargeRequest> for MoneyMovement {
    type Error = Status;

    fn try_from(request: pb::ChargeRequest) -> Result<Self, Status> {
        let mut violations = FieldViolations::new();
        let user_id = violations.check("user_id", UserId::parse(request.user_id));
        let amount = violations.check("amount", Points::parse(request.amount));
        let key = violations.check(
            "idempotency_key",
            IdempotencyKey::parse(request.idempotency_key),
        );
        let (user_id, amount, key) = all_valid!(violations, user_id, amount, key);
        Ok(Self {
            user_id,
            key,
            scope: KeyScope::default(),
            kind: MovementKind::Charge { amount },
        })
    }
}

impl TryFrom<pb::UseRequest> for MoneyMovement {
    type Error = Status;

    fn try_from(request: pb::UseRequest) -> Result<Self, Status> {
        let mut violations = FieldViolations::new();
        let user_id = violations.check("user_id", UserId::parse(request.user_id));
        let amount = violations.check("amount", Points::parse(request.amount));
        let key = violations.check(
            "idempotency_key",
            IdempotencyKey::parse(request.idempotency_key),
        );
        let reference = violations.check("reference", Reference::parse(request.reference));
        let (user_id, amount, key, reference) =
            all_valid!(violations, user_id, amount, key, reference);
        Ok(Self {
            user_id,
            key,
            scope: KeyScope::default(),
            kind: MovementKind::Use { amount, reference },
        })
    }
}

impl TryFrom<pb::RefundRequest> for MoneyMovement {
    type Error = Status;

    fn try_from(request: pb::RefundRequest) -> Result<Self, Status> {
        let mut violations = FieldViolations::new();
        let user_id = violations.check("user_id", UserId::parse(request.user_id));
        let key = violations.check(
            "idempotency_key",
            IdempotencyKey::parse(request.idempotency_key),
        );
        let use_key = violations.check(
            "use_idempotency_key",
            IdempotencyKey::parse(request.use_idempotency_key),
        );
        let (user_id, key, use_key) = all_valid!(violations, user_id, key, use_key);
        Ok(Self {
            user_id,
            key,
            scope: KeyScope::default(),
            kind: MovementKind::Refund { use_key },
        })
    }
}

impl From<TransactionKind> for pb::TransactionKind {
    fn from(kind: TransactionKind) -> Self {
        match kind {
            TransactionKind::Charge => Self::Charge,
            TransactionKind::Use => Self::Use,
            TransactionKind::Refund => Self::Refund,
        }
    }
}

impl From<Transaction> for pb::WalletTransaction {
    fn from(transaction: Transaction) -> Self {
        Self {
            id: transaction.id,
            user_id: transaction.user_id,
            kind: pb::TransactionKind::from(transaction.kind).into(),
            amount: transaction.amount,
            balance_after: transaction.balance_after,
            idempotency_key: transaction.idempotency_key,
            reference: transaction.reference,
            created_at: Some(timestamp(transaction.created_at)),
        }
    }
}

pub fn transaction_page(page: TransactionPage) -> pb::ListTransactionsResponse {
    pb::ListTransactionsResponse {
        transactions: page.rows.into_iter().map(Into::into).collect(),
        next_page_token: page
            .next
            .map(|cursor| cursor.encode(TRANSACTIONS_LISTING.name))
            .unwrap_or_default(),
    }
}
