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
    /// Asks every backend at once; each gets a couple of seconds. The errors are short, for a
    /// public answer; the detail goes to the log once, when a backend stops answering, and a
    /// line says when it answers again.
    pub async fn readiness(&self) -> Vec<Check> {
        async fn check<E: Into<super::Error>>(
            component: &'static str,
            backend: &'static str,
            ping: impl std::future::Future<Output = Result<(), E>>,
        ) -> (Check, Option<String>) {
            let (error, detail) = match tokio::time::timeout(CHECK_TIMEOUT, ping).await {
                Ok(Ok(())) => (None, None),
                Ok(Err(e)) => {
                    let e: super::Error = e.into();
                    let short = match e {
                        super::Error::Unavailable { .. } => "unreachable",
                        super::Error::StorageFull(_) => "full",
                        _ => "failing",
                    };
                    (Some(short.to_owned()), Some(e.to_string()))
                }
                Err(_) => {
                    let late = format!("no answer within {}s", CHECK_TIMEOUT.as_secs());
                    (Some(late.clone()), Some(late))
                }
            };
            (Check { component, backend, error }, detail)
        }
        let (metadata, sessions, storage) = tokio::join!(
            check("metadata", self.metadata.kind(), self.metadata.ping()),
            check("sessions", self.sessions.kind(), self.sessions.ping()),
            check("storage", self.blobs.kind(), self.blobs.ping()),
        );
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        [metadata, sessions, storage]
            .into_iter()
            .map(|(check, detail)| {
                match (&detail, down.contains(check.component)) {
                    (Some(detail), false) => {
                        tracing::warn!(component = check.component, backend = check.backend, error = %detail, "backend does not answer");
                        down.insert(check.component);
                    }
                    (None, true) => {
                        tracing::info!(component = check.component, backend = check.backend, "backend answers again");
                        down.remove(check.component);
                    }
                    _ => {}
                }
                check
            })
            .collect()
    }
}
