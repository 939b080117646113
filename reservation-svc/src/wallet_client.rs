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

/// Why a wallet call gave no usable answer.
#[derive(Debug, thiserror::Error)]
#[error("wallet call failed: {0}")]
pub struct WalletUnavailable(pub String);

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
            Err(status)
                if status.code() == tonic::Code::FailedPrecondition
                    && reason_of(&status).as_deref()
                        == Some(Reason::InsufficientBalance.as_str()) =>
            {
                UseReply::Insufficient
            }
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "wallet use gave no outcome");
                UseReply::Unknown
            }
        }
    }

    /// Refunds the `Use` made under `use_key`, once whatever the key or the number of calls.
    #[tracing::instrument(skip(self), fields(otel.kind = "client"))]
    pub async fn refund(
        &self,
        user_id: i64,
        key: &str,
        use_key: &str,
    ) -> Result<i64, WalletUnavailable> {
        let mut request = tonic::Request::new(pb::RefundRequest {
            user_id,
            idempotency_key: key.to_owned(),
            use_idempotency_key: use_key.to_owned(),
        });
        request.set_timeout(self.timeout);
        self.client
            .clone()
            .refund(request)
            .await
            .map(|reply| reply.into_inner().id)
            .map_err(|status| {
                WalletUnavailable(format!("{:?}: {}", status.code(), status.message()))
            })
    }
}
