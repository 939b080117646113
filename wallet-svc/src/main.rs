use clap::Parser;
use wallet_svc::config::Cli;
use wallet_svc::startup::Application;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shared::service::main::<Application>(
        "wallet-svc",
        env!("CARGO_PKG_VERSION"),
        cli.command,
        cli.config,
    )
    .await
}
