//! Bearer tokens managed at run time (TokenService) and the audit trail (AuditService); admin role.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    Client, Error,
    convert::ts as time,
    pb::{self, token_service_client::TokenServiceClient},
};

/// What a caller may do; each role includes the ones below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(feature = "cli", derive(clap::ValueEnum))]
pub enum Role {
    /// Read-only methods.
    Viewer,
    /// Everything that reads or changes the application's storage.
    Operator,
    /// Token management and cluster-wide switches, and everything else.
    Admin,
}

impl Role {
    fn to_proto(self) -> pb::Role {
        match self {
            Role::Viewer => pb::Role::Viewer,
            Role::Operator => pb::Role::Operator,
            Role::Admin => pb::Role::Admin,
        }
    }

    fn from_proto(r: i32) -> Option<Self> {
        match pb::Role::try_from(r).ok()? {
            pb::Role::Viewer => Some(Role::Viewer),
            pb::Role::Operator => Some(Role::Operator),
            pb::Role::Admin => Some(Role::Admin),
            pb::Role::Unspecified => None,
        }
    }
}

/// A token as stored (never its secret).
#[derive(Debug, Clone, Serialize)]
pub struct Token {
    /// Id (the part of the secret after `strata_`).
    pub id: String,
    /// Name.
    pub name: String,
    /// Role (None: one this SDK does not know).
    pub role: Option<Role>,
    /// File owners it is limited to; empty: not scoped.
    pub owners: Vec<String>,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: Option<DateTime<Utc>>,
    /// When it stops working; None: never.
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use (recorded at most once a minute per instance).
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Who revoked it.
    pub revoked_by: String,
}

impl From<pb::Token> for Token {
    fn from(t: pb::Token) -> Self {
        Token {
            role: Role::from_proto(t.role),
            id: t.id,
            name: t.name,
            owners: t.owners,
            created_by: t.created_by,
            created_at: time(t.create_time),
            expires_at: time(t.expire_time),
            last_used_at: time(t.last_use_time),
            revoked_at: time(t.revoke_time),
            revoked_by: t.revoked_by,
        }
    }
}

impl Client {
    fn tokens(&self) -> TokenServiceClient<crate::client::Svc> {
        TokenServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Creates a token granting `role`, limited to the files of `owners` when not empty, working
    /// for `ttl` when given. Returns it and its secret (`strata_…`), which is shown only here.
    pub async fn create_token(
        &self,
        name: &str,
        role: Role,
        owners: &[String],
        ttl: Option<Duration>,
    ) -> Result<(Token, String), Error> {
        let r = self
            .tokens()
            .create_token(pb::CreateTokenRequest {
                name: name.into(),
                role: role.to_proto() as i32,
                owners: owners.to_vec(),
                ttl: ttl.map(|d| {
                    prost_types::Duration::try_from(d).unwrap_or(prost_types::Duration { seconds: i64::MAX, nanos: 0 })
                }),
            })
            .await?
            .into_inner();
        Ok((r.token.unwrap_or_default().into(), r.secret))
    }

    /// A token.
    pub async fn token(&self, id: &str) -> Result<Token, Error> {
        let r = self.tokens().get_token(pb::GetTokenRequest { id: id.into() }).await?.into_inner();
        Ok(r.token.unwrap_or_default().into())
    }

    /// Tokens newest first, up to `limit`; with revoked and expired ones when `all`.
    pub async fn list_tokens(&self, all: bool, limit: usize) -> Result<Vec<Token>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .tokens()
                .list_tokens(pb::ListTokensRequest {
                    page_size: (limit - out.len()).min(1000) as i32,
                    page_token: token,
                    show_all: all,
                })
                .await?
                .into_inner();
            out.extend(r.tokens.into_iter().map(Token::from));
            if r.next_page_token.is_empty() || out.len() >= limit {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }

    /// Revokes a token (every instance refuses it within the server's `token_cache_ttl`).
    pub async fn revoke_token(&self, id: &str) -> Result<Token, Error> {
        let r = self.tokens().revoke_token(pb::RevokeTokenRequest { id: id.into() }).await?.into_inner();
        Ok(r.token.unwrap_or_default().into())
    }
}

/// One recorded call of the audit trail.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    /// Sequence number.
    pub id: i64,
    /// When the call ended.
    pub time: Option<DateTime<Utc>>,
    /// The instance that served it.
    pub instance_id: String,
    /// Token name, certificate rule, `loopback`, or `-`.
    pub caller: String,
    /// api_token, config_token, certificate, loopback or none.
    pub auth_method: String,
    /// The client's address.
    pub client_address: String,
    /// The trusted proxy it came through.
    pub proxy_address: String,
    /// Full method name.
    pub method: String,
    /// `field=value` of the resource it named.
    pub resource: String,
    /// gRPC status code name.
    pub code: String,
}

/// What [`Client::audit_events`] filters on.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only this caller.
    pub caller: Option<String>,
    /// Only this method (full name).
    pub method: Option<String>,
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
}

impl Client {
    /// Audit events newest first, up to `limit` (admin).
    pub async fn audit_events(&self, q: &AuditQuery, limit: usize) -> Result<Vec<AuditEvent>, Error> {
        let stamp = |t: DateTime<Utc>| prost_types::Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        };
        let mut client =
            pb::audit_service_client::AuditServiceClient::with_interceptor(self.channel.clone(), self.auth.clone());
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = client
                .list_audit_events(pb::ListAuditEventsRequest {
                    page_size: (limit - out.len()).min(1000) as i32,
                    page_token: token,
                    caller: q.caller.clone().unwrap_or_default(),
                    method: q.method.clone().unwrap_or_default(),
                    start_time: q.since.map(stamp),
                    end_time: q.until.map(stamp),
                })
                .await?
                .into_inner();
            out.extend(r.events.into_iter().map(|e| AuditEvent {
                id: e.id,
                time: time(e.time),
                instance_id: e.instance_id,
                caller: e.caller,
                auth_method: e.auth_method,
                client_address: e.client_address,
                proxy_address: e.proxy_address,
                method: e.method,
                resource: e.resource,
                code: e.code,
            }));
            if r.next_page_token.is_empty() || out.len() >= limit {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }
}
