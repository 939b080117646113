use clap::Parser;
use wallet_svc::config::Cli;
use wallet_svc::startup::Application;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let telemetry = shared::telemetry::init("wallet-svc", env!("CARGO_PKG_VERSION"))?;
    let cli = Cli::parse();
    let drain_timeout = cli.config.drain_timeout;
    let served = shared::service::run::<Application>(cli.command, cli.config).await;
    // The last spans go out within what the drain left of its time.
    telemetry
        .shutdown(shared::shutdown::left_of(drain_timeout))
        .await;
    served
}
