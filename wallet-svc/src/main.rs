use clap::Parser;
use wallet_svc::config::{Cli, Command};
use wallet_svc::startup::{Application, migrate};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _telemetry = shared::telemetry::init("wallet-svc")?;
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => migrate(&cli.config).await,
        Command::HealthCheck => shared::server::check_health(cli.config.listen_addr).await,
        Command::Serve => {
            let app = Application::build(cli.config).await?;
            app.run_until_stopped(shared::shutdown::shutdown_signal())
                .await
        }
    }
}
