//! Traces leave a real `berth serve` over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set:
//! an in-process OTLP receiver gets the request spans of a blob upload, their storage and
//! metadata child spans, and the client's `traceparent` as their parent. The access log
//! carries the same trace id.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use fake_opentelemetry_collector::{ExportedSpan, FakeCollectorServer};
use reqwest::StatusCode;
use sha2::{Digest as _, Sha256};

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";

/// Whether `span` descends from the span with id `ancestor`.
fn descends(spans: &HashMap<&str, &ExportedSpan>, span: &ExportedSpan, ancestor: &str) -> bool {
    let mut parent = span.parent_span_id.as_str();
    while let Some(up) = spans.get(parent) {
        if up.span_id == ancestor {
            return true;
        }
        parent = up.parent_span_id.as_str();
    }
    parent == ancestor
}

#[tokio::test]
async fn a_blob_upload_is_traced_under_the_clients_traceparent() {
    berth::install_crypto_provider();
    let mut collector = FakeCollectorServer::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let log = dir.path().join("berth.log");
    let mut server = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("serve")
        .env_clear()
        .env("BERTH_LISTEN", format!("127.0.0.1:{port}"))
        .env("BERTH_DATA_DIR", dir.path().join("data"))
        .env("BERTH_LOG_FORMAT", "json")
        // Quiet logs keep the access log only; the traces must not depend on the log filter.
        .env("BERTH_LOG", "warn,berth::access=info")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..200 {
        if client.get(format!("{base}/v2/")).send().await.is_ok() {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ready, "berth did not start");

    let traceparent = format!("00-{TRACE}-{CLIENT_SPAN}-01");
    let blob = vec![7u8; 300_000];
    let digest = format!("sha256:{}", hex::encode(Sha256::digest(&blob)));
    let r = client
        .post(format!("{base}/v2/traced/blobs/uploads/"))
        .header("traceparent", &traceparent)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let r = client
        .put(format!("{base}{location}?digest={digest}"))
        .header("traceparent", &traceparent)
        .body(blob)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    // A request without a traceparent starts a trace of its own.
    assert_eq!(client.head(format!("{base}/v2/traced/blobs/{digest}")).send().await.unwrap().status(), StatusCode::OK);

    // SIGTERM: the exporter flushes what is batched before the process exits.
    assert!(Command::new("kill").args(["-TERM", &server.id().to_string()]).status().unwrap().success());
    let exit = tokio::task::spawn_blocking(move || server.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "exit status {exit}");
    let spans = collector.exported_spans(6, Duration::from_secs(10)).await;
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    let by_id: HashMap<&str, &ExportedSpan> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();

    let request =
        |name: &str| spans.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no span {name} among {names:?}"));
    let post = request("POST /v2/{name}/blobs/uploads/");
    let put = request("PUT /v2/{name}/blobs/uploads/{id}");
    for span in [post, put] {
        assert_eq!(span.trace_id, TRACE, "{} continues the client's trace", span.name);
        assert_eq!(span.parent_span_id, CLIENT_SPAN, "{} is a child of the client's span", span.name);
        assert_eq!(span.kind, "SPAN_KIND_SERVER");
    }
    let status = put.attributes.get("http.response.status_code").map(String::as_str).unwrap_or_default();
    assert!(status.contains("IntValue(201)"), "status attribute {status}");
    let under_put: Vec<&str> =
        spans.iter().filter(|s| descends(&by_id, s, &put.span_id)).map(|s| s.name.as_str()).collect();
    for child in ["storage.open_writer", "storage.commit_upload", "db.link_blob"] {
        assert!(under_put.contains(&child), "{child} under the PUT span; found {under_put:?}");
    }
    let head = request("HEAD /v2/{name}/blobs/{digest}");
    assert_ne!(head.trace_id, TRACE, "an untraced request gets a trace of its own");
    assert!(head.parent_span_id.is_empty(), "and is a root span");

    let log = std::fs::read_to_string(&log).unwrap();
    let access = log.lines().filter(|l| l.contains("berth::access") && l.contains("PUT")).collect::<Vec<_>>();
    assert!(access.iter().any(|l| l.contains(TRACE)), "the access log names the trace: {access:?}");
}
