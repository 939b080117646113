//! The gRPC adapter: parse the request, call the domain, convert the answer.

mod convert;

use shared::proto::wallet::v1 as pb;
use shared::proto::wallet::v1::wallet_service_server::WalletService;
use std::sync::Arc;

use shared::auth::Caller;
use shared::error::{Reason, status_with_reason};
use tonic::{Code, Request, Response, Status};

use crate::domain::Wallets;
use crate::model::{KeyScope, MoneyMovement, TRANSACTIONS_LISTING, UserId};
use convert::BalanceQuery;
use shared::error::PageRequest;

/// Serves `ticketing.wallet.v1.WalletService`.
#[derive(Debug, Clone)]
pub struct WalletGrpc {
    wallets: Wallets,
    /// Certificate identities of the services that may `Use` and `Refund` for any user.
    payment_services: Arc<[String]>,
}

impl WalletGrpc {
    pub fn new(wallets: Wallets, payment_services: Vec<String>) -> Self {
        Self {
            wallets,
            payment_services: payment_services.into(),
        }
    }

    fn scope_of(&self, caller: &Caller) -> KeyScope {
        KeyScope::of_caller(caller, self.is_payment_service(caller))
    }

    fn is_payment_service(&self, caller: &Caller) -> bool {
        matches!(caller, Caller::Service { identity }
            if self.payment_services.iter().any(|allowed| allowed.as_str() == &**identity))
    }

    /// `Use` and `Refund` move a user's points for something bought: only a payment service
    /// (by its certificate) or an admin makes them.
    fn require_payment_service(&self, caller: &Caller) -> Result<(), Status> {
        let allowed = matches!(caller, Caller::Unchecked | Caller::User { admin: true, .. });
        if allowed || self.is_payment_service(caller) {
            Ok(())
        } else {
            Err(status_with_reason(
                Code::PermissionDenied,
                Reason::PaymentServiceOnly,
                "only a payment service or an admin may use or refund points",
            ))
        }
    }
}

#[tonic::async_trait]
impl WalletService for WalletGrpc {
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        request.user_id = caller.acting_for(request.user_id)?;
        let BalanceQuery { user_id } = request.try_into()?;
        let balance = self.wallets.balance(user_id).await?;
        Ok(Response::new(pb::Balance {
            user_id: user_id.get(),
            balance,
        }))
    }

    async fn charge(
        &self,
        request: Request<pb::ChargeRequest>,
    ) -> Result<Response<pb::WalletTransaction>, Status> {
        let caller = Caller::of(&request)?;
        caller.require_admin()?;
        let mut movement: MoneyMovement = request.into_inner().try_into()?;
        movement.scope = self.scope_of(&caller);
        let transaction = self.wallets.apply(movement).await?;
        Ok(Response::new(transaction.into()))
    }

    async fn r#use(
        &self,
        request: Request<pb::UseRequest>,
    ) -> Result<Response<pb::WalletTransaction>, Status> {
        let caller = Caller::of(&request)?;
        self.require_payment_service(&caller)?;
        let mut movement: MoneyMovement = request.into_inner().try_into()?;
        movement.scope = self.scope_of(&caller);
        let transaction = self.wallets.apply(movement).await?;
        Ok(Response::new(transaction.into()))
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::WalletTransaction>, Status> {
        let caller = Caller::of(&request)?;
        self.require_payment_service(&caller)?;
        let mut movement: MoneyMovement = request.into_inner().try_into()?;
        movement.scope = self.scope_of(&caller);
        let transaction = self.wallets.apply(movement).await?;
        Ok(Response::new(transaction.into()))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let caller = Caller::of(&request)?;
        let mut request = request.into_inner();
        request.user_id = caller.acting_for(request.user_id)?;
        let PageRequest {
            owner: user_id,
            page_size,
            cursor,
        } = PageRequest::parse(
            &TRANSACTIONS_LISTING,
            (request.user_id, UserId::parse),
            request.page_size,
            &request.page_token,
        )?;
        let page = self
            .wallets
            .transactions(user_id, page_size, cursor)
            .await?;
        Ok(Response::new(convert::transaction_page(page)))
    }
}
