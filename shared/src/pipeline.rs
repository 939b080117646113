//! Transactions sent as pipelines: `BEGIN` with the statements that lock and read what a
//! decision needs, the decision's writes with `COMMIT`, two round trips where diesel's
//! transaction manager takes one per statement and one each for `BEGIN` and `COMMIT`.
//!
//! diesel's transaction manager is told of each such transaction, before its `BEGIN` goes out
//! ([`opening`]) and once its `COMMIT` or `ROLLBACK` has come back ([`closed`]): a connection
//! left inside one (an error between the two, a future dropped halfway) then reads as broken to
//! the pool, which closes it (Postgres rolls the transaction back) instead of handing it to the
//! next caller.

use diesel::QueryResult;
use diesel::connection::TransactionDepthChange;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, QueryFragment, QueryId};
use diesel_async::pooled_connection::deadpool::Object;
use diesel_async::{AnsiTransactionManager, AsyncPgConnection, RunQueryDsl, TransactionManager};

/// `BEGIN ISOLATION LEVEL READ COMMITTED`, as a query type of its own: prepared once per
/// connection, it can be pipelined with the statements that follow it.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct Begin;

impl QueryFragment<Pg> for Begin {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("BEGIN ISOLATION LEVEL READ COMMITTED");
        Ok(())
    }
}

/// `COMMIT`, pipelined like [`Begin`]. In a transaction a statement has failed, Postgres
/// answers it by rolling back: either way the connection leaves the transaction.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct Commit;

impl QueryFragment<Pg> for Commit {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("COMMIT");
        Ok(())
    }
}

/// `ROLLBACK`.
#[derive(Debug, Clone, Copy, QueryId)]
pub struct Rollback;

impl QueryFragment<Pg> for Rollback {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        out.push_sql("ROLLBACK");
        Ok(())
    }
}

/// A connection of the pool that, dropped while a transaction is still open on it (its future
/// cancelled halfway, an error between `BEGIN` and `COMMIT` that could not be rolled back), is
/// taken out of the pool and closed at once: Postgres rolls the transaction back and frees its
/// locks then, not when the pool next checks the connection out. (Unless its `COMMIT` was
/// already sent with the rest of a pipeline: Postgres runs what it received, commit included,
/// before it reads that the connection closed.)
pub struct Checkout(Option<Object<AsyncPgConnection>>);

impl std::fmt::Debug for Checkout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkout").finish_non_exhaustive()
    }
}

impl Checkout {
    pub fn new(conn: Object<AsyncPgConnection>) -> Self {
        Self(Some(conn))
    }
}

impl std::ops::Deref for Checkout {
    type Target = AsyncPgConnection;

    fn deref(&self) -> &AsyncPgConnection {
        // Only `drop` takes it out.
        self.0
            .as_deref()
            .unwrap_or_else(|| unreachable!("a checkout holds its connection"))
    }
}

impl std::ops::DerefMut for Checkout {
    fn deref_mut(&mut self) -> &mut AsyncPgConnection {
        self.0
            .as_deref_mut()
            .unwrap_or_else(|| unreachable!("a checkout holds its connection"))
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        if let Some(mut conn) = self.0.take()
            && in_transaction(&mut conn)
        {
            drop(Object::take(conn));
        }
    }
}

/// Whether a transaction is open on `conn` (or its transaction manager is in error).
fn in_transaction(conn: &mut AsyncPgConnection) -> bool {
    <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(conn)
        .transaction_depth()
        .map_or(true, |depth| depth.is_some())
}

/// Tells diesel's transaction manager that a transaction of ours is about to begin on `conn`
/// (call it before its `BEGIN` is sent).
pub fn opening(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    change_depth(conn, TransactionDepthChange::IncreaseDepth)
}

/// Tells diesel's transaction manager that our transaction on `conn` has ended (its `COMMIT`
/// or `ROLLBACK` came back).
pub fn closed(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    change_depth(conn, TransactionDepthChange::DecreaseDepth)
}

/// Ends our transaction on `conn`, writing nothing more.
pub async fn commit(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    Commit.execute(&mut &*conn).await?;
    closed(conn)
}

/// Ends our transaction on `conn`, undoing what it wrote.
pub async fn rollback(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    Rollback.execute(&mut &*conn).await?;
    closed(conn)
}

/// After an error: rolls back our transaction on `conn` if it is still open, so that the pool
/// can hand the connection out again (should that fail too, the pool closes it).
pub async fn roll_back_if_open(conn: &mut AsyncPgConnection) {
    if in_transaction(conn)
        && let Err(error) = rollback(conn).await
    {
        tracing::debug!(%error, "rollback after an error failed: the pool closes the connection");
    }
}

/// Sends `write` and `COMMIT` together, ending our transaction on `conn`, and returns what
/// `write` answered. Should a statement of `write` fail in Postgres, `COMMIT` rolls back
/// (Postgres ends a failed transaction so) and its error is returned. A statement that fails
/// in the client instead (one whose values cannot be encoded) is never sent, while `COMMIT` is:
/// `write`'s statements must bind only values that always encode.
pub async fn commit_with<T>(
    conn: &mut AsyncPgConnection,
    write: impl AsyncFnOnce(&AsyncPgConnection) -> QueryResult<T>,
) -> QueryResult<T> {
    let shared = &*conn;
    // `join!` polls in order: the write goes out first.
    let (written, committed) = futures::join!(write(shared), Commit.execute(&mut &*shared));
    committed?;
    closed(conn)?;
    written
}

fn change_depth(conn: &mut AsyncPgConnection, change: TransactionDepthChange) -> QueryResult<()> {
    <AnsiTransactionManager as TransactionManager<AsyncPgConnection>>::transaction_manager_status_mut(conn)
        .transaction_state()?
        .change_transaction_depth(change)
}
