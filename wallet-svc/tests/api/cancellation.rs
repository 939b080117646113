//! Clients that give up mid-call never leave a transaction open or a connection broken.

use std::time::Duration;

use futures::future::join_all;
use rand::Rng;

use crate::helpers::spawn_app_with;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_calls_cancelled_at_random_points_leave_no_open_transaction() {
    let app = spawn_app_with(|config| config.db.db_pool_size = 4).await;
    app.charge(1, 10_000, "initial").await.expect("charge");

    let calls = (0..200).map(|i| {
        let app = &app;
        let give_up_after = Duration::from_micros(rand::rng().random_range(0..20_000));
        async move {
            let call = async {
                if i % 3 == 0 {
                    app.charge(1, 3, &format!("charge-{i}")).await
                } else {
                    app.use_points(1, 7, &format!("use-{i}")).await
                }
            };
            // Dropping the call's future cancels the RPC, as a client deadline would.
            tokio::time::timeout(give_up_after, call).await.is_ok()
        }
    });
    let finished = join_all(calls).await;
    let cancelled = finished.iter().filter(|done| !**done).count();
    assert!(cancelled > 0, "some calls must have been cancelled");

    // Work already handed to the database finishes on its own (a transaction is idle between
    // its statements, and queued movements of the user follow in later ones); wait until it
    // has, then nothing may be left open.
    let busy = || async {
        app.sessions_in_state("active").await + app.sessions_in_state("idle in transaction").await
    };
    // Quiet for ten looks in a row: a gap between two transactions is not the end.
    let mut quiet = 0;
    for _ in 0..500 {
        quiet = if busy().await == 0 { quiet + 1 } else { 0 };
        if quiet == 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        app.sessions_in_state("active").await,
        0,
        "all statements ended"
    );
    assert_eq!(app.sessions_in_state("idle in transaction").await, 0);
    assert_eq!(
        app.sessions_in_state("idle in transaction (aborted)").await,
        0
    );

    app.charge(1, 1, "after-the-storm")
        .await
        .expect("the pool still serves");
    app.assert_ledger_matches_balance(1).await;
}
