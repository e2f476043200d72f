//! grpc.health.v1: liveness on `""` (the process answers), readiness on the service's own
//! name (NOT_SERVING while the model loads and while the server drains).

use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;

use crate::admission::Admission;

/// Readiness of the named service.
#[derive(Clone)]
pub struct Readiness {
    reporter: HealthReporter,
    service: &'static str,
    admission: Admission,
}

impl Readiness {
    /// Starts NOT_SERVING; returns the health server to mount next to the service.
    pub async fn new(
        service: &'static str,
        admission: Admission,
    ) -> (Self, HealthServer<HealthService>) {
        let reporter = HealthReporter::new();
        reporter
            .set_service_status(service, ServingStatus::NotServing)
            .await;
        let server = HealthServer::new(HealthService::from_health_reporter(reporter.clone()));
        let readiness = Readiness {
            reporter,
            service,
            admission,
        };
        (readiness, server)
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// The model is loaded: ready, unless the server already drains.
    pub async fn set_ready(&self) {
        if !self.admission.is_draining() {
            self.reporter
                .set_service_status(self.service, ServingStatus::Serving)
                .await;
        }
    }

    pub async fn set_not_ready(&self) {
        self.reporter
            .set_service_status(self.service, ServingStatus::NotServing)
            .await;
    }
}
