//! Readiness: whether every backend answers.

use std::time::Duration;

use super::Registry;

/// How long a backend may take to answer a readiness check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The state of one backend.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// `metadata`, `sessions` or `storage`.
    pub component: &'static str,
    /// The backend's kind (`postgres`, `redis`, `s3`, …).
    pub backend: &'static str,
    /// `None` when it answered; otherwise why not.
    pub error: Option<String>,
}

impl Registry {
    /// Asks every backend at once; each gets a couple of seconds.
    pub async fn readiness(&self) -> Vec<Check> {
        async fn check<E: std::fmt::Display>(
            component: &'static str,
            backend: &'static str,
            ping: impl std::future::Future<Output = Result<(), E>>,
        ) -> Check {
            let error = match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(_) => Some(format!("no answer within {}s", CHECK_TIMEOUT.as_secs())),
            };
            Check { component, backend, error }
        }
        let (metadata, sessions, storage) = tokio::join!(
            check("metadata", self.metadata.kind(), self.metadata.ping()),
            check("sessions", self.sessions.kind(), self.sessions.ping()),
            check("storage", self.blobs.kind(), self.blobs.ping()),
        );
        vec![metadata, sessions, storage]
    }
}
