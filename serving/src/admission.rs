//! Admission control: at most N requests in flight, refused at once beyond that (never
//! queued without bound), and every request still running cut off when the shutdown grace
//! period is over (and none admitted after that).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};

use crate::error::ServiceError;

#[derive(Clone)]
pub struct Admission {
    permits: Arc<Semaphore>,
    limit: usize,
    draining: Arc<AtomicBool>,
    /// The `service` label of the in-flight gauge.
    service: &'static str,
    /// Set when the grace period is over: running requests end with UNAVAILABLE.
    cut_off: Arc<watch::Sender<bool>>,
    grace_seconds: u64,
}

/// Held for as long as a request runs (a stream holds it until it ends).
pub struct Permit {
    permit: Option<OwnedSemaphorePermit>,
    admission: Admission,
}

impl Permit {
    /// Resolves with the error to return once the server cuts running requests off; a
    /// request selects on it next to its work.
    pub async fn cut_off(&self) -> ServiceError {
        let mut rx = self.admission.cut_off.subscribe();
        // The sender lives as long as the admission this permit holds.
        let _ = rx.wait_for(|cut| *cut).await;
        ServiceError::ShutDown(self.admission.grace_seconds)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.admission.record_in_flight();
    }
}

impl Admission {
    pub fn new(limit: usize, service: &'static str) -> Self {
        Admission {
            permits: Arc::new(Semaphore::new(limit)),
            limit,
            draining: Arc::new(AtomicBool::new(false)),
            service,
            cut_off: Arc::new(watch::Sender::new(false)),
            grace_seconds: 0,
        }
    }

    /// The grace period that cut-off requests are told about.
    pub fn with_shutdown_grace(self, seconds: u64) -> Self {
        Admission {
            grace_seconds: seconds,
            ..self
        }
    }

    /// End every running request now (the grace period is over).
    pub fn cut_off(&self) {
        self.cut_off.send_replace(true);
    }

    fn record_in_flight(&self) {
        metrics::gauge!(crate::metrics::REQUESTS_IN_FLIGHT, "component" => self.service)
            .set(self.in_flight() as f64);
    }

    /// A request that reaches a draining server is still served: it came on a connection
    /// opened before the GOAWAY, in the moment before the client heard of it, and the grace
    /// period covers it. Once the grace period is over nothing is admitted.
    pub fn admit(&self) -> Result<Permit, ServiceError> {
        if *self.cut_off.borrow() {
            return Err(ServiceError::Draining);
        }
        let permit = self
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ServiceError::QueueFull { limit: self.limit })?;
        self.record_in_flight();
        Ok(Permit {
            permit: Some(permit),
            admission: self.clone(),
        })
    }

    pub fn in_flight(&self) -> usize {
        self.limit - self.permits.available_permits()
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The server drains: readiness stays NOT_SERVING (see health.rs).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Wait until no request is in flight, or `grace` has passed; true when all finished.
    pub async fn wait_idle(&self, grace: Duration) -> bool {
        let all = self.permits.clone().acquire_many_owned(self.limit as u32);
        tokio::time::timeout(grace, all).await.is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refuses_beyond_the_limit_and_after_the_grace_period() {
        let admission = Admission::new(2, "test");
        let a = admission.admit().unwrap();
        let _b = admission.admit().unwrap();
        assert!(matches!(
            admission.admit(),
            Err(ServiceError::QueueFull { limit: 2 })
        ));
        assert_eq!(admission.in_flight(), 2);
        drop(a);
        let c = admission.admit().unwrap();
        drop(c);
        admission.drain();
        // Draining still serves what reaches it; the grace period's end does not.
        let _d = admission.admit().unwrap();
        admission.cut_off();
        assert!(matches!(admission.admit(), Err(ServiceError::Draining)));
        assert!(!admission.wait_idle(Duration::from_millis(20)).await);
    }

    #[tokio::test]
    async fn cut_off_ends_running_requests_with_the_grace_period() {
        let admission = Admission::new(2, "test").with_shutdown_grace(7);
        let permit = admission.admit().unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(20), permit.cut_off()).await;
        assert!(waiting.is_err(), "cut off before the grace period was over");
        admission.cut_off();
        let error = tokio::time::timeout(Duration::from_secs(1), permit.cut_off())
            .await
            .expect("cut off");
        assert!(matches!(error, ServiceError::ShutDown(7)), "{error}");
    }
}
