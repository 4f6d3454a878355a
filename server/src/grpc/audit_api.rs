//! AuditService: decode → service → encode.

use strata_client::pb::{self, audit_service_server::AuditService};
use tonic::{Request, Response, Status};

use super::convert::{page_size, time, ts};
use crate::service::{
    Context,
    audit::{self, AuditFilter},
};

/// gRPC adapter of [`audit`].
pub(super) struct AuditApi {
    pub(crate) ctx: Context,
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        req: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        let r = req.into_inner();
        let limit = page_size(r.page_size, 100)?;
        let filter = AuditFilter {
            caller: (!r.caller.is_empty()).then_some(r.caller),
            method: (!r.method.is_empty()).then_some(r.method),
            since: time(r.start_time)?.map(|t| t.naive_utc()),
            until: time(r.end_time)?.map(|t| t.naive_utc()),
        };
        let page = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let (events, next) = audit::list(&self.ctx, &filter, page, limit).await?;
        Ok(Response::new(pb::ListAuditEventsResponse {
            events: events
                .into_iter()
                .map(|e| pb::AuditEvent {
                    id: e.id,
                    time: Some(ts(e.occurred_at.and_utc())),
                    instance_id: e.instance_id,
                    caller: e.caller,
                    auth_method: e.auth_method.as_str().to_owned(),
                    client_address: e.client_addr.unwrap_or_default(),
                    proxy_address: e.proxy_addr.unwrap_or_default(),
                    method: e.method,
                    resource: e.resource,
                    code: e.code,
                })
                .collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }
}
