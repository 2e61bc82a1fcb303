//! What trace export costs: the same Berth binary started with OTLP export off and on
//! (pointing at a minimal OTLP receiver in this process that counts spans and drops them), and
//! manifest GETs by tag measured against each in turn, rounds alternating who goes first.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Result;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use reqwest::Client;

use crate::{Server, manifest_rate, push_small_image, wait_ready};

/// An OTLP/gRPC trace receiver that counts what it is sent.
struct Sink(Arc<AtomicU64>);

#[tonic::async_trait]
impl TraceService for Sink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.0.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

/// Starts the receiver on a free port of 127.0.0.1; returns its endpoint and span counter.
async fn start_sink() -> Result<(String, Arc<AtomicU64>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    let received = Arc::new(AtomicU64::new(0));
    let service = TraceServiceServer::new(Sink(received.clone()));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    Ok((endpoint, received))
}

/// CPU time the process has used so far, in seconds (user and system; Linux clock ticks of 1/100 s).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

pub async fn run(binary: &PathBuf, env: &[String], connections: usize, seconds: u64, repeat: usize) -> Result<()> {
    let (endpoint, received) = start_sink().await?;
    let with = |extra: &[String]| env.iter().cloned().chain(extra.iter().cloned()).collect::<Vec<_>>();
    let exporting = format!("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}");
    let setups = [
        ("export off", with(&[])),
        ("export on, every request sampled", with(std::slice::from_ref(&exporting))),
        (
            "export on, 10 % sampled",
            with(&[exporting.clone(), "OTEL_TRACES_SAMPLER=traceidratio".into(), "OTEL_TRACES_SAMPLER_ARG=0.1".into()]),
        ),
    ];
    let client = Client::new();
    let mut servers = Vec::new();
    for (_, env) in &setups {
        let (server, base) = Server::start(binary, env)?;
        wait_ready(&client, &base).await;
        push_small_image(&client, &base, "loadtest/traced").await?;
        servers.push((server, base));
    }
    let mut results: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); setups.len()];
    let mut spans = vec![0u64; setups.len()];
    let mut requests = vec![0usize; setups.len()];
    for round in 0..repeat.max(1) {
        for k in 0..setups.len() {
            let i = (round + k) % setups.len();
            let before = received.load(Ordering::Relaxed);
            let pid = servers[i].0.child.id();
            let cpu_before = cpu_seconds(pid);
            let rate = manifest_rate(&servers[i].1, "loadtest/traced", false, connections, seconds).await?;
            // Let the batch exporter send what this run produced before the next one starts.
            tokio::time::sleep(Duration::from_secs(6)).await;
            spans[i] += received.load(Ordering::Relaxed) - before;
            // Berth's own CPU per request, export included (the pause lets the batches go out).
            let cpu_micros = 1e6 * (cpu_seconds(pid) - cpu_before) / rate.requests.max(1) as f64;
            results[i].push((rate.per_second, rate.p99_ms, cpu_micros));
            requests[i] += rate.requests;
            println!(
                "  round {round}: {:<34} {:>8.0} req/s, p99 {:.2} ms, Berth CPU {cpu_micros:.0} µs/request",
                setups[i].0, rate.per_second, rate.p99_ms
            );
        }
    }
    let median = |mut v: Vec<f64>| crate::median(&mut v);
    let off = median(results[0].iter().map(|r| r.0).collect());
    let off_cpu = median(results[0].iter().map(|r| r.2).collect());
    println!("manifest GET by tag, {connections} connections, {seconds} s per run, medians of {}:", repeat.max(1));
    for (i, (name, _)) in setups.iter().enumerate() {
        let rps = median(results[i].iter().map(|r| r.0).collect());
        let p99 = median(results[i].iter().map(|r| r.1).collect());
        let cpu = median(results[i].iter().map(|r| r.2).collect());
        println!(
            "  {name:<34} {rps:>8.0} req/s ({:>5.1} % of off), p99 {p99:.2} ms, Berth CPU {cpu:.0} µs/request ({:.0} % of off), {:.2} spans exported per request",
            100.0 * rps / off,
            100.0 * cpu / off_cpu,
            spans[i] as f64 / requests[i].max(1) as f64
        );
    }
    Ok(())
}
