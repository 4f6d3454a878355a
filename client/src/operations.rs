//! Long operations (maintenance, reconciliation, rescue of default-partition rows): started by
//! their service's RPC, followed here from any instance.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    Client, Error,
    convert::ts,
    maintenance::TableMaintenance,
    pb::{self, operation_service_client::OperationServiceClient},
};

/// What an operation does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationKind {
    /// VACUUM / ANALYZE.
    Maintenance,
    /// Object store against catalog.
    Reconcile,
    /// Default-partition rows into partitions.
    Rescue,
}

impl OperationKind {
    fn to_pb(self) -> pb::OperationKind {
        match self {
            Self::Maintenance => pb::OperationKind::Maintenance,
            Self::Reconcile => pb::OperationKind::Reconcile,
            Self::Rescue => pb::OperationKind::Rescue,
        }
    }
}

impl std::str::FromStr for OperationKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "maintenance" => Ok(Self::Maintenance),
            "reconcile" => Ok(Self::Reconcile),
            "rescue" => Ok(Self::Rescue),
            _ => Err(format!("unknown operation kind {s:?} (maintenance, reconcile, rescue)")),
        }
    }
}

/// Where an operation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationState {
    /// Working.
    Running,
    /// Done.
    Succeeded,
    /// Stopped by an error.
    Failed,
    /// Stopped on request.
    Cancelled,
}

impl std::fmt::Display for OperationState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        })
    }
}

/// The kind's counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OperationResult {
    /// Maintenance.
    Maintenance {
        /// Tables done.
        tables_done: i64,
        /// Bytes given back.
        reclaimed_bytes: i64,
    },
    /// Reconciliation.
    Reconcile {
        /// Objects listed.
        objects_scanned: i64,
        /// Catalog blobs checked.
        blobs_scanned: i64,
        /// Objects no catalog row references.
        orphans: i64,
        /// Orphans deleted.
        deleted: i64,
        /// Content whose object is missing.
        lost_content: i64,
        /// Files whose content is missing.
        lost_files: i64,
    },
    /// Rescue of default-partition rows.
    Rescue {
        /// Rows moved (or that would be).
        rows_moved: i64,
        /// Partitions created (or that would be).
        partitions_created: i64,
        /// Rows left in the default partition.
        rows_left: i64,
    },
    /// None reported (a newer server's kind).
    None,
}

/// A long operation.
#[derive(Debug, Clone, Serialize)]
pub struct Operation {
    /// Id.
    pub id: String,
    /// Kind (None: one this SDK does not know).
    pub kind: Option<OperationKind>,
    /// State.
    pub state: OperationState,
    /// What it works on.
    pub target: String,
    /// The step it is at.
    pub phase: String,
    /// Units done.
    pub done: i64,
    /// Units in all (0: not known yet).
    pub total: i64,
    /// A cancel was asked for.
    pub cancel_requested: bool,
    /// Why it failed or stopped.
    pub error: Option<String>,
    /// The instance running it; once ended, the one that ended it.
    pub instance: String,
    /// Results recorded.
    pub item_count: i64,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Last step.
    pub updated_at: Option<DateTime<Utc>>,
    /// Ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Counters.
    pub result: OperationResult,
}

impl From<pb::Operation> for Operation {
    fn from(o: pb::Operation) -> Self {
        use pb::operation::Result as R;
        Operation {
            kind: match pb::OperationKind::try_from(o.kind) {
                Ok(pb::OperationKind::Maintenance) => Some(OperationKind::Maintenance),
                Ok(pb::OperationKind::Reconcile) => Some(OperationKind::Reconcile),
                Ok(pb::OperationKind::Rescue) => Some(OperationKind::Rescue),
                _ => None,
            },
            state: match pb::OperationState::try_from(o.state) {
                Ok(pb::OperationState::Running) => OperationState::Running,
                Ok(pb::OperationState::Succeeded) => OperationState::Succeeded,
                Ok(pb::OperationState::Cancelled) => OperationState::Cancelled,
                _ => OperationState::Failed,
            },
            result: match o.result {
                Some(R::Maintenance(m)) => {
                    OperationResult::Maintenance { tables_done: m.tables_done, reclaimed_bytes: m.reclaimed_bytes }
                }
                Some(R::Reconcile(r)) => OperationResult::Reconcile {
                    objects_scanned: r.objects_scanned,
                    blobs_scanned: r.blobs_scanned,
                    orphans: r.orphans,
                    deleted: r.deleted,
                    lost_content: r.lost_content,
                    lost_files: r.lost_files,
                },
                Some(R::Rescue(r)) => OperationResult::Rescue {
                    rows_moved: r.rows_moved,
                    partitions_created: r.partitions_created,
                    rows_left: r.rows_left,
                },
                None => OperationResult::None,
            },
            id: o.id,
            target: o.target,
            phase: o.phase,
            done: o.done,
            total: o.total,
            cancel_requested: o.cancel_requested,
            error: (!o.error.is_empty()).then_some(o.error),
            instance: o.instance,
            item_count: o.item_count,
            started_at: ts(o.started_at),
            updated_at: ts(o.updated_at),
            finished_at: ts(o.finished_at),
        }
    }
}

/// What one result of an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemKind {
    /// A table maintained.
    Table,
    /// An object no catalog row references.
    OrphanObject,
    /// An orphan deleted.
    DeletedObject,
    /// Content (BLAKE3) whose object is missing.
    LostContent,
    /// A file whose content is missing.
    LostFile,
    /// A partition created for rescued rows.
    Partition,
    /// An archive run started by emergency maintenance.
    StartedRun,
    /// A policy emergency maintenance could not start.
    SkippedPolicy,
    /// One this SDK does not know.
    Unknown,
}

/// One result of an operation.
#[derive(Debug, Clone, Serialize)]
pub struct OperationItem {
    /// Position (from 1).
    pub seq: i64,
    /// What it is.
    pub kind: ItemKind,
    /// The key, id or name.
    pub value: String,
    /// A table's figures.
    pub table: Option<TableMaintenance>,
    /// Rows of a rescued partition.
    pub rows: i64,
}

impl From<pb::OperationItem> for OperationItem {
    fn from(i: pb::OperationItem) -> Self {
        use pb::OperationItemKind as K;
        OperationItem {
            seq: i.seq,
            kind: match K::try_from(i.kind) {
                Ok(K::Table) => ItemKind::Table,
                Ok(K::OrphanObject) => ItemKind::OrphanObject,
                Ok(K::DeletedObject) => ItemKind::DeletedObject,
                Ok(K::LostContent) => ItemKind::LostContent,
                Ok(K::LostFile) => ItemKind::LostFile,
                Ok(K::Partition) => ItemKind::Partition,
                Ok(K::StartedRun) => ItemKind::StartedRun,
                Ok(K::SkippedPolicy) => ItemKind::SkippedPolicy,
                _ => ItemKind::Unknown,
            },
            value: i.value,
            table: i.table.map(TableMaintenance::from),
            rows: i.rows,
        }
    }
}

/// A page of items.
#[derive(Debug, Clone, Serialize)]
pub struct ItemPage {
    /// The items.
    pub items: Vec<OperationItem>,
    /// Token of the next page (empty: none now).
    pub next_page_token: String,
}

impl Client {
    fn operations(&self) -> OperationServiceClient<crate::client::Svc> {
        OperationServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// The operation `id`.
    pub async fn operation(&self, id: &str) -> Result<Operation, Error> {
        let r = self.operations().get_operation(pb::GetOperationRequest { id: id.into() }).await?.into_inner();
        r.operation.map(Operation::from).ok_or_else(|| Error::Malformed("no operation in the response".into()))
    }

    /// Polls the operation every `interval` until it ends.
    pub async fn wait_operation(&self, id: &str, interval: Duration) -> Result<Operation, Error> {
        loop {
            let o = self.operation(id).await?;
            if o.state != OperationState::Running {
                return Ok(o);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Waits for the operation and turns an end other than success into [`Error::Operation`].
    pub(crate) async fn finish_operation(&self, op: Operation) -> Result<Operation, Error> {
        let o = self.wait_operation(&op.id, Duration::from_millis(100)).await?;
        match o.state {
            OperationState::Succeeded => Ok(o),
            state => Err(Error::Operation { id: o.id, state: state.to_string(), message: o.error.unwrap_or_default() }),
        }
    }

    /// Operations newest first (of one kind when given), up to `limit`.
    pub async fn list_operations(&self, kind: Option<OperationKind>, limit: usize) -> Result<Vec<Operation>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .operations()
                .list_operations(pb::ListOperationsRequest {
                    kind: kind.map_or(pb::OperationKind::Unspecified, OperationKind::to_pb) as i32,
                    page_size: (limit - out.len()).clamp(1, 1000) as i32,
                    page_token: token,
                })
                .await?
                .into_inner();
            out.extend(r.operations.into_iter().map(Operation::from));
            if r.next_page_token.is_empty() || out.len() >= limit {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }

    /// Asks the operation to stop.
    pub async fn cancel_operation(&self, id: &str) -> Result<Operation, Error> {
        let r = self.operations().cancel_operation(pb::CancelOperationRequest { id: id.into() }).await?.into_inner();
        r.operation.map(Operation::from).ok_or_else(|| Error::Malformed("no operation in the response".into()))
    }

    /// A page of the operation's items after `page_token` (empty: from the start).
    pub async fn operation_items(&self, id: &str, page_token: &str, page_size: i32) -> Result<ItemPage, Error> {
        let r = self
            .operations()
            .list_operation_items(pb::ListOperationItemsRequest {
                id: id.into(),
                page_size,
                page_token: page_token.into(),
            })
            .await?
            .into_inner();
        Ok(ItemPage {
            items: r.items.into_iter().map(OperationItem::from).collect(),
            next_page_token: r.next_page_token,
        })
    }

    /// Every item of the operation, page by page (for an ended operation; a big reconciliation's
    /// items are better read a page at a time with [`Client::operation_items`]).
    pub async fn all_operation_items(&self, id: &str) -> Result<Vec<OperationItem>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let page = self.operation_items(id, &token, 1000).await?;
            out.extend(page.items);
            if page.next_page_token.is_empty() {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }
}
