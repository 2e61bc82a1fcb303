//! Removes the bytes of uploads that no session knows any more: cancelled by a replica that
//! died before cleaning up, expired after `upload_idle_timeout`, or lost with a restart of
//! the in-memory session store.

use std::time::{Duration, SystemTime};

use super::Registry;

impl Registry {
    /// One sweep; returns how many uploads were discarded.
    pub async fn sweep_uploads(&self) -> usize {
        let cutoff = SystemTime::now() - self.policy.upload_idle_timeout;
        let uploads = match self.blobs.list_uploads().await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "janitor could not list uploads");
                return 0;
            }
        };
        let mut discarded = 0;
        for upload in uploads.into_iter().filter(|u| u.modified < cutoff) {
            match self.sessions.get(&upload.id).await {
                Ok(None) => {}
                Ok(Some(_)) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "janitor could not read sessions");
                    return discarded;
                }
            }
            match self.blobs.abort_upload(&upload.id, None).await {
                Ok(()) => discarded += 1,
                Err(e) => tracing::warn!(upload = %upload.id, error = %e, "janitor could not discard upload"),
            }
        }
        if discarded > 0 {
            crate::metrics::Metrics::get().uploads_swept.inc_by(discarded as u64);
            tracing::info!(discarded, "janitor discarded abandoned uploads");
        }
        discarded
    }

    /// Sweeps now and then, for as long as the process runs.
    pub fn spawn_janitor(&self) -> tokio::task::JoinHandle<()> {
        let registry = self.clone();
        let every = (self.policy.upload_idle_timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            loop {
                ticks.tick().await;
                registry.sweep_uploads().await;
            }
        })
    }
}
