//! Work that must run to its end even when the caller that asked for it goes away.

use std::future::Future;

/// Runs `work` in a task of its own, inside `span`, and waits for it. A gRPC handler whose
/// client disconnects is dropped mid-await; the task is not, so a transaction, a lock's
/// release or a payment's next step always completes. `Err` carries why the task itself
/// failed (it panicked, or the runtime is shutting down).
pub async fn run_to_end<T: Send + 'static>(
    span: tracing::Span,
    work: impl Future<Output = T> + Send + 'static,
) -> Result<T, String> {
    tokio::spawn(tracing::Instrument::instrument(work, span))
        .await
        .map_err(|join_error| join_error.to_string())
}
