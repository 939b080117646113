//! Many calls for one user at once: the row lock serializes them, and the outcome is exact
//! whatever the pool size.

use futures::future::join_all;
use tonic::Code;

use crate::helpers::{TestApp, reason, spawn_app_with};

const POOL_SIZES: [usize; 2] = [1, 16];

async fn app_with_pool(pool_size: usize) -> TestApp {
    spawn_app_with(|config| config.db.db_pool_size = pool_size).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_concurrent_uses_of_30_from_100_leave_10() {
    for pool_size in POOL_SIZES {
        let app = app_with_pool(pool_size).await;
        app.charge(1, 100, "top-up").await.expect("charge");

        let uses = (0..3).map(|i| {
            let app = &app;
            async move { app.use_points(1, 30, &format!("use-{i}")).await }
        });
        let results = join_all(uses).await;

        assert!(
            results.iter().all(Result::is_ok),
            "pool {pool_size}: {results:?}"
        );
        assert_eq!(app.balance(1).await, 10, "pool {pool_size}");
        let ledger = app.assert_ledger_matches_balance(1).await;
        assert_eq!(
            ledger.rows, 4,
            "pool {pool_size}: one charge and three uses"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hundred_concurrent_uses_of_7_from_500_let_exactly_71_through() {
    for pool_size in POOL_SIZES {
        let app = app_with_pool(pool_size).await;
        app.charge(1, 500, "top-up").await.expect("charge");

        let uses = (0..100).map(|i| {
            let app = &app;
            async move { app.use_points(1, 7, &format!("use-{i}")).await }
        });
        let results = join_all(uses).await;

        let succeeded = results.iter().filter(|r| r.is_ok()).count();
        let refused = results
            .iter()
            .filter_map(|r| r.as_ref().err())
            .filter(|status| {
                status.code() == Code::FailedPrecondition
                    && reason(status) == "INSUFFICIENT_BALANCE"
            })
            .count();
        assert_eq!((succeeded, refused), (71, 29), "pool {pool_size}");
        assert_eq!(app.balance(1).await, 3, "pool {pool_size}");
        let ledger = app.assert_ledger_matches_balance(1).await;
        assert_eq!(ledger.rows, 72, "pool {pool_size}: one charge and 71 uses");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_charges_with_different_keys_all_apply() {
    for pool_size in POOL_SIZES {
        let app = app_with_pool(pool_size).await;

        let charges = (0..20).map(|i| {
            let app = &app;
            async move { app.charge(1, 5, &format!("charge-{i}")).await }
        });
        let results = join_all(charges).await;

        assert!(
            results.iter().all(Result::is_ok),
            "pool {pool_size}: {results:?}"
        );
        assert_eq!(app.balance(1).await, 100, "pool {pool_size}");
        let ledger = app.assert_ledger_matches_balance(1).await;
        assert_eq!(ledger.rows, 20, "pool {pool_size}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_replays_of_one_charge_write_one_row_and_answer_alike() {
    for pool_size in POOL_SIZES {
        let app = app_with_pool(pool_size).await;

        let replays = (0..50).map(|_| app.charge(1, 40, "the-one-charge"));
        let answers = join_all(replays).await;

        let first = answers[0].clone().expect("charge applied");
        for answer in &answers {
            assert_eq!(
                answer.as_ref().expect("same answer"),
                &first,
                "pool {pool_size}"
            );
        }
        assert_eq!(app.balance(1).await, 40, "pool {pool_size}");
        let ledger = app.assert_ledger_matches_balance(1).await;
        assert_eq!(ledger.rows, 1, "pool {pool_size}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_charges_of_a_new_user_create_one_wallet() {
    let app = app_with_pool(16).await;

    let charges = (0..30).map(|i| {
        let app = &app;
        async move { app.charge(9, 1, &format!("first-{i}")).await }
    });
    let results = join_all(charges).await;

    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(app.balance(9).await, 30);
    app.assert_ledger_matches_balance(9).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn charges_stop_exactly_at_the_balance_cap() {
    let app = app_with_pool(16).await;
    let max_amount = 1_000_000_000;

    // 1000 charges of the largest amount, from 10 clients, reach the cap exactly.
    let clients = (0..10).map(|client| {
        let app = &app;
        async move {
            for i in 0..100 {
                let key = format!("big-{client}-{i}");
                app.charge(1, max_amount, &key)
                    .await
                    .expect("charge under the cap");
            }
        }
    });
    join_all(clients).await;
    assert_eq!(app.balance(1).await, 1_000_000_000_000);

    let over = app
        .charge(1, 1, "one-too-many")
        .await
        .expect_err("past the cap");
    assert_eq!(over.code(), Code::FailedPrecondition);
    assert_eq!(reason(&over), "BALANCE_LIMIT");

    // The refusal is final for its key, even once there is room again.
    app.use_points(1, 10, "make-room").await.expect("use");
    let replay = app
        .charge(1, 1, "one-too-many")
        .await
        .expect_err("same refusal");
    assert_eq!(reason(&replay), "BALANCE_LIMIT");
    app.charge(1, 1, "fits-now")
        .await
        .expect("a new key applies");
    assert_eq!(app.balance(1).await, 1_000_000_000_000 - 9);
    app.assert_ledger_matches_balance(1).await;
}
