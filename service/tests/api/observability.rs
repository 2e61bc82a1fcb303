//! Metrics, health, configuration checks and graceful shutdown.

use std::process::{Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::{Method, StatusCode};

use crate::helpers::*;

/// The value of one sample of the exposition, if present.
/// Label names and values a series must carry.
type Labels<'a> = &'a [(&'a str, &'a str)];

fn sample(text: &str, name: &str, labels: Labels<'_>) -> Option<f64> {
    text.lines().filter(|l| l.starts_with(name) && !l.starts_with('#')).find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let series_name = series.split('{').next()?;
        if series_name != name {
            return None;
        }
        labels.iter().all(|(k, v)| series.contains(&format!("{k}=\"{v}\""))).then(|| value.parse().ok()).flatten()
    })
}

#[tokio::test]
async fn metrics_move_with_a_push_and_a_pull_and_never_name_content() {
    let app = spawn_app().await;
    let image = app.push_image("secret-project/app", "v1", "metrics").await;
    let r = app.get(&format!("/v2/secret-project/app/blobs/{}", image.layer_digest)).await;
    let served = r.bytes().await.unwrap().len() as f64;
    app.get("/v2/secret-project/app/manifests/v1").await;
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "content-type").unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let blob_gets = sample(
        &text,
        "berth_http_requests_total",
        &[("route", "/v2/{name}/blobs/{digest}"), ("method", "GET"), ("status", "200")],
    );
    assert_eq!(blob_gets, Some(1.0), "{text}");
    let puts = sample(
        &text,
        "berth_http_requests_total",
        &[("route", "/v2/{name}/manifests/{reference}"), ("method", "PUT"), ("status", "201")],
    );
    assert_eq!(puts, Some(1.0));
    let at_least: [(&str, Labels<'_>, f64); 4] = [
        (
            "berth_http_request_duration_seconds_count",
            &[("route", "/v2/{name}/blobs/uploads/"), ("method", "POST")],
            2.0,
        ),
        (
            "berth_storage_operation_duration_seconds_count",
            &[("backend", "filesystem"), ("operation", "commit_upload")],
            2.0,
        ),
        (
            "berth_metadata_operation_duration_seconds_count",
            &[("backend", "sqlite"), ("operation", "put_manifest")],
            1.0,
        ),
        ("berth_session_operation_duration_seconds_count", &[("backend", "memory"), ("operation", "lock")], 2.0),
    ];
    for (name, labels, least) in at_least {
        assert!(sample(&text, name, labels).unwrap() >= least, "{name} {labels:?}: {text}");
    }
    assert!(sample(&text, "berth_blob_uploaded_bytes_total", &[]).unwrap() >= served);
    assert_eq!(sample(&text, "berth_blob_served_bytes_total", &[]), Some(served));
    assert!(sample(&text, "berth_http_requests_in_flight", &[]).is_some());
    assert!(sample(&text, "process_resident_memory_bytes", &[]).unwrap() > 0.0);
    // Labels are bounded: no repository, tag or digest anywhere.
    for forbidden in ["secret-project", "sha256:", "v1\""] {
        assert!(!text.contains(forbidden), "{forbidden} appears in /metrics");
    }
}

#[tokio::test]
async fn metrics_can_listen_on_their_own_address() {
    berth::install_crypto_provider();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let app = spawn_with(|s| s.metrics_listen = Some(format!("127.0.0.1:{port}"))).await;
    app.get("/v2/").await;
    assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND, "not on the API address");
    let text = reqwest::get(format!("http://127.0.0.1:{port}/metrics")).await.unwrap().text().await.unwrap();
    assert!(sample(&text, "berth_http_requests_total", &[("route", "/v2/"), ("status", "200")]).is_some(), "{text}");
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let r = app.get("/healthz").await;
    assert_eq!(r.status(), StatusCode::OK);
    let r: serde_json::Value = app.get("/readyz").await.json().await.unwrap();
    assert_eq!(r["status"], "ready");
    for component in ["metadata", "sessions", "storage"] {
        assert_eq!(r["components"][component]["status"], "ok", "{r}");
    }
    assert_eq!(r["components"]["metadata"]["backend"], "sqlite");
}

#[tokio::test]
async fn a_storage_outage_shows_in_readyz() {
    let bucket = crate::s3support::fresh_bucket().await;
    let moto = crate::urlsupport::socket_of(&crate::s3support::endpoint());
    let proxy = crate::proxy::Proxy::start(moto).await;
    let app = spawn_with(|s| {
        crate::s3support::configure(s, &bucket);
        s.s3_endpoint = Some(proxy.url());
    })
    .await;
    assert_eq!(app.get("/readyz").await.status(), StatusCode::OK);
    proxy.cut();
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_discreet(&body.to_string());
    assert_eq!(body["components"]["storage"]["status"], "unavailable", "{body}");
    assert_eq!(body["components"]["storage"]["error"], "unreachable", "{body}");
    proxy.restore();
    wait_until(async || app.get("/readyz").await.status() == StatusCode::OK).await;
}

fn berth() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
    command.env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn check_config_prints_the_settings_with_secrets_masked_and_names_what_is_wrong() {
    let out = berth()
        .args(["check-config"])
        .env("BERTH_STORAGE", "s3")
        .env("BERTH_S3_BUCKET", "registry")
        .env("BERTH_S3_ACCESS_KEY_ID", "AKIA")
        .env("BERTH_S3_SECRET_ACCESS_KEY", "very-secret-key")
        .env("BERTH_DATABASE_URL", "postgres://berth:db-password@db/berth")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("s3_bucket = \"registry\""), "{text}");
    assert!(!text.contains("very-secret-key") && !text.contains("db-password"), "{text}");
    assert!(text.contains("postgres://berth:***@db/berth"), "{text}");
    for (variable, value, named) in [
        ("BERTH_STORAGE", "tape", "storage"),
        ("BERTH_S3_PART_SIZE", "1000", "BERTH_S3_PART_SIZE"),
        ("BERTH_LISTN", "x", "listn"),
        ("BERTH_DELETE", "maybe", "delete"),
    ] {
        let out = berth().args(["check-config"]).env(variable, value).output().unwrap();
        assert!(!out.status.success(), "{variable}={value} was accepted");
        let message = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(message.contains(&named.to_lowercase()), "{variable}: {message}");
    }
}

/// SIGTERM while a large upload is being received: the upload finishes, the process exits 0,
/// and the blob is there after a restart.
#[tokio::test]
async fn sigterm_lets_a_large_upload_finish() {
    berth::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let start = || {
        berth()
            .arg("serve")
            .env("BERTH_LISTEN", format!("127.0.0.1:{port}"))
            .env("BERTH_DATA_DIR", dir.path())
            .env("BERTH_LOG", "warn")
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut server = start();
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_until(async || client.get(format!("{base}/v2/")).send().await.is_ok()).await;
    let r = client.post(format!("{base}/v2/big/blobs/uploads/")).send().await.unwrap();
    let location = format!("{base}{}", location(&r));
    let blob = pattern(64 << 20);
    let digest = sha256(&blob);
    // The body trickles in over about two seconds; SIGTERM arrives after the first.
    let pieces: Vec<Bytes> = blob.chunks(1 << 20).map(Bytes::copy_from_slice).collect();
    let body = futures_util::stream::iter(pieces).then(|piece| async move {
        tokio::time::sleep(Duration::from_millis(30)).await;
        Ok::<_, std::io::Error>(piece)
    });
    let put = client
        .request(Method::PUT, format!("{location}?digest={digest}"))
        .header("Content-Length", blob.len())
        .body(reqwest::Body::wrap_stream(body))
        .send();
    let pid = server.id();
    let signal = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    };
    let (response, ()) = tokio::join!(put, signal);
    assert_eq!(response.unwrap().status(), StatusCode::CREATED, "the upload in flight finished");
    let exit = tokio::task::spawn_blocking(move || server.wait()).await.unwrap().unwrap();
    assert!(exit.success(), "exit status {exit}");
    let mut restarted = start();
    wait_until(async || client.get(format!("{base}/v2/")).send().await.is_ok()).await;
    let r = client.get(format!("{base}/v2/big/blobs/{digest}")).send().await.unwrap();
    assert_eq!(sha256(&r.bytes().await.unwrap()), digest);
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}
