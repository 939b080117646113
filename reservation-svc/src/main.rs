use clap::Parser;
use reservation_svc::config::Cli;
use reservation_svc::startup::Application;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    shared::service::main::<Application>(
        "reservation-svc",
        env!("CARGO_PKG_VERSION"),
        cli.command,
        cli.config,
    )
    .await
}
