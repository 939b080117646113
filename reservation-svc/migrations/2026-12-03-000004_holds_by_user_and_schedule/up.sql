-- A user's reservations of one schedule that may count against the hold limit
-- (MAX_ACTIVE_HOLDS_PER_USER): every hold counts them, so the count reads a few index entries
-- instead of the user's whole history. Whether a HELD one has lapsed is read from its row.
CREATE INDEX holds_by_user_and_schedule ON reservations (user_id, schedule_id)
    WHERE status IN ('HELD', 'PAYING');
