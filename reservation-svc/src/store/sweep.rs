//! The sweep: lapsed holds expired in batches and their seats freed, skipping seats another
//! transaction holds.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{Array, BigInt, Text, Timestamptz};
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use super::models::parse_status;
use super::{Store, StoreError, micros};

impl Store {
    /// Expires up to `batch_size` lapsed holds and frees their seats, in one transaction;
    /// answers the user, schedule and creation of each hold expired.
    /// Seats another transaction holds are skipped (`SKIP LOCKED`), so any number of sweepers
    /// work side by side, each on different seats, and a hold or payment in progress is never
    /// waited for.
    pub async fn expire_lapsed_holds(
        &self,
        batch_size: i64,
    ) -> Result<Vec<(i64, i64, DateTime<Utc>)>, StoreError> {
        crate::metrics::db_transaction("expire_lapsed_holds", async move {
            let mut conn = self.pool.get().await?;
            conn.build_transaction()
                .read_committed()
                .run(async |conn| expire_in_transaction(conn, batch_size).await)
                .await
        })
        .await
    }
}

async fn expire_in_transaction(
    conn: &mut AsyncPgConnection,
    batch_size: i64,
) -> Result<Vec<(i64, i64, DateTime<Utc>)>, StoreError> {
    #[derive(QueryableByName)]
    struct Lapsed {
        #[diesel(sql_type = BigInt)]
        id: i64,
        #[diesel(sql_type = BigInt)]
        user_id: i64,
        #[diesel(sql_type = Text)]
        status: String,
        #[diesel(sql_type = Timestamptz)]
        expires_at: DateTime<Utc>,
        #[diesel(sql_type = Timestamptz)]
        now: DateTime<Utc>,
    }
    // Locks the seats (never the reservations first), in the order every writer uses, and
    // reads the clock once they are locked (in the outer query, as `LockSeat` does).
    let candidates = diesel::sql_query(
        "SELECT locked.*, clock_timestamp() AS now FROM ( \
             SELECT r.id, r.user_id, r.status, r.expires_at \
             FROM reservations r \
             JOIN seats s ON s.schedule_id = r.schedule_id AND s.seat_no = r.seat_no \
             WHERE r.status = 'HELD' AND r.expires_at <= clock_timestamp() \
             ORDER BY r.expires_at \
             LIMIT $1 \
             FOR UPDATE OF s SKIP LOCKED \
         ) AS locked",
    )
    .bind::<BigInt, _>(batch_size)
    .load::<Lapsed>(conn)
    .await?;
    // The outer query reads the clock as each locked row comes out, so the last reading is
    // taken once every seat of the batch is locked: one clock for every decision below.
    let Some(now) = candidates.iter().map(|candidate| candidate.now).max() else {
        return Ok(Vec::new());
    };
    let mut sweepable = Vec::with_capacity(candidates.len());
    for candidate in &candidates {
        let state = protocol::reservation::ReservationState {
            id: candidate.id,
            user_id: candidate.user_id,
            status: parse_status(&candidate.status)?,
            expires_at: micros(candidate.expires_at),
        };
        if protocol::reservation::sweepable(&state, micros(now)) {
            sweepable.push(candidate.id);
        }
    }
    if sweepable.is_empty() {
        return Ok(Vec::new());
    }
    // Conditional on still being a lapsed hold: the candidate list was read from a snapshot
    // that may predate a commit on one of these seats.
    #[derive(QueryableByName)]
    struct Expired {
        #[diesel(sql_type = BigInt)]
        user_id: i64,
        #[diesel(sql_type = BigInt)]
        schedule_id: i64,
        #[diesel(sql_type = Timestamptz)]
        created_at: DateTime<Utc>,
    }
    let expired = diesel::sql_query(
        "WITH expired AS ( \
             UPDATE reservations SET status = 'EXPIRED', updated_at = $2 \
             WHERE id = ANY($1) AND status = 'HELD' AND expires_at <= $2 \
             RETURNING user_id, schedule_id, seat_no, created_at \
         ), freed AS ( \
             UPDATE seats SET status = 'AVAILABLE' FROM expired \
             WHERE seats.schedule_id = expired.schedule_id AND seats.seat_no = expired.seat_no \
               AND seats.status = 'HELD' \
         ) \
         SELECT user_id, schedule_id, created_at FROM expired",
    )
    .bind::<Array<BigInt>, _>(&sweepable)
    .bind::<Timestamptz, _>(now)
    .load::<Expired>(conn)
    .await?;
    Ok(expired
        .into_iter()
        .map(|expired| (expired.user_id, expired.schedule_id, expired.created_at))
        .collect())
}
