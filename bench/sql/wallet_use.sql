-- One `Use` of 1 point, statement for statement as wallet-svc runs it
-- (wallet-svc/src/store/mod.rs: apply_movement, lock_wallet, find_key): one transaction that
-- locks the wallet row, looks the key up in the ledger and among the refusals, updates the
-- balance and inserts the ledger row.
--
-- Variables (pgbench --define): first_user, users (1 for one hot row), per_client (the
-- transactions of each client) and n=0 (a per-client counter), so that request i of the run
-- has its own key and user first_user + i % users, as in the bench's gRPC scenarios.
\set i :client_id * :per_client + :n
\set n :n + 1
\set user_id :first_user + :i % :users
BEGIN;
SELECT balance FROM wallets WHERE user_id = :user_id LIMIT 1 FOR UPDATE \gset
SELECT id, user_id, kind, amount, balance_after, idempotency_key, request_hash, reference, created_at FROM wallet_transactions WHERE user_id = :user_id AND idempotency_key = 'raw-' || :i::text LIMIT 1;
SELECT request_hash, reason FROM wallet_refusals WHERE user_id = :user_id AND idempotency_key = 'raw-' || :i::text LIMIT 1;
\set balance_after :balance - 1
UPDATE wallets SET balance = :balance_after, updated_at = now() WHERE user_id = :user_id;
INSERT INTO wallet_transactions (user_id, kind, amount, balance_after, idempotency_key, request_hash, reference, refund_of) VALUES (:user_id, 'USE', 1, :balance_after, 'raw-' || :i::text, sha256(('raw-' || :i::text)::bytea), '', NULL) RETURNING id, user_id, kind, amount, balance_after, idempotency_key, request_hash, reference, created_at;
END;
