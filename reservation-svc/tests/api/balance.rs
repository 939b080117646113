//! reservation-svc's wallet client balances its calls over every address the wallet's name
//! resolves to, and follows the name as its addresses change.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use protocol::payment::UseReply;
use reservation_svc::wallet_balance::Resolve;
use reservation_svc::wallet_client::Wallet;

use crate::helpers::TestWallet;

/// A name whose addresses the test sets.
fn resolver(addrs: Arc<Mutex<Vec<SocketAddr>>>) -> Resolve {
    Arc::new(move || {
        let answer = addrs.lock().unwrap_or_else(PoisonError::into_inner).clone();
        Box::pin(async move { Ok(answer) })
    })
}

async fn pay(wallet: &Wallet, user_id: i64, calls: std::ops::Range<u32>) {
    for call in calls {
        let reply = wallet
            .use_points(user_id, 1, &format!("balance-{call}"), "test")
            .await;
        assert!(
            matches!(reply, UseReply::Debited { .. }),
            "call {call}: {reply:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_spread_over_every_address_of_the_name_and_follow_it() {
    let mut first = TestWallet::start().await;
    let second = TestWallet::start().await;
    let user_id = 7;
    first.charge(user_id, 1_000, "top-up").await;
    second.charge(user_id, 1_000, "top-up").await;
    let addrs = Arc::new(Mutex::new(vec![first.addr, second.addr]));
    let wallet = Wallet::connect_balanced(
        "http://wallet.test:50052",
        Duration::from_secs(5),
        None,
        Duration::from_millis(100),
        Some(resolver(addrs.clone())),
    )
    .expect("a balanced client");

    pay(&wallet, user_id, 0..40).await;
    let (first_spent, second_spent) = (
        1_000 - first.balance(user_id).await,
        1_000 - second.balance(user_id).await,
    );
    assert_eq!(first_spent + second_spent, 40);
    assert!(
        first_spent > 0 && second_spent > 0,
        "every call went to one wallet: {first_spent} and {second_spent}"
    );

    // The second wallet leaves the name: once resolved again, it gets no more calls.
    *addrs.lock().unwrap_or_else(PoisonError::into_inner) = vec![first.addr];
    tokio::time::sleep(Duration::from_millis(500)).await;
    pay(&wallet, user_id, 40..60).await;
    assert_eq!(1_000 - second.balance(user_id).await, second_spent);
    assert_eq!(1_000 - first.balance(user_id).await, first_spent + 20);

    // The one wallet left goes down and comes back on its address: calls fail meanwhile, and
    // reach it again once it is back.
    first.stop().await;
    let reply = wallet.use_points(user_id, 1, "balance-down", "test").await;
    assert!(matches!(reply, UseReply::Unknown), "{reply:?}");
    first.restart().await;
    let mut answered = false;
    for _ in 0..50 {
        if matches!(
            wallet.use_points(user_id, 1, "balance-back", "test").await,
            UseReply::Debited { .. }
        ) {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered, "no call reached the wallet once it was back");
}
