//! Replicas of a first deployment start together on one empty database: each applies the
//! migrations at start-up, and they must take turns (the migration path of docs/OPERATING.md).

#[tokio::test]
async fn two_replicas_migrate_one_fresh_database_in_turn() {
    shared::test_support::assert_replicas_migrate_one_database_in_turn(
        "reservation",
        env!("CARGO_BIN_EXE_reservation-svc"),
        "RESERVATION_DATABASE_URL",
        reservation_svc::startup::MIGRATIONS,
    )
    .await;
}
