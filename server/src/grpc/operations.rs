//! OperationService: decode → service → encode; and the encoding of an operation that the services
//! starting one answer with.

use strata_client::pb::{self, operation_service_server::OperationService};
use tonic::{Request, Response, Status};

use super::convert::{dur, page_size, required, ts};
use crate::service::{
    Context, Error,
    files::ReconcileProgress,
    maintenance::{self, MaintenanceProgress},
    operation::{self, Item, ItemKind, Operation, OperationKind, OperationState},
    partitions::{self, RescueProgress},
};

/// gRPC adapter of [`operation`].
pub(super) struct OperationApi {
    pub(crate) ctx: Context,
}

pub(super) fn kind(k: OperationKind) -> pb::OperationKind {
    match k {
        OperationKind::Maintenance => pb::OperationKind::Maintenance,
        OperationKind::Reconcile => pb::OperationKind::Reconcile,
        OperationKind::Rescue => pb::OperationKind::Rescue,
    }
}

/// An operation as clients see it, with its kind's counters.
pub(super) fn operation(o: Operation) -> pb::Operation {
    use pb::operation::Result as R;
    let result = match o.kind {
        OperationKind::Maintenance => {
            let p: MaintenanceProgress = o.progress();
            R::Maintenance(pb::MaintenanceResult { tables_done: p.tables_done, reclaimed_bytes: p.reclaimed_bytes })
        }
        OperationKind::Reconcile => {
            let p: ReconcileProgress = o.progress();
            R::Reconcile(pb::ReconcileResult {
                objects_scanned: p.objects_scanned,
                blobs_scanned: p.blobs_scanned,
                orphans: p.orphans,
                deleted: p.deleted,
                lost_content: p.lost_content,
                lost_files: p.lost_files,
            })
        }
        OperationKind::Rescue => {
            let p: RescueProgress = o.progress();
            R::Rescue(pb::RescueResult {
                rows_moved: p.rows_moved,
                partitions_created: p.partitions_created,
                rows_left: p.rows_left,
            })
        }
    };
    pb::Operation {
        id: o.id,
        kind: kind(o.kind) as i32,
        state: match o.state {
            OperationState::Running => pb::OperationState::Running,
            OperationState::Succeeded => pb::OperationState::Succeeded,
            OperationState::Failed => pb::OperationState::Failed,
            OperationState::Cancelled => pb::OperationState::Cancelled,
        } as i32,
        target: o.target,
        phase: o.phase,
        done: o.done,
        total: o.total,
        cancel_requested: o.cancel_requested,
        error: o.error.unwrap_or_default(),
        instance: o.instance.unwrap_or_default(),
        item_count: o.items,
        started_at: Some(ts(o.started_at)),
        updated_at: Some(ts(o.updated_at)),
        finished_at: o.finished_at.map(ts),
        result: Some(result),
    }
}

fn item(i: Item) -> pb::OperationItem {
    let table = maintenance::table_of(&i).map(|t| pb::TableMaintenance {
        reclaimed_bytes: (t.size_before - t.size_after).max(0),
        schema_name: t.schema,
        table_name: t.table,
        size_before_bytes: t.size_before,
        size_after_bytes: t.size_after,
        dead_rows_before: t.dead_rows_before,
        duration: Some(dur(t.duration)),
    });
    let rows = partitions::rescued_rows(&i).unwrap_or_default();
    pb::OperationItem {
        seq: i.seq,
        kind: match i.kind {
            ItemKind::Table => pb::OperationItemKind::Table,
            ItemKind::Orphan => pb::OperationItemKind::OrphanObject,
            ItemKind::Deleted => pb::OperationItemKind::DeletedObject,
            ItemKind::LostContent => pb::OperationItemKind::LostContent,
            ItemKind::LostFile => pb::OperationItemKind::LostFile,
            ItemKind::Partition => pb::OperationItemKind::Partition,
            ItemKind::StartedRun => pb::OperationItemKind::StartedRun,
            ItemKind::SkippedPolicy => pb::OperationItemKind::SkippedPolicy,
        } as i32,
        value: i.value,
        table,
        rows,
    }
}

#[tonic::async_trait]
impl OperationService for OperationApi {
    async fn get_operation(
        &self,
        req: Request<pb::GetOperationRequest>,
    ) -> Result<Response<pb::GetOperationResponse>, Status> {
        let id = required("id", req.into_inner().id)?;
        let o = operation::get(&self.ctx, &id).await?;
        Ok(Response::new(pb::GetOperationResponse { operation: Some(operation(o)) }))
    }

    async fn list_operations(
        &self,
        req: Request<pb::ListOperationsRequest>,
    ) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let r = req.into_inner();
        let kind = match pb::OperationKind::try_from(r.kind) {
            Ok(pb::OperationKind::Unspecified) => None,
            Ok(pb::OperationKind::Maintenance) => Some(OperationKind::Maintenance),
            Ok(pb::OperationKind::Reconcile) => Some(OperationKind::Reconcile),
            Ok(pb::OperationKind::Rescue) => Some(OperationKind::Rescue),
            Err(_) => return Err(Status::invalid_argument(format!("unknown operation kind {}", r.kind))),
        };
        let size = page_size(r.page_size, 100)?;
        let token = (!r.page_token.is_empty()).then_some(r.page_token.as_str());
        let (ops, next) = operation::list(&self.ctx, kind, size, token).await?;
        Ok(Response::new(pb::ListOperationsResponse {
            operations: ops.into_iter().map(operation).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }

    async fn cancel_operation(
        &self,
        req: Request<pb::CancelOperationRequest>,
    ) -> Result<Response<pb::CancelOperationResponse>, Status> {
        let id = required("id", req.into_inner().id)?;
        let o = operation::cancel(&self.ctx, &id).await?;
        Ok(Response::new(pb::CancelOperationResponse { operation: Some(operation(o)) }))
    }

    async fn list_operation_items(
        &self,
        req: Request<pb::ListOperationItemsRequest>,
    ) -> Result<Response<pb::ListOperationItemsResponse>, Status> {
        let r = req.into_inner();
        let id = required("id", r.id)?;
        let size = page_size(r.page_size, 100)?;
        let after = if r.page_token.is_empty() {
            0
        } else {
            r.page_token
                .parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .ok_or_else(|| Error::InvalidArgument(format!("invalid page_token {:?}", r.page_token)))?
        };
        let (items, next) = operation::items(&self.ctx, &id, size, after).await?;
        Ok(Response::new(pb::ListOperationItemsResponse {
            items: items.into_iter().map(item).collect(),
            next_page_token: next.map(|n| n.to_string()).unwrap_or_default(),
        }))
    }
}
