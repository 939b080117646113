-- The reservation side of one payment (a hold, its start, its settle after a successful `Use`),
-- statement for statement as reservation-svc ran it before its steps were pipelined: the
-- hold's one pipeline (as today), then begin_pay and settle each in a transaction of diesel's
-- (`BEGIN`, then the seat's lock read in three selects: the reservation's seat, the seat's row
-- lock with the clock, the reservation's row lock; the conditional UPDATE; `COMMIT`), the
-- settle's seat move a statement of its own. One deviation, to name the reservation without a
-- round trip the service does not make: the hold inserts an id of its own (`:rid`,
-- OVERRIDING SYSTEM VALUE) instead of the next of the sequence.
--
-- Variables (pgbench --define): schedule_id, seat_count, users, first_reservation, per_client
-- and n=0. Request i holds seat (i * 7919) % seat_count + 1 as user i % users + 1 and pays it.
\set i :client_id * :per_client + :n
\set n :n + 1
\set seat_no (:i * 7919) % :seat_count + 1
\set user_id :i % :users + 1
\set rid :first_reservation + :i
\startpipeline
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT pg_advisory_xact_lock(:schedule_id, :user_id);
WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS at FROM (SELECT 1 FROM seats WHERE schedule_id = :schedule_id AND seat_no = :seat_no FOR UPDATE) AS locked), held AS (UPDATE seats SET status = 'HELD' FROM clock WHERE seats.status = 'AVAILABLE' AND seats.schedule_id = :schedule_id AND seats.seat_no = :seat_no AND clock.at < (SELECT starts_at FROM schedules WHERE id = :schedule_id) AND (SELECT count(*) FROM reservations AS mine WHERE mine.user_id = :user_id AND mine.schedule_id = :schedule_id AND (mine.status = 'PAYING' OR (mine.status = 'HELD' AND mine.expires_at > clock.at))) < 4 RETURNING seats.schedule_id, seats.seat_no, seats.price, clock.at), inserted AS (INSERT INTO reservations (id, user_id, schedule_id, seat_no, price, status, expires_at) OVERRIDING SYSTEM VALUE SELECT :rid, :user_id, schedule_id, seat_no, price, 'HELD', at + 300000000 * interval '1 microsecond' FROM held RETURNING id, user_id, schedule_id, seat_no, price, status, expires_at, pay_attempt, payment_transaction_id, payment_idempotency_key, created_at, refund_requested_at, payment_key_nonce) SELECT inserted.*, held.at FROM inserted, held;
COMMIT;
\endpipeline
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT reservations.schedule_id, reservations.seat_no, schedules.starts_at FROM reservations INNER JOIN schedules ON schedules.id = reservations.schedule_id WHERE reservations.id = :rid LIMIT 1;
SELECT price, clock_timestamp() FROM (SELECT price FROM seats WHERE schedule_id = :schedule_id AND seat_no = :seat_no FOR UPDATE) AS locked;
SELECT id, user_id, schedule_id, seat_no, price, status, expires_at, pay_attempt, payment_transaction_id, payment_idempotency_key, created_at, refund_requested_at, payment_key_nonce FROM reservations WHERE reservations.id = :rid LIMIT 1 FOR UPDATE;
UPDATE reservations SET status = 'PAYING', pay_attempt = 1, updated_at = clock_timestamp() WHERE reservations.id = :rid AND reservations.status = 'HELD' AND reservations.pay_attempt = 0;
COMMIT;
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT reservations.schedule_id, reservations.seat_no, schedules.starts_at FROM reservations INNER JOIN schedules ON schedules.id = reservations.schedule_id WHERE reservations.id = :rid LIMIT 1;
SELECT price, clock_timestamp() FROM (SELECT price FROM seats WHERE schedule_id = :schedule_id AND seat_no = :seat_no FOR UPDATE) AS locked;
SELECT id, user_id, schedule_id, seat_no, price, status, expires_at, pay_attempt, payment_transaction_id, payment_idempotency_key, created_at, refund_requested_at, payment_key_nonce FROM reservations WHERE reservations.id = :rid LIMIT 1 FOR UPDATE;
UPDATE reservations SET status = 'CONFIRMED', payment_transaction_id = :rid, payment_idempotency_key = 'pay-' || :rid, updated_at = clock_timestamp() WHERE reservations.id = :rid AND reservations.status = 'PAYING' AND reservations.pay_attempt = 1 RETURNING id, user_id, schedule_id, seat_no, price, status, expires_at, pay_attempt, payment_transaction_id, payment_idempotency_key, created_at, refund_requested_at, payment_key_nonce;
UPDATE seats SET status = 'SOLD' WHERE schedule_id = :schedule_id AND seat_no = :seat_no AND status = 'HELD';
COMMIT;
