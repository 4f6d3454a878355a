//! The HTTP admin listener (`admin_listen`), for load balancers and orchestrators that probe over
//! plain HTTP (HAProxy cannot send a gRPC health request):
//! - `GET /livez`: 200 while the process serves;
//! - `GET /readyz`: 200 while the gRPC health of the server ("") is SERVING, 503 otherwise — while
//!   the primary is unreachable, and from the moment shutdown began.
//!
//! A router, so that further endpoints (metrics) join it. Every response carries the
//! `x-strata-instance` header, as gRPC responses do.

use axum::{Router, extract::State, http::StatusCode, routing::get};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::{health::Health, instance_header};

/// The admin routes, reading readiness from `health`.
fn router(health: Health, instance_id: &str) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .with_state(health)
        .layer(instance_header::<axum::body::Body>(instance_id))
}

/// Answering at all is the answer.
async fn livez() -> &'static str {
    "live\n"
}

async fn readyz(State(health): State<Health>) -> (StatusCode, &'static str) {
    if health.serving().await { (StatusCode::OK, "ready\n") } else { (StatusCode::SERVICE_UNAVAILABLE, "not ready\n") }
}

/// Serves the admin routes on `listener` until `stop` is cancelled, then lets the requests in
/// progress finish.
pub async fn serve(listener: TcpListener, health: Health, instance_id: String, stop: CancellationToken) {
    let served =
        axum::serve(listener, router(health, &instance_id)).with_graceful_shutdown(stop.cancelled_owned()).await;
    if let Err(e) = served {
        tracing::error!(error = %e, "admin listener failed");
    }
}
