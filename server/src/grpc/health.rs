//! What every prober sees: the gRPC health service (`grpc.health.v1.Health`) and the admin
//! listener's `/readyz` read the same statuses, so the two never disagree.
//!
//! The server as a whole ("") and every strata service are SERVING while the primary answers and
//! NOT_SERVING while it does not; FileService and ArchiveService, which move bytes to and from the
//! object store, are also NOT_SERVING while the store does not answer its probe. Once
//! [`Health::drain`] ran (shutdown began) everything stays NOT_SERVING whatever the probes say.

use std::sync::Arc;

use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;
use tonic_health::{
    ServingStatus,
    pb::{HealthCheckRequest, health_check_response, health_server::Health as _},
    server::{HealthReporter, HealthService},
};

use super::{SERVICE_NAMES, archive::ArchiveApi, files::FileApi};

/// The services that need the object store as well as the primary.
fn needs_objects(name: &str) -> bool {
    use strata_client::pb::{archive_service_server::ArchiveServiceServer, file_service_server::FileServiceServer};
    use tonic::server::NamedService as _;
    name == <FileServiceServer<FileApi>>::NAME || name == <ArchiveServiceServer<ArchiveApi>>::NAME
}

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
    /// Statuses that follow `primary_up` and `objects_up` (a task does, until [`Health::drain`]),
    /// set from their current values before this returns.
    pub async fn follow(primary_up: watch::Receiver<bool>, objects_up: watch::Receiver<bool>) -> Self {
        let health = Self {
            inner: Arc::new(Inner {
                reporter: HealthReporter::new(),
                draining: Mutex::new(false),
                stop: CancellationToken::new(),
            }),
        };
        let (primary, objects) = (*primary_up.borrow(), *objects_up.borrow());
        health.set_all(primary, objects).await;
        tokio::spawn(health.clone().follow_probes(primary_up, objects_up));
        health
    }

    async fn follow_probes(self, mut primary_up: watch::Receiver<bool>, mut objects_up: watch::Receiver<bool>) {
        loop {
            let (primary, objects) = (*primary_up.borrow_and_update(), *objects_up.borrow_and_update());
            if !self.set_all(primary, objects).await {
                break;
            }
            tokio::select! {
                _ = self.inner.stop.cancelled() => break,
                changed = primary_up.changed() => if changed.is_err() { break },
                changed = objects_up.changed() => if changed.is_err() { break },
            }
        }
    }

    /// Every status from the probes; false, changing nothing, once draining.
    async fn set_all(&self, primary: bool, objects: bool) -> bool {
        let draining = self.inner.draining.lock().await;
        if *draining {
            return false;
        }
        let status = |up: bool| if up { ServingStatus::Serving } else { ServingStatus::NotServing };
        self.inner.reporter.set_service_status("", status(primary)).await;
        for name in SERVICE_NAMES {
            let up = primary && (objects || !needs_objects(name));
            self.inner.reporter.set_service_status(*name, status(up)).await;
        }
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
        self.service_serving("").await
    }

    /// Whether `service` ("": the server) is SERVING, read as the gRPC health service answers it.
    pub async fn service_serving(&self, service: &str) -> bool {
        let check = self.service().check(tonic::Request::new(HealthCheckRequest { service: service.to_owned() })).await;
        matches!(check.map(|r| r.into_inner().status()), Ok(health_check_response::ServingStatus::Serving))
    }

    /// The gRPC health service over these statuses.
    pub(super) fn service(&self) -> HealthService {
        HealthService::from_health_reporter(self.inner.reporter.clone())
    }
}
