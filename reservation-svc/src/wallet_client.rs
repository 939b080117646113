//! reservation-svc's view of wallet-svc: the generated tonic client, a deadline on every call,
//! and the caller's trace context in the metadata, so one payment is one trace.

use std::time::Duration;

use protocol::payment::UseReply;
use shared::error::{ERROR_DOMAIN, Reason};
use shared::proto::wallet::v1 as pb;
use shared::proto::wallet::v1::wallet_service_client::WalletServiceClient;
use shared::tls::ClientTls;
use tonic::service::interceptor::InterceptedService;
use tonic_types::StatusExt;
use tracing::Instrument as _;

/// The methods this client calls, as their spans name them.
const USE_PATH: &str = "/ticketing.wallet.v1.WalletService/Use";
const REFUND_PATH: &str = "/ticketing.wallet.v1.WalletService/Refund";

use crate::wallet_balance::{BalancedChannel, Resolve};

/// How often the wallet's name is resolved again, to follow its pods as they come and go.
pub const RESOLVE_INTERVAL: Duration = Duration::from_secs(10);

type TracedChannel = InterceptedService<
    BalancedChannel,
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
    /// The wallet's address, for the `server.address` and `server.port` of each call's span.
    server: tonic::codegen::http::Uri,
}

impl Wallet {
    /// A client that connects on first use (and reconnects as needed), so reservation-svc
    /// starts and serves holds while wallet-svc is down; balanced over every address the
    /// endpoint's host resolves to (the pods of a headless Service), resolved again every
    /// [`RESOLVE_INTERVAL`]. Over TLS with `tls` in force at each connection, when given.
    pub fn connect_lazy(
        endpoint: &str,
        timeout: Duration,
        tls: Option<ClientTls>,
    ) -> anyhow::Result<Self> {
        Self::connect_balanced(endpoint, timeout, tls, RESOLVE_INTERVAL, None)
    }

    /// [`Wallet::connect_lazy`] with the addresses from `resolve` (the system's resolver when
    /// `None`), asked every `every`.
    pub fn connect_balanced(
        endpoint: &str,
        timeout: Duration,
        tls: Option<ClientTls>,
        every: Duration,
        resolve: Option<Resolve>,
    ) -> anyhow::Result<Self> {
        let channel = crate::wallet_balance::balanced(endpoint, timeout, tls, every, resolve)?;
        let interceptor: fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> =
            propagate_trace;
        Ok(Self {
            client: WalletServiceClient::with_interceptor(channel, interceptor),
            timeout,
            server: endpoint.parse()?,
        })
    }

    /// Debits `amount` under `key`. The wallet's first outcome for a key is final, so sending
    /// the same key again is always safe.
    #[tracing::instrument(skip(self))]
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
        let span = shared::telemetry::grpc_client_span(USE_PATH, &self.server);
        let answer = self
            .client
            .clone()
            .r#use(request)
            .instrument(span.clone())
            .await;
        shared::telemetry::record_client_outcome(&span, answer.as_ref().map(drop));
        match answer {
            Ok(reply) => UseReply::Debited {
                transaction_id: reply.into_inner().id,
            },
            Err(status) => match wallet_refusal(&status) {
                Some(reason) if reason == Reason::InsufficientBalance.as_str() => {
                    UseReply::Insufficient
                }
                Some(reason) => {
                    tracing::error!(code = ?status.code(), %reason, message = status.message(), "wallet rejected a payment");
                    UseReply::Rejected
                }
                None => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "wallet use gave no outcome");
                    UseReply::Unknown
                }
            },
        }
    }

    /// Refunds the `Use` made under `use_key`, once whatever the key or the number of calls.
    #[tracing::instrument(skip(self))]
    pub async fn refund(&self, user_id: i64, key: &str, use_key: &str) -> Result<i64, RefundError> {
        let mut request = tonic::Request::new(pb::RefundRequest {
            user_id,
            idempotency_key: key.to_owned(),
            use_idempotency_key: use_key.to_owned(),
        });
        request.set_timeout(self.timeout);
        let span = shared::telemetry::grpc_client_span(REFUND_PATH, &self.server);
        let answer = self
            .client
            .clone()
            .refund(request)
            .instrument(span.clone())
            .await;
        shared::telemetry::record_client_outcome(&span, answer.as_ref().map(drop));
        match answer {
            Ok(reply) => Ok(reply.into_inner().id),
            Err(status) => {
                let detail = format!("{:?}: {}", status.code(), status.message());
                match wallet_refusal(&status) {
                    Some(reason) if reason == Reason::BalanceLimit.as_str() => {
                        Err(RefundError::BalanceLimit)
                    }
                    Some(reason) => Err(RefundError::Rejected(format!("{reason}: {detail}"))),
                    None => Err(RefundError::Unavailable(detail)),
                }
            }
        }
    }
}

/// The reasons wallet-svc refuses a movement with, each final for its key.
const FINAL_REASONS: [Reason; 4] = [
    Reason::InsufficientBalance,
    Reason::BalanceLimit,
    Reason::IdempotencyKeyReused,
    Reason::UnknownUse,
];

/// The reason of a refusal that wallet-svc itself gave: one of [`FINAL_REASONS`] in an
/// `ErrorInfo` of this system's domain, or `INVALID_ARGUMENT` for a request its `BadRequest`
/// names bad fields of. Such an answer is final for its key. Anything else (a bare status,
/// which a proxy, a load balancer or another server on the address could send as well as the
/// wallet, or a reason this client does not know) is no outcome: the call may have been
/// applied or not, and is sent again under the same key.
fn wallet_refusal(status: &tonic::Status) -> Option<String> {
    if let Some(info) = status.get_details_error_info()
        && info.domain == ERROR_DOMAIN
        && FINAL_REASONS
            .iter()
            .any(|reason| reason.as_str() == info.reason)
    {
        return Some(info.reason);
    }
    (status.code() == tonic::Code::InvalidArgument && status.get_details_bad_request().is_some())
        .then(|| "INVALID_ARGUMENT".to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use shared::error::{invalid_field, status_with_reason};
    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn only_the_wallets_own_refusals_are_final() {
        let insufficient = status_with_reason(
            Code::FailedPrecondition,
            Reason::InsufficientBalance,
            "insufficient balance",
        );
        assert_eq!(
            wallet_refusal(&insufficient).as_deref(),
            Some("INSUFFICIENT_BALANCE")
        );
        assert_eq!(
            wallet_refusal(&invalid_field("amount", "must be positive")).as_deref(),
            Some("INVALID_ARGUMENT")
        );
        // What a proxy or another server could answer: never taken as the wallet's word.
        for code in [
            Code::FailedPrecondition,
            Code::NotFound,
            Code::InvalidArgument,
            Code::AlreadyExists,
            Code::PermissionDenied,
            Code::Unavailable,
        ] {
            assert_eq!(
                wallet_refusal(&tonic::Status::new(code, "no")),
                None,
                "{code:?}"
            );
        }
        let foreign = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "no",
            ErrorDetails::with_error_info("INSUFFICIENT_BALANCE", "example.com", HashMap::new()),
        );
        assert_eq!(wallet_refusal(&foreign), None, "another system's reason");
        let unknown = tonic::Status::with_error_details(
            Code::FailedPrecondition,
            "no",
            ErrorDetails::with_error_info("SOMETHING_NEW", ERROR_DOMAIN, HashMap::new()),
        );
        assert_eq!(
            wallet_refusal(&unknown),
            None,
            "a reason this client does not know"
        );
    }
}
