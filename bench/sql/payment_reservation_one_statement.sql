-- The reservation side of one payment in one statement per decision, each its own
-- transaction (the same three commits as the service's): the hold's pipeline, then its start
-- and its settle each a single conditional statement that locks the seat's row, reads the
-- clock after the lock, and decides in SQL what the protocol decides (the owner, the hold's
-- time, the performance's start; the attempt still paying), the settle's seat move in the
-- same statement. The best the SQL of this design can do: a sketch, not what the service runs.
--
-- Variables as payment_reservation.sql's.
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
WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS at FROM (SELECT 1 FROM seats WHERE schedule_id = :schedule_id AND seat_no = :seat_no FOR UPDATE) AS locked) UPDATE reservations SET status = 'PAYING', pay_attempt = pay_attempt + 1, updated_at = clock.at FROM clock WHERE reservations.id = :rid AND reservations.user_id = :user_id AND reservations.status = 'HELD' AND reservations.expires_at > clock.at AND clock.at < (SELECT starts_at FROM schedules WHERE id = :schedule_id) RETURNING reservations.pay_attempt;
WITH clock AS MATERIALIZED (SELECT clock_timestamp() AS at FROM (SELECT 1 FROM seats WHERE schedule_id = :schedule_id AND seat_no = :seat_no FOR UPDATE) AS locked), confirmed AS (UPDATE reservations SET status = 'CONFIRMED', payment_transaction_id = :rid, payment_idempotency_key = 'pay-' || :rid, updated_at = clock.at FROM clock WHERE reservations.id = :rid AND reservations.status = 'PAYING' AND reservations.pay_attempt = 1 AND reservations.refund_requested_at IS NULL AND clock.at < (SELECT starts_at FROM schedules WHERE id = :schedule_id) RETURNING reservations.schedule_id, reservations.seat_no), sold AS (UPDATE seats SET status = 'SOLD' FROM confirmed WHERE seats.schedule_id = confirmed.schedule_id AND seats.seat_no = confirmed.seat_no AND seats.status = 'HELD' RETURNING 1) SELECT count(*) FROM sold;
