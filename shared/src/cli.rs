//! What the service binaries share on their command line.

/// The subcommands of every service binary.
#[derive(Debug, Clone, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Exit 0 when the server on the listen address reports SERVING (for container health
    /// checks; over TLS when the server has it).
    HealthCheck {
        /// The health name to ask: empty for the whole server, `liveness` for the process
        /// alone.
        #[arg(long, default_value = "")]
        service: String,
    },
}
