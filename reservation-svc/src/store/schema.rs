// @generated automatically by Diesel CLI.

diesel::table! {
    concerts (id) {
        id -> Int8,
        title -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    reservations (id) {
        id -> Int8,
        user_id -> Int8,
        schedule_id -> Int8,
        seat_no -> Int4,
        price -> Int8,
        status -> Text,
        expires_at -> Timestamptz,
        pay_attempt -> Int4,
        payment_transaction_id -> Nullable<Int8>,
        payment_idempotency_key -> Nullable<Text>,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
        cancel_requested_at -> Nullable<Timestamptz>,
        refund_requested_at -> Nullable<Timestamptz>,
        payment_key_nonce -> Nullable<Text>,
    }
}

diesel::table! {
    schedules (id) {
        id -> Int8,
        concert_id -> Int8,
        starts_at -> Timestamptz,
        seat_count -> Int4,
        seat_price -> Int8,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    seats (schedule_id, seat_no) {
        schedule_id -> Int8,
        seat_no -> Int4,
        price -> Int8,
        status -> Text,
    }
}

diesel::joinable!(schedules -> concerts (concert_id));
diesel::joinable!(seats -> schedules (schedule_id));

diesel::allow_tables_to_appear_in_same_query!(concerts, reservations, schedules, seats,);
