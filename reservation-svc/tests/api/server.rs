//! The server as clients and operators see it: health, reflection, graceful stop.

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::helpers::{channel, spawn_app};

#[tokio::test]
async fn health_reports_serving_and_a_stop_drains_cleanly() {
    let mut app = spawn_app().await;
    let mut health = HealthClient::new(channel(app.addr).await);
    for service in ["", "ticketing.reservation.v1.ReservationService"] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await
            .expect("health")
            .into_inner()
            .status();
        assert_eq!(status, ServingStatus::Serving, "{service:?}");
    }

    app.stop().await.expect("a clean stop");
}
