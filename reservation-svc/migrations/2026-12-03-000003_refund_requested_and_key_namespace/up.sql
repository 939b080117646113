-- When a payment's debit, arriving after the performance began, was decided to be given back:
-- recorded under the seat's lock before the refund is asked for, so that no later decision on
-- that attempt can confirm it, whatever its clock reads.
ALTER TABLE reservations ADD COLUMN refund_requested_at TIMESTAMPTZ;

-- The namespace of this database's wallet keys (`<namespace>:reservation-<id>-<attempt>`).
-- Reservation ids start again at 1 in a recreated database, or in another deployment sharing
-- the wallet; a namespace of its own keeps their keys from ever meeting an earlier debit. One
-- row, written by the first service to start. A database that already took payments keeps the
-- keys it always had (the empty namespace), so payments in flight stay the same payments.
CREATE TABLE payment_key_namespace (
    only_row  BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    namespace TEXT NOT NULL CHECK (namespace ~ '^[0-9a-z]{0,32}$'),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
INSERT INTO payment_key_namespace (namespace)
SELECT '' WHERE EXISTS (SELECT 1 FROM reservations WHERE pay_attempt > 0);
