//! A batch of one `Use` under a fresh key that the balance covers (every payment of a user
//! paying one thing at a time), in one round trip: `BEGIN`, the wallet row's lock,
//! [`UseIfFresh`] and `COMMIT`, sent together.
//!
//! Postgres runs them one after another, so the conditional statement begins once the lock
//! statement has ended and, in READ COMMITTED, reads the keys and the balance as every earlier
//! writer of the user (each held that lock) committed them. It applies the `Use` exactly when
//! `protocol::wallet::decide` would (`Apply`: no ledger row or refusal under its key, the
//! balance at least the amount): the ledger row and the balance together. Otherwise it writes
//! nothing, the transaction commits nothing, and the full batch transaction decides (a replay,
//! a reused key, a refusal to record, a wallet to create).
//!
//! It writes only if the lock statement did lock the row ([`LockWalletMarked`] records that in
//! a transaction-local setting, which [`UseIfFresh`] checks). A lock that found no row (no
//! wallet yet, or one whose insert had not committed) took no lock; had the conditional
//! statement gone on, it could have seen the wallet committed meanwhile and written, without
//! the lock, beside another batch holding it.

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::sql_types::{Array, BigInt, Binary, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use shared::pipeline::{self, Begin, Commit};
use tracing::Instrument;

use super::models::TransactionRow;
use crate::model::{MoneyMovement, TransactionKind};

/// Applies `movement`, a `Use` of `amount` points, in one round trip when its key is fresh and
/// the balance covers it: the ledger row written, or `None` when nothing was written (and then
/// the full batch transaction decides).
pub async fn use_if_fresh(
    conn: &mut AsyncPgConnection,
    user_id: i64,
    movement: &MoneyMovement,
    amount: i64,
    reference: &str,
    fingerprint: &[u8],
) -> QueryResult<Option<TransactionRow>> {
    let scope = &movement.scope;
    let key = scope.stored(&movement.key);
    let mut keys = vec![key.clone()];
    keys.extend(scope.unscoped(&movement.key));
    let statement = UseIfFresh {
        user_id,
        kind: TransactionKind::Use.as_str(),
        amount,
        keys,
        key,
        fingerprint,
        reference,
    };
    pipeline::opening(conn)?;
    let shared = &*conn;
    let span = shared::telemetry::postgres_span("UseIfFresh");
    // `join!` polls in order: the four go out in this order, in one write.
    let (begun, locked, used, committed) = async {
        futures::join!(
            Begin.execute(&mut &*shared),
            LockWalletMarked { user_id }.execute(&mut &*shared),
            statement.get_results::<TransactionRow>(&mut &*shared),
            Commit.execute(&mut &*shared),
        )
    }
    .instrument(span)
    .await;
    // A statement that failed in Postgres made `COMMIT` roll back; either way the transaction
    // has ended once `COMMIT` is answered. (Should `COMMIT` itself fail, the transaction is
    // still open and the pool closes the connection.)
    committed?;
    pipeline::closed(conn)?;
    begun?;
    locked?;
    let mut used = used?;
    debug_assert!(used.len() <= 1, "one row per key");
    Ok(used.pop())
}

/// The transaction-local setting in which [`LockWalletMarked`] records whose wallet row it
/// locked.
const LOCKED_WALLET: &str = "wallet_svc.locked_wallet";

/// `SELECT balance FROM wallets WHERE user_id = ... FOR UPDATE`, recording in [`LOCKED_WALLET`]
/// (until the transaction ends) that it locked the row: only a row it returns sets it.
#[derive(Debug, Clone, Copy, QueryId)]
struct LockWalletMarked {
    user_id: i64,
}

impl QueryFragment<Pg> for LockWalletMarked {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("SELECT balance, set_config('");
        out.push_sql(LOCKED_WALLET);
        out.push_sql("', CAST(user_id AS text), true) FROM (SELECT user_id, balance FROM wallets WHERE user_id = ");
        out.push_bind_param::<BigInt, _>(&self.user_id)?;
        out.push_sql(" FOR UPDATE) AS locked");
        Ok(())
    }
}

/// The `Use` applied when the lock statement before it locked the wallet row, its key is fresh
/// and the balance covers it: the balance updated and, from what that returned, the ledger row
/// inserted, both or neither, in one statement. Returns the ledger row, or no row when it wrote
/// nothing.
#[derive(Debug, Clone)]
struct UseIfFresh<'a> {
    user_id: i64,
    /// `USE`, as the ledger names it.
    kind: &'static str,
    amount: i64,
    /// The keys the `Use` may be known under: as stored, and unscoped where its caller sees
    /// those too.
    keys: Vec<String>,
    /// The key it is stored under.
    key: String,
    fingerprint: &'a [u8],
    reference: &'a str,
}

/// One statement whatever it borrows: diesel prepares it once per connection.
impl QueryId for UseIfFresh<'_> {
    type QueryId = UseIfFresh<'static>;
    const HAS_STATIC_QUERY_ID: bool = true;
}

impl QueryFragment<Pg> for UseIfFresh<'_> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("WITH fresh AS MATERIALIZED (SELECT balance - ");
        out.push_bind_param::<BigInt, _>(&self.amount)?;
        out.push_sql(" AS balance_after FROM wallets WHERE user_id = ");
        out.push_bind_param::<BigInt, _>(&self.user_id)?;
        out.push_sql(" AND current_setting('");
        out.push_sql(LOCKED_WALLET);
        out.push_sql("', true) = CAST(wallets.user_id AS text) AND balance >= ");
        out.push_bind_param::<BigInt, _>(&self.amount)?;
        out.push_sql(
            " AND NOT EXISTS (SELECT 1 FROM wallet_transactions AS known \
                 WHERE known.user_id = wallets.user_id AND known.idempotency_key = ANY(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.keys)?;
        out.push_sql(
            ")) AND NOT EXISTS (SELECT 1 FROM wallet_refusals AS refused \
                 WHERE refused.user_id = wallets.user_id AND refused.idempotency_key = ANY(",
        );
        out.push_bind_param::<Array<Text>, _>(&self.keys)?;
        out.push_sql(
            "))), debited AS (UPDATE wallets SET balance = fresh.balance_after, \
                 updated_at = now() FROM fresh WHERE wallets.user_id = ",
        );
        out.push_bind_param::<BigInt, _>(&self.user_id)?;
        out.push_sql(
            " RETURNING wallets.balance AS balance_after) \
             INSERT INTO wallet_transactions (user_id, kind, amount, balance_after, \
                 idempotency_key, request_hash, reference) SELECT ",
        );
        out.push_bind_param::<BigInt, _>(&self.user_id)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.kind)?;
        out.push_sql(", ");
        out.push_bind_param::<BigInt, _>(&self.amount)?;
        out.push_sql(", balance_after, ");
        out.push_bind_param::<Text, _>(&self.key)?;
        out.push_sql(", ");
        out.push_bind_param::<Binary, _>(&self.fingerprint)?;
        out.push_sql(", ");
        out.push_bind_param::<Text, _>(&self.reference)?;
        out.push_sql(
            " FROM debited RETURNING id, user_id, kind, amount, balance_after, idempotency_key, \
                 request_hash, reference, created_at",
        );
        Ok(())
    }
}

impl Query for UseIfFresh<'_> {
    /// [`TransactionRow`]'s columns, in its order.
    type SqlType = (
        BigInt,
        BigInt,
        Text,
        BigInt,
        BigInt,
        Text,
        Binary,
        Text,
        Timestamptz,
    );
}
