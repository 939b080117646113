CREATE TABLE concerts (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title      TEXT NOT NULL CHECK (char_length(title) BETWEEN 1 AND 200),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One performance date of a concert, with its seats 1..=seat_count.
CREATE TABLE schedules (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    concert_id BIGINT NOT NULL REFERENCES concerts (id),
    starts_at  TIMESTAMPTZ NOT NULL,
    seat_count INTEGER NOT NULL CHECK (seat_count BETWEEN 1 AND 100000),
    seat_price BIGINT NOT NULL CHECK (seat_price BETWEEN 0 AND 1000000000),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX schedules_by_concert ON schedules (concert_id, starts_at);

-- A seat row is what a hold transitions (AVAILABLE -> HELD, conditionally) and what a payment
-- sells; its row lock serializes every change of one seat.
CREATE TABLE seats (
    schedule_id BIGINT NOT NULL REFERENCES schedules (id),
    seat_no     INTEGER NOT NULL CHECK (seat_no > 0),
    price       BIGINT NOT NULL CHECK (price >= 0),
    status      TEXT NOT NULL DEFAULT 'AVAILABLE' CHECK (status IN ('AVAILABLE', 'HELD', 'SOLD')),
    PRIMARY KEY (schedule_id, seat_no)
);

CREATE TABLE reservations (
    id                      BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id                 BIGINT NOT NULL CHECK (user_id > 0),
    schedule_id             BIGINT NOT NULL,
    seat_no                 INTEGER NOT NULL,
    price                   BIGINT NOT NULL CHECK (price >= 0),
    status                  TEXT NOT NULL
                            CHECK (status IN ('HELD', 'PAYING', 'CONFIRMED', 'CANCELLED', 'EXPIRED')),
    -- When a HELD reservation stops holding its seat.
    expires_at              TIMESTAMPTZ NOT NULL,
    -- Incremented by each HELD -> PAYING; the wallet key of attempt n is "reservation-{id}-{n}".
    pay_attempt             INTEGER NOT NULL DEFAULT 0 CHECK (pay_attempt >= 0),
    payment_transaction_id  BIGINT,
    payment_idempotency_key TEXT,
    created_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at              TIMESTAMPTZ NOT NULL DEFAULT now(),
    FOREIGN KEY (schedule_id, seat_no) REFERENCES seats (schedule_id, seat_no),
    CONSTRAINT confirmed_means_paid
        CHECK (status <> 'CONFIRMED' OR payment_transaction_id IS NOT NULL)
);

-- The final guard against double booking: at most one active reservation per seat, whatever
-- the Redis lock did.
CREATE UNIQUE INDEX one_active_reservation_per_seat ON reservations (schedule_id, seat_no)
    WHERE status IN ('HELD', 'PAYING', 'CONFIRMED');
CREATE INDEX reservations_by_user ON reservations (user_id, id DESC);
-- The expiry sweeper's queue.
CREATE INDEX held_reservations_by_expiry ON reservations (expires_at) WHERE status = 'HELD';
