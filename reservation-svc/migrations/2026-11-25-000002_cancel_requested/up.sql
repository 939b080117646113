-- When the cancellation of a paid reservation began: set before its refund is asked for, so a
-- cancellation interrupted between the refund and the release is finished by the reconciler
-- instead of leaving a refunded reservation confirmed.
ALTER TABLE reservations ADD COLUMN cancel_requested_at TIMESTAMPTZ;
CREATE INDEX unfinished_cancellations ON reservations (cancel_requested_at)
    WHERE status = 'CONFIRMED' AND cancel_requested_at IS NOT NULL;
