-- The seat's lock for a hold while Redis is out of reach (SEAT_LOCK_FALLBACK=postgres), taken
-- without waiting, in two steps that read only what is committed and lock no row:
-- * a seat that an active reservation owns (PAYING or CONFIRMED, or HELD with time left on the
--   clock: protocol::reservation::ReservationState::holds_seat) raises an error with the
--   constraint name `seat_taken`: the hold is refused SEAT_TAKEN, as the seat's taken mark in
--   Redis refuses it, for protocol::reservation::hold decides "taken" before anything else;
-- * otherwise it takes the transaction-scoped advisory lock `key` (the seat's, in the one-key
--   space); held by another transaction, it raises an error with the constraint name
--   `seat_lock` (SEAT_LOCKED).
-- Either error stops a hold sent as one pipeline there, with nothing written.
CREATE FUNCTION seat_lock(key bigint, schedule bigint, seat integer) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (
        SELECT 1 FROM reservations
        WHERE schedule_id = schedule AND seat_no = seat
          AND status IN ('HELD', 'PAYING', 'CONFIRMED')
          AND (status <> 'HELD' OR expires_at > clock_timestamp())
    ) THEN
        RAISE EXCEPTION 'the seat is taken' USING CONSTRAINT = 'seat_taken';
    END IF;
    IF NOT pg_try_advisory_xact_lock(key) THEN
        RAISE EXCEPTION 'the seat is locked by a concurrent hold'
            USING ERRCODE = 'lock_not_available', CONSTRAINT = 'seat_lock';
    END IF;
END
$$;
