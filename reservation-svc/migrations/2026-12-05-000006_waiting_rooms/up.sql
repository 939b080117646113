-- A schedule's waiting room: its settings, as ConfigureRoom took them (protocol::admission's
-- RoomConfig and its bounds). The queue itself lives in Redis; every replica reads this table to
-- know which schedules ask HoldSeat for an admission token, and sends the settings with every
-- step of the queue, versioned by updated_at (microseconds) so the newest win there.
CREATE TABLE waiting_rooms (
    schedule_id      BIGINT PRIMARY KEY REFERENCES schedules (id),
    rate_milli_per_s BIGINT NOT NULL CHECK (rate_milli_per_s BETWEEN 1 AND 1000000000),
    burst            INTEGER NOT NULL CHECK (burst BETWEEN 1 AND 1000000),
    max_active       INTEGER NOT NULL CHECK (max_active BETWEEN 1 AND 10000000),
    claim_window_ms  INTEGER NOT NULL CHECK (claim_window_ms BETWEEN 1000 AND 3600000),
    token_ttl_ms     INTEGER NOT NULL CHECK (token_ttl_ms BETWEEN 1000 AND 86400000),
    opens_at         TIMESTAMPTZ NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
