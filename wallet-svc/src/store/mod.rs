//! Postgres access: each money movement is one transaction that locks the user's wallet row,
//! reads what its key already holds, asks [`protocol::wallet::decide`], and applies the answer.

mod models;
pub mod schema;

use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use protocol::wallet::{Decision, KeyRecord, Movement, Recorded, RefundTarget, Refusal};
use shared::db::PgPool;
pub use shared::db::StoreError;

use crate::domain::{
    IdempotencyKey, MoneyMovement, MovementKind, PageCursor, PageSize, Transaction,
    TransactionKind, TransactionPage, UserId,
};
use models::{NewRefusal, NewTransaction, TransactionRow};
use schema::{wallet_refusals, wallet_transactions, wallets};

/// How a movement ended.
#[derive(Debug)]
pub enum MovementOutcome {
    Applied(Transaction),
    /// The key's first outcome, answered again.
    Replayed(Transaction),
    Refused(Refusal),
    KeyReused,
    UnknownUse,
}

#[derive(Clone)]
pub struct Store {
    pool: PgPool,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("pool", &self.pool.status())
            .finish()
    }
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub async fn balance(&self, user_id: UserId) -> Result<i64, StoreError> {
        let mut conn = self.pool.get().await?;
        let balance = wallets::table
            .find(user_id.get())
            .select(wallets::balance)
            .first::<i64>(&mut conn)
            .await
            .optional()?;
        Ok(balance.unwrap_or(0))
    }

    /// Applies one movement in one transaction under the wallet's row lock.
    pub async fn apply_movement(
        &self,
        movement: &MoneyMovement,
    ) -> Result<MovementOutcome, StoreError> {
        let fingerprint = movement.fingerprint();
        let mut conn = self.pool.get().await?;
        conn.transaction(async |conn| apply_movement(conn, movement, &fingerprint).await)
            .await
    }

    pub async fn transactions(
        &self,
        user_id: UserId,
        page_size: PageSize,
        cursor: Option<PageCursor>,
    ) -> Result<TransactionPage, StoreError> {
        let mut conn = self.pool.get().await?;
        let limit = i64::from(page_size.get());
        let mut query = wallet_transactions::table
            .filter(wallet_transactions::user_id.eq(user_id.get()))
            .order(wallet_transactions::id.desc())
            // One row more than asked tells whether another page follows.
            .limit(limit + 1)
            .select(TransactionRow::as_select())
            .into_boxed();
        if let Some(cursor) = cursor {
            query = query.filter(wallet_transactions::id.lt(cursor.before_id));
        }
        let mut rows = query.load(&mut conn).await?;
        let more = rows.len() > usize::from(page_size.get());
        rows.truncate(usize::from(page_size.get()));
        let next = match rows.last() {
            Some(last) if more => Some(PageCursor {
                owner: user_id.get(),
                before_id: last.id,
            }),
            _ => None,
        };
        let transactions = rows
            .into_iter()
            .map(Transaction::try_from)
            .collect::<Result<_, _>>()?;
        Ok(TransactionPage { transactions, next })
    }
}

async fn apply_movement(
    conn: &mut AsyncPgConnection,
    movement: &MoneyMovement,
    fingerprint: &[u8],
) -> Result<MovementOutcome, StoreError> {
    let user_id = movement.user_id.get();
    // A refund needs an earlier Use, hence a wallet; charges and uses create it.
    let create = !matches!(movement.kind, MovementKind::Refund { .. });
    let balance = lock_wallet(conn, user_id, create).await?;
    let prior = find_key(conn, user_id, &movement.key).await?;
    let (request, refund_of) = match &movement.kind {
        MovementKind::Charge { amount } => (
            Movement::Charge {
                amount: amount.get(),
            },
            None,
        ),
        MovementKind::Use { amount, .. } => (
            Movement::Use {
                amount: amount.get(),
            },
            None,
        ),
        MovementKind::Refund { use_key } => match find_use(conn, user_id, use_key).await? {
            Some(used) => {
                let target = RefundTarget {
                    amount: used.amount,
                    refunded_by: find_refund_of(conn, used.id).await?,
                };
                (
                    Movement::Refund {
                        target: Some(target),
                    },
                    Some(used.id),
                )
            }
            None => (Movement::Refund { target: None }, None),
        },
    };

    match protocol::wallet::decide(balance.unwrap_or(0), prior, fingerprint, request) {
        Decision::Apply {
            delta,
            balance_after,
        } => {
            let updated = diesel::update(wallets::table.find(user_id))
                .set((
                    wallets::balance.eq(balance_after),
                    wallets::updated_at.eq(diesel::dsl::now),
                ))
                .execute(conn)
                .await?;
            if updated != 1 {
                return Err(StoreError::Internal(format!("wallet {user_id} vanished")));
            }
            let (kind, reference) = match &movement.kind {
                MovementKind::Charge { .. } => (TransactionKind::Charge, ""),
                MovementKind::Use { reference, .. } => (TransactionKind::Use, reference.as_str()),
                MovementKind::Refund { use_key } => (TransactionKind::Refund, use_key.as_str()),
            };
            let row = diesel::insert_into(wallet_transactions::table)
                .values(NewTransaction {
                    user_id,
                    kind: kind.as_str(),
                    amount: delta.abs(),
                    balance_after,
                    idempotency_key: movement.key.as_str(),
                    request_hash: fingerprint,
                    reference,
                    refund_of,
                })
                .returning(TransactionRow::as_returning())
                .get_result(conn)
                .await?;
            Ok(MovementOutcome::Applied(row.try_into()?))
        }
        Decision::Refuse(refusal) => {
            diesel::insert_into(wallet_refusals::table)
                .values(NewRefusal {
                    user_id,
                    idempotency_key: movement.key.as_str(),
                    request_hash: fingerprint,
                    reason: refusal_name(refusal),
                })
                .execute(conn)
                .await?;
            Ok(MovementOutcome::Refused(refusal))
        }
        Decision::Replay(row) => Ok(MovementOutcome::Replayed(row.try_into()?)),
        Decision::ReplayRefusal(refusal) => Ok(MovementOutcome::Refused(refusal)),
        Decision::KeyReused => Ok(MovementOutcome::KeyReused),
        Decision::UnknownUse => Ok(MovementOutcome::UnknownUse),
    }
}

/// Locks the user's wallet row until the transaction ends and returns its balance; creates the
/// row first when `create` is set and it does not exist yet.
async fn lock_wallet(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    create: bool,
) -> Result<Option<i64>, StoreError> {
    let locked = || {
        wallets::table
            .find(user_id)
            .select(wallets::balance)
            .for_update()
    };
    if let Some(balance) = locked().first::<i64>(conn).await.optional()? {
        return Ok(Some(balance));
    }
    if !create {
        return Ok(None);
    }
    // A concurrent first movement of the same user may insert it first; either way the row
    // then exists, and the lock below waits for that transaction to end.
    diesel::insert_into(wallets::table)
        .values(wallets::user_id.eq(user_id))
        .on_conflict_do_nothing()
        .execute(conn)
        .await?;
    Ok(Some(locked().first::<i64>(conn).await?))
}

/// What the user's key already holds: an applied movement, or a recorded refusal.
async fn find_key(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    key: &IdempotencyKey,
) -> Result<Option<KeyRecord<TransactionRow>>, StoreError> {
    let applied = wallet_transactions::table
        .filter(wallet_transactions::user_id.eq(user_id))
        .filter(wallet_transactions::idempotency_key.eq(key.as_str()))
        .select(TransactionRow::as_select())
        .first(conn)
        .await
        .optional()?;
    if let Some(row) = applied {
        return Ok(Some(KeyRecord {
            request_fingerprint: row.request_hash.clone(),
            outcome: Recorded::Applied(row),
        }));
    }
    let refused = wallet_refusals::table
        .find((user_id, key.as_str()))
        .select((wallet_refusals::request_hash, wallet_refusals::reason))
        .first::<(Vec<u8>, String)>(conn)
        .await
        .optional()?;
    refused
        .map(|(request_fingerprint, reason)| {
            let refusal = parse_refusal(&reason)
                .ok_or_else(|| StoreError::Internal(format!("unknown refusal {reason:?}")))?;
            Ok(KeyRecord {
                request_fingerprint,
                outcome: Recorded::Refused(refusal),
            })
        })
        .transpose()
}

async fn find_use(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    use_key: &IdempotencyKey,
) -> Result<Option<TransactionRow>, StoreError> {
    Ok(wallet_transactions::table
        .filter(wallet_transactions::user_id.eq(user_id))
        .filter(wallet_transactions::idempotency_key.eq(use_key.as_str()))
        .filter(wallet_transactions::kind.eq(TransactionKind::Use.as_str()))
        .select(TransactionRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

/// The refund already made of the `Use` with this id, under whatever key.
async fn find_refund_of(
    conn: &mut AsyncPgConnection,
    use_id: i64,
) -> Result<Option<TransactionRow>, StoreError> {
    Ok(wallet_transactions::table
        .filter(wallet_transactions::refund_of.eq(use_id))
        .select(TransactionRow::as_select())
        .first(conn)
        .await
        .optional()?)
}

fn refusal_name(refusal: Refusal) -> &'static str {
    match refusal {
        Refusal::InsufficientBalance => "INSUFFICIENT_BALANCE",
        Refusal::BalanceLimit => "BALANCE_LIMIT",
    }
}

fn parse_refusal(name: &str) -> Option<Refusal> {
    match name {
        "INSUFFICIENT_BALANCE" => Some(Refusal::InsufficientBalance),
        "BALANCE_LIMIT" => Some(Refusal::BalanceLimit),
        _ => None,
    }
}
