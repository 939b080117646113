//! The server as clients and operators see it: health, reflection, graceful stop.

use shared::proto::wallet::v1::GetBalanceRequest;
use shared::proto::wallet::v1::wallet_service_client::WalletServiceClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{channel, spawn_app};

const SERVICE: &str = "ticketing.wallet.v1.WalletService";

#[tokio::test]
async fn health_reports_serving_for_the_server_and_the_wallet_service() {
    let app = spawn_app().await;
    let mut health = HealthClient::new(channel(app.addr).await);

    for service in ["", SERVICE] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }
}

#[tokio::test]
async fn reflection_lists_the_wallet_service_in_both_protocol_versions() {
    use tokio_stream::StreamExt;
    use tonic_reflection::pb::v1;
    use tonic_reflection::pb::v1alpha;

    let app = spawn_app().await;

    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut v1_client =
        v1::server_reflection_client::ServerReflectionClient::new(channel(app.addr).await);
    let mut replies = v1_client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("v1 reflection")
        .into_inner();
    let reply = replies.next().await.expect("a reply").expect("no error");
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("not a service list: {reply:?}");
    };
    assert!(list.service.iter().any(|s| s.name == SERVICE), "{list:?}");

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut alpha_client =
        v1alpha::server_reflection_client::ServerReflectionClient::new(channel(app.addr).await);
    let mut replies = alpha_client
        .server_reflection_info(tokio_stream::once(request))
        .await
        .expect("v1alpha reflection")
        .into_inner();
    let reply = replies.next().await.expect("a reply").expect("no error");
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        reply.message_response
    else {
        panic!("not a service list: {reply:?}");
    };
    assert!(list.service.iter().any(|s| s.name == SERVICE), "{list:?}");
}

#[tokio::test]
async fn a_stopped_server_drains_and_refuses_new_connections() {
    let mut app = spawn_app().await;
    app.charge(1, 10, "before-stop").await.expect("charge");

    app.stop().await.expect("a clean stop");

    let reconnect = tonic::transport::Channel::from_shared(format!("http://{}", app.addr))
        .expect("endpoint")
        .connect()
        .await;
    if let Ok(channel) = reconnect {
        let answer = WalletServiceClient::new(channel)
            .get_balance(GetBalanceRequest { user_id: 1 })
            .await;
        assert!(answer.is_err(), "a stopped server answered: {answer:?}");
    }
}

#[tokio::test]
async fn an_unreachable_database_is_unavailable_not_an_internal_error() {
    let app = crate::helpers::spawn_app_with(|config| {
        config.db.db_acquire_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    app.charge(1, 10, "charge-1").await.expect("charge");

    // Drop the database under the running server: every new connection now fails.
    let mut admin = diesel_async::AsyncPgConnection::establish(&shared::test_support::admin_url())
        .await
        .expect("admin connection");
    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
    admin
        .batch_execute(&format!("DROP DATABASE \"{}\" WITH (FORCE)", app.db.name()))
        .await
        .expect("drop the database");

    let status = app
        .charge(1, 10, "charge-2")
        .await
        .expect_err("no database");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_call_in_flight_when_the_server_stops_still_completes() {
    use diesel_async::SimpleAsyncConnection;

    let mut app = spawn_app().await;
    app.charge(1, 100, "charge-1").await.expect("charge");

    // Hold the wallet's row lock so the next use waits inside its transaction.
    let mut blocker = app.connect_db().await;
    blocker
        .batch_execute("BEGIN; SELECT * FROM wallets WHERE user_id = 1 FOR UPDATE")
        .await
        .expect("lock the wallet");
    let mut client = app.client();
    let in_flight = tokio::spawn(async move {
        client
            .r#use(shared::proto::wallet::v1::UseRequest {
                user_id: 1,
                amount: 30,
                idempotency_key: "use-during-stop".to_owned(),
                reference: String::new(),
            })
            .await
    });
    while app.sessions_in_state("active").await == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    let stopping = {
        let stop = app.stop();
        tokio::pin!(stop);
        // The server is draining: it has not stopped while the call waits.
        let early = tokio::time::timeout(std::time::Duration::from_millis(300), &mut stop).await;
        assert!(early.is_err(), "stopped with a call in flight");
        blocker
            .batch_execute("COMMIT")
            .await
            .expect("release the lock");
        stop.await
    };

    stopping.expect("a clean stop");
    let used = in_flight.await.expect("task").expect("the call completed");
    assert_eq!(used.into_inner().balance_after, 70);
}

#[tokio::test]
async fn pooled_connections_the_server_closed_are_replaced_before_use() {
    use diesel_async::RunQueryDsl;

    let app = spawn_app().await;
    app.charge(1, 100, "before").await.expect("charge");
    // Every pooled connection of the service is closed by the server, as a restart would.
    let mut admin = app.connect_db().await;
    diesel::sql_query(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .execute(&mut admin)
    .await
    .expect("terminate the service's sessions");
    // The pool's connections notice their sockets closing in the background.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    for call in 0..20 {
        app.charge(1, 1, &format!("after-{call}"))
            .await
            .unwrap_or_else(|status| panic!("call {call} after the restart: {status:?}"));
    }
    assert_eq!(app.balance(1).await, 120);
}
