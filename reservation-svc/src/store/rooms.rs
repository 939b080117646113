//! The waiting rooms' settings: written by `ConfigureRoom`, read by every replica.

use chrono::{DateTime, Utc};
use diesel::QueryableByName;
use diesel::sql_types::{BigInt, Integer, Timestamptz};
use diesel_async::RunQueryDsl;
use protocol::admission::RoomConfig;

use super::{Store, StoreError, micros};
use crate::model::RoomSettings;

#[derive(QueryableByName)]
struct RoomRow {
    #[diesel(sql_type = BigInt)]
    schedule_id: i64,
    #[diesel(sql_type = BigInt)]
    rate_milli_per_s: i64,
    #[diesel(sql_type = Integer)]
    burst: i32,
    #[diesel(sql_type = Integer)]
    max_active: i32,
    #[diesel(sql_type = Integer)]
    claim_window_ms: i32,
    #[diesel(sql_type = Integer)]
    token_ttl_ms: i32,
    #[diesel(sql_type = Timestamptz)]
    opens_at: DateTime<Utc>,
    #[diesel(sql_type = Timestamptz)]
    updated_at: DateTime<Utc>,
}

impl From<RoomRow> for RoomSettings {
    fn from(row: RoomRow) -> Self {
        Self {
            schedule_id: row.schedule_id,
            config: RoomConfig {
                rate_milli_per_s: row.rate_milli_per_s,
                burst: i64::from(row.burst),
                max_active: i64::from(row.max_active),
                claim_window_ms: i64::from(row.claim_window_ms),
                token_ttl_ms: i64::from(row.token_ttl_ms),
                opens_at_ms: row.opens_at.timestamp_millis(),
            },
            version: micros(row.updated_at),
        }
    }
}

impl Store {
    /// Creates or changes the room of `schedule_id`; `None` when there is no such schedule.
    /// Each change gets a later version than the one before, however the clock moves. Without
    /// `opens_at_ms`, a new room opens now and a changed one keeps its opening
    /// (`config.opens_at_ms` is not read).
    pub async fn configure_room(
        &self,
        schedule_id: i64,
        config: &RoomConfig,
        opens_at_ms: Option<i64>,
    ) -> Result<Option<RoomSettings>, StoreError> {
        let int = |value: i64| i32::try_from(value).unwrap_or(i32::MAX);
        let opens_at = opens_at_ms.map(|ms| {
            DateTime::<Utc>::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
        });
        let mut conn = self.pool.get().await?;
        let row = diesel::sql_query(
            "INSERT INTO waiting_rooms AS room (schedule_id, rate_milli_per_s, burst, max_active, \
                 claim_window_ms, token_ttl_ms, opens_at) \
             SELECT $1, $2, $3, $4, $5, $6, COALESCE($7, clock_timestamp()) \
             WHERE EXISTS (SELECT 1 FROM schedules WHERE id = $1) \
             ON CONFLICT (schedule_id) DO UPDATE SET rate_milli_per_s = EXCLUDED.rate_milli_per_s, \
                 burst = EXCLUDED.burst, max_active = EXCLUDED.max_active, \
                 claim_window_ms = EXCLUDED.claim_window_ms, token_ttl_ms = EXCLUDED.token_ttl_ms, \
                 opens_at = COALESCE($7, room.opens_at), \
                 updated_at = GREATEST(clock_timestamp(), room.updated_at + interval '1 microsecond') \
             RETURNING *",
        )
        .bind::<BigInt, _>(schedule_id)
        .bind::<BigInt, _>(config.rate_milli_per_s)
        .bind::<Integer, _>(int(config.burst))
        .bind::<Integer, _>(int(config.max_active))
        .bind::<Integer, _>(int(config.claim_window_ms))
        .bind::<Integer, _>(int(config.token_ttl_ms))
        .bind::<diesel::sql_types::Nullable<Timestamptz>, _>(opens_at)
        .get_result::<RoomRow>(&mut conn)
        .await;
        match row {
            Ok(row) => Ok(Some(row.into())),
            Err(diesel::result::Error::NotFound) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Every room whose performance has not begun.
    pub async fn rooms(&self) -> Result<Vec<RoomSettings>, StoreError> {
        let mut conn = self.pool.get().await?;
        let rows = diesel::sql_query(
            "SELECT room.* FROM waiting_rooms room \
             JOIN schedules s ON s.id = room.schedule_id \
             WHERE s.starts_at > now()",
        )
        .load::<RoomRow>(&mut conn)
        .await?;
        Ok(rows.into_iter().map(RoomSettings::from).collect())
    }
}
