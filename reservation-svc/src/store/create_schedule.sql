-- A schedule of a concert and its seats 1..=seat_count, in one statement; no row when the
-- concert does not exist. $1 concert, $2 starts_at, $3 seat_count, $4 seat_price.
WITH concert AS (SELECT id FROM concerts WHERE id = $1),
schedule AS (
    INSERT INTO schedules (concert_id, starts_at, seat_count, seat_price)
    SELECT id, $2, $3, $4 FROM concert RETURNING *
),
created_seats AS (
    INSERT INTO seats (schedule_id, seat_no, price)
    SELECT schedule.id, seat_no, schedule.seat_price
    FROM schedule, generate_series(1, schedule.seat_count) AS seat_no
)
SELECT id, concert_id, starts_at, seat_count, seat_price, seat_count AS available_seats
FROM schedule
