//! The edge: one file per gRPC service (decode → service → encode), auth, health and reflection,
//! and the HTTP admin listener (`/livez`, `/readyz`) that mirrors the gRPC health.

mod accept;
mod admin;
pub mod admin_http;
mod alerts;
mod archive;
mod audit;
mod audit_api;
pub mod auth;
mod backup;
mod convert;
mod drain;
mod files;
pub mod health;
mod limits;
mod maintenance;
pub mod methods;
mod observe;
mod operations;
mod partitions;
mod proxy;
mod scheduler;
mod status;
mod storage;
pub mod tls;
mod tokens;

use std::time::Duration;

use strata_client::INSTANCE_HEADER;
use strata_client::pb::{
    self, admin_service_server::AdminServiceServer, alert_service_server::AlertServiceServer,
    archive_service_server::ArchiveServiceServer, audit_service_server::AuditServiceServer,
    backup_service_server::BackupServiceServer, file_service_server::FileServiceServer,
    maintenance_service_server::MaintenanceServiceServer, operation_service_server::OperationServiceServer,
    partition_service_server::PartitionServiceServer, scheduler_service_server::SchedulerServiceServer,
    storage_service_server::StorageServiceServer, token_service_server::TokenServiceServer,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::util::MapResponseLayer;

use crate::{config::Reflection, service::Context};

/// Fully-qualified names of strata's services, as the health service knows them.
pub const SERVICE_NAMES: &[&str] = &[
    <AdminServiceServer<admin::AdminApi> as tonic::server::NamedService>::NAME,
    <StorageServiceServer<storage::StorageApi> as tonic::server::NamedService>::NAME,
    <FileServiceServer<files::FileApi> as tonic::server::NamedService>::NAME,
    <ArchiveServiceServer<archive::ArchiveApi> as tonic::server::NamedService>::NAME,
    <BackupServiceServer<backup::BackupApi> as tonic::server::NamedService>::NAME,
    <PartitionServiceServer<partitions::PartitionApi> as tonic::server::NamedService>::NAME,
    <MaintenanceServiceServer<maintenance::MaintenanceApi> as tonic::server::NamedService>::NAME,
    <SchedulerServiceServer<scheduler::SchedulerApi> as tonic::server::NamedService>::NAME,
    <AlertServiceServer<alerts::AlertApi> as tonic::server::NamedService>::NAME,
    <OperationServiceServer<operations::OperationApi> as tonic::server::NamedService>::NAME,
    <TokenServiceServer<tokens::TokenApi> as tonic::server::NamedService>::NAME,
    <AuditServiceServer<audit_api::AuditApi> as tonic::server::NamedService>::NAME,
];

/// Adds [`INSTANCE_HEADER`] (this instance's id) to every response: gRPC ones (a success, an
/// error — trailers-only, its status among these headers — and a stream alike start with them) and
/// the admin listener's. Behind a load balancer it tells clients which instance answered.
pub(crate) fn instance_header<B>(
    instance_id: &str,
) -> MapResponseLayer<impl Fn(http::Response<B>) -> http::Response<B> + Clone + use<B>> {
    let value = http::HeaderValue::from_str(instance_id).unwrap_or_else(|_| {
        tracing::warn!(instance = instance_id, "the instance id is not a valid header value; sent as `unknown`");
        http::HeaderValue::from_static("unknown")
    });
    MapResponseLayer::new(move |mut response: http::Response<B>| {
        response.headers_mut().insert(INSTANCE_HEADER, value.clone());
        response
    })
}

/// HTTP/2 flow-control windows larger than the defaults: streamed RPCs (files, archive rows) are
/// otherwise capped by the 64 KiB default window on a high-bandwidth loopback or LAN.
const STREAM_WINDOW: u32 = 8 << 20;
const CONNECTION_WINDOW: u32 = 16 << 20;
const MAX_FRAME: u32 = 1 << 20;
/// Keeps idle client connections alive through NATs and detects dead peers.
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Serves every service on `listener`, the health service answering from `health`, until
/// `shutdown` is cancelled; then stops accepting and drains in-flight calls for at most
/// `shutdown_grace`.
pub async fn serve(
    ctx: Context,
    listener: TcpListener,
    tls: Option<std::sync::Arc<tls::Tls>>,
    health: &health::Health,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let health = tonic_health::pb::health_server::HealthServer::new(health.service());
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("embedded descriptor sets are valid");
    // grpcurl 1.8 and other older tools speak only v1alpha.
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("embedded descriptor sets are valid");

    // Calls in progress get the grace period to end; then the connections still open are closed.
    let close = CancellationToken::new();
    {
        let (shutdown, close, grace) = (shutdown.clone(), close.clone(), ctx.config.shutdown_grace);
        tokio::spawn(async move {
            tokio::select! {
                _ = close.cancelled() => {}
                _ = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
                    tracing::warn!("calls still in progress after the {grace:?} shutdown grace period; closing their connections");
                    close.cancel();
                }
            }
        });
    }
    if let Some(tls) = &tls {
        tokio::spawn(tls.clone().watch(close.clone()));
    }
    let reflect = ctx.config.reflection != Reflection::Off;
    let incoming = accept::incoming(listener, tls, ctx.config.trusted_proxies.clone().into(), close.clone());
    let auth = auth::AuthLayer::new(
        auth::Authorizer::new(&ctx.config.tokens, &ctx.config.tls_client_roles, !ctx.config.trusted_proxies.is_empty())
            .reflection_public(ctx.config.reflection == Reflection::Public)
            .api_tokens(ctx.clone()),
        ctx.config.audit.then(|| ctx.clone()),
        limits::Limits::new(ctx.config.rate_limit, ctx.config.rate_burst, ctx.config.max_calls_per_caller),
        (!ctx.config.unary_deadline.is_zero()).then_some(ctx.config.unary_deadline),
    );
    let instance = instance_header::<tonic::body::Body>(&ctx.instance_id);
    let observe = observe::ObserveLayer::new(&ctx.metrics, ctx.config.metrics);
    let result = tonic::transport::Server::builder()
        .initial_stream_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME)
        .http2_keepalive_interval(Some(KEEPALIVE))
        .max_concurrent_streams(Some(ctx.config.max_streams_per_connection))
        // Outermost, so that the auth layer's refusals carry it too.
        .layer(instance)
        // Before auth: refused calls are counted, and their log lines carry the request id.
        .layer(observe)
        .layer(auth)
        .add_service(health)
        .add_optional_service(reflect.then_some(reflection_v1))
        .add_optional_service(reflect.then_some(reflection_v1alpha))
        .add_service(AdminServiceServer::new(admin::AdminApi { ctx: ctx.clone() }))
        .add_service(StorageServiceServer::new(storage::StorageApi { ctx: ctx.clone() }))
        .add_service(FileServiceServer::new(files::FileApi { ctx: ctx.clone() }))
        .add_service(ArchiveServiceServer::new(archive::ArchiveApi { ctx: ctx.clone() }))
        .add_service(BackupServiceServer::new(backup::BackupApi { ctx: ctx.clone() }))
        .add_service(PartitionServiceServer::new(partitions::PartitionApi { ctx: ctx.clone() }))
        .add_service(MaintenanceServiceServer::new(maintenance::MaintenanceApi { ctx: ctx.clone() }))
        .add_service(OperationServiceServer::new(operations::OperationApi { ctx: ctx.clone() }))
        .add_service(SchedulerServiceServer::new(scheduler::SchedulerApi { ctx: ctx.clone() }))
        .add_service(TokenServiceServer::new(tokens::TokenApi { ctx: ctx.clone() }))
        .add_service(AuditServiceServer::new(audit_api::AuditApi { ctx: ctx.clone() }))
        .add_service(AlertServiceServer::new(alerts::AlertApi { ctx }))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled())
        .await;
    close.cancel();
    shutdown.cancel();
    result
}
