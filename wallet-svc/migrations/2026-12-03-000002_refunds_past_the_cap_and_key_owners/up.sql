-- A refund gives back points the balance already counted, so it may take the balance past
-- the cap that guards charges (1,000,000,000,000 points, enforced by the service).
ALTER TABLE wallets DROP CONSTRAINT balance_within_limits;
ALTER TABLE wallets ADD CONSTRAINT balance_not_negative CHECK (balance >= 0);

-- Keys are now each caller's own: stored as '<owner> <key>' (a key holds no space). The rows
-- already here keep their bare keys, which payment services still find.
COMMENT ON COLUMN wallet_transactions.idempotency_key IS
    'the caller''s key, stored as ''<owner> <key>''; bare for keys written before owners and for INSECURE calls';
