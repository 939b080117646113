DROP TABLE payment_key_namespace;
ALTER TABLE reservations DROP COLUMN refund_requested_at;
