-- The wallet side of one payment in one statement: the balance taken down where it covers the
-- amount and the key is new, and the ledger row inserted from what that returned, one
-- transaction. The best the SQL of this design can do: a sketch, not what the service runs.
--
-- Variables as payment_wallet.sql's.
\set i :client_id * :per_client + :n
\set n :n + 1
\set user_id :first_user + :i % :users
\set k :first_key + :i
WITH used AS (UPDATE wallets SET balance = balance - 1, updated_at = now() WHERE user_id = :user_id AND balance >= 1 AND NOT EXISTS (SELECT 1 FROM wallet_transactions WHERE user_id = :user_id AND idempotency_key = 'one-' || :k::text) RETURNING balance) INSERT INTO wallet_transactions (user_id, kind, amount, balance_after, idempotency_key, request_hash, reference, refund_of) SELECT :user_id, 'USE', 1, balance, 'one-' || :k::text, sha256(('one-' || :k::text)::bytea), '', NULL FROM used RETURNING id, balance_after;
