//! The process-wide stop signal.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// When the process was asked to stop, once it has been.
static STOP_ASKED_AT: OnceLock<Instant> = OnceLock::new();

/// What is left of `budget` counted from when the process was asked to stop (all of it when
/// it was not): what the work after the drain (the last spans' export) may still take.
pub fn left_of(budget: Duration) -> Duration {
    STOP_ASKED_AT
        .get()
        .map_or(budget, |asked| budget.saturating_sub(asked.elapsed()))
}

/// Completes on SIGTERM (how orchestrators stop a pod) or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();

    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received, shutting down"),
        () = terminate => tracing::info!("SIGTERM received, shutting down"),
    }
    let _ = STOP_ASKED_AT.set(Instant::now());
}
