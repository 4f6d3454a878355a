//! BackupService: decode → service → encode.

use strata_client::pb::{self, backup_service_server::BackupService};
use tonic::{Request, Response, Status};

use super::convert::{page_size, ts};
use crate::service::{
    Context, Error,
    backup::{self, Backup, BackupState},
};

/// gRPC adapter of [`backup`].
pub(super) struct BackupApi {
    pub(crate) ctx: Context,
}

fn backup_pb(b: Backup) -> pb::Backup {
    pb::Backup {
        state: match b.state {
            BackupState::Running => pb::BackupState::Running,
            BackupState::Succeeded => pb::BackupState::Succeeded,
            BackupState::Failed => pb::BackupState::Failed,
        } as i32,
        id: b.id,
        format: b.format.as_str().into(),
        object_key: b.object_key,
        size_bytes: b.size_bytes,
        sha256: b.sha256,
        verification: b.verification,
        error: b.error.unwrap_or_default(),
        start_time: Some(ts(b.started_at)),
        end_time: b.finished_at.map(ts),
    }
}

#[tonic::async_trait]
impl BackupService for BackupApi {
    async fn run_backup(&self, _req: Request<pb::RunBackupRequest>) -> Result<Response<pb::RunBackupResponse>, Status> {
        let b = backup::start(&self.ctx).await?;
        Ok(Response::new(pb::RunBackupResponse { backup: Some(backup_pb(b)) }))
    }

    async fn get_backup(&self, req: Request<pb::GetBackupRequest>) -> Result<Response<pb::GetBackupResponse>, Status> {
        let id = req.into_inner().backup_id;
        if id.is_empty() {
            return Err(Error::InvalidArgument("backup_id is required".into()).into());
        }
        Ok(Response::new(pb::GetBackupResponse { backup: Some(backup_pb(backup::get(&self.ctx, &id).await?)) }))
    }

    async fn list_backups(
        &self,
        req: Request<pb::ListBackupsRequest>,
    ) -> Result<Response<pb::ListBackupsResponse>, Status> {
        let req = req.into_inner();
        let size = page_size(req.page_size, 100)?;
        let token = (!req.page_token.is_empty()).then_some(req.page_token.as_str());
        let (rows, next) = backup::list(&self.ctx, size, token).await?;
        Ok(Response::new(pb::ListBackupsResponse {
            backups: rows.into_iter().map(backup_pb).collect(),
            next_page_token: next.unwrap_or_default(),
        }))
    }
}
