//! Replicas of a first deployment start together on one empty database: each applies the
//! migrations at start-up, and they must take turns (the migration path of docs/OPERATING.md).

#[tokio::test]
async fn two_replicas_migrate_one_fresh_database_in_turn() {
    shared::test_support::assert_replicas_migrate_one_database_in_turn(
        "wallet",
        env!("CARGO_BIN_EXE_wallet-svc"),
        "WALLET_DATABASE_URL",
        wallet_svc::startup::MIGRATIONS,
    )
    .await;
}
