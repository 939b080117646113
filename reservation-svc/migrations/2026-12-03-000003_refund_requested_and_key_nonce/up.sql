-- When a payment's debit, arriving after the performance began, was decided to be given back:
-- recorded under the seat's lock before the refund is asked for, so that no later decision on
-- that attempt can confirm it, whatever its clock reads.
ALTER TABLE reservations ADD COLUMN refund_requested_at TIMESTAMPTZ;

-- A random part of each reservation's wallet keys (`<nonce>:reservation-<id>-<attempt>`).
-- Reservation ids start again at 1 in a recreated database, rewind with a restored backup, and
-- repeat in another deployment sharing the wallet; the nonce keeps a reservation's keys from
-- ever meeting the wallet's record of another reservation's debit. Rows that exist now keep
-- no nonce, and so the keys they always had: their payments under way stay the same payments.
ALTER TABLE reservations ADD COLUMN payment_key_nonce TEXT
    CHECK (payment_key_nonce ~ '^[0-9a-f]{32}$');
ALTER TABLE reservations ALTER COLUMN payment_key_nonce
    SET DEFAULT replace(gen_random_uuid()::text, '-', '');
