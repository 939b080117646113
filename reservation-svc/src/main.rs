use clap::Parser;
use reservation_svc::config::Cli;
use reservation_svc::startup::Application;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = shared::telemetry::init("reservation-svc", env!("CARGO_PKG_VERSION"))?;
    let cli = Cli::parse();
    let drain_timeout = cli.config.drain_timeout;
    let served = shared::service::run::<Application>(cli.command, cli.config).await;
    // The last spans go out within what the drain left of its time.
    telemetry
        .shutdown(shared::shutdown::left_of(drain_timeout))
        .await;
    served
}
