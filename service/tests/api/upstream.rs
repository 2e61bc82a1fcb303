//! Pull-through caching (`[[upstream]]`): a second Berth, a `berth serve` process with token
//! authentication, is the upstream; its own `/metrics` count what reaches it.

use std::process::{Command, Stdio};
use std::time::Duration;

use berth::registry::upstream::UpstreamEntry;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

const METRICS_TOKEN: &str = "upstream-metrics-token";

/// The upstream registry: `berth serve` in token mode, with a user `mirror` that Berth
/// authenticates as, and a client that may push anything (a token for each repository used).
struct Upstream {
    app: TestApp,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Upstream {
    async fn start(repositories: &[&str]) -> Upstream {
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = dir.path().join("htpasswd");
        berth::auth::htpasswd::add_user(&htpasswd, "mirror", "mirror-password").unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .arg("serve")
            .env("BERTH_LISTEN", &listen)
            .env("BERTH_DATA_DIR", dir.path())
            .env("BERTH_AUTH", "token")
            .env("BERTH_HTPASSWD", &htpasswd)
            .env("BERTH_EXTERNAL_URL", format!("http://{listen}"))
            .env("BERTH_METRICS_TOKEN", METRICS_TOKEN)
            .env("BERTH_TOKEN_TTL", "3600")
            .env("BERTH_SERVICE", "registry.test")
            .env("BERTH_GC_INTERVAL", "0")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("berth.log")).unwrap())
            .spawn()
            .unwrap();
        let mut app = attach(KillOnDrop(child), berth::config::Settings { listen, ..Default::default() }, dir).await;
        let scopes: Vec<String> = repositories.iter().map(|r| format!("repository:{r}:pull,push")).collect();
        let scopes: Vec<&str> = scopes.iter().map(String::as_str).collect();
        let token = crate::auth::token(&app, Some(("mirror", "mirror-password")), &scopes).await;
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
        app.client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .build()
            .unwrap();
        Upstream { app }
    }

    fn entry(&self, name: &str, ttl: &str) -> UpstreamEntry {
        UpstreamEntry {
            name: name.into(),
            url: self.app.base.clone(),
            username: Some("mirror".into()),
            password: Some("mirror-password".into()),
            ttl: Some(ttl.into()),
            ..Default::default()
        }
    }

    /// Requests the upstream answered, by method and route pattern.
    async fn requests(&self, method: &str, route: &str) -> u64 {
        let r = reqwest::Client::new().get(self.app.url("/metrics")).bearer_auth(METRICS_TOKEN).send().await.unwrap();
        let text = r.text().await.unwrap();
        let (method, route) = (format!("method=\"{method}\""), format!("route=\"{route}\""));
        text.lines()
            // Answered with content: a 401 that starts the token flow fetches nothing.
            .filter(|l| l.starts_with("berth_http_requests_total{") && l.contains(&method) && l.contains(&route))
            .filter(|l| l.contains("status=\"2"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    async fn blob_gets(&self) -> u64 {
        self.requests("GET", "/v2/{name}/blobs/{digest}").await
    }

    async fn manifest_requests(&self) -> (u64, u64) {
        let route = "/v2/{name}/manifests/{reference}";
        (self.requests("HEAD", route).await, self.requests("GET", route).await)
    }
}

async fn pull_manifest(app: &TestApp, path: &str) -> reqwest::Response {
    app.request(Method::GET, path).header("accept", format!("{OCI_MANIFEST}, {OCI_INDEX}")).send().await.unwrap()
}

/// Pulls an image through `app` at `repo:reference` and checks every byte; its digest.
async fn pull_image(app: &TestApp, repo: &str, reference: &str) -> String {
    let r = pull_manifest(app, &format!("/v2/{repo}/manifests/{reference}")).await;
    assert_eq!(r.status(), StatusCode::OK, "{repo}:{reference}: {}", r.text().await.unwrap());
    let digest = header(&r, "docker-content-digest").unwrap().to_owned();
    let manifest: Value = r.json().await.unwrap();
    let blobs = std::iter::once(&manifest["config"]).chain(manifest["layers"].as_array().unwrap());
    for blob in blobs {
        let d = blob["digest"].as_str().unwrap();
        let r = app.get(&format!("/v2/{repo}/blobs/{d}")).await;
        assert_eq!(r.status(), StatusCode::OK, "{d}");
        assert_eq!(sha256(&r.bytes().await.unwrap()).as_str(), d, "the bytes of {d}");
    }
    digest
}

#[tokio::test]
async fn cold_warm_and_changed_pulls_ask_upstream_only_what_they_must() {
    let upstream = Upstream::start(&["team/app"]).await;
    let v1 = upstream.app.push_image("team/app", "v1", "first").await;
    let app = spawn_with(|s| s.upstream = vec![upstream.entry("hub", "2s")]).await;

    // Cold: the manifest and both blobs come from upstream, once.
    assert_eq!(pull_image(&app, "hub/team/app", "v1").await, v1.digest.as_str());
    assert_eq!(upstream.blob_gets().await, 2, "config and layer");
    let (heads, gets) = upstream.manifest_requests().await;
    assert_eq!((heads, gets), (0, 1));
    // Warm: nothing reaches upstream.
    assert_eq!(pull_image(&app, "hub/team/app", "v1").await, v1.digest.as_str());
    assert_eq!(pull_image(&app, "hub/team/app", v1.digest.as_str()).await, v1.digest.as_str());
    assert_eq!(upstream.blob_gets().await, 2, "a warm pull fetches no blob");
    assert_eq!(upstream.manifest_requests().await, (0, 1), "nor a manifest within the ttl");

    // After the ttl, a HEAD finds it unchanged: no GET.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(pull_image(&app, "hub/team/app", "v1").await, v1.digest.as_str());
    assert_eq!(upstream.manifest_requests().await, (1, 1), "revalidated with a HEAD");

    // The tag moves upstream: unseen until the ttl runs out, then one HEAD and one GET.
    let v2 = upstream.app.push_image("team/app", "v1", "second").await;
    assert_eq!(pull_image(&app, "hub/team/app", "v1").await, v1.digest.as_str(), "within the ttl");
    assert_eq!(upstream.manifest_requests().await, (1, 1), "no request within the ttl");
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(pull_image(&app, "hub/team/app", "v1").await, v2.digest.as_str(), "seen after the ttl");
    assert_eq!(upstream.manifest_requests().await, (2, 2), "a HEAD, then the GET of what changed");
    assert_eq!(upstream.blob_gets().await, 4, "only the new config and layer");

    // The same through the containerd mirror path: `?ns=` names the upstream by its host.
    let host = upstream.app.base.trim_start_matches("http://");
    let r = pull_manifest(&app, &format!("/v2/team/app/manifests/{}?ns={host}", v2.digest)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(upstream.manifest_requests().await, (2, 2), "cached: one host for every upstream");

    // Cached repositories are read-only.
    let r = app.put_manifest("hub/team/app", "mine", OCI_MANIFEST, &v1.bytes).await;
    let body = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(body.to_string().contains("read-only cache"), "{body}");
    let r = app.request(Method::POST, "/v2/hub/team/app/blobs/uploads/").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_index_is_fetched_without_its_platforms() {
    let upstream = Upstream::start(&["multi/app"]).await;
    let mut entries = Vec::new();
    for (arch, seed) in [("amd64", "a"), ("arm64", "b"), ("s390x", "c")] {
        let image = upstream.app.push_image("multi/app", arch, seed).await;
        entries.push(json!({"mediaType": OCI_MANIFEST, "digest": image.digest.as_str(), "size": image.bytes.len(),
            "platform": {"os": "linux", "architecture": arch}}));
    }
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})).unwrap();
    assert_eq!(upstream.app.put_manifest("multi/app", "latest", OCI_INDEX, &index).await.status(), StatusCode::CREATED);
    let app = spawn_with(|s| s.upstream = vec![upstream.entry("hub", "10m")]).await;

    let r = pull_manifest(&app, "/v2/hub/multi/app/manifests/latest").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), index.as_slice(), "byte for byte");
    assert_eq!(upstream.manifest_requests().await, (0, 1), "the index only");
    // One platform, as a client picks it.
    let arm = entries[1]["digest"].as_str().unwrap();
    assert_eq!(pull_image(&app, "hub/multi/app", arm).await, arm);
    assert_eq!(upstream.manifest_requests().await, (0, 2), "and the platform asked for");
    assert_eq!(upstream.blob_gets().await, 2, "its config and layer only");
}

#[tokio::test]
async fn a_cached_image_still_pulls_when_upstream_is_down() {
    let upstream = Upstream::start(&["team/app"]).await;
    let v1 = upstream.app.push_image("team/app", "v1", "first").await;
    let app = spawn_with(|s| s.upstream = vec![upstream.entry("hub", "1s")]).await;
    assert_eq!(pull_image(&app, "hub/team/app", "v1").await, v1.digest.as_str());
    drop(upstream);
    tokio::time::sleep(Duration::from_millis(1100)).await;

    // Past its ttl, the tag is served from the cache, saying so.
    let r = pull_manifest(&app, "/v2/hub/team/app/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(header(&r, "warning").is_some_and(|w| w.starts_with("110 ")), "{:?}", r.headers());
    assert_eq!(pull_image(&app, "hub/team/app", "v1").await, v1.digest.as_str());
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("berth_upstream_cache_total{") && l.contains("result=\"stale\"")),
        "counted as stale"
    );

    // What is not cached: a clear, retryable error.
    let r = pull_manifest(&app, "/v2/hub/team/app/manifests/v2").await;
    let body = assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    let message = body["errors"][0]["message"].as_str().unwrap().to_owned();
    assert!(message.contains("upstream registry hub is unavailable") && message.contains("not cached"), "{message}");
    println!("upstream down, nothing cached: 503 {message}");
}

#[tokio::test]
async fn concurrent_cold_pulls_through_two_replicas_fetch_a_blob_once() {
    let upstream = Upstream::start(&["big/app"]).await;
    let layer = pattern(100 << 20);
    let layer_digest = upstream.app.push_blob("big/app", &layer).await;
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = upstream.app.push_blob("big/app", &config).await;
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.as_str(), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest.as_str(), "size": layer.len()}],
    }))
    .unwrap();
    assert_eq!(upstream.app.put_manifest("big/app", "v1", OCI_MANIFEST, &manifest).await.status(), StatusCode::CREATED);

    // Two replicas on one PostgreSQL, Redis and S3.
    let (database, prefix, bucket) = (
        crate::pgsupport::fresh_database().await,
        crate::redissupport::fresh_prefix(),
        crate::s3support::fresh_bucket().await,
    );
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let (database, prefix, bucket, entry) =
            (database.clone(), prefix.clone(), bucket.clone(), upstream.entry("hub", "10m"));
        replicas.push(
            spawn_with(move |s| {
                crate::s3support::configure(s, &bucket);
                s.s3_redirect = false;
                s.database_url = Some(database);
                s.redis_url = Some(berth::config::Secret::new(crate::redissupport::url()));
                s.redis_prefix = prefix;
                s.upstream = vec![entry];
            })
            .await,
        );
    }
    let r = pull_manifest(&replicas[0], "/v2/hub/big/app/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK);

    // 8 clients at once, 4 on each replica, all cold.
    let path = format!("/v2/hub/big/app/blobs/{layer_digest}");
    let pulls = (0..8).map(|i| {
        let (app, path) = (&replicas[i % 2], path.clone());
        async move {
            let r = app.get(&path).await;
            assert_eq!(r.status(), StatusCode::OK, "client {i}");
            sha256(&r.bytes().await.unwrap())
        }
    });
    for digest in futures_util::future::join_all(pulls).await {
        assert_eq!(digest, layer_digest, "every client gets the whole layer");
    }
    assert_eq!(upstream.blob_gets().await, 1, "one upstream GET for 8 pulls through 2 replicas");
    println!(
        "8 concurrent cold pulls of a 100 MiB layer through 2 replicas: {} upstream blob GET",
        upstream.blob_gets().await
    );
}

/// An upstream that misbehaves: a blob whose bytes are not its digest's, a manifest over the
/// size limit, a redirect to itself.
async fn bad_upstream() -> (String, berth::oci::Digest) {
    use actix_web::{App, HttpResponse, HttpServer, web};
    let good = b"the bytes the digest is of".to_vec();
    let digest = sha256(&good);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": digest.as_str(), "size": good.len()},
        "layers": [],
    }))
    .unwrap();
    let huge = format!("{{\"schemaVersion\":2,\"mediaType\":\"{OCI_MANIFEST}\",\"pad\":\"{}\"}}", "x".repeat(5 << 20));
    let evil = vec![b'x'; good.len()];
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = HttpServer::new(move || {
        let (manifest, huge, evil) = (manifest.clone(), huge.clone(), evil.clone());
        App::new()
            .route(
                "/v2/bad/app/manifests/v1",
                web::get().to(move || {
                    let m = manifest.clone();
                    async move { HttpResponse::Ok().content_type(OCI_MANIFEST).body(m) }
                }),
            )
            .route(
                "/v2/bad/app/blobs/{digest}",
                web::get().to(move || {
                    let e = evil.clone();
                    async move { HttpResponse::Ok().content_type("application/octet-stream").body(e) }
                }),
            )
            .route(
                "/v2/bad/huge/manifests/v1",
                web::get().to(move || {
                    let h = huge.clone();
                    async move { HttpResponse::Ok().content_type(OCI_MANIFEST).body(h) }
                }),
            )
            .route(
                "/v2/bad/loop/manifests/v1",
                web::get().to(|| async {
                    HttpResponse::Found().insert_header(("location", "/v2/bad/loop/manifests/v1")).finish()
                }),
            )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    (base, digest)
}

#[tokio::test]
async fn what_a_bad_upstream_sends_is_refused_and_not_stored() {
    let (base, digest) = bad_upstream().await;
    let entry = UpstreamEntry { name: "odd".into(), url: base, ..Default::default() };
    let app = spawn_with(|s| s.upstream = vec![entry]).await;

    // A blob whose bytes do not match: the client never gets it whole, and nothing is stored.
    let r = pull_manifest(&app, "/v2/odd/bad/app/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK, "the manifest itself is fine");
    let r = app.get(&format!("/v2/odd/bad/app/blobs/{digest}")).await;
    // Streamed as it came, its end is held back until the digest is checked: the client's
    // download breaks off instead of completing with the wrong bytes.
    let complete = r.status() == StatusCode::OK && r.bytes().await.is_ok();
    assert!(!complete, "no client receives a whole blob that does not match its digest");
    let local: berth::oci::RepoName = "odd/bad/app".parse().unwrap();
    wait_until(async || app.registry().blob_size(&local, &digest).await.is_err()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(app.registry().blob_size(&local, &digest).await.is_err(), "nothing unverified is stored");

    // A manifest over the limit, and a redirect loop: 502, saying why.
    for (path, why) in [
        ("/v2/odd/bad/huge/manifests/v1", "larger than the limit"),
        ("/v2/odd/bad/loop/manifests/v1", "redirects too often"),
    ] {
        let r = pull_manifest(&app, path).await;
        let body = assert_error(r, StatusCode::BAD_GATEWAY, "UNAVAILABLE").await;
        assert!(body.to_string().contains(why), "{path}: {body}");
    }
}

#[tokio::test]
async fn as_dockers_registry_mirror_unprefixed_pulls_that_find_nothing_go_upstream() {
    let upstream = Upstream::start(&["team/app"]).await;
    let v1 = upstream.app.push_image("team/app", "v1", "first").await;
    let entry = UpstreamEntry { docker_mirror: true, ..upstream.entry("hub", "10m") };
    let app = spawn_with(|s| s.upstream = vec![entry]).await;
    let mine = app.push_image("local/app", "v1", "here").await;

    // What is here is served from here, and nothing asks upstream for it.
    assert_eq!(pull_image(&app, "local/app", "v1").await, mine.digest.as_str());
    assert_eq!(upstream.manifest_requests().await, (0, 0));
    // What is not comes through the cache, as Docker's registry-mirrors ask for it.
    assert_eq!(pull_image(&app, "team/app", "v1").await, v1.digest.as_str());
    assert_eq!(upstream.manifest_requests().await, (0, 1));
    assert_eq!(pull_image(&app, "hub/team/app", "v1").await, v1.digest.as_str(), "the same cache");
    assert_eq!((upstream.manifest_requests().await, upstream.blob_gets().await), ((0, 1), 2));
    // Neither here nor upstream: 404, as before.
    let r = pull_manifest(&app, "/v2/team/none/manifests/v1").await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
}

/// distribution 2.8.2 (Debian's `docker-registry`) in token mode, as the upstream: the test runs
/// its token server, which signs ES256 tokens with a key whose self-signed certificate is
/// distribution's `rootcertbundle` (sent in the tokens' `x5c`), for the user `mirror`.
struct Distribution {
    _process: KillOnDrop,
    base: String,
    tokens: String,
    _dir: tempfile::TempDir,
}

const DIST_SERVICE: &str = "distribution";
const DIST_ISSUER: &str = "berth-test-token-server";

/// The token server: `GET /token?scope=repository:<name>:<actions>` with Basic
/// `mirror:mirror-password` gets a token for what it asks.
async fn token_server(key_pem: String, cert_der: Vec<u8>) -> String {
    use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let x5c = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &cert_der);
    let server = HttpServer::new(move || {
        let (key_pem, x5c) = (key_pem.clone(), x5c.clone());
        App::new().route(
            "/token",
            web::get().to(move |req: HttpRequest| {
                let (key_pem, x5c) = (key_pem.clone(), x5c.clone());
                async move {
                    let expected =
                        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "mirror:mirror-password");
                    let basic = req.headers().get("authorization").and_then(|v| v.to_str().ok());
                    if basic != Some(&format!("Basic {expected}")) {
                        return HttpResponse::Unauthorized().finish();
                    }
                    let access: Vec<Value> = form_urlencoded::parse(req.query_string().as_bytes())
                        .filter(|(k, _)| k == "scope")
                        .filter_map(|(_, v)| {
                            let mut parts = v.splitn(3, ':').map(str::to_owned).collect::<Vec<_>>().into_iter();
                            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
                            Some(json!({"type": kind, "name": name, "actions": actions.split(',').collect::<Vec<_>>()}))
                        })
                        .collect();
                    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                    let claims = json!({"iss": DIST_ISSUER, "sub": "mirror", "aud": DIST_SERVICE, "exp": now + 300,
                        "nbf": now - 10, "iat": now, "jti": uuid::Uuid::new_v4().to_string(), "access": access});
                    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
                    header.x5c = Some(vec![x5c]);
                    let key = jsonwebtoken::EncodingKey::from_ec_pem(key_pem.as_bytes()).unwrap();
                    let token = jsonwebtoken::encode(&header, &claims, &key).unwrap();
                    HttpResponse::Ok().json(json!({"token": token, "expires_in": 300}))
                }
            }),
        )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    base
}

async fn distribution() -> Distribution {
    berth::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["token.test".to_owned()]).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, "berth test token signer");
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.path().join("token.pem"), cert.pem()).unwrap();
    let tokens = token_server(key.serialize_pem(), cert.der().to_vec()).await;
    let port = free_port();
    let config = dir.path().join("config.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n\
             auth:\n  token:\n    realm: {tokens}/token\n    service: {DIST_SERVICE}\n    issuer: {DIST_ISSUER}\n\
             \x20   rootcertbundle: {}\n",
            dir.path().join("data").display(),
            dir.path().join("token.pem").display()
        ),
    )
    .unwrap();
    let binary = std::env::var("DOCKER_REGISTRY").unwrap_or_else(|_| "docker-registry".into());
    let process = KillOnDrop(
        Command::new(&binary)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("registry.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| panic!("{binary}: {e}; the tests need Debian's docker-registry (distribution 2.8)")),
    );
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    for _ in 0..100 {
        if client.get(format!("{base}/v2/")).send().await.is_ok() {
            return Distribution { _process: process, base, tokens, _dir: dir };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("docker-registry does not answer on {base}");
}

#[tokio::test]
async fn distribution_as_the_upstream_is_cached_too() {
    let registry = distribution().await;
    // Unauthenticated, distribution sends clients to the token server.
    let r = reqwest::Client::new().get(format!("{}/v2/", registry.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(header(&r, "www-authenticate").is_some_and(|c| c.starts_with("Bearer realm=")));
    // Pushed to distribution with the TestApp helpers and a token that may push.
    let dir = tempfile::tempdir().unwrap();
    let token: Value = reqwest::Client::new()
        .get(format!("{}/token?service={DIST_SERVICE}&scope=repository:team/app:pull,push", registry.tokens))
        .basic_auth("mirror", Some("mirror-password"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {}", token["token"].as_str().unwrap()).parse().unwrap());
    let pusher = TestApp::detached(
        registry.base.clone(),
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .build()
            .unwrap(),
        dir,
    );
    // distribution takes no single-POST upload: POST, PATCH, PUT.
    let config = br#"{"architecture":"amd64","os":"linux","seed":"distribution"}"#.to_vec();
    let layer = pattern(3 << 20);
    for blob in [&config, &layer] {
        let r = pusher.push_streamed("team/app", blob, 1 << 20).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    }
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256(&config).as_str(), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer).as_str(), "size": layer.len()}],
    }))
    .unwrap();
    assert_eq!(pusher.put_manifest("team/app", "v1", OCI_MANIFEST, &manifest).await.status(), StatusCode::CREATED);
    let image_digest = sha256(&manifest);
    let entry = UpstreamEntry {
        name: "dist".into(),
        url: registry.base.clone(),
        username: Some("mirror".into()),
        password: Some("mirror-password".into()),
        ..Default::default()
    };
    let app = spawn_with(|s| s.upstream = vec![entry]).await;
    assert_eq!(pull_image(&app, "dist/team/app", "v1").await, image_digest.as_str(), "cold");
    drop(registry);
    assert_eq!(pull_image(&app, "dist/team/app", "v1").await, image_digest.as_str(), "warm, with distribution gone");
}

#[tokio::test]
async fn cached_repositories_follow_the_lifecycle_rules() {
    let upstream = Upstream::start(&["team/app"]).await;
    upstream.app.push_image("team/app", "old", "first").await;
    upstream.app.push_image("team/app", "new", "second").await;
    let app = spawn_with(|s| {
        s.upstream = vec![upstream.entry("hub", "10m")];
        s.retention = vec![toml::from_str("repositories = \"hub/**\"\nkeep_last = 1").unwrap()];
    })
    .await;
    pull_image(&app, "hub/team/app", "old").await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    pull_image(&app, "hub/team/app", "new").await;
    // The cache is a repository like any: retention keeps the last tag fetched, and would
    // remove the other (and its manifest, and then its blobs).
    let plan = app.registry().plan_retention(None).await.unwrap();
    let what: Vec<(&str, &str)> = plan.iter().map(|d| (d.repository.as_str(), d.what.as_str())).collect();
    assert!(what.contains(&("hub/team/app", "tag old")), "{what:?}");
    assert!(!what.contains(&("hub/team/app", "tag new")), "{what:?}");
}

#[tokio::test]
async fn the_web_ui_offers_no_delete_in_a_cached_repository() {
    let upstream = Upstream::start(&["team/app"]).await;
    upstream.app.push_image("team/app", "v1", "first").await;
    let app = spawn_with(|s| s.upstream = vec![upstream.entry("hub", "10m")]).await;
    pull_image(&app, "hub/team/app", "v1").await;
    app.push_image("local/app", "v1", "here").await;
    let page = app.get("/ui/r/hub/team/app").await.text().await.unwrap();
    assert!(page.contains("/-/m/v1\"") && !page.contains("/-/delete"), "read-only, as for the API");
    let page = app.get("/ui/r/local/app").await.text().await.unwrap();
    assert!(page.contains("/ui/r/local/app/-/delete?tag=v1"), "a repository of its own is not");
    assert_eq!(app.get("/ui/r/hub/team/app/-/delete?tag=v1").await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn an_upstream_answering_429_or_503_gets_the_cached_copy_served() {
    use actix_web::{App, HttpResponse, HttpServer, web};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU16, Ordering};
    // An upstream that serves one small image, then answers with whatever status is set.
    let config = br#"{"architecture":"amd64","os":"linux"}"#.to_vec();
    let config_digest = sha256(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.as_str(), "size": config.len()},
        "layers": [],
    }))
    .unwrap();
    let failing = Arc::new(AtomicU16::new(0));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (state, served, blob) = (failing.clone(), manifest.clone(), config.clone());
    let server = HttpServer::new(move || {
        let (state, served, blob) = (state.clone(), served.clone(), blob.clone());
        let answer = move |body: Vec<u8>, kind: &'static str| {
            let status = state.load(Ordering::SeqCst);
            if status == 0 {
                HttpResponse::Ok().content_type(kind).body(body)
            } else {
                HttpResponse::build(actix_web::http::StatusCode::from_u16(status).unwrap()).finish()
            }
        };
        let answer_too = answer.clone();
        App::new()
            .route(
                "/v2/team/app/manifests/v1",
                web::route().to(move || {
                    let r = answer(served.clone(), OCI_MANIFEST);
                    async move { r }
                }),
            )
            .route(
                "/v2/team/app/blobs/{digest}",
                web::get().to(move || {
                    let r = answer_too(blob.clone(), "application/octet-stream");
                    async move { r }
                }),
            )
    })
    .workers(1)
    .listen(listener)
    .unwrap()
    .run();
    tokio::spawn(server);
    let entry = UpstreamEntry { name: "flaky".into(), url: base, ttl: Some("1s".into()), ..Default::default() };
    let app = spawn_with(|s| s.upstream = vec![entry]).await;
    assert_eq!(pull_image(&app, "flaky/team/app", "v1").await, sha256(&manifest).as_str());
    for status in [429, 503] {
        failing.store(status, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1100)).await;
        let r = pull_manifest(&app, "/v2/flaky/team/app/manifests/v1").await;
        assert_eq!(r.status(), StatusCode::OK, "upstream answering {status}");
        assert!(header(&r, "warning").is_some_and(|w| w.starts_with("110 ")), "{status}: {:?}", r.headers());
        assert_eq!(r.bytes().await.unwrap().as_ref(), manifest.as_slice());
    }
}

#[tokio::test]
async fn a_cached_repository_takes_pushes_from_its_admins_only() {
    let upstream = Upstream::start(&["team/app"]).await;
    upstream.app.push_image("team/app", "v1", "first").await;
    let entry = UpstreamEntry { admins: vec!["alice".into()], ..upstream.entry("hub", "1s") };
    let app = spawn_with(|s| s.upstream = vec![entry]).await;
    let rules = "[[rules]]\nusers = [\"alice\", \"bob\"]\nrepositories = [\"**\"]\nactions = [\"pull\", \"push\", \"delete\"]\n";
    let users = [("alice", "alice-password"), ("bob", "bob-password")];
    let mut app = crate::ui::with_users(app, &users, rules, |_| {}).await;
    let as_user = |user: &str, password: &str| {
        let basic = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, format!("{user}:{password}"));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Basic {basic}").parse().unwrap());
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).default_headers(headers).build().unwrap()
    };
    // bob may push anywhere by the rules, but not into the cache.
    app.client = as_user("bob", "bob-password");
    let r = app.request(Method::POST, "/v2/hub/team/app/blobs/uploads/").send().await.unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    app.push_image("bob/app", "v1", "elsewhere").await;
    // alice, its admin, may.
    app.client = as_user("alice", "alice-password");
    let fetched = pull_image(&app, "hub/team/app", "v1").await;
    let mine = app.push_image("hub/team/app", "patched", "admin").await;
    let over = app.push_image("hub/team/app", "v1", "admin over the fetched tag").await;
    assert_ne!(over.digest.as_str(), fetched);
    // Past the ttl, what the admin pushed is the registry's own: not revalidated upstream
    // (which has no `patched`, and another `v1`).
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(pull_image(&app, "hub/team/app", "patched").await, mine.digest.as_str());
    assert_eq!(pull_image(&app, "hub/team/app", "v1").await, over.digest.as_str());
}
