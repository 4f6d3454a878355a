//! TokenService: decode → service → encode.

use strata_client::pb::{self, token_service_server::TokenService};
use tonic::{Request, Response, Status};

use super::{
    auth::caller_name,
    convert::{auth_role, duration, page_size, proto_role, required, ts},
};
use crate::service::{
    Context, Error,
    tokens::{self, NewToken, Token},
};

/// gRPC adapter of [`tokens`].
pub(super) struct TokenApi {
    pub(crate) ctx: Context,
}

fn token(t: Token) -> pb::Token {
    pb::Token {
        id: t.id,
        name: t.name,
        role: proto_role(t.role) as i32,
        owners: t.owners,
        created_by: t.created_by,
        create_time: Some(ts(t.created_at)),
        expire_time: t.expires_at.map(ts),
        last_use_time: t.last_used_at.map(ts),
        revoke_time: t.revoked_at.map(ts),
        revoked_by: t.revoked_by.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl TokenService for TokenApi {
    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let by = caller_name(&req);
        let r = req.into_inner();
        let role = auth_role(r.role).ok_or_else(|| Error::InvalidArgument("role is required".into()))?;
        let ttl = r.ttl.map(|d| duration("ttl", d)).transpose()?;
        let (t, secret) =
            tokens::create(&self.ctx, NewToken { name: r.name, role, owners: r.owners, ttl }, &by).await?;
        Ok(Response::new(pb::CreateTokenResponse { token: Some(token(t)), secret }))
    }

    async fn get_token(&self, req: Request<pb::GetTokenRequest>) -> Result<Response<pb::GetTokenResponse>, Status> {
        let id = required("id", req.into_inner().id)?;
        Ok(Response::new(pb::GetTokenResponse { token: Some(token(tokens::get(&self.ctx, &id).await?)) }))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let r = req.into_inner();
        let limit = page_size(r.page_size, 100)?;
        let page = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let (list, next) = tokens::list(&self.ctx, page, r.show_all, limit).await?;
        Ok(Response::new(pb::ListTokensResponse {
            tokens: list.into_iter().map(token).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn revoke_token(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let by = caller_name(&req);
        let id = required("id", req.into_inner().id)?;
        Ok(Response::new(pb::RevokeTokenResponse { token: Some(token(tokens::revoke(&self.ctx, &id, &by).await?)) }))
    }
}
