//! `berth-loadtest`: measures blob push and pull throughput and manifest request rates of an
//! OCI registry. See README.md in this directory.

mod direct;
mod tracing_overhead;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Parser;
use futures_util::StreamExt;
use reqwest::{Client, StatusCode};
use sha2::{Digest as _, Sha256};

#[derive(Parser)]
#[command(about = "Benchmark an OCI registry: blob push/pull throughput, manifest HEAD/GET rates")]
struct Args {
    /// Registry to test, e.g. http://127.0.0.1:5000. Leave out to start `--berth` instead.
    #[arg(long)]
    registry: Option<String>,
    /// Berth binary to start on a free port with a fresh data directory; its peak RSS is
    /// reported.
    #[arg(long)]
    berth: Option<PathBuf>,
    /// Extra environment for the started Berth, as NAME=VALUE.
    #[arg(long = "env")]
    env: Vec<String>,
    /// Blob size in MiB.
    #[arg(long, default_value_t = 512)]
    blob_mib: usize,
    /// Chunk size in MiB for the chunked push.
    #[arg(long, default_value_t = 8)]
    chunk_mib: usize,
    /// Concurrent connections for the manifest requests.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Seconds each manifest request run lasts.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Which measurements to run (comma separated): stream, chunked, pull, head, get, and
    /// sha512 (what checking a sha512 digest on an upload begun without `digest-algorithm`
    /// costs; not in the default set).
    #[arg(long, default_value = "stream,chunked,pull,head,get", value_delimiter = ',')]
    only: Vec<String>,
    /// How many times each throughput measurement runs (a fresh blob each time); the median
    /// is reported with the range.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Repository to use.
    #[arg(long, default_value = "loadtest/blob")]
    repository: String,
    /// Run this many streamed pushes at once (each of `--blob-mib`), report their combined
    /// throughput and the server's peak RSS, and stop.
    #[arg(long)]
    concurrent_pushes: Option<usize>,
    /// Object store to compare with: the same blob is also pushed to and pulled from it
    /// directly, with the part size and concurrency below.
    #[arg(long)]
    s3_endpoint: Option<String>,
    #[arg(long, default_value = "")]
    s3_bucket: String,
    #[arg(long, default_value = "us-east-1")]
    s3_region: String,
    #[arg(long, default_value = "")]
    s3_access_key: String,
    #[arg(long, default_value = "")]
    s3_secret: String,
    /// Part size of the direct upload, MiB (Berth's default, 8, by default).
    #[arg(long, default_value_t = 8)]
    s3_part_mib: usize,
    #[arg(long, default_value_t = 4)]
    s3_concurrency: usize,
    /// Direct requests use UNSIGNED-PAYLOAD (set it as Berth is set).
    #[arg(long)]
    s3_unsigned: bool,
    /// Measure what trace export costs: start `--berth` with OTLP export off, on, and on with
    /// 10 % sampling (to a span-counting receiver in this process), compare manifest GET rates
    /// over `--repeat` alternating rounds, and stop.
    #[arg(long)]
    tracing_overhead: bool,
}

/// A Berth started by the load test.
struct Server {
    child: Child,
    _data: tempfile::TempDir,
}

impl Server {
    fn start(binary: &PathBuf, env: &[String]) -> Result<(Server, String)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let data = tempfile::tempdir()?;
        let mut command = Command::new(binary);
        command
            .arg("serve")
            .env("BERTH_LISTEN", format!("127.0.0.1:{port}"))
            .env("BERTH_DATA_DIR", data.path())
            .env("BERTH_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for pair in env {
            let (k, v) = pair.split_once('=').context("--env takes NAME=VALUE")?;
            command.env(k, v);
        }
        let child = command.spawn().with_context(|| format!("cannot start {}", binary.display()))?;
        Ok((Server { child, _data: data }, format!("http://127.0.0.1:{port}")))
    }

    /// Peak resident set size so far (VmHWM), in MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Deterministic, non-repeating blob content generated on the fly, one MiB at a time: a random
/// MiB with the index of each MiB written over its first bytes.
#[derive(Clone)]
struct BlobSource {
    base: std::sync::Arc<Vec<u8>>,
    mib: usize,
}

impl BlobSource {
    fn new(mib: usize) -> BlobSource {
        let mut base = vec![0u8; 1 << 20];
        rand::fill(&mut base[..]);
        BlobSource { base: std::sync::Arc::new(base), mib }
    }

    fn piece(&self, index: usize) -> Bytes {
        let mut piece = self.base.to_vec();
        piece[..8].copy_from_slice(&(index as u64).to_le_bytes());
        Bytes::from(piece)
    }

    fn digest(&self) -> String {
        self.digest_with::<Sha256>("sha256")
    }

    fn digest_with<D: sha2::Digest>(&self, algorithm: &str) -> String {
        let mut h = D::new();
        for i in 0..self.mib {
            h.update(self.piece(i));
        }
        format!("{algorithm}:{}", hex::encode(h.finalize()))
    }

    fn len(&self) -> u64 {
        (self.mib as u64) << 20
    }
}

fn location(base: &str, r: &reqwest::Response) -> Result<String> {
    let l = r.headers().get("location").context("no Location")?.to_str()?;
    Ok(if l.starts_with("http") { l.to_owned() } else { format!("{base}{l}") })
}

fn with_query(url: &str, query: &str) -> String {
    format!("{url}{}{query}", if url.contains('?') { '&' } else { '?' })
}

async fn start_upload(client: &Client, base: &str, repo: &str) -> Result<String> {
    start_upload_with(client, base, repo, "").await
}

/// `POST /v2/<repo>/blobs/uploads/<query>`.
async fn start_upload_with(client: &Client, base: &str, repo: &str, query: &str) -> Result<String> {
    let r = client.post(format!("{base}/v2/{repo}/blobs/uploads/{query}")).send().await?;
    if r.status() != StatusCode::ACCEPTED {
        bail!("POST upload: {}", r.status());
    }
    location(base, &r)
}

async fn finish_upload(client: &Client, url: &str, digest: &str) -> Result<()> {
    let r = client.put(with_query(url, &format!("digest={digest}"))).send().await?;
    if r.status() != StatusCode::CREATED {
        bail!("PUT upload: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    Ok(())
}

/// POST, one PATCH streaming the whole blob with chunked transfer encoding, PUT.
async fn push_streamed(client: &Client, base: &str, repo: &str, blob: &BlobSource, digest: &str) -> Result<Duration> {
    push_streamed_with(client, base, repo, blob, digest, "").await
}

/// [`push_streamed`] with `query` on the POST (`?digest-algorithm=…`).
async fn push_streamed_with(
    client: &Client,
    base: &str,
    repo: &str,
    blob: &BlobSource,
    digest: &str,
    query: &str,
) -> Result<Duration> {
    let started = Instant::now();
    let url = start_upload_with(client, base, repo, query).await?;
    let source = blob.clone();
    let pieces = futures_util::stream::iter(0..blob.mib).map(move |i| Ok::<_, std::io::Error>(source.piece(i)));
    let r = client
        .patch(&url)
        .header("Content-Type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await?;
    if r.status() != StatusCode::ACCEPTED {
        bail!("PATCH: {} {}", r.status(), r.text().await.unwrap_or_default());
    }
    finish_upload(client, &location(base, &r)?, digest).await?;
    Ok(started.elapsed())
}

/// POST, one PATCH per chunk with `Content-Range`, PUT.
async fn push_chunked(
    client: &Client,
    base: &str,
    repo: &str,
    blob: &BlobSource,
    digest: &str,
    chunk_mib: usize,
) -> Result<Duration> {
    let started = Instant::now();
    let mut url = start_upload(client, base, repo).await?;
    for first in (0..blob.mib).step_by(chunk_mib) {
        let last = (first + chunk_mib).min(blob.mib);
        let source = blob.clone();
        let pieces = futures_util::stream::iter(first..last).map(move |i| Ok::<_, std::io::Error>(source.piece(i)));
        let (start, end) = ((first as u64) << 20, ((last as u64) << 20) - 1);
        let r = client
            .patch(&url)
            .header("Content-Type", "application/octet-stream")
            .header("Content-Range", format!("{start}-{end}"))
            .header("Content-Length", end - start + 1)
            .body(reqwest::Body::wrap_stream(pieces))
            .send()
            .await?;
        if r.status() != StatusCode::ACCEPTED {
            bail!("PATCH: {} {}", r.status(), r.text().await.unwrap_or_default());
        }
        url = location(base, &r)?;
    }
    finish_upload(client, &url, digest).await?;
    Ok(started.elapsed())
}

/// GET the blob, verifying its digest as a careful client does.
async fn pull(client: &Client, base: &str, repo: &str, digest: &str, len: u64) -> Result<Duration> {
    let started = Instant::now();
    let r = client.get(format!("{base}/v2/{repo}/blobs/{digest}")).send().await?;
    if r.status() != StatusCode::OK {
        bail!("GET blob: {}", r.status());
    }
    let mut stream = r.bytes_stream();
    let (mut h, mut got) = (Sha256::new(), 0u64);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        got += chunk.len() as u64;
        h.update(&chunk);
    }
    let elapsed = started.elapsed();
    let pulled = format!("sha256:{}", hex::encode(h.finalize()));
    if pulled != digest || got != len {
        bail!("pulled {got} bytes with digest {pulled}, expected {len} bytes {digest}");
    }
    Ok(elapsed)
}

/// What a sha512 digest costs on an upload begun without `digest-algorithm`: the registry
/// hashed it with sha256 as it arrived and reads it back once to check the sha512 digest.
/// Compared, in rounds and each with a fresh blob, with the same push closed with its sha256
/// digest and with a push that announced sha512 up front.
async fn sha512_cost(client: &Client, base: &str, repo: &str, mib: usize, repeat: usize) -> Result<()> {
    let kinds = [
        ("sha256, no digest-algorithm", "", false),
        ("sha512, ?digest-algorithm=sha512", "?digest-algorithm=sha512", true),
        ("sha512, no digest-algorithm (read back)", "", true),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); kinds.len()];
    for _ in 0..repeat {
        for (i, (_, query, sha512)) in kinds.iter().enumerate() {
            let blob = BlobSource::new(mib);
            let digest = if *sha512 { blob.digest_with::<sha2::Sha512>("sha512") } else { blob.digest() };
            times[i].push(push_streamed_with(client, base, repo, &blob, &digest, query).await?);
        }
    }
    for ((what, _, _), times) in kinds.iter().zip(&times) {
        report(&format!("push, one streamed PATCH, {what}"), mib, times);
    }
    let seconds = |times: &[Duration]| median(&mut times.iter().map(Duration::as_secs_f64).collect::<Vec<_>>());
    let (announced, read_back) = (seconds(&times[1]), seconds(&times[2]));
    println!(
        "  the read-back costs {:.2} s per {mib} MiB push ({:.0} % of the announced sha512 push's time)",
        read_back - announced,
        100.0 * (read_back - announced) / announced
    );
    Ok(())
}

/// Pushes a small image tagged `bench` for the manifest requests.
async fn push_small_image(client: &Client, base: &str, repo: &str) -> Result<()> {
    let mut digests = Vec::new();
    for content in [br#"{"architecture":"amd64","os":"linux"}"#.to_vec(), vec![7u8; 1000]] {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&content)));
        let r = client
            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(content.clone())
            .send()
            .await?;
        if r.status() != StatusCode::CREATED {
            bail!("POST blob: {}", r.status());
        }
        digests.push((digest, content.len()));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0].0, "size": digests[0].1},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digests[1].0, "size": digests[1].1}],
    });
    let r = client
        .put(format!("{base}/v2/{repo}/manifests/bench"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.to_string())
        .send()
        .await?;
    if r.status() != StatusCode::CREATED {
        bail!("PUT manifest: {}", r.status());
    }
    Ok(())
}

struct Rate {
    requests: usize,
    errors: usize,
    per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `connections` clients each sending requests back to back for `seconds`.
async fn manifest_rate(base: &str, repo: &str, head: bool, connections: usize, seconds: u64) -> Result<Rate> {
    let url = format!("{base}/v2/{repo}/manifests/bench");
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..connections {
        // One client per task: one keep-alive connection each, as 32 separate clients would.
        let client = Client::builder().pool_max_idle_per_host(1).build()?;
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            while Instant::now() < deadline {
                let sent = Instant::now();
                let request = if head { client.head(&url) } else { client.get(&url) }
                    .header("Accept", "application/vnd.oci.image.manifest.v1+json");
                match request.send().await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let _ = r.bytes().await;
                        latencies.push(sent.elapsed().as_micros() as u32);
                    }
                    _ => errors += 1,
                }
            }
            (latencies, errors)
        }));
    }
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (l, e) = task.await?;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let percentile = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as f64
            / 1000.0
    };
    Ok(Rate {
        requests: latencies.len(),
        errors,
        per_second: latencies.len() as f64 / elapsed,
        p50_ms: percentile(0.50),
        p99_ms: percentile(0.99),
    })
}

fn mb_per_s(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// The middle value (the upper one of an even count), leaving `values` sorted.
fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Throughput of each of `times` moving `mib` MiB, in MB/s.
fn rates(mib: usize, times: &[Duration]) -> Vec<f64> {
    times.iter().map(|t| mb_per_s((mib as u64) << 20, *t)).collect()
}

/// Prints the median throughput of `times` and the range.
fn report(what: &str, mib: usize, times: &[Duration]) {
    let mut rates = rates(mib, times);
    let median = median(&mut rates);
    let (low, high) = (rates[0], rates[rates.len() - 1]);
    println!("{what:<28} {median:>8.1} MB/s median of {} (range {low:.1} to {high:.1})", rates.len());
}

/// Waits (up to ten seconds) until the registry answers `/v2/`.
async fn wait_ready(client: &Client, base: &str) {
    for _ in 0..100 {
        if client.get(format!("{base}/v2/")).send().await.is_ok_and(|r| r.status().is_success()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    // reqwest is built without a default TLS provider (the workspace picks ring once, for all).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if args.tracing_overhead {
        let binary = args.berth.as_ref().context("--tracing-overhead needs --berth BINARY")?;
        return tracing_overhead::run(binary, &args.env, args.connections, args.seconds, args.repeat).await;
    }
    let (server, base) = match (&args.registry, &args.berth) {
        (Some(r), _) => (None, r.trim_end_matches('/').to_owned()),
        (None, Some(binary)) => {
            let (s, b) = Server::start(binary, &args.env)?;
            (Some(s), b)
        }
        (None, None) => bail!("give --registry URL or --berth BINARY"),
    };
    let client = Client::builder().build()?;
    wait_ready(&client, &base).await;
    let runs = |name: &str| args.only.iter().any(|o| o == name);
    let report_rss = |what: &str| {
        if let Some(rss) = server.as_ref().and_then(Server::peak_rss_mib) {
            println!("  server peak RSS after {what}: {rss:.1} MiB");
        }
    };
    let repo = &args.repository;
    println!("registry {base}, blob {} MiB", args.blob_mib);

    if let Some(n) = args.concurrent_pushes {
        let started = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let (client, base, repo) = (client.clone(), base.clone(), format!("{repo}{i}"));
            let blob = BlobSource::new(args.blob_mib);
            tasks.spawn(async move {
                let digest = blob.digest();
                push_streamed(&client, &base, &repo, &blob, &digest).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        let elapsed = started.elapsed();
        let total = (n as u64) * ((args.blob_mib as u64) << 20);
        println!(
            "{n} concurrent streamed pushes of {} MiB: {:.1} MB/s in all ({:.2} s)",
            args.blob_mib,
            mb_per_s(total, elapsed),
            elapsed.as_secs_f64()
        );
        report_rss("the concurrent pushes");
        return Ok(());
    }
    if let Some(endpoint) = &args.s3_endpoint {
        let store = direct::Direct::connect(&args, endpoint).await?;
        let (mut berth_push, mut direct_push, mut berth_pull, mut direct_pull) = (vec![], vec![], vec![], vec![]);
        for round in 0..args.repeat.max(1) {
            // Alternate who goes first, so that neither always meets a warmer store.
            let blob = BlobSource::new(args.blob_mib);
            let digest = blob.digest();
            let key = format!("loadtest-direct/{round}-{}", &digest[7..19]);
            if round % 2 == 0 {
                direct_push.push(store.push(&key, &blob).await?);
                berth_push.push(push_streamed(&client, &base, repo, &blob, &digest).await?);
            } else {
                berth_push.push(push_streamed(&client, &base, repo, &blob, &digest).await?);
                direct_push.push(store.push(&key, &blob).await?);
            }
            if round % 2 == 0 {
                direct_pull.push(store.pull(&key, &digest, blob.len()).await?);
                berth_pull.push(pull(&client, &base, repo, &digest, blob.len()).await?);
            } else {
                berth_pull.push(pull(&client, &base, repo, &digest, blob.len()).await?);
                direct_pull.push(store.pull(&key, &digest, blob.len()).await?);
            }
        }
        let median = |times: &[Duration]| median(&mut rates(args.blob_mib, times));
        report("direct S3 multipart upload", args.blob_mib, &direct_push);
        report("push through Berth (1 PATCH)", args.blob_mib, &berth_push);
        println!("  Berth push / direct upload: {:.0} %", 100.0 * median(&berth_push) / median(&direct_push));
        report("direct S3 GET", args.blob_mib, &direct_pull);
        report("pull through Berth", args.blob_mib, &berth_pull);
        println!("  Berth pull / direct GET: {:.0} %", 100.0 * median(&berth_pull) / median(&direct_pull));
        report_rss("the comparison");
        return Ok(());
    }
    let mut pulled = None;
    if runs("stream") || runs("pull") {
        let mut times = Vec::new();
        for _ in 0..args.repeat.max(1) {
            let blob = BlobSource::new(args.blob_mib);
            let digest = blob.digest();
            times.push(push_streamed(&client, &base, repo, &blob, &digest).await?);
            pulled = Some((digest, blob.len()));
        }
        report("push, one streamed PATCH", args.blob_mib, &times);
        report_rss("the streamed pushes");
    }
    if runs("chunked") {
        let mut times = Vec::new();
        for _ in 0..args.repeat.max(1) {
            let blob = BlobSource::new(args.blob_mib);
            let digest = blob.digest();
            times.push(push_chunked(&client, &base, repo, &blob, &digest, args.chunk_mib).await?);
        }
        report(&format!("push, {} MiB chunks", args.chunk_mib), args.blob_mib, &times);
        report_rss("the chunked pushes");
    }
    if let (true, Some((digest, len))) = (runs("pull"), pulled) {
        let mut times = Vec::new();
        for _ in 0..args.repeat.max(1) {
            times.push(pull(&client, &base, repo, &digest, len).await?);
        }
        report("pull, digest verified", args.blob_mib, &times);
        report_rss("the pulls");
    }
    if runs("sha512") {
        sha512_cost(&client, &base, repo, args.blob_mib, args.repeat.max(1)).await?;
        report_rss("the sha512 pushes");
    }
    if runs("head") || runs("get") {
        push_small_image(&client, &base, repo).await?;
        for (name, head) in [("head", true), ("get", false)] {
            if !runs(name) {
                continue;
            }
            let rate = manifest_rate(&base, repo, head, args.connections, args.seconds).await?;
            println!(
                "manifest {} by tag, {} connections: {:>8.0} req/s, p50 {:.2} ms, p99 {:.2} ms ({} requests, {} errors)",
                name.to_uppercase(),
                args.connections,
                rate.per_second,
                rate.p50_ms,
                rate.p99_ms,
                rate.requests,
                rate.errors
            );
        }
        report_rss("the manifest requests");
    }
    Ok(())
}
