//! Every Prometheus metric Berth exports, in one place.
//!
//! Labels are bounded on purpose: the matched route pattern, the method, the status code, the
//! backend and the operation (and a configured quota namespace). Never a repository name, a tag, a digest or a user name: those
//! would make a new time series for every one of them.

use std::future::Future;
use std::sync::OnceLock;

use tracing::Instrument;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

/// Latency buckets, in seconds: from a cached manifest to a multi-gigabyte layer.
const BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

pub struct Metrics {
    registry: Registry,
    /// Requests answered, by route pattern, method and status.
    pub requests: IntCounterVec,
    /// Time to answer, by route pattern, method and status.
    pub request_seconds: HistogramVec,
    /// Requests being answered now.
    pub requests_in_flight: IntGauge,
    /// Request body bytes announced by `Content-Length`, by route pattern.
    pub request_bytes: IntCounterVec,
    /// Response body bytes, by route pattern.
    pub response_bytes: IntCounterVec,
    /// Blob store operations, by backend and operation.
    pub storage_seconds: HistogramVec,
    pub storage_errors: IntCounterVec,
    /// Metadata store operations, by backend and operation.
    pub metadata_seconds: HistogramVec,
    pub metadata_errors: IntCounterVec,
    /// Session store operations, by backend and operation.
    pub session_seconds: HistogramVec,
    pub session_errors: IntCounterVec,
    /// Chunks being received on this replica now.
    pub uploads_in_progress: IntGauge,
    /// Blob bytes received from clients.
    pub bytes_uploaded: IntCounter,
    /// Blob bytes sent to clients by Berth itself.
    pub bytes_served: IntCounter,
    /// Blob bytes clients were sent to fetch from the object store instead (redirects).
    pub bytes_redirected: IntCounter,
    /// Authentication and authorisation outcomes, by mode and outcome.
    pub auth: IntCounterVec,
    /// Abandoned uploads the janitor removed.
    pub uploads_swept: IntCounter,
    /// Requests sent to the S3 store, by S3 operation (`PutObject`, `UploadPart`, …), retries
    /// included: how a blob travelled, and what the store is billed for.
    pub s3_requests: IntCounterVec,
    /// Collection runs (retention, untagged manifests, blobs) this replica made, by result:
    /// `ok`, `error`, or `lost` (the lease was taken over mid-run).
    pub gc_runs: IntCounterVec,
    pub gc_removed_blobs: IntCounter,
    pub gc_removed_bytes: IntCounter,
    pub gc_removed_manifests: IntCounter,
    pub gc_removed_tags: IntCounter,
    pub gc_seconds: Histogram,
    /// Unix time of this replica's last successful run.
    pub gc_last_success: IntGauge,
    /// 1 while this replica holds the collector's lease.
    pub gc_lease_held: IntGauge,
    /// Quota usage and limit in bytes, by configured namespace.
    pub quota_usage: IntGaugeVec,
    pub quota_limit: IntGaugeVec,
    /// Pushes refused, by reason: `quota`, `immutable`.
    pub refusals: IntCounterVec,
    /// Requests to upstream registries, by upstream, kind (`manifest`, `blob`, `token`) and
    /// status (or `unreachable`, `redirect_loop`).
    pub upstream_requests: IntCounterVec,
    /// Cached-repository answers, by upstream and result: `hit`, `miss`, `revalidated`
    /// (a HEAD found the tag unchanged), `changed`, `stale` (upstream failed; the cached copy
    /// was served), `followed` (a blob another request was fetching), `refused` (bad content).
    pub upstream_cache: IntCounterVec,
    /// Blob bytes fetched from upstream registries.
    pub upstream_bytes: IntCounterVec,
    /// Pull times written to the database, and those lost to a failed flush.
    pub pulls_flushed: IntCounter,
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let h = HistogramVec::new(HistogramOpts::new(name, help).buckets(BUCKETS.to_vec()), labels).expect("valid metric");
    registry.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        #[cfg(target_os = "linux")]
        {
            let process = prometheus::process_collector::ProcessCollector::for_self();
            let _ = registry.register(Box::new(process));
        }
        let r = &registry;
        let http = ["route", "method", "status"];
        Metrics {
            requests: counter_vec(r, "berth_http_requests_total", "HTTP requests answered", &http),
            request_seconds: histogram_vec(r, "berth_http_request_duration_seconds", "Time to answer a request", &http),
            requests_in_flight: gauge(r, "berth_http_requests_in_flight", "Requests being answered"),
            request_bytes: counter_vec(
                r,
                "berth_http_request_bytes_total",
                "Request body bytes (Content-Length)",
                &["route"],
            ),
            response_bytes: counter_vec(r, "berth_http_response_bytes_total", "Response body bytes", &["route"]),
            storage_seconds: histogram_vec(
                r,
                "berth_storage_operation_duration_seconds",
                "Blob store operations",
                &["backend", "operation"],
            ),
            storage_errors: counter_vec(
                r,
                "berth_storage_errors_total",
                "Failed blob store operations",
                &["backend", "operation"],
            ),
            metadata_seconds: histogram_vec(
                r,
                "berth_metadata_operation_duration_seconds",
                "Metadata store operations",
                &["backend", "operation"],
            ),
            metadata_errors: counter_vec(
                r,
                "berth_metadata_errors_total",
                "Failed metadata store operations",
                &["backend", "operation"],
            ),
            session_seconds: histogram_vec(
                r,
                "berth_session_operation_duration_seconds",
                "Session store operations",
                &["backend", "operation"],
            ),
            session_errors: counter_vec(
                r,
                "berth_session_errors_total",
                "Failed session store operations",
                &["backend", "operation"],
            ),
            uploads_in_progress: gauge(r, "berth_uploads_in_progress", "Upload chunks being received"),
            bytes_uploaded: counter(r, "berth_blob_uploaded_bytes_total", "Blob bytes received"),
            bytes_served: counter(r, "berth_blob_served_bytes_total", "Blob bytes sent by Berth"),
            bytes_redirected: counter(
                r,
                "berth_blob_redirected_bytes_total",
                "Blob bytes sent to the object store by redirect",
            ),
            auth: counter_vec(r, "berth_auth_total", "Authentication and authorisation outcomes", &["mode", "outcome"]),
            uploads_swept: counter(r, "berth_uploads_swept_total", "Abandoned uploads removed"),
            s3_requests: counter_vec(r, "berth_s3_requests_total", "Requests sent to the S3 store", &["operation"]),
            upstream_requests: counter_vec(
                r,
                "berth_upstream_requests_total",
                "Requests to upstream registries",
                &["upstream", "kind", "status"],
            ),
            upstream_cache: counter_vec(
                r,
                "berth_upstream_cache_total",
                "Answers from cached repositories, by result",
                &["upstream", "result"],
            ),
            upstream_bytes: counter_vec(
                r,
                "berth_upstream_bytes_total",
                "Blob bytes fetched from upstream",
                &["upstream"],
            ),
            gc_runs: counter_vec(r, "berth_gc_runs_total", "Collection runs made by this replica", &["result"]),
            gc_removed_blobs: counter(r, "berth_gc_removed_blobs_total", "Blobs the collector removed"),
            gc_removed_bytes: counter(r, "berth_gc_removed_bytes_total", "Bytes of the blobs the collector removed"),
            gc_removed_manifests: counter(r, "berth_gc_removed_manifests_total", "Manifests the collector removed"),
            gc_removed_tags: counter(r, "berth_gc_removed_tags_total", "Tags retention removed"),
            gc_seconds: {
                let opts = HistogramOpts::new("berth_gc_duration_seconds", "Time a collection run took");
                let h = Histogram::with_opts(opts.buckets(BUCKETS.to_vec())).expect("valid metric");
                r.register(Box::new(h.clone())).expect("unique metric");
                h
            },
            gc_last_success: gauge(
                r,
                "berth_gc_last_success_timestamp_seconds",
                "Unix time of this replica's last successful collection run",
            ),
            gc_lease_held: gauge(r, "berth_gc_lease_held", "1 while this replica holds the collector's lease"),
            quota_usage: gauge_vec(
                r,
                "berth_quota_usage_bytes",
                "Bytes of distinct blobs linked under a quota namespace",
                &["namespace"],
            ),
            quota_limit: gauge_vec(r, "berth_quota_limit_bytes", "Quota of a namespace in bytes", &["namespace"]),
            refusals: counter_vec(r, "berth_push_refusals_total", "Pushes refused by a lifecycle rule", &["reason"]),
            pulls_flushed: counter(r, "berth_pull_times_flushed_total", "Pull times written to the database"),
            registry,
        }
    }

    /// The process's metrics.
    pub fn get() -> &'static Metrics {
        static METRICS: OnceLock<Metrics> = OnceLock::new();
        METRICS.get_or_init(Metrics::new)
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Runs one backend operation inside `span`, timing it into `seconds` and counting it in
/// `errors` when it fails.
pub async fn timed<T, E>(
    span: tracing::Span,
    (seconds, errors): (&HistogramVec, &IntCounterVec),
    backend: &str,
    operation: &str,
    work: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = std::time::Instant::now();
    let result = work.instrument(span).await;
    seconds.with_label_values(&[backend, operation]).observe(started.elapsed().as_secs_f64());
    if result.is_err() {
        errors.with_label_values(&[backend, operation]).inc();
    }
    result
}

/// Keeps a gauge raised for as long as it lives.
pub struct Raised(&'static IntGauge);

impl Raised {
    pub fn new(gauge: &'static IntGauge) -> Raised {
        gauge.inc();
        Raised(gauge)
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// Every series name the metrics can produce once each has been used.
    fn exported_names() -> BTreeSet<String> {
        let m = Metrics::new();
        m.requests.with_label_values(&["/v2/", "GET", "200"]).inc();
        m.request_seconds.with_label_values(&["/v2/", "GET", "200"]).observe(0.1);
        for v in [&m.request_bytes, &m.response_bytes] {
            v.with_label_values(&["/v2/"]).inc();
        }
        for v in [&m.storage_seconds, &m.metadata_seconds, &m.session_seconds] {
            v.with_label_values(&["b", "o"]).observe(0.1);
        }
        for v in [&m.storage_errors, &m.metadata_errors, &m.session_errors, &m.auth] {
            v.with_label_values(&["b", "o"]).inc();
        }
        let mut names = BTreeSet::new();
        for family in m.registry.gather() {
            let name = family.name().to_owned();
            if family.get_field_type() == prometheus::proto::MetricType::HISTOGRAM {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            names.insert(name);
        }
        names
    }

    #[test]
    fn the_dashboard_queries_only_metrics_that_exist() {
        let dashboard: serde_json::Value =
            serde_json::from_str(include_str!("../../dashboards/berth.json")).expect("the dashboard is JSON");
        let exported = exported_names();
        let mut queried = BTreeSet::new();
        let panels = dashboard["panels"].as_array().expect("panels");
        for panel in panels.iter().filter(|p| p["type"] != "row") {
            let targets = panel["targets"].as_array().expect("every panel has queries");
            assert!(!targets.is_empty(), "panel {} has no query", panel["title"]);
            for expr in targets.iter().filter_map(|t| t["expr"].as_str()) {
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("berth_") || word.starts_with("process_") {
                        queried.insert(word.to_owned());
                    }
                }
            }
        }
        let missing: Vec<_> = queried.difference(&exported).collect();
        assert!(missing.is_empty(), "the dashboard queries metrics Berth does not export: {missing:?}");
        for wanted in [
            "berth_http_request_duration_seconds_bucket",
            "berth_storage_operation_duration_seconds_bucket",
            "berth_blob_uploaded_bytes_total",
        ] {
            assert!(queried.contains(wanted), "the dashboard lacks {wanted}");
        }
    }
}
