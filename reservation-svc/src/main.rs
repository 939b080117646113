use clap::Parser;
use reservation_svc::config::Cli;
use reservation_svc::startup::Application;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("reservation-svc")?;
    let cli = Cli::parse();
    shared::service::run::<Application>(cli.command, cli.config).await
}
