//! The storage lifecycle inside `berth serve`: one replica at a time (the holder of the `gc`
//! lease, a row in the database whose token fences every change a run makes) applies the
//! retention rules, removes the manifests nothing keeps, then the blobs nothing references,
//! in bounded batches. The rules themselves are pure functions, in [`rules`].

pub mod pulls;
pub mod rules;

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use rules::Lifecycle;

use super::{Error, Registry};
use crate::metadata::{BlobRecord, Lease};
use crate::metrics::Metrics;
use crate::oci::{Digest, RepoName};

/// The collector's lease.
pub const LEASE: &str = "gc";

/// How the collector in `serve` runs.
#[derive(Clone, Debug)]
pub struct Collector {
    /// Time between runs across all replicas; `None` turns the collector off.
    pub interval: Option<Duration>,
    /// Blobs and manifests younger than this are never collected.
    pub grace: Duration,
    /// How long a lease lasts without renewal: a dead holder's runs stop at most this long.
    pub lease_ttl: Duration,
    /// Rows per batch (one transaction each).
    pub batch: usize,
    /// Time between writes of pull times.
    pub pull_flush: Duration,
}

impl Default for Collector {
    fn default() -> Self {
        Collector {
            interval: Some(Duration::from_secs(3600)),
            grace: Duration::from_secs(24 * 3600),
            lease_ttl: Duration::from_secs(30),
            batch: 500,
            pull_flush: Duration::from_secs(60),
        }
    }
}

/// What one run does.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub grace: Duration,
    /// Also remove every untagged manifest older than this (`berth gc --untagged`).
    pub untagged: Option<Duration>,
    /// Apply the retention rules.
    pub retention: bool,
    /// Then remove the blobs nothing references.
    pub blobs: bool,
    pub batch: usize,
    /// Keep a [`Decision`] for everything removed, for the caller to show (memory grows with
    /// what is removed: off for the collector's own runs).
    pub explain: bool,
}

/// Something a run removed, or would remove, and the rule that decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub repository: String,
    /// `tag v1.2` or `manifest sha256:…`.
    pub what: String,
    pub reason: String,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub tags: u64,
    pub manifests: u64,
    pub blobs: u64,
    pub bytes: u64,
    /// The longest single transaction of the run (as this process measured it, round trips
    /// included).
    pub longest_transaction: Duration,
    pub decisions: Vec<Decision>,
}

impl Report {
    fn timed(&mut self, started: Instant) {
        self.longest_transaction = self.longest_transaction.max(started.elapsed());
    }
}

/// Who this process is, in the lease: host, process id, and a random part for processes of
/// the same id in different containers.
pub fn holder_id(role: &str) -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok().map(|h| h.trim().to_owned()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "berth".into());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{role}@{host}:{}:{}", std::process::id(), &random[..8])
}

fn ms(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

fn ago(age: Duration) -> SystemTime {
    SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH)
}

impl Registry {
    pub fn lifecycle(&self) -> &Lifecycle {
        &self.policy.lifecycle
    }

    /// Takes the collector's lease for `holder`; with `due`, only when a run is due.
    pub async fn take_lease(&self, holder: &str, due: bool) -> Result<Option<Lease>, Error> {
        Ok(self.metadata.acquire_lease(LEASE, holder, self.policy.collector.lease_ttl, due).await?)
    }

    pub async fn release_lease(&self, lease: &Lease, next_run: Option<SystemTime>) -> Result<(), Error> {
        Ok(self.metadata.release_lease(lease, next_run).await?)
    }

    /// One run under `lease`: retention, untagged manifests, then blobs. Every change is
    /// fenced by the lease: once it is taken over, the run stops with an error and changes
    /// nothing more. A run cut short is finished by the next.
    pub async fn run_collection(&self, lease: &Lease, options: &RunOptions) -> Result<Report, Error> {
        let mut report = Report::default();
        if options.retention || options.untagged.is_some() {
            self.manifest_pass(Some(lease), options, &mut report).await?;
        }
        if options.blobs {
            self.blob_pass(lease, options, &mut report).await?;
        }
        Ok(report)
    }

    /// What retention (and `untagged`) would remove now, and why; removes nothing.
    pub async fn plan_retention(&self, untagged: Option<Duration>) -> Result<Vec<Decision>, Error> {
        let options =
            RunOptions { grace: Duration::ZERO, untagged, retention: true, blobs: false, batch: 500, explain: true };
        let mut report = Report::default();
        self.manifest_pass(None, &options, &mut report).await?;
        Ok(report.decisions)
    }

    /// Retention and untagged manifests, repository by repository; a dry run without `lease`.
    async fn manifest_pass(
        &self,
        lease: Option<&Lease>,
        options: &RunOptions,
        report: &mut Report,
    ) -> Result<(), Error> {
        let mut last: Option<String> = None;
        let mut renewed = Instant::now();
        loop {
            let page = self.metadata.list_repositories(last.as_deref(), 500).await?;
            for name in &page.items {
                let Ok(repository) = name.parse::<RepoName>() else { continue };
                self.repository_pass(lease, options, &repository, report).await?;
                // A run that only reads for a while still holds its lease.
                if let Some(lease) = lease
                    && renewed.elapsed() > self.policy.collector.lease_ttl / 3
                {
                    self.metadata.renew_lease(lease).await?;
                    renewed = Instant::now();
                }
            }
            if !page.more {
                break;
            }
            last = page.items.last().cloned();
        }
        Ok(())
    }

    async fn repository_pass(
        &self,
        lease: Option<&Lease>,
        options: &RunOptions,
        repository: &RepoName,
        report: &mut Report,
    ) -> Result<(), Error> {
        let rules = self.lifecycle();
        let rule = if options.retention { rules.retention_for(repository.as_str()) } else { None };
        let untagged = [rule.and_then(|r| r.remove_untagged_older_than), options.untagged].into_iter().flatten().min();
        if rule.is_none() && untagged.is_none() {
            return Ok(());
        }
        let decided = SystemTime::now();
        let mut released = Vec::new();
        if let Some(rule) = rule {
            let tags = self.metadata.tag_infos(repository).await?;
            let protected = |tag: &str| rules.forbids_delete(repository.as_str(), tag).is_some();
            let removals = rules::tags_to_remove(rule, &tags, ms(decided), protected);
            let mut gone = HashSet::new();
            for removal in removals {
                let removed = match lease {
                    None => true,
                    Some(lease) => {
                        let started = Instant::now();
                        let removed = self.metadata.remove_tag(lease, repository, &removal.tag).await?;
                        report.timed(started);
                        removed
                    }
                };
                if removed {
                    report.tags += 1;
                    gone.insert(removal.tag.name.clone());
                }
                if removed && options.explain {
                    report.decisions.push(Decision {
                        repository: repository.to_string(),
                        what: format!("tag {}", removal.tag.name),
                        reason: removal.reason,
                    });
                }
            }
            // A manifest whose every tag went goes too, with what follows it.
            let still: HashSet<&Digest> = tags.iter().filter(|t| !gone.contains(&t.name)).map(|t| &t.digest).collect();
            let released_set: BTreeSet<&Digest> = tags
                .iter()
                .filter(|t| gone.contains(&t.name) && !still.contains(&t.digest))
                .map(|t| &t.digest)
                .collect();
            released = released_set.into_iter().cloned().collect();
        }
        if released.is_empty() && untagged.is_none() {
            return Ok(());
        }
        let cutoff = untagged.map(ago);
        let unkept = self.metadata.unkept_manifests(repository, cutoff, &released).await?;
        for digest in unkept {
            let reason = if released.contains(&digest) {
                match rule {
                    Some(r) => format!("every tag of it removed by [[retention]] entry {}", r.number),
                    None => "every tag of it removed".into(),
                }
            } else {
                let mut why = Vec::new();
                if let (Some(age), true) = (untagged, cutoff.is_some()) {
                    let by = match rule.and_then(|r| r.remove_untagged_older_than.map(|_| r.number)) {
                        Some(n) => format!("[[retention]] entry {n}"),
                        None => "--untagged".into(),
                    };
                    why.push(format!("untagged and older than {} ({by})", humantime::format_duration(age)));
                }
                if !released.is_empty() {
                    why.push("a referrer of, or listed by, a manifest that goes".into());
                }
                why.join(", or ")
            };
            let removed = match lease {
                None => true,
                Some(lease) => {
                    let started = Instant::now();
                    let removed = self.metadata.remove_unkept_manifest(lease, repository, &digest, decided).await?;
                    report.timed(started);
                    removed
                }
            };
            if removed {
                report.manifests += 1;
            }
            if removed && options.explain {
                report.decisions.push(Decision {
                    repository: repository.to_string(),
                    what: format!("manifest {digest}"),
                    reason,
                });
            }
        }
        Ok(())
    }

    /// The blobs nothing references, a batch per pair of transactions: the first marks them
    /// (and unlinks them), the second, held while their bytes are deleted, forgets them.
    async fn blob_pass(&self, lease: &Lease, options: &RunOptions, report: &mut Report) -> Result<(), Error> {
        let cutoff = ago(options.grace);
        let batch = options.batch.clamp(1, 1000) as u32;
        let blobs = self.blobs.clone();
        let delete = move |records: Vec<(Digest, BlobRecord)>| {
            let blobs = blobs.clone();
            let future: futures_util::future::BoxFuture<'static, Result<(), String>> = Box::pin(async move {
                let targets: Vec<(Digest, Option<String>)> =
                    records.into_iter().map(|(d, r)| (d, r.location)).collect();
                blobs.delete_many(&targets).await.map_err(|e| e.to_string())
            });
            future
        };
        let mut after: Option<Digest> = None;
        loop {
            let page = self.metadata.collectable_blobs(cutoff, after.as_ref(), batch).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.digest.clone());
            let digests: Vec<Digest> = page.into_iter().map(|b| b.digest).collect();
            let started = Instant::now();
            let begun = self.metadata.begin_blob_removals(lease, &digests, cutoff).await?;
            report.timed(started);
            if begun.is_empty() {
                continue;
            }
            let begun: Vec<Digest> = begun.into_iter().map(|(d, _)| d).collect();
            let started = Instant::now();
            let removed = self.metadata.finish_blob_removals(lease, &begun, &delete).await?;
            report.timed(started);
            for (digest, record) in removed {
                tracing::debug!(%digest, size = record.size, "removed blob");
                report.blobs += 1;
                report.bytes += record.size;
            }
        }
        Ok(())
    }

    /// Writes the pull times gathered since the last flush.
    pub async fn flush_pulls(&self) {
        let pulls = self.pulls.take();
        if pulls.is_empty() {
            return;
        }
        let count = pulls.len() as u64;
        match self.metadata.record_pulls(&pulls).await {
            Ok(()) => Metrics::get().pulls_flushed.inc_by(count),
            Err(e) => {
                tracing::warn!(error = %e, pulls = count, "could not write pull times; keeping them for the next flush");
                self.pulls.restore(pulls);
            }
        }
    }

    /// Makes the database count the configured quotas (recounting each from scratch), and
    /// shows usage in the metrics.
    pub async fn sync_quotas(&self) -> Result<(), Error> {
        self.metadata.sync_quotas(&self.lifecycle().quotas).await?;
        self.show_usage().await
    }

    async fn show_usage(&self) -> Result<(), Error> {
        let m = Metrics::get();
        for usage in self.metadata.usage().await? {
            if self.lifecycle().quotas.iter().any(|(n, _)| *n == usage.namespace) {
                m.quota_usage.with_label_values(&[usage.namespace.as_str()]).set(usage.bytes as i64);
                m.quota_limit.with_label_values(&[usage.namespace.as_str()]).set(usage.limit as i64);
            }
        }
        Ok(())
    }

    /// The counted usage of every quota namespace.
    pub async fn usage(&self) -> Result<Vec<crate::metadata::Usage>, Error> {
        Ok(self.metadata.usage().await?)
    }

    /// A namespace's usage counted from scratch.
    pub async fn recount_usage(&self, namespace: &str) -> Result<u64, Error> {
        Ok(self.metadata.recount_usage(namespace).await?)
    }

    /// A push to `repository` is refused at once when one of its namespaces is full already.
    pub(super) async fn check_quota_room(&self, repository: &RepoName) -> Result<(), Error> {
        if self.lifecycle().quotas_of(repository.as_str()).next().is_none() {
            return Ok(());
        }
        for usage in self.metadata.usage().await? {
            if rules::in_namespace(&usage.namespace, repository.as_str()) && usage.bytes >= usage.limit {
                Metrics::get().refusals.with_label_values(&["quota"]).inc();
                return Err(Error::Denied(format!(
                    "quota of namespace {} exceeded: {} bytes used of {} bytes",
                    usage.namespace, usage.bytes, usage.limit
                )));
            }
        }
        Ok(())
    }

    /// The collector, the pull-time flusher and the quota counters of `serve`, for as long as
    /// the process runs.
    /// `quotas_counted`: whether [`Registry::sync_quotas`] already ran.
    pub fn spawn_lifecycle(&self, quotas_counted: bool) -> Vec<tokio::task::JoinHandle<()>> {
        let collector = self.policy.collector.clone();
        let flusher = {
            let registry = self.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = tokio::time::sleep(collector.pull_flush) => {}
                        _ = registry.pulls.full.notified() => {}
                    }
                    registry.flush_pulls().await;
                }
            })
        };
        let registry = self.clone();
        let gc = tokio::spawn(async move {
            let holder = holder_id("serve");
            while !quotas_counted && let Err(e) = registry.sync_quotas().await {
                tracing::warn!(error = %e, "cannot count quota usage yet; trying again in 5 s");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
            let poll = collector
                .interval
                .unwrap_or(collector.lease_ttl)
                .min(collector.lease_ttl)
                .div_f64(2.0)
                .clamp(Duration::from_millis(200), Duration::from_secs(30));
            let mut ticks = tokio::time::interval(poll);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let _ = registry.show_usage().await;
                let Some(interval) = collector.interval else { continue };
                match registry.take_lease(&holder, true).await {
                    Ok(Some(lease)) => registry.scheduled_run(&lease, interval).await,
                    Ok(None) => {}
                    Err(e) => tracing::debug!(error = %e, "cannot ask for the collector's lease"),
                }
            }
        });
        vec![flusher, gc]
    }

    /// One scheduled run under a freshly taken lease, with its metrics and log line.
    async fn scheduled_run(&self, lease: &Lease, interval: Duration) {
        let m = Metrics::get();
        m.gc_lease_held.set(1);
        let collector = &self.policy.collector;
        let options = RunOptions {
            grace: collector.grace,
            untagged: None,
            retention: true,
            blobs: true,
            batch: collector.batch,
            explain: false,
        };
        let started = Instant::now();
        let result = self.run_collection(lease, &options).await;
        let seconds = started.elapsed().as_secs_f64();
        m.gc_seconds.observe(seconds);
        match &result {
            Ok(report) => {
                m.gc_runs.with_label_values(&["ok"]).inc();
                m.gc_removed_tags.inc_by(report.tags);
                m.gc_removed_manifests.inc_by(report.manifests);
                m.gc_removed_blobs.inc_by(report.blobs);
                m.gc_removed_bytes.inc_by(report.bytes);
                m.gc_last_success.set(ms(SystemTime::now()) / 1000);
                tracing::info!(
                    tags = report.tags,
                    manifests = report.manifests,
                    blobs = report.blobs,
                    bytes = report.bytes,
                    seconds,
                    longest_transaction_ms = report.longest_transaction.as_millis() as u64,
                    "collection run finished"
                );
            }
            Err(Error::LeaseLost) => {
                m.gc_runs.with_label_values(&["lost"]).inc();
                tracing::warn!("collection run stopped: its lease was taken over");
            }
            Err(e) => {
                m.gc_runs.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, seconds, "collection run failed; the next one finishes it");
            }
        }
        if let Err(e) = self.release_lease(lease, Some(SystemTime::now() + interval)).await {
            tracing::debug!(error = %e, "could not release the collector's lease; it expires by itself");
        }
        m.gc_lease_held.set(0);
    }
}
