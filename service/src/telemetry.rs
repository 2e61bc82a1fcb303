//! Logs and traces.
//!
//! Logs are human-readable lines by default and JSON with `BERTH_LOG_FORMAT=json`; one line
//! per request (`berth::access`) carries the trace id. Traces go out over OTLP (gRPC) when the
//! standard `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set,
//! with `OTEL_SERVICE_NAME` (default `berth`); otherwise no exporter exists and spans cost
//! only what `tracing` costs. The W3C `traceparent` of an incoming request is always honoured.

use std::io::IsTerminal;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, Settings};

/// The trace exporter, if any. Call [`Telemetry::shutdown`] before the runtime stops so that
/// the spans still batched are exported.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is still batched and stops the exporter. The export runs on a blocking
    /// thread while this runtime keeps driving the gRPC channel it needs.
    pub async fn shutdown(mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = tokio::task::spawn_blocking(move || provider.shutdown()).await;
        }
    }
}

/// Where traces go, from the standard OpenTelemetry variables.
pub fn otlp_endpoint() -> Option<String> {
    ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .iter()
        .find_map(|v| std::env::var(v).ok().filter(|s| !s.is_empty()))
}

/// A tracer provider exporting to `endpoint` over OTLP/gRPC. Call within a Tokio runtime:
/// the gRPC channel lives on it.
pub fn tracer_provider(endpoint: &str) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "berth".into());
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(Resource::builder().with_service_name(service).build())
        .build())
}

/// Installs the global log subscriber, and the trace exporter when one is configured. Call
/// once, within a Tokio runtime.
pub fn init(settings: &Settings) -> Telemetry {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let filter = EnvFilter::try_new(&settings.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let (provider, problem) = match otlp_endpoint().map(|e| tracer_provider(&e)) {
        Some(Ok(provider)) => (Some(provider), None),
        Some(Err(e)) => (None, Some(e)),
        None => (None, None),
    };
    // Each layer filters for itself: `BERTH_LOG=warn` quietens the log, not the traces. The
    // access-log line stays out of the trace (the request span carries the same fields), and
    // so do the per-poll extras (busy/idle time, context activation) and constant attributes
    // (source location, thread, target) that would be paid for on every request.
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("berth"))
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_filter(
                Targets::new().with_target("berth", Level::INFO).with_target("berth::access", LevelFilter::OFF),
            )
    });
    let log = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log = match settings.log_format {
        LogFormat::Text => log.with_ansi(std::io::stderr().is_terminal()).boxed(),
        LogFormat::Json => log.json().flatten_event(true).boxed(),
    };
    tracing_subscriber::registry().with(otel).with(log.with_filter(filter)).init();
    if let Some(problem) = problem {
        tracing::error!(error = %problem, "traces will not be exported");
    }
    Telemetry { provider }
}
