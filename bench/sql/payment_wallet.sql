-- The wallet side of one payment: one `Use` of 1 point, statement for statement as wallet-svc
-- runs it (wallet_use.sql's statements), under a key of its own for each payment.
--
-- Variables (pgbench --define): first_user, users, first_key (request i's key is
-- 'pay-<first_key + i>'), per_client and n=0.
\set i :client_id * :per_client + :n
\set n :n + 1
\set user_id :first_user + :i % :users
\set k :first_key + :i
BEGIN;
SELECT balance FROM wallets WHERE user_id = :user_id LIMIT 1 FOR UPDATE \gset
SELECT id, user_id, kind, amount, balance_after, idempotency_key, request_hash, reference, created_at FROM wallet_transactions WHERE user_id = :user_id AND idempotency_key = 'pay-' || :k::text LIMIT 1;
SELECT request_hash, reason FROM wallet_refusals WHERE user_id = :user_id AND idempotency_key = 'pay-' || :k::text LIMIT 1;
\set balance_after :balance - 1
UPDATE wallets SET balance = :balance_after, updated_at = now() WHERE user_id = :user_id;
INSERT INTO wallet_transactions (user_id, kind, amount, balance_after, idempotency_key, request_hash, reference, refund_of) VALUES (:user_id, 'USE', 1, :balance_after, 'pay-' || :k::text, sha256(('pay-' || :k::text)::bytea), '', NULL) RETURNING id, user_id, kind, amount, balance_after, idempotency_key, request_hash, reference, created_at;
END;
