//! A refund gives back a whole `Use`, at most once.

use futures::future::join_all;
use shared::proto::wallet::v1::TransactionKind;
use tonic::Code;

use crate::helpers::spawn_app;

#[tokio::test]
async fn a_refund_gives_back_the_use_once_under_any_key() {
    let app = spawn_app().await;
    app.charge(1, 100, "charge-1").await.expect("charge");
    app.use_points(1, 30, "use-1").await.expect("use");

    let refund = app.refund(1, "refund-1", "use-1").await.expect("refund");
    assert_eq!(refund.kind(), TransactionKind::Refund);
    assert_eq!((refund.amount, refund.balance_after), (30, 100));
    assert_eq!(refund.reference, "use-1");

    let replay = app.refund(1, "refund-1", "use-1").await.expect("replay");
    let other_key = app.refund(1, "refund-2", "use-1").await.expect("other key");
    assert_eq!(replay, refund);
    assert_eq!(other_key, refund, "the first refund, not a second one");
    assert_eq!(app.balance(1).await, 100);
    let ledger = app.assert_ledger_matches_balance(1).await;
    assert_eq!(ledger.rows, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_refunds_of_one_use_refund_once() {
    for pool_size in [1, 16] {
        let app = crate::helpers::spawn_app_with(|config| config.db.db_pool_size = pool_size).await;
        app.charge(1, 100, "charge-1").await.expect("charge");
        app.use_points(1, 30, "use-1").await.expect("use");

        let refunds = (0..10).map(|i| {
            let app = &app;
            async move { app.refund(1, &format!("refund-{i}"), "use-1").await }
        });
        let answers = join_all(refunds).await;

        let first = answers[0].clone().expect("refunded");
        assert!(
            answers.iter().all(|a| a.as_ref().ok() == Some(&first)),
            "{answers:?}"
        );
        assert_eq!(app.balance(1).await, 100, "pool {pool_size}");
        let ledger = app.assert_ledger_matches_balance(1).await;
        assert_eq!(ledger.rows, 3, "pool {pool_size}");
    }
}

#[tokio::test]
async fn a_refund_of_an_unknown_use_is_not_found_and_writes_nothing() {
    let app = spawn_app().await;
    app.charge(1, 100, "charge-1").await.expect("charge");
    let written = app.rows_written().await;

    for use_key in ["no-such-use", "charge-1"] {
        let missing = app
            .refund(1, "refund-1", use_key)
            .await
            .expect_err("unknown");
        assert_eq!(missing.code(), Code::NotFound, "{use_key}");
    }
    let stranger = app
        .refund(2, "refund-1", "charge-1")
        .await
        .expect_err("no wallet");
    assert_eq!(stranger.code(), Code::NotFound);
    assert_eq!(app.rows_written().await, written);
}

#[tokio::test]
async fn a_refund_names_a_use_of_the_same_user() {
    let app = spawn_app().await;
    app.charge(1, 100, "charge-1").await.expect("charge");
    app.use_points(1, 30, "use-1").await.expect("use");
    app.charge(2, 100, "charge-2").await.expect("charge");

    let other_user = app
        .refund(2, "refund-1", "use-1")
        .await
        .expect_err("not theirs");

    assert_eq!(other_user.code(), Code::NotFound);
    assert_eq!(app.balance(2).await, 100);
}

#[tokio::test]
async fn a_refund_is_never_refused_at_the_balance_cap_it_gives_back_points_already_counted() {
    let app = spawn_app().await;
    let cap = protocol::wallet::MAX_BALANCE;
    let max_amount = protocol::wallet::MAX_AMOUNT;
    // Charges up to the cap, a use, and charges back up to the cap.
    for at in 0..cap / max_amount {
        app.charge(1, max_amount, &format!("fill-{at}"))
            .await
            .expect("charge");
    }
    app.use_points(1, 30, "use-1").await.expect("use");
    app.charge(1, 30, "refill").await.expect("back at the cap");
    let past = app.charge(1, 1, "past-the-cap").await.expect_err("the cap");
    assert_eq!(past.code(), Code::FailedPrecondition);

    let refund = app.refund(1, "refund-1", "use-1").await.expect("refunded");
    assert_eq!(refund.balance_after, cap + 30);
    assert_eq!(app.balance(1).await, cap + 30);
    app.assert_ledger_matches_balance(1).await;
}
