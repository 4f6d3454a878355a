//! Database backups.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{
    Client, Error,
    pb::{self, backup_service_client::BackupServiceClient},
};

/// Where a backup is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackupState {
    /// Being written.
    Running,
    /// Written and checked.
    Succeeded,
    /// Failed or interrupted.
    Failed,
}

/// One backup.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    /// Id.
    pub id: String,
    /// `pg_dump` (custom format) or `sqlite`.
    pub format: String,
    /// State.
    pub state: BackupState,
    /// Object key in the store.
    pub object_key: String,
    /// Size.
    pub size_bytes: i64,
    /// SHA-256 (hex).
    pub sha256: String,
    /// Result of the check.
    pub verification: String,
    /// Why it failed.
    pub error: String,
    /// Started.
    pub started_at: Option<DateTime<Utc>>,
    /// Ended.
    pub ended_at: Option<DateTime<Utc>>,
}

use crate::convert::ts as time;

impl From<pb::Backup> for Backup {
    fn from(b: pb::Backup) -> Self {
        Backup {
            state: match pb::BackupState::try_from(b.state).unwrap_or(pb::BackupState::Unspecified) {
                pb::BackupState::Running => BackupState::Running,
                pb::BackupState::Succeeded => BackupState::Succeeded,
                _ => BackupState::Failed,
            },
            id: b.id,
            format: b.format,
            object_key: b.object_key,
            size_bytes: b.size_bytes,
            sha256: b.sha256,
            verification: b.verification,
            error: b.error,
            started_at: time(b.start_time),
            ended_at: time(b.end_time),
        }
    }
}

impl Client {
    fn backups(&self) -> BackupServiceClient<crate::client::Svc> {
        BackupServiceClient::with_interceptor(self.channel.clone(), self.auth.clone())
    }

    /// Starts a backup of the application database.
    pub async fn run_backup(&self) -> Result<Backup, Error> {
        let r = self.backups().run_backup(pb::RunBackupRequest {}).await?.into_inner();
        Ok(r.backup.unwrap_or_default().into())
    }

    /// A backup.
    pub async fn backup(&self, id: &str) -> Result<Backup, Error> {
        let r = self.backups().get_backup(pb::GetBackupRequest { backup_id: id.into() }).await?.into_inner();
        Ok(r.backup.unwrap_or_default().into())
    }

    /// Polls a backup every `interval` until it ends.
    pub async fn wait_backup(&self, id: &str, interval: Duration) -> Result<Backup, Error> {
        loop {
            let b = self.backup(id).await?;
            if b.state != BackupState::Running {
                return Ok(b);
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// Backups, newest first, up to `limit`.
    pub async fn list_backups(&self, limit: usize) -> Result<Vec<Backup>, Error> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let r = self
                .backups()
                .list_backups(pb::ListBackupsRequest {
                    page_size: (limit - out.len()).min(1000) as i32,
                    page_token: token,
                })
                .await?
                .into_inner();
            out.extend(r.backups.into_iter().map(Backup::from));
            if r.next_page_token.is_empty() || out.len() >= limit {
                return Ok(out);
            }
            token = r.next_page_token;
        }
    }
}
