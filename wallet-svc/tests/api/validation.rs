//! Every bad input of the contract's limits table: INVALID_ARGUMENT naming the field, and
//! nothing written.

use shared::error::violated_fields;
use shared::proto::wallet::v1 as pb;
use tonic::Code;

use crate::helpers::spawn_app;

fn charge(user_id: i64, amount: i64, key: &str) -> pb::ChargeRequest {
    pb::ChargeRequest {
        user_id,
        amount,
        idempotency_key: key.to_owned(),
    }
}

fn use_points(user_id: i64, amount: i64, key: &str, reference: &str) -> pb::UseRequest {
    pb::UseRequest {
        user_id,
        amount,
        idempotency_key: key.to_owned(),
        reference: reference.to_owned(),
    }
}

fn refund(user_id: i64, key: &str, use_key: &str) -> pb::RefundRequest {
    pb::RefundRequest {
        user_id,
        idempotency_key: key.to_owned(),
        use_idempotency_key: use_key.to_owned(),
    }
}

fn list(user_id: i64, page_size: i32, page_token: &str) -> pb::ListTransactionsRequest {
    pb::ListTransactionsRequest {
        user_id,
        page_size,
        page_token: page_token.to_owned(),
    }
}

enum Call {
    Balance(pb::GetBalanceRequest),
    Charge(pb::ChargeRequest),
    Use(pb::UseRequest),
    Refund(pb::RefundRequest),
    List(pb::ListTransactionsRequest),
}

#[tokio::test]
async fn every_bad_input_is_invalid_argument_naming_its_fields_and_writes_nothing() {
    let app = spawn_app().await;
    let long_key = "k".repeat(129);
    let long_reference = "r".repeat(257);
    let cases: Vec<(&str, Call, &[&str])> = vec![
        (
            "balance of user 0",
            Call::Balance(pb::GetBalanceRequest { user_id: 0 }),
            &["user_id"],
        ),
        (
            "balance of a negative user",
            Call::Balance(pb::GetBalanceRequest { user_id: -3 }),
            &["user_id"],
        ),
        (
            "charge of user 0",
            Call::Charge(charge(0, 10, "k")),
            &["user_id"],
        ),
        (
            "charge of 0 points",
            Call::Charge(charge(1, 0, "k")),
            &["amount"],
        ),
        (
            "charge of negative points",
            Call::Charge(charge(1, -10, "k")),
            &["amount"],
        ),
        (
            "charge over the per-operation limit",
            Call::Charge(charge(1, 1_000_000_001, "k")),
            &["amount"],
        ),
        (
            "charge with an empty key",
            Call::Charge(charge(1, 10, "")),
            &["idempotency_key"],
        ),
        (
            "charge with a 129-character key",
            Call::Charge(charge(1, 10, &long_key)),
            &["idempotency_key"],
        ),
        (
            "charge with a space in the key",
            Call::Charge(charge(1, 10, "a key")),
            &["idempotency_key"],
        ),
        (
            "charge with a non-ASCII key",
            Call::Charge(charge(1, 10, "키")),
            &["idempotency_key"],
        ),
        (
            "charge with a slash in the key",
            Call::Charge(charge(1, 10, "a/b")),
            &["idempotency_key"],
        ),
        (
            "charge with everything wrong",
            Call::Charge(charge(-1, 0, "")),
            &["user_id", "amount", "idempotency_key"],
        ),
        (
            "use of user 0",
            Call::Use(use_points(0, 10, "k", "")),
            &["user_id"],
        ),
        (
            "use of 0 points",
            Call::Use(use_points(1, 0, "k", "")),
            &["amount"],
        ),
        (
            "use over the per-operation limit",
            Call::Use(use_points(1, i64::MAX, "k", "")),
            &["amount"],
        ),
        (
            "use with an empty key",
            Call::Use(use_points(1, 10, "", "")),
            &["idempotency_key"],
        ),
        (
            "use with a NUL in the reference",
            Call::Use(use_points(1, 10, "k", "a\0b")),
            &["reference"],
        ),
        (
            "use with a 257-character reference",
            Call::Use(use_points(1, 10, "k", &long_reference)),
            &["reference"],
        ),
        (
            "refund of user 0",
            Call::Refund(refund(0, "k", "u")),
            &["user_id"],
        ),
        (
            "refund with an empty key",
            Call::Refund(refund(1, "", "u")),
            &["idempotency_key"],
        ),
        (
            "refund naming an empty use key",
            Call::Refund(refund(1, "k", "")),
            &["use_idempotency_key"],
        ),
        (
            "refund naming a malformed use key",
            Call::Refund(refund(1, "k", &long_key)),
            &["use_idempotency_key"],
        ),
        ("list of user 0", Call::List(list(0, 10, "")), &["user_id"]),
        (
            "list with a negative page size",
            Call::List(list(1, -1, "")),
            &["page_size"],
        ),
        (
            "list with a page size over 1000",
            Call::List(list(1, 1001, "")),
            &["page_size"],
        ),
        (
            "list with a garbage token",
            Call::List(list(1, 10, "not a token")),
            &["page_token"],
        ),
        (
            "list with a token of random bytes",
            Call::List(list(1, 10, "AAECAwQFBgcICQ")),
            &["page_token"],
        ),
    ];

    for (case, call, fields) in cases {
        let mut client = app.client();
        let status = match call {
            Call::Balance(request) => client.get_balance(request).await.map(|_| ()),
            Call::Charge(request) => client.charge(request).await.map(|_| ()),
            Call::Use(request) => client.r#use(request).await.map(|_| ()),
            Call::Refund(request) => client.refund(request).await.map(|_| ()),
            Call::List(request) => client.list_transactions(request).await.map(|_| ()),
        }
        .expect_err(case);
        assert_eq!(status.code(), Code::InvalidArgument, "{case}: {status:?}");
        assert_eq!(violated_fields(&status), fields, "{case}");
    }
    assert_eq!(app.rows_written().await, 0, "bad requests wrote nothing");
}

#[tokio::test]
async fn the_limits_themselves_are_accepted() {
    let app = spawn_app().await;
    let longest_key = "k".repeat(128);
    let longest_reference = "é".repeat(256);

    app.charge(1, 1_000_000_000, &longest_key)
        .await
        .expect("largest amount, longest key");
    app.client()
        .r#use(use_points(
            1,
            1,
            "all.allowed-chars_here:1",
            &longest_reference,
        ))
        .await
        .expect("longest reference");
    app.client()
        .list_transactions(list(1, 1000, ""))
        .await
        .expect("largest page");
}
