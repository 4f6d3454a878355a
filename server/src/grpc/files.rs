//! FileService: decode → service → encode.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use strata_client::pb::{self, file_service_server::FileService, upload_request::Kind};
use tonic::{Request, Response, Status, Streaming};

use super::{
    auth::caller_owners,
    convert::{time, ts},
    status::code_name,
};
use crate::service::{
    Context, Error,
    blob_migration::{self, BlobMigrationState},
    files::{self, FileHeader, ListQuery, Owners, StreamEnd, UploadStart, UploadState},
};

/// gRPC adapter of [`files`].
pub(super) struct FileApi {
    pub(crate) ctx: Context,
}

/// The file owners the caller may see and write.
fn owners<T>(req: &Request<T>) -> Owners {
    Owners::from_scope(caller_owners(req))
}

/// A new upload's header, stamped with the caller's owner when its token is scoped.
fn header(ctx: &Context, h: pb::FileHeader, owners: &Owners) -> Result<FileHeader, Error> {
    let owner = owners.stamp(h.owner)?;
    FileHeader::validate(h.name, h.content_type, owner, h.size_bytes, h.sha256, h.metadata, &ctx.file_limits)
}

fn file(f: files::File) -> pb::File {
    pb::File {
        id: f.id,
        name: f.name,
        content_type: f.content_type,
        owner: f.owner,
        size_bytes: f.size as i64,
        blake3: f.blake3,
        sha256: f.sha256.unwrap_or_default(),
        metadata: f.metadata.into_iter().collect(),
        create_time: Some(ts(f.created_at)),
        lost: f.lost,
    }
}

fn migration(m: blob_migration::Migration) -> pb::BlobMigration {
    pb::BlobMigration {
        id: m.id,
        state: match m.state {
            BlobMigrationState::Running => pb::BlobMigrationState::Running,
            BlobMigrationState::Done => pb::BlobMigrationState::Done,
            BlobMigrationState::Failed => pb::BlobMigrationState::Failed,
        } as i32,
        rows_done: m.rows_done,
        bytes_done: m.bytes_done,
        error: m.error.unwrap_or_default(),
        update_time: Some(ts(m.updated_at)),
    }
}

type DownloadStream = Pin<Box<dyn Stream<Item = Result<pb::DownloadResponse, Status>> + Send>>;

impl FileApi {
    /// A transfer call that failed: counted by its status code, and answered with it.
    fn failed(&self, direction: &'static str, status: Status) -> Status {
        self.ctx.metrics.file_failed(direction, code_name(status.code()));
        status
    }
}

#[tonic::async_trait]
impl FileService for FileApi {
    async fn create_upload(
        &self,
        req: Request<pb::CreateUploadRequest>,
    ) -> Result<Response<pb::CreateUploadResponse>, Status> {
        let owners = owners(&req);
        let h = req.into_inner().header.ok_or_else(|| Status::invalid_argument("header is required"))?;
        let status = files::create_upload(&self.ctx, header(&self.ctx, h, &owners)?).await?;
        Ok(Response::new(pb::CreateUploadResponse { upload_id: status.id, expire_time: Some(ts(status.expires_at)) }))
    }

    async fn upload(&self, req: Request<Streaming<pb::UploadRequest>>) -> Result<Response<pb::UploadResponse>, Status> {
        let owners = owners(&req);
        let mut stream = req.into_inner();
        let first = match stream.message().await? {
            Some(pb::UploadRequest { kind: Some(k) }) => k,
            _ => return Err(Status::invalid_argument("the first message must be a header or a resume")),
        };
        let start = match first {
            Kind::Header(h) => UploadStart::New(header(&self.ctx, h, &owners)?),
            Kind::Resume(r) => UploadStart::Resume {
                offset: u64::try_from(r.offset).map_err(|_| Status::invalid_argument("offset is negative"))?,
                id: r.upload_id,
            },
            Kind::Chunk(_) => return Err(Status::invalid_argument("the first message must be a header or a resume")),
        };
        let received = self.ctx.metrics.file_bytes("upload");
        let chunks = stream.map(move |m| match m {
            Ok(pb::UploadRequest { kind: Some(Kind::Chunk(c)) }) => {
                received.inc_by(c.len() as u64);
                Ok(c)
            }
            Ok(_) => Err(StreamEnd::Invalid("after the first message only chunks may follow".into())),
            // An over-long message is the client's mistake, not a lost connection.
            Err(s) if matches!(s.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted) => {
                Err(StreamEnd::Invalid(s.message().to_owned()))
            }
            Err(s) => Err(StreamEnd::Disconnected(s.message().to_owned())),
        });
        match files::upload(&self.ctx, start, chunks, &owners).await {
            Ok(f) => {
                self.ctx.metrics.file_done("upload");
                Ok(Response::new(pb::UploadResponse { file: Some(file(f)) }))
            }
            Err(e) => Err(self.failed("upload", e.into())),
        }
    }

    async fn get_upload_status(
        &self,
        req: Request<pb::GetUploadStatusRequest>,
    ) -> Result<Response<pb::GetUploadStatusResponse>, Status> {
        let owners = owners(&req);
        let s = files::upload_status(&self.ctx, &req.into_inner().upload_id, &owners).await?;
        Ok(Response::new(pb::GetUploadStatusResponse {
            upload_id: s.id,
            state: match s.state {
                UploadState::Open => pb::UploadState::Open,
                UploadState::Complete => pb::UploadState::Complete,
                UploadState::Failed => pb::UploadState::Failed,
            } as i32,
            committed_offset: s.committed as i64,
            file_id: s.file_id.unwrap_or_default(),
            error: s.error.unwrap_or_default(),
            expire_time: Some(ts(s.expires_at)),
        }))
    }

    type DownloadStream = DownloadStream;

    async fn download(&self, req: Request<pb::DownloadRequest>) -> Result<Response<DownloadStream>, Status> {
        let owners = owners(&req);
        let r = req.into_inner();
        let offset = u64::try_from(r.offset).map_err(|_| Status::invalid_argument("offset is negative"))?;
        let length = u64::try_from(r.length).map_err(|_| Status::invalid_argument("length is negative"))?;
        let (f, bytes) = match files::download(&self.ctx, &r.file_id, offset, length, &owners).await {
            Ok(d) => d,
            Err(e) => return Err(self.failed("download", e.into())),
        };
        let first = pb::DownloadResponse { file: Some(file(f)), chunk: Default::default() };
        let (metrics, sent) = (self.ctx.metrics.clone(), self.ctx.metrics.file_bytes("download"));
        let failed = metrics.clone();
        let rest = bytes.map(move |b| match b {
            Ok(chunk) => {
                sent.inc_by(chunk.len() as u64);
                Ok(pb::DownloadResponse { file: None, chunk })
            }
            Err(e) => {
                let status = Status::from(e);
                failed.file_failed("download", code_name(status.code()));
                Err(status)
            }
        });
        // Reached only when every chunk went out (tonic stops polling after an error).
        let done = futures::stream::once(async move { metrics.file_done("download") }).filter_map(|()| async { None });
        Ok(Response::new(Box::pin(futures::stream::once(async { Ok(first) }).chain(rest).chain(done))))
    }

    async fn stat_file(&self, req: Request<pb::StatFileRequest>) -> Result<Response<pb::StatFileResponse>, Status> {
        let owners = owners(&req);
        let f = files::stat(&self.ctx, &req.into_inner().file_id, &owners).await?;
        Ok(Response::new(pb::StatFileResponse { file: Some(file(f)) }))
    }

    async fn list_files(&self, req: Request<pb::ListFilesRequest>) -> Result<Response<pb::ListFilesResponse>, Status> {
        let owners = owners(&req);
        let r = req.into_inner();
        let q = ListQuery::parse(
            r.page_size,
            &r.page_token,
            r.owner,
            r.name_prefix,
            time(r.create_time_after)?,
            time(r.create_time_before)?,
        )?;
        let (fs, next_page_token) = files::list(&self.ctx, &q, &owners).await?;
        Ok(Response::new(pb::ListFilesResponse { files: fs.into_iter().map(file).collect(), next_page_token }))
    }

    async fn start_blob_migration(
        &self,
        req: Request<pb::StartBlobMigrationRequest>,
    ) -> Result<Response<pb::StartBlobMigrationResponse>, Status> {
        let r = req.into_inner();
        let base64 = match pb::BlobEncoding::try_from(r.encoding) {
            Ok(pb::BlobEncoding::Base64) => true,
            Ok(pb::BlobEncoding::Bytea) => false,
            _ => return Err(Status::invalid_argument("encoding must be BASE64 or BYTEA")),
        };
        let start = blob_migration::StartRequest {
            schema_name: r.schema_name,
            table_name: r.table_name,
            key_column: r.key_column,
            blob_column: r.blob_column,
            reference_column: r.reference_column,
            base64,
            batch_size: i64::from(r.batch_size),
            dry_run: r.dry_run,
            owner: r.owner,
            content_type: r.content_type,
        }
        .validate()?;
        let (m, pending_rows, pending_bytes) = blob_migration::start(&self.ctx, start).await?;
        Ok(Response::new(pb::StartBlobMigrationResponse { migration: m.map(migration), pending_rows, pending_bytes }))
    }

    async fn get_blob_migration(
        &self,
        req: Request<pb::GetBlobMigrationRequest>,
    ) -> Result<Response<pb::GetBlobMigrationResponse>, Status> {
        let m = blob_migration::get(&self.ctx, &req.into_inner().id).await?;
        Ok(Response::new(pb::GetBlobMigrationResponse { migration: Some(migration(m)) }))
    }

    async fn reconcile_objects(
        &self,
        req: Request<pb::ReconcileObjectsRequest>,
    ) -> Result<Response<pb::ReconcileObjectsResponse>, Status> {
        let r = req.into_inner();
        let grace = match r.grace_period {
            None => std::time::Duration::from_secs(3600),
            Some(d) => std::time::Duration::try_from(d)
                .map_err(|_| Status::invalid_argument("grace_period must not be negative"))?,
        };
        let op = files::reconcile::start(&self.ctx, r.repair, grace).await?;
        Ok(Response::new(pb::ReconcileObjectsResponse { operation: Some(super::operations::operation(op)) }))
    }

    async fn delete_file(
        &self,
        req: Request<pb::DeleteFileRequest>,
    ) -> Result<Response<pb::DeleteFileResponse>, Status> {
        let owners = owners(&req);
        let content_deleted = files::delete(&self.ctx, &req.into_inner().file_id, &owners).await?;
        Ok(Response::new(pb::DeleteFileResponse { content_deleted }))
    }
}
