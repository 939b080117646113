-- One row per user. Every balance change locks this row (SELECT ... FOR UPDATE) for the length
-- of its transaction, which serializes the changes of one user across all replicas.
CREATE TABLE wallets (
    user_id    BIGINT PRIMARY KEY CHECK (user_id > 0),
    balance    BIGINT NOT NULL DEFAULT 0
               CONSTRAINT balance_within_limits CHECK (balance >= 0 AND balance <= 1000000000000),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The ledger: one row per applied movement. For every user,
-- wallets.balance = sum(wallet_transactions.delta).
CREATE TABLE wallet_transactions (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id         BIGINT NOT NULL REFERENCES wallets (user_id),
    kind            TEXT NOT NULL CHECK (kind IN ('CHARGE', 'USE', 'REFUND')),
    amount          BIGINT NOT NULL CHECK (amount > 0),
    delta           BIGINT NOT NULL GENERATED ALWAYS AS
                        (CASE WHEN kind = 'USE' THEN -amount ELSE amount END) STORED,
    balance_after   BIGINT NOT NULL CHECK (balance_after >= 0),
    idempotency_key TEXT NOT NULL,
    -- SHA-256 of the request, to tell a replay from a reuse of the key.
    request_hash    BYTEA NOT NULL,
    reference       TEXT NOT NULL DEFAULT '',
    -- For a refund, the Use it gives back.
    refund_of       BIGINT REFERENCES wallet_transactions (id),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    CONSTRAINT one_movement_per_key UNIQUE (user_id, idempotency_key),
    CONSTRAINT refunds_name_their_use CHECK ((kind = 'REFUND') = (refund_of IS NOT NULL))
);

-- At most one refund per Use, whatever key it came with.
CREATE UNIQUE INDEX one_refund_per_use ON wallet_transactions (refund_of) WHERE refund_of IS NOT NULL;
-- ListTransactions: a user's rows, newest first.
CREATE INDEX wallet_transactions_by_user ON wallet_transactions (user_id, id DESC);

-- Movements refused by a business rule, kept under their key so that a replay is refused the
-- same way even after the balance changed. Never part of the ledger.
CREATE TABLE wallet_refusals (
    user_id         BIGINT NOT NULL REFERENCES wallets (user_id),
    idempotency_key TEXT NOT NULL,
    request_hash    BYTEA NOT NULL,
    reason          TEXT NOT NULL CHECK (reason IN ('INSUFFICIENT_BALANCE', 'BALANCE_LIMIT')),
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, idempotency_key)
);
