DROP INDEX unfinished_cancellations;
ALTER TABLE reservations DROP COLUMN cancel_requested_at;
