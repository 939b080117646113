-- One `HoldSeat` transaction, statement for statement as reservation-svc runs it
-- (reservation-svc/src/store/mod.rs: hold_seat, set_seat_status): read the schedule's size,
-- lock the seat row, look for an active reservation of the seat, move the seat
-- AVAILABLE -> HELD, insert the reservation. (No lapsed hold to expire: every seat is fresh.)
--
-- Variables (pgbench --define): schedule_id, seat_count, per_client (the transactions of each
-- client) and n=0 (a per-client counter). Request i of the run holds seat
-- (i * 7919) % seat_count + 1, the same spread of distinct seats as the bench's scenario.
\set i :client_id * :per_client + :n
\set n :n + 1
\set seat_no (:i * 7919) % :seat_count + 1
\set user_id :i % 1000 + 1
BEGIN;
SELECT seat_count FROM schedules WHERE id = :schedule_id LIMIT 1;
SELECT price, now() AS locked_at FROM seats WHERE schedule_id = :schedule_id AND seat_no = :seat_no LIMIT 1 FOR UPDATE \gset
SELECT id, user_id, schedule_id, seat_no, price, status, expires_at, pay_attempt, payment_transaction_id, payment_idempotency_key, created_at FROM reservations WHERE schedule_id = :schedule_id AND seat_no = :seat_no AND status = ANY ('{HELD,PAYING,CONFIRMED}'::text[]) LIMIT 1;
UPDATE seats SET status = 'HELD' WHERE schedule_id = :schedule_id AND seat_no = :seat_no AND status = 'AVAILABLE';
INSERT INTO reservations (user_id, schedule_id, seat_no, price, status, expires_at) VALUES (:user_id, :schedule_id, :seat_no, :price, 'HELD', :locked_at::timestamptz + interval '5 minutes') RETURNING id, user_id, schedule_id, seat_no, price, status, expires_at, pay_attempt, payment_transaction_id, payment_idempotency_key, created_at;
END;
