use clap::Parser;
use wallet_svc::config::Cli;
use wallet_svc::startup::Application;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("wallet-svc")?;
    let cli = Cli::parse();
    shared::service::run::<Application>(cli.command, cli.config).await
}
