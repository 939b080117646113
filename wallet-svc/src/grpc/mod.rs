//! The gRPC adapter: parse the request, call the domain, convert the answer.

mod convert;

use shared::proto::wallet::v1 as pb;
use shared::proto::wallet::v1::wallet_service_server::WalletService;
use tonic::{Request, Response, Status};

use crate::domain::Wallets;
use crate::model::TRANSACTIONS_LISTING;
use convert::BalanceQuery;
use shared::error::PageRequest;

/// Serves `ticketing.wallet.v1.WalletService`.
#[derive(Debug, Clone)]
pub struct WalletGrpc {
    wallets: Wallets,
}

impl WalletGrpc {
    pub fn new(wallets: Wallets) -> Self {
        Self { wallets }
    }
}

#[tonic::async_trait]
impl WalletService for WalletGrpc {
    async fn get_balance(
        &self,
        request: Request<pb::GetBalanceRequest>,
    ) -> Result<Response<pb::Balance>, Status> {
        let BalanceQuery { user_id } = request.into_inner().try_into()?;
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
        let movement = request.into_inner().try_into()?;
        let transaction = self.wallets.apply(movement).await?;
        Ok(Response::new(transaction.into()))
    }

    async fn r#use(
        &self,
        request: Request<pb::UseRequest>,
    ) -> Result<Response<pb::WalletTransaction>, Status> {
        let movement = request.into_inner().try_into()?;
        let transaction = self.wallets.apply(movement).await?;
        Ok(Response::new(transaction.into()))
    }

    async fn refund(
        &self,
        request: Request<pb::RefundRequest>,
    ) -> Result<Response<pb::WalletTransaction>, Status> {
        let movement = request.into_inner().try_into()?;
        let transaction = self.wallets.apply(movement).await?;
        Ok(Response::new(transaction.into()))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let request = request.into_inner();
        let PageRequest {
            user_id,
            page_size,
            cursor,
        } = PageRequest::parse(
            request.user_id,
            request.page_size,
            &request.page_token,
            TRANSACTIONS_LISTING,
        )?;
        let page = self
            .wallets
            .transactions(user_id, page_size, cursor)
            .await?;
        Ok(Response::new(page.into()))
    }
}
