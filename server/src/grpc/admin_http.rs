//! The HTTP admin listener (`admin_listen`), for load balancers, orchestrators and Prometheus,
//! which probe and scrape over plain HTTP (HAProxy cannot send a gRPC health request):
//! - `GET /livez`: 200 while the process serves;
//! - `GET /readyz`: 200 while the gRPC health of the server ("") is SERVING, 503 otherwise — while
//!   the primary is unreachable, and from the moment shutdown began;
//! - `GET /metrics`: Prometheus metrics (docs/metrics.md), in the Prometheus text format, or
//!   OpenMetrics when the `Accept` header asks for `application/openmetrics-text`; 404 when the
//!   `metrics` setting is off.
//!
//! Every response carries the `x-strata-instance` header, as gRPC responses do.

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{SERVICE_NAMES, health::Health, instance_header};
use crate::{
    service::{self, Context},
    telemetry::metrics::ServiceLabels,
};

#[derive(Clone)]
struct Admin {
    health: Health,
    ctx: Context,
}

/// The admin routes.
fn router(admin: Admin) -> Router {
    let instance = instance_header::<axum::body::Body>(&admin.ctx.instance_id);
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(admin)
        .layer(instance)
}

/// Answering at all is the answer.
async fn livez() -> &'static str {
    "live\n"
}

async fn readyz(State(admin): State<Admin>) -> (StatusCode, &'static str) {
    if admin.health.serving().await {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !admin.ctx.config.metrics {
        return (StatusCode::NOT_FOUND, "metrics are off (setting `metrics`)\n").into_response();
    }
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    // From memory only: a scrape never waits for the database (the catalog's figures are read by
    // a background loop).
    service::exporter::pools(&admin.ctx);
    for name in SERVICE_NAMES {
        let up = admin.health.service_serving(name).await;
        admin.ctx.metrics.alerts.serving.get_or_create(&ServiceLabels { service: name }).set(i64::from(up));
    }
    let (body, content_type) = admin.ctx.metrics.encode(openmetrics);
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Serves the admin routes on `listener` until `stop` is cancelled, then lets the requests in
/// progress finish.
pub async fn serve(listener: TcpListener, health: Health, ctx: Context, stop: CancellationToken) {
    let admin = Admin { health, ctx };
    let served = axum::serve(listener, router(admin)).with_graceful_shutdown(stop.cancelled_owned()).await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin listener failed");
    }
}
