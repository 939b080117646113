-- One `HoldSeat` of an available seat, statement for statement as reservation-svc runs it
-- (reservation-svc/src/store/hold.rs: Store::hold_seat; the statements in
-- reservation-svc/src/store/queries.rs): one transaction of four statements sent in one
-- pipeline, that takes the lock of the user's holds on the schedule, then, in one statement,
-- locks the seat's row, reads the clock, and moves the seat AVAILABLE -> HELD and inserts the
-- reservation if the performance has not begun and the user has fewer than 4
-- (MAX_ACTIVE_HOLDS_PER_USER's default) holds of the schedule. (Every seat is fresh and every user below the limit, so the service never needs
-- its full transaction, which handles taken seats, lapsed holds and refusals.)
--
-- Variables (pgbench --define): schedule_id, seat_count, users, per_client (the transactions of
-- each client) and n=0 (a per-client counter). Request i of the run holds seat
-- (i * 7919) % seat_count + 1 as user i % users + 1, the same spread of distinct seats and
-- users as the bench's scenario. The service folds each id of the advisory lock's key to 32
-- bits (the low half xor the high one), which leaves ids below 2^31 as they are.
\set i :client_id * :per_client + :n
\set n :n + 1
\set seat_no (:i * 7919) % :seat_count + 1
\set user_id :i % :users + 1
\startpipeline
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT pg_advisory_xact_lock(:schedule_id, :user_id);
WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS at FROM (SELECT 1 FROM seats WHERE schedule_id = :schedule_id AND seat_no = :seat_no FOR UPDATE) AS locked), held AS (UPDATE seats SET status = 'HELD' FROM clock WHERE seats.status = 'AVAILABLE' AND seats.schedule_id = :schedule_id AND seats.seat_no = :seat_no AND clock.at < (SELECT starts_at FROM schedules WHERE id = :schedule_id) AND (SELECT count(*) FROM reservations AS mine WHERE mine.user_id = :user_id AND mine.schedule_id = :schedule_id AND (mine.status = 'PAYING' OR (mine.status = 'HELD' AND mine.expires_at > clock.at))) < 4 RETURNING seats.schedule_id, seats.seat_no, seats.price, clock.at), inserted AS (INSERT INTO reservations (user_id, schedule_id, seat_no, price, status, expires_at) SELECT :user_id, schedule_id, seat_no, price, 'HELD', at + 300000000 * interval '1 microsecond' FROM held RETURNING id, user_id, schedule_id, seat_no, price, status, expires_at, pay_attempt, payment_transaction_id, payment_idempotency_key, created_at, refund_requested_at, payment_key_nonce) SELECT inserted.*, held.at FROM inserted, held;
COMMIT;
\endpipeline
