//! What every prober sees: the gRPC health service (`grpc.health.v1.Health`) and the admin
//! listener's `/readyz` read the same statuses, so the two never disagree.
//!
//! Every strata service and the server as a whole ("") are SERVING while the primary answers and
//! NOT_SERVING while it does not; once [`Health::drain`] ran (shutdown began) they stay
//! NOT_SERVING whatever the primary does.

use std::sync::Arc;

use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tonic_health::{
    ServingStatus,
    pb::{HealthCheckRequest, health_check_response, health_server::Health as _},
    server::{HealthReporter, HealthService},
};

use super::SERVICE_NAMES;

/// The server's health statuses. Cheap to clone; clones share them.
#[derive(Clone)]
pub struct Health {
    inner: Arc<Inner>,
}

struct Inner {
    reporter: HealthReporter,
    /// True once draining began. Held while statuses are written, so the primary's watcher cannot
    /// turn a status back to SERVING after [`Health::drain`] returned.
    draining: Mutex<bool>,
    /// Ends the watcher of the primary.
    stop: CancellationToken,
}

impl Health {
    /// Statuses that follow `primary_up` (a task does, until [`Health::drain`]), set from its
    /// current value before this returns.
    pub async fn follow(primary_up: watch::Receiver<bool>) -> Self {
        let health = Self {
            inner: Arc::new(Inner {
                reporter: HealthReporter::new(),
                draining: Mutex::new(false),
                stop: CancellationToken::new(),
            }),
        };
        let up = *primary_up.borrow();
        health.set_all(up).await;
        tokio::spawn(health.clone().follow_primary(primary_up));
        health
    }

    async fn follow_primary(self, mut primary_up: watch::Receiver<bool>) {
        loop {
            let up = *primary_up.borrow_and_update();
            if !self.set_all(up).await {
                break;
            }
            tokio::select! {
                _ = self.inner.stop.cancelled() => break,
                changed = primary_up.changed() => if changed.is_err() { break },
            }
        }
    }

    /// Every status SERVING (`up`) or NOT_SERVING; false, changing nothing, once draining.
    async fn set_all(&self, up: bool) -> bool {
        let draining = self.inner.draining.lock().await;
        if *draining {
            return false;
        }
        self.write_all(if up { ServingStatus::Serving } else { ServingStatus::NotServing }).await;
        true
    }

    async fn write_all(&self, status: ServingStatus) {
        self.inner.reporter.set_service_status("", status).await;
        for name in SERVICE_NAMES {
            self.inner.reporter.set_service_status(*name, status).await;
        }
    }

    /// Turns every status NOT_SERVING for good (shutdown began): when this returns, every probe
    /// answers NOT_SERVING / 503.
    pub async fn drain(&self) {
        let mut draining = self.inner.draining.lock().await;
        *draining = true;
        self.inner.stop.cancel();
        self.write_all(ServingStatus::NotServing).await;
    }

    /// Whether the server as a whole ("") is SERVING, read as the gRPC health service answers it.
    pub async fn serving(&self) -> bool {
        let check = self.service().check(tonic::Request::new(HealthCheckRequest { service: String::new() })).await;
        matches!(check.map(|r| r.into_inner().status()), Ok(health_check_response::ServingStatus::Serving))
    }

    /// The gRPC health service over these statuses.
    pub(super) fn service(&self) -> HealthService {
        HealthService::from_health_reporter(self.inner.reporter.clone())
    }
}
