//! Removes what nobody can reach any more: the bytes of uploads that no session knows (cancelled
//! by a replica that died before cleaning up, expired after `upload_idle_timeout`, or lost
//! with a restart of the in-memory session store), and blobs that no manifest references.

use std::time::{Duration, SystemTime};

use super::lifecycle::{Report, RunOptions, holder_id};
use super::{Error, Registry};
use crate::oci::{Digest, RepoName};

/// How long a collection asked for by hand waits for one a replica's collector is running.
const LEASE_WAIT: Duration = Duration::from_secs(60);

/// What a collection removed, or would remove on a dry run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Collected {
    /// Untagged manifests (with `--untagged`).
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
}

/// The time `age` before now; the epoch for ages older than the clock.
fn ago(age: Duration) -> SystemTime {
    SystemTime::now().checked_sub(age).unwrap_or(SystemTime::UNIX_EPOCH)
}

impl Registry {
    /// One sweep; returns how many uploads were discarded.
    pub async fn sweep_uploads(&self) -> usize {
        let cutoff = ago(self.policy.upload_idle_timeout);
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

    /// Removes, in every repository, the manifests that nothing keeps (see
    /// `MetadataStore::unkept_manifests`) and that were last pushed before `grace` ago;
    /// returns how many it removed (or would remove, on a dry run). Their blobs are left to
    /// [`Registry::collect_blobs`].
    pub async fn collect_manifests(&self, grace: Duration, dry_run: bool) -> Result<u64, Error> {
        if dry_run {
            return Ok(self.unkept_manifests(grace).await?.len() as u64);
        }
        let options =
            RunOptions { grace, untagged: Some(grace), retention: false, blobs: false, batch: 500, explain: false };
        Ok(self.collect_under_lease(&options, LEASE_WAIT).await?.manifests)
    }

    /// A whole collection, as `berth gc` runs it: with `untagged`, the manifests no tag keeps,
    /// then the blobs nothing references; with `retention`, the retention rules first. A dry
    /// run removes nothing and reports what the real run would: the blobs unreferenced now, and
    /// those that only the manifests it would remove reference.
    pub async fn collect(&self, grace: Duration, untagged: bool, dry_run: bool) -> Result<Collected, Error> {
        if !dry_run {
            let options = RunOptions {
                grace,
                untagged: untagged.then_some(grace),
                retention: false,
                blobs: true,
                batch: 500,
                explain: false,
            };
            let report = self.collect_under_lease(&options, LEASE_WAIT).await?;
            return Ok(Collected { manifests: report.manifests, blobs: report.blobs, bytes: report.bytes });
        }
        let removed = if untagged { self.unkept_manifests(grace).await? } else { Vec::new() };
        let mut counted = std::collections::BTreeSet::new();
        let mut collected = self.blobs_collected(grace, &mut counted).await?;
        collected.manifests = removed.len() as u64;
        if !removed.is_empty() {
            let cutoff = ago(grace);
            let going: std::collections::HashSet<(String, Digest)> =
                removed.iter().map(|(r, d)| (r.to_string(), d.clone())).collect();
            let mut candidates = std::collections::BTreeSet::new();
            for (repository, digest) in &removed {
                candidates.extend(self.metadata.manifest_references(repository, digest).await?);
            }
            for digest in candidates.difference(&counted) {
                let Some(holders) = self.metadata.blob_holders(digest, cutoff).await? else { continue };
                if !holders.recent
                    && holders.referenced_by.iter().all(|(r, d)| going.contains(&(r.to_string(), d.clone())))
                {
                    tracing::info!(digest = %digest, size = holders.size, "would remove blob (a layer of a manifest that would go)");
                    collected.blobs += 1;
                    collected.bytes += holders.size;
                }
            }
        }
        Ok(collected)
    }

    /// One run under the collector's lease, taken for it: while a replica's collector holds
    /// it, waits for that run to end, for up to `wait`.
    pub async fn collect_under_lease(&self, options: &RunOptions, wait: Duration) -> Result<Report, Error> {
        let holder = holder_id("gc");
        let deadline = std::time::Instant::now() + wait;
        let lease = loop {
            if let Some(lease) = self.take_lease(&holder, false).await? {
                break lease;
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::TryAgain(format!(
                    "a collection is running on a replica (it holds the gc lease) and did not end within {}; \
                     try again later",
                    humantime::format_duration(wait)
                )));
            }
            tracing::info!("a collection is running on a replica (it holds the gc lease); waiting for it to end");
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let report = self.run_collection(&lease, options).await;
        self.release_lease(&lease, None).await?;
        report
    }

    /// The manifests [`Registry::collect_manifests`] would remove.
    async fn unkept_manifests(&self, grace: Duration) -> Result<Vec<(RepoName, Digest)>, Error> {
        let cutoff = ago(grace);
        let mut removed = Vec::new();
        let mut last: Option<String> = None;
        loop {
            let page = self.metadata.list_repositories(last.as_deref(), 500).await?;
            for name in &page.items {
                let Ok(repository) = name.parse::<RepoName>() else { continue };
                for digest in self.metadata.unkept_manifests(&repository, Some(cutoff), &[]).await? {
                    tracing::info!(repository = %repository, digest = %digest, "would remove manifest");
                    removed.push((repository.clone(), digest));
                }
            }
            if !page.more {
                break;
            }
            last = page.items.last().cloned();
        }
        Ok(removed)
    }

    /// Removes the blobs that no manifest in any repository references and that no repository
    /// linked within `grace` (a push uploads its layers before the manifest that names them:
    /// `grace` must be longer than any push takes). Safe while the registry serves: see
    /// `MetadataStore::begin_blob_removals`. A collection cut short is finished by the next.
    pub async fn collect_blobs(&self, grace: Duration, dry_run: bool) -> Result<Collected, Error> {
        if dry_run {
            return self.blobs_collected(grace, &mut std::collections::BTreeSet::new()).await;
        }
        let options = RunOptions { grace, untagged: None, retention: false, blobs: true, batch: 500, explain: false };
        let report = self.collect_under_lease(&options, LEASE_WAIT).await?;
        Ok(Collected { manifests: 0, blobs: report.blobs, bytes: report.bytes })
    }

    /// What [`Registry::collect_blobs`] would remove, noting the digests in `counted`.
    async fn blobs_collected(
        &self,
        grace: Duration,
        counted: &mut std::collections::BTreeSet<Digest>,
    ) -> Result<Collected, Error> {
        let cutoff = ago(grace);
        let mut collected = Collected::default();
        let mut after: Option<Digest> = None;
        loop {
            let page = self.metadata.collectable_blobs(cutoff, after.as_ref(), 500).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.digest.clone());
            for blob in page {
                tracing::info!(digest = %blob.digest, size = blob.size, "would remove blob");
                counted.insert(blob.digest.clone());
                collected.blobs += 1;
                collected.bytes += blob.size;
            }
        }
        Ok(collected)
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
