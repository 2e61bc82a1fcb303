//! A real Berth on port 0 with its own data directory, driven over HTTP.

use std::time::Duration;

use berth::config::Settings;
use berth::oci::{Algorithm, Digest};
use reqwest::{Client, Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

pub struct TestApp {
    pub base: String,
    pub client: Client,
    pub settings: Settings,
    server: Server,
    /// Keeps the data directory alive for the test's duration.
    pub dir: tempfile::TempDir,
}

enum Server {
    /// In this process: the server's own registry is at hand for what HTTP cannot reach (the
    /// janitor, the collector).
    InProcess { handle: actix_web::dev::ServerHandle, registry: berth::registry::Registry },
    /// A `berth serve` process of its own, for what a test must do to the process's
    /// surroundings (its filesystem).
    Process(KillOnDrop),
    /// Another registry the test started and keeps (distribution): the helpers push to it.
    Elsewhere,
}

/// A child process that does not outlive its test.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_with(|_| {}).await
}

/// Starts a server whose settings `configure` may change first.
pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut settings = Settings {
        listen: "127.0.0.1:0".into(),
        data_dir: dir.path().to_path_buf(),
        workers: Some(2),
        ..Settings::default()
    };
    configure(&mut settings);
    start(settings, dir).await
}

/// A client that shows redirects instead of following them (installing the TLS crypto
/// provider that both it and the server need).
fn client() -> Client {
    berth::install_crypto_provider();
    Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client")
}

/// Starts a server on an existing data directory (to check what survives a restart).
pub async fn start(settings: Settings, dir: tempfile::TempDir) -> TestApp {
    if std::env::var_os("TEST_LOG").is_some() {
        let _ = tracing_subscriber::fmt().with_env_filter("info").with_test_writer().try_init();
    }
    let client = client();
    let (running, server) = berth::server::start(&settings).await.expect("server starts");
    tokio::spawn(server);
    TestApp {
        base: format!("http://{}", running.addr),
        client,
        settings,
        server: Server::InProcess { handle: running.handle, registry: running.registry },
        dir,
    }
}

/// Drives a `berth serve` process that listens on `listen` (as `settings` describe it) once
/// it answers.
pub async fn attach(process: KillOnDrop, settings: Settings, dir: tempfile::TempDir) -> TestApp {
    let base = format!("http://{}", settings.listen);
    let mut app = TestApp { base, client: client(), settings, server: Server::Process(process), dir };
    for _ in 0..200 {
        if app.client.get(app.url("/v2/")).send().await.is_ok() {
            return app;
        }
        if let Server::Process(KillOnDrop(child)) = &mut app.server
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("berth serve exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("berth serve does not answer on {}", app.base);
}

impl TestApp {
    /// The helpers, for another registry at `base` (which the caller runs).
    pub fn detached(base: String, client: Client, dir: tempfile::TempDir) -> TestApp {
        TestApp { base, client, settings: Settings::default(), server: Server::Elsewhere, dir }
    }

    pub fn url(&self, path: &str) -> String {
        if path.starts_with("http") { path.to_owned() } else { format!("{}{}", self.base, path) }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str) -> Response {
        self.request(Method::GET, path).send().await.expect("GET")
    }

    pub async fn head(&self, path: &str) -> Response {
        self.request(Method::HEAD, path).send().await.expect("HEAD")
    }

    pub async fn delete(&self, path: &str) -> Response {
        self.request(Method::DELETE, path).send().await.expect("DELETE")
    }

    /// The server's registry, when it runs in this process.
    pub fn registry(&self) -> &berth::registry::Registry {
        match &self.server {
            Server::InProcess { registry, .. } => registry,
            Server::Process(_) | Server::Elsewhere => panic!("the server runs in a process of its own"),
        }
    }

    /// Stops the server, keeping its data directory.
    pub async fn stop(self) -> (Settings, tempfile::TempDir) {
        match self.server {
            Server::InProcess { handle, .. } => handle.stop(true).await,
            Server::Process(process) => drop(process),
            Server::Elsewhere => {}
        }
        (self.settings, self.dir)
    }

    /// `POST /v2/<repo>/blobs/uploads/`; returns the upload location.
    pub async fn start_upload(&self, repo: &str) -> String {
        let r = self.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/")).send().await.expect("POST");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        location(&r)
    }

    /// A monolithic blob upload: one `POST ?digest=` with the bytes.
    pub async fn post_blob(&self, repo: &str, digest: &Digest, bytes: &[u8]) -> Response {
        self.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("Content-Type", "application/octet-stream")
            .body(bytes.to_vec())
            .send()
            .await
            .expect("POST")
    }

    /// Pushes a blob in one request; returns its digest.
    pub async fn push_blob(&self, repo: &str, bytes: &[u8]) -> Digest {
        let digest = sha256(bytes);
        let r = self.post_blob(repo, &digest, bytes).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap_or_default());
        digest
    }

    /// A PATCH whose body is sent in `pieces` with chunked transfer encoding (no Content-Length).
    pub async fn patch_streamed(&self, location: &str, range: Option<&str>, pieces: Vec<Vec<u8>>) -> Response {
        let pieces: Vec<Result<bytes::Bytes, std::io::Error>> =
            pieces.into_iter().map(|p| Ok(bytes::Bytes::from(p))).collect();
        let mut request = self.request(Method::PATCH, location).header("Content-Type", "application/octet-stream");
        if let Some(range) = range {
            request = request.header("Content-Range", range);
        }
        request.body(reqwest::Body::wrap_stream(futures_util::stream::iter(pieces))).send().await.expect("PATCH")
    }

    /// POST, one streamed PATCH (pieces of `piece` bytes), PUT: the Docker way. Returns the
    /// PUT's response.
    pub async fn push_streamed(&self, repo: &str, blob: &[u8], piece: usize) -> Response {
        let location = self.start_upload(repo).await;
        let r = self.patch_streamed(&location, None, blob.chunks(piece).map(<[u8]>::to_vec).collect()).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let location = crate::helpers::location(&r);
        // A location may carry a query of its own (distribution's `_state`).
        let join = if location.contains('?') { '&' } else { '?' };
        self.request(Method::PUT, &format!("{location}{join}digest={}", sha256(blob))).send().await.expect("PUT")
    }

    /// Pushes a manifest; returns the response.
    pub async fn put_manifest(&self, repo: &str, reference: &str, media_type: &str, body: &[u8]) -> Response {
        self.request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("Content-Type", media_type)
            .body(body.to_vec())
            .send()
            .await
            .expect("PUT")
    }

    /// Pushes a small image (config and one layer) tagged `tag`; returns the manifest.
    pub async fn push_image(&self, repo: &str, tag: &str, seed: &str) -> Image {
        let config = format!(r#"{{"architecture":"amd64","os":"linux","seed":"{seed}"}}"#).into_bytes();
        let layer = format!("layer of {seed}").repeat(100).into_bytes();
        let config_digest = self.push_blob(repo, &config).await;
        let layer_digest = self.push_blob(repo, &layer).await;
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config_digest.as_str(), "size": config.len()},
            "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest.as_str(), "size": layer.len()}],
        });
        let bytes = serde_json::to_vec_pretty(&manifest).expect("json");
        let r = self.put_manifest(repo, tag, OCI_MANIFEST, &bytes).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap_or_default());
        Image { digest: sha256(&bytes), bytes, manifest, layer_digest }
    }
}

/// An image pushed by [`TestApp::push_image`].
pub struct Image {
    pub digest: Digest,
    pub bytes: Vec<u8>,
    pub manifest: Value,
    pub layer_digest: Digest,
}

pub fn sha256(bytes: &[u8]) -> Digest {
    Digest::compute(Algorithm::Sha256, bytes)
}

pub fn location(r: &Response) -> String {
    r.headers().get("location").expect("Location header").to_str().expect("ascii").to_owned()
}

pub fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
    r.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Asserts that a server error's body says what kind of trouble it is and which request it
/// was, and nothing of the registry's insides: no address, no file path, no `Debug` text, no
/// backend's own words.
pub fn assert_discreet(body: &str) {
    let lower = body.to_ascii_lowercase();
    for leak in [
        "127.0.0.1",
        "localhost",
        "[::1]",
        "/tmp",
        "/var/",
        "/home/",
        "/root",
        "os error",
        "dispatch failure",
        "error {",
        "some(",
        "errorkind",
        ".rs:",
        "sqlx",
        "pool timed out",
        "connection refused",
        "headobject",
        "putobject",
        "getobject",
        "uploadpart",
        "createmultipartupload",
        "\\n",
    ] {
        assert!(!lower.contains(leak), "a 5xx body gives away {leak:?}: {body}");
    }
    let ipv4 = body.split(|c: char| !(c.is_ascii_digit() || c == '.')).any(|w| {
        let parts: Vec<&str> = w.split('.').collect();
        parts.len() == 4 && parts.iter().all(|p| !p.is_empty() && p.parse::<u8>().is_ok())
    });
    assert!(!ipv4, "a 5xx body gives away an address: {body}");
}

/// Asserts the status and the OCI error code of an error response; a server error must also
/// be discreet and name its request id.
pub async fn assert_error(r: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(r.status(), status, "unexpected status");
    let request_id = header(&r, "x-request-id").map(str::to_owned);
    let body: Value = r.json().await.expect("error body is JSON");
    if status.is_server_error() {
        assert_discreet(&body.to_string());
        let id = request_id.expect("an X-Request-Id header");
        assert_eq!(body["errors"][0]["detail"]["request_id"], Value::from(id.clone()), "{body}");
        assert!(body["errors"][0]["message"].as_str().unwrap_or("").contains(&id), "{body}");
    }
    let codes: Vec<&str> =
        body["errors"].as_array().expect("errors array").iter().filter_map(|e| e["code"].as_str()).collect();
    assert!(codes.contains(&code), "expected {code} in {body}");
    body
}

/// Bytes that are not all the same, so that misplaced chunks would change the digest.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

pub async fn wait_until(mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..100 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("condition not met in time");
}

/// Sends a raw HTTP/1.1 request and returns what the server answered, if anything.
pub async fn raw_request(app: &TestApp, head: &str, body: &[u8], close_early: bool) -> String {
    let addr = app.base.trim_start_matches("http://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.unwrap();
    socket.write_all(head.as_bytes()).await.unwrap();
    socket.write_all(body).await.unwrap();
    if close_early {
        // Half-close: the server sees the body end before Content-Length bytes came.
        socket.shutdown().await.unwrap();
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}
