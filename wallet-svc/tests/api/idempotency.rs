//! A key's outcome is final: replays answer it again, other requests under it are rejected.

use tonic::Code;

use crate::helpers::{reason, spawn_app};

#[tokio::test]
async fn a_key_reused_with_another_amount_is_rejected_and_writes_nothing() {
    let app = spawn_app().await;
    app.charge(1, 100, "charge-1").await.expect("charge");
    let written = app.rows_written().await;

    let reused = app.charge(1, 101, "charge-1").await.expect_err("reuse");

    assert_eq!(reused.code(), Code::AlreadyExists);
    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.rows_written().await, written);
    assert_eq!(app.balance(1).await, 100);
}

#[tokio::test]
async fn a_key_reused_for_another_kind_of_movement_is_rejected() {
    let app = spawn_app().await;
    app.charge(1, 100, "shared-key").await.expect("charge");

    let reused = app
        .use_points(1, 100, "shared-key")
        .await
        .expect_err("reuse");

    assert_eq!(reason(&reused), "IDEMPOTENCY_KEY_REUSED");
    assert_eq!(app.balance(1).await, 100);
}

#[tokio::test]
async fn a_refused_use_stays_refused_after_a_top_up_and_never_shows_in_the_ledger() {
    let app = spawn_app().await;
    app.charge(1, 10, "charge-1").await.expect("charge");

    let refused = app
        .use_points(1, 50, "use-1")
        .await
        .expect_err("too little");
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "INSUFFICIENT_BALANCE");

    app.charge(1, 100, "charge-2").await.expect("top-up");
    let replayed = app
        .use_points(1, 50, "use-1")
        .await
        .expect_err("same refusal");
    assert_eq!(replayed.code(), Code::FailedPrecondition);
    assert_eq!(reason(&replayed), "INSUFFICIENT_BALANCE");
    assert_eq!(app.balance(1).await, 110);

    let applied = app
        .use_points(1, 50, "use-2")
        .await
        .expect("a new key applies");
    assert_eq!(applied.balance_after, 60);

    let listed = app
        .client()
        .list_transactions(shared::proto::wallet::v1::ListTransactionsRequest {
            user_id: 1,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let keys: Vec<_> = listed
        .transactions
        .iter()
        .map(|t| t.idempotency_key.as_str())
        .collect();
    assert_eq!(keys, ["use-2", "charge-2", "charge-1"]);
    app.assert_ledger_matches_balance(1).await;
}

#[tokio::test]
async fn a_use_by_a_user_without_a_wallet_is_insufficient_balance() {
    let app = spawn_app().await;

    let refused = app
        .use_points(77, 1, "first-ever")
        .await
        .expect_err("no points");

    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert_eq!(reason(&refused), "INSUFFICIENT_BALANCE");
    assert_eq!(app.balance(77).await, 0);
    app.charge(77, 5, "top-up").await.expect("charge");
    let replayed = app
        .use_points(77, 1, "first-ever")
        .await
        .expect_err("final");
    assert_eq!(reason(&replayed), "INSUFFICIENT_BALANCE");
}

#[tokio::test]
async fn a_replayed_use_returns_the_original_transaction() {
    let app = spawn_app().await;
    app.charge(1, 100, "charge-1").await.expect("charge");
    let first = app.use_points(1, 30, "use-1").await.expect("use");
    app.use_points(1, 30, "use-2").await.expect("another use");

    let replayed = app.use_points(1, 30, "use-1").await.expect("replay");

    assert_eq!(replayed, first, "the original, balance_after included");
    assert_eq!(app.balance(1).await, 40);
}

#[tokio::test]
async fn keys_belong_to_their_user() {
    let app = spawn_app().await;
    app.charge(1, 100, "same-key").await.expect("user 1");
    app.charge(2, 200, "same-key")
        .await
        .expect("user 2, same key");

    assert_eq!(app.balance(1).await, 100);
    assert_eq!(app.balance(2).await, 200);
}
