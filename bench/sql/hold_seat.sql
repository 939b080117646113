-- One `HoldSeat` of an available seat, statement for statement as reservation-svc runs it
-- (reservation-svc/src/store/queries.rs: HoldAvailableSeat): one statement, outside an explicit
-- transaction, that moves the seat AVAILABLE -> HELD and inserts the reservation. (Every seat
-- is fresh, so the service never needs its full transaction, which handles taken seats and
-- lapsed holds.)
--
-- Variables (pgbench --define): schedule_id, seat_count, per_client (the transactions of each
-- client) and n=0 (a per-client counter). Request i of the run holds seat
-- (i * 7919) % seat_count + 1, the same spread of distinct seats as the bench's scenario.
\set i :client_id * :per_client + :n
\set n :n + 1
\set seat_no (:i * 7919) % :seat_count + 1
\set user_id :i % 1000 + 1
WITH held AS (UPDATE seats SET status = 'HELD' WHERE status = 'AVAILABLE' AND schedule_id = :schedule_id AND seat_no = :seat_no RETURNING schedule_id, seat_no, price, clock_timestamp() AS at), inserted AS (INSERT INTO reservations (user_id, schedule_id, seat_no, price, status, expires_at) SELECT :user_id, schedule_id, seat_no, price, 'HELD', at + 300000000 * interval '1 microsecond' FROM held RETURNING id, user_id, schedule_id, seat_no, price, status, expires_at, pay_attempt, payment_transaction_id, payment_idempotency_key, created_at, refund_requested_at, payment_key_nonce) SELECT inserted.*, held.at FROM inserted, held;
