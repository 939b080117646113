//! reservation-svc: concerts, schedules, seats, holds, payment and cancellation. The service
//! itself is built on top of this entry point; for now it serves health and reflection only.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;

#[derive(Debug, Parser)]
#[command(
    name = "reservation-svc",
    version,
    about = "Concert seat reservations over gRPC"
)]
struct Cli {
    /// Address the gRPC server listens on.
    #[arg(long, env = "RESERVATION_LISTEN_ADDR", default_value = "0.0.0.0:50051")]
    listen_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("reservation-svc")?;
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.listen_addr)
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen_addr))?;
    let (router, health) = shared::server::router(&[])?;
    tracing::info!(addr = %cli.listen_addr, "reservation-svc serving");
    shared::server::serve(
        router,
        listener,
        health,
        &[],
        shared::shutdown::shutdown_signal(),
        std::time::Duration::from_secs(10),
    )
    .await
}
