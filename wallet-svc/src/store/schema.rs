// @generated automatically by Diesel CLI.

diesel::table! {
    wallet_refusals (user_id, idempotency_key) {
        user_id -> Int8,
        idempotency_key -> Text,
        request_hash -> Bytea,
        reason -> Text,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    wallet_transactions (id) {
        id -> Int8,
        user_id -> Int8,
        kind -> Text,
        amount -> Int8,
        delta -> Int8,
        balance_after -> Int8,
        idempotency_key -> Text,
        request_hash -> Bytea,
        reference -> Text,
        refund_of -> Nullable<Int8>,
        created_at -> Timestamptz,
    }
}

diesel::table! {
    wallets (user_id) {
        user_id -> Int8,
        balance -> Int8,
        created_at -> Timestamptz,
        updated_at -> Timestamptz,
    }
}

diesel::joinable!(wallet_refusals -> wallets (user_id));
diesel::joinable!(wallet_transactions -> wallets (user_id));

diesel::allow_tables_to_appear_in_same_query!(wallet_refusals, wallet_transactions, wallets,);
