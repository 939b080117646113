COMMENT ON COLUMN wallet_transactions.idempotency_key IS NULL;
ALTER TABLE wallets DROP CONSTRAINT balance_not_negative;
ALTER TABLE wallets ADD CONSTRAINT balance_within_limits
    CHECK (balance >= 0 AND balance <= 1000000000000) NOT VALID;
