ALTER TABLE reservations DROP COLUMN payment_key_nonce;
ALTER TABLE reservations DROP COLUMN refund_requested_at;
