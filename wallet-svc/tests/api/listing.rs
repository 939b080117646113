//! ListTransactions: newest first, in pages linked by opaque tokens.

use shared::proto::wallet::v1 as pb;
use tonic::Code;

use crate::helpers::spawn_app;

#[tokio::test]
async fn pages_walk_the_ledger_newest_first_without_gaps_or_repeats() {
    let app = spawn_app().await;
    for i in 0..7 {
        app.charge(1, 10 + i, &format!("charge-{i}"))
            .await
            .expect("charge");
    }
    app.charge(2, 1, "other-user").await.expect("charge");

    let mut keys = Vec::new();
    let mut page_token = String::new();
    let mut pages = 0;
    loop {
        let page = app
            .client()
            .list_transactions(pb::ListTransactionsRequest {
                user_id: 1,
                page_size: 3,
                page_token,
            })
            .await
            .expect("page")
            .into_inner();
        pages += 1;
        keys.extend(page.transactions.into_iter().map(|t| t.idempotency_key));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }

    let expected: Vec<String> = (0..7).rev().map(|i| format!("charge-{i}")).collect();
    assert_eq!(keys, expected);
    assert_eq!(pages, 3);
}

#[tokio::test]
async fn a_token_of_another_users_listing_is_rejected() {
    let app = spawn_app().await;
    for i in 0..3 {
        app.charge(1, 10, &format!("charge-{i}"))
            .await
            .expect("charge");
    }
    let page = app
        .client()
        .list_transactions(pb::ListTransactionsRequest {
            user_id: 1,
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .expect("page")
        .into_inner();
    assert!(!page.next_page_token.is_empty());

    let forged = app
        .client()
        .list_transactions(pb::ListTransactionsRequest {
            user_id: 2,
            page_size: 1,
            page_token: page.next_page_token,
        })
        .await
        .expect_err("token of user 1");
    assert_eq!(forged.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn an_unseen_user_has_a_zero_balance_and_an_empty_ledger() {
    let app = spawn_app().await;

    assert_eq!(app.balance(12345).await, 0);
    let page = app
        .client()
        .list_transactions(pb::ListTransactionsRequest {
            user_id: 12345,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(page.transactions.is_empty());
    assert!(page.next_page_token.is_empty());
    assert_eq!(app.rows_written().await, 0, "reading creates nothing");
}

#[tokio::test]
async fn transactions_carry_what_the_caller_sent() {
    let app = spawn_app().await;
    app.charge(5, 100, "charge-1").await.expect("charge");
    let used = app.use_points(5, 40, "use-1").await.expect("use");

    assert_eq!(used.user_id, 5);
    assert_eq!(used.kind(), pb::TransactionKind::Use);
    assert_eq!((used.amount, used.balance_after), (40, 60));
    assert_eq!(used.idempotency_key, "use-1");
    assert_eq!(used.reference, "order-use-1");
    assert!(used.created_at.is_some_and(|at| at.seconds > 0));
}
