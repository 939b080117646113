-- The seat lock of a hold while Redis is out of reach (SEAT_LOCK_FALLBACK=postgres): the
-- transaction-scoped advisory lock `key` (the seat's, in the one-key space), taken without
-- waiting. A lock held by another transaction raises lock_not_available with the constraint
-- name `seat_lock`, so a hold sent as one pipeline stops there and writes nothing.
CREATE FUNCTION seat_lock(key bigint) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pg_try_advisory_xact_lock(key) THEN
        RAISE EXCEPTION 'the seat is locked by a concurrent hold'
            USING ERRCODE = 'lock_not_available', CONSTRAINT = 'seat_lock';
    END IF;
END
$$;
