//! reservation-svc's view of wallet-svc: the generated tonic client, a deadline on every call,
//! and the caller's trace context in the metadata, so one payment is one trace.

use std::time::Duration;

use protocol::payment::UseReply;
use shared::error::{Reason, reason_of};
use shared::proto::wallet::v1 as pb;
use shared::proto::wallet::v1::wallet_service_client::WalletServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

type TracedChannel = InterceptedService<
    Channel,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

/// Writes the current span's W3C trace context into the call's metadata.
fn propagate_trace(mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    shared::telemetry::inject_trace_context(request.metadata_mut());
    Ok(request)
}

/// Why a refund was not made.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// The refund would take the balance past the wallet's cap (final for its key).
    #[error("the refund would pass the balance limit")]
    BalanceLimit,
    /// Refused for another reason: the request or the data is wrong, a retry will not help.
    #[error("the wallet refused the refund: {0}")]
    Rejected(String),
    /// No answer: the wallet is unreachable or timed out; retry later.
    #[error("the wallet gave no answer: {0}")]
    Unavailable(String),
}

#[derive(Debug, Clone)]
pub struct Wallet {
    client: WalletServiceClient<TracedChannel>,
    timeout: Duration,
}

impl Wallet {
    /// A client that connects on first use (and reconnects as needed), so reservation-svc
    /// starts and serves holds while wallet-svc is down.
    pub fn connect_lazy(endpoint: &str, timeout: Duration) -> anyhow::Result<Self> {
        let channel = Endpoint::from_shared(endpoint.to_owned())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        let interceptor: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> =
            propagate_trace;
        Ok(Self {
            client: WalletServiceClient::with_interceptor(channel, interceptor),
            timeout,
        })
    }

    /// Debits `amount` under `key`. The wallet's first outcome for a key is final, so sending
    /// the same key again is always safe.
    #[tracing::instrument(skip(self), fields(otel.kind = "client"))]
    pub async fn use_points(
        &self,
        user_id: i64,
        amount: i64,
        key: &str,
        reference: &str,
    ) -> UseReply {
        let mut request = tonic::Request::new(pb::UseRequest {
            user_id,
            amount,
            idempotency_key: key.to_owned(),
            reference: reference.to_owned(),
        });
        request.set_timeout(self.timeout);
        match self.client.clone().r#use(request).await {
            Ok(reply) => UseReply::Debited {
                transaction_id: reply.into_inner().id,
            },
            Err(status) if final_refusal(&status) => {
                if reason_of(&status).as_deref() == Some(Reason::InsufficientBalance.as_str()) {
                    UseReply::Insufficient
                } else {
                    tracing::error!(code = ?status.code(), message = status.message(), "wallet rejected a payment");
                    UseReply::Rejected
                }
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "wallet use gave no outcome");
                UseReply::Unknown
            }
        }
    }

    /// Refunds the `Use` made under `use_key`, once whatever the key or the number of calls.
    #[tracing::instrument(skip(self), fields(otel.kind = "client"))]
    pub async fn refund(&self, user_id: i64, key: &str, use_key: &str) -> Result<i64, RefundError> {
        let mut request = tonic::Request::new(pb::RefundRequest {
            user_id,
            idempotency_key: key.to_owned(),
            use_idempotency_key: use_key.to_owned(),
        });
        request.set_timeout(self.timeout);
        match self.client.clone().refund(request).await {
            Ok(reply) => Ok(reply.into_inner().id),
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    && reason_of(&status).as_deref() == Some(Reason::BalanceLimit.as_str()) =>
            {
                Err(RefundError::BalanceLimit)
            }
            Err(status) if final_refusal(&status) => Err(RefundError::Rejected(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
            Err(status) => Err(RefundError::Unavailable(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
        }
    }
}

/// Whether the wallet's answer is a final refusal (a rule or the request itself), as opposed
/// to no outcome (unreachable, timed out, failed inside), after which the call may have been
/// applied or not.
fn final_refusal(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::FailedPrecondition
            | tonic::Code::AlreadyExists
            | tonic::Code::NotFound
            | tonic::Code::PermissionDenied
            | tonic::Code::OutOfRange
    )
}
