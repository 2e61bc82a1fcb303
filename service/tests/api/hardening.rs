//! What a new user's first day turned up: headers that must not be believed, a lockout anyone
//! could cause, metrics on a public port, and how mistakes in the configuration are told.

use std::process::Command;
use std::time::{Duration, Instant};

use berth::config::{AuthMode, Settings, TrustForwarded};
use reqwest::{Method, StatusCode};

use crate::auth::basic;
use crate::helpers::*;

/// Token mode with alice and bob, no external URL, and the forwarded headers trusted as given.
async fn token_app(trust: TrustForwarded, configure: impl FnOnce(&mut Settings)) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = dir.path().join("htpasswd");
    berth::auth::htpasswd::add_user(&htpasswd, "alice", "alice-password").unwrap();
    berth::auth::htpasswd::add_user(&htpasswd, "bob", "bob-password").unwrap();
    let app = spawn_with(|s| {
        s.auth = AuthMode::Token;
        s.htpasswd = Some(htpasswd);
        s.service = "registry.test".into();
        s.trust_forwarded = trust;
        s.login_max_failures = 3;
        s.login_failure_window = 60;
        configure(s);
    })
    .await;
    (app, dir)
}

async fn realm(app: &TestApp, headers: &[(&str, &str)]) -> String {
    let mut request = app.request(Method::GET, "/v2/");
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let challenge = header(&r, "www-authenticate").unwrap();
    challenge.split("realm=\"").nth(1).and_then(|r| r.split('"').next()).unwrap().to_owned()
}

#[tokio::test]
async fn the_token_realm_never_comes_from_headers_that_are_not_trusted() {
    let (app, _dir) = token_app(TrustForwarded::None, |_| {}).await;
    let own = format!("{}/token", app.base);
    assert_eq!(realm(&app, &[]).await, own);
    assert_eq!(realm(&app, &[("Forwarded", "host=evil.example;proto=https")]).await, own);
    assert_eq!(realm(&app, &[("X-Forwarded-Host", "evil2.example"), ("X-Forwarded-Proto", "https")]).await, own);

    // Behind a proxy that sets them, they are what the client used.
    let (app, _dir) = token_app(TrustForwarded::XForwarded, |_| {}).await;
    let headers = [("X-Forwarded-Host", "registry.example.com"), ("X-Forwarded-Proto", "https")];
    assert_eq!(realm(&app, &headers).await, "https://registry.example.com/token");
    assert_eq!(realm(&app, &[("Forwarded", "host=evil.example")]).await, format!("{}/token", app.base));

    // An external URL decides, whatever the request says.
    let (app, _dir) =
        token_app(TrustForwarded::XForwarded, |s| s.external_url = Some("https://registry.example.org".into())).await;
    assert_eq!(realm(&app, &headers).await, "https://registry.example.org/token");
}

/// A token request as `user`, from the address a proxy appended to what the client wrote.
async fn login_from(app: &TestApp, user: &str, password: &str, forwarded_for: &str) -> StatusCode {
    app.request(Method::GET, "/token?service=registry.test")
        .header("Authorization", basic(user, password))
        .header("X-Forwarded-For", forwarded_for)
        .send()
        .await
        .unwrap()
        .status()
}

#[tokio::test]
async fn the_counted_address_is_the_one_the_proxy_appended() {
    let (app, _dir) = token_app(TrustForwarded::XForwarded, |_| {}).await;
    // The client writes 10.9.9.9 itself; the proxy appends the address it saw.
    for _ in 0..3 {
        assert_eq!(login_from(&app, "bob", "guess", "10.9.9.9, 198.51.100.1").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(
        login_from(&app, "alice", "alice-password", "10.9.9.9, 198.51.100.1").await,
        StatusCode::TOO_MANY_REQUESTS
    );
    // The forged entry was not counted: another client writing it is not refused.
    assert_eq!(login_from(&app, "alice", "alice-password", "10.9.9.9, 198.51.100.2").await, StatusCode::OK);
    assert_eq!(login_from(&app, "alice", "alice-password", "198.51.100.2").await, StatusCode::OK);

    // Without trust, the header is nobody's address: the connection's is counted.
    let (app, _dir) = token_app(TrustForwarded::None, |_| {}).await;
    for i in 0..3 {
        assert_eq!(login_from(&app, "bob", "guess", &format!("198.51.100.{i}")).await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login_from(&app, "alice", "alice-password", "198.51.100.9").await, StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn failures_from_other_addresses_never_lock_a_user_out() {
    let (app, _dir) = token_app(TrustForwarded::XForwarded, |_| {}).await;
    for i in 0..10 {
        assert_eq!(login_from(&app, "alice", "guess", &format!("198.51.100.{i}")).await, StatusCode::UNAUTHORIZED);
    }
    // The right password from an address that has not failed: slowed down, not refused.
    let started = Instant::now();
    assert_eq!(login_from(&app, "alice", "alice-password", "203.0.113.1").await, StatusCode::OK);
    let slowed = started.elapsed();
    assert!(slowed >= Duration::from_millis(800) && slowed < Duration::from_secs(5), "{slowed:?}");
    // From an address that failed once, too: one failure is far from its limit.
    assert_eq!(login_from(&app, "alice", "alice-password", "198.51.100.3").await, StatusCode::OK);
    // One address failing at the limit is refused, for any user: it is guessing.
    for _ in 0..3 {
        assert_eq!(login_from(&app, "alice", "guess", "192.0.2.7").await, StatusCode::UNAUTHORIZED);
    }
    assert_eq!(login_from(&app, "bob", "bob-password", "192.0.2.7").await, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(login_from(&app, "bob", "bob-password", "192.0.2.8").await, StatusCode::OK);
}

#[tokio::test]
async fn metrics_are_public_only_while_everything_is() {
    let app = spawn_app().await;
    assert_eq!(app.get("/metrics").await.status(), StatusCode::OK, "no authentication: public");
    let (app, _dir) = token_app(TrustForwarded::None, |_| {}).await;
    assert_eq!(app.get("/metrics").await.status(), StatusCode::NOT_FOUND, "authentication on: not on the API port");
    let (app, _dir) = token_app(TrustForwarded::None, |s| {
        s.metrics_token = Some(berth::config::Secret::new("scrape-me"));
    })
    .await;
    let r = app.get("/metrics").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.request(Method::GET, "/metrics").header("Authorization", "Bearer wrong").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = app.request(Method::GET, "/metrics").header("Authorization", "Bearer scrape-me").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("berth_http_requests_total"));
}

/// `berth ARGS` with only `env` in its environment; its exit status, standard output and error.
fn berth(args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .env_clear()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("berth runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn configuration_mistakes_are_told_in_the_operator_s_terms() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display().to_string();
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut env = vec![("BERTH_DATA_DIR", data.as_str())];
        env.extend_from_slice(extra);
        berth(&["check-config"], &env)
    };
    let (ok, _, err) = with(&[("BERTH_LISTN", "0.0.0.0:5000")]);
    assert!(!ok);
    assert!(err.contains("unknown setting BERTH_LISTN in the environment (did you mean BERTH_LISTEN?)"), "{err}");
    let (ok, _, err) = with(&[("BERTH_LISTEN", "5002")]);
    assert!(!ok && err.contains("BERTH_LISTEN=5002: expected HOST:PORT, e.g. 0.0.0.0:5002"), "{err}");
    // Numbers are fine where the setting is text.
    let (ok, out, err) = with(&[("BERTH_STORAGE", "s3"), ("BERTH_S3_BUCKET", "12345"), ("BERTH_SERVICE", "2024")]);
    assert!(ok, "{err}");
    assert!(out.contains("s3_bucket = \"12345\"") && out.contains("service = \"2024\""), "{out}");
}

#[test]
fn a_port_already_taken_fails_the_start_before_anything_is_created() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("not-yet");
    let (ok, _, err) =
        berth(&["serve"], &[("BERTH_LISTEN", &address), ("BERTH_DATA_DIR", &data.display().to_string())]);
    assert!(!ok);
    assert!(err.contains(&format!("cannot listen on {address}")), "{err}");
    assert!(!data.exists(), "the data directory was created although the start failed");
}

/// A closed port: nothing listens there.
fn closed_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn backends_that_are_down_at_start_are_logged_reported_and_waited_for() {
    let shared_db = crate::pgsupport::fresh_database().await;
    let proxy = crate::proxy::Proxy::start(crate::urlsupport::socket_of(&shared_db)).await;
    proxy.cut();
    let database = shared_db.replacen(&crate::urlsupport::authority(&shared_db), &proxy.addr.to_string(), 1);
    let (redis, s3) = (format!("redis://{}", closed_port()), format!("http://{}", closed_port()));
    let dir = tempfile::tempdir().unwrap();
    let listen = closed_port();
    let env = [
        ("BERTH_LISTEN", listen.as_str()),
        ("BERTH_DATA_DIR", &dir.path().display().to_string()),
        ("BERTH_DATABASE_URL", database.as_str()),
        ("BERTH_REDIS_URL", redis.as_str()),
        ("BERTH_STORAGE", "s3"),
        ("BERTH_S3_BUCKET", "b"),
        ("BERTH_S3_ENDPOINT", s3.as_str()),
        ("BERTH_S3_FORCE_PATH_STYLE", "true"),
        ("BERTH_S3_ACCESS_KEY_ID", "test"),
        ("BERTH_S3_SECRET_ACCESS_KEY", "test"),
    ];
    // Asked to fail fast, it names the first backend that does not answer, and why.
    let mut fast = env.to_vec();
    fast.push(("BERTH_FAIL_FAST", "true"));
    let (ok, _, err) = berth(&["serve"], &fast);
    assert!(!ok);
    assert!(err.contains("the metadata backend (postgres) does not answer"), "{err}");
    // `check-config --connect` reports each.
    let (ok, out, _) = berth(&["check-config", "--connect"], &env);
    assert!(!ok);
    for line in [
        "# metadata (postgres): does not answer",
        "# sessions (redis): does not answer",
        "# storage (s3): does not answer",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    // Otherwise it serves, says so once per backend with the cause, and readyz names them.
    let log = dir.path().join("berth.log");
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .env_clear()
        .envs(env.iter().copied())
        .arg("serve")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let app = attach(KillOnDrop(child), Settings { listen, ..Settings::default() }, dir).await;
    let r = app.get("/readyz").await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body = r.text().await.unwrap();
    assert_discreet(&body);
    for component in ["metadata", "sessions", "storage"] {
        assert!(body.contains(&format!("\"{component}\":{{\"backend\"")), "{body}");
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    // Each is named with its own error: the closed ports refuse, the cut proxy hangs up.
    for (backend, cause) in [
        ("component=\"metadata\" backend=\"postgres\"", "error="),
        ("component=\"sessions\" backend=\"redis\"", "refused"),
        ("component=\"storage\" backend=\"s3\"", "refused"),
    ] {
        let line = logged.lines().find(|l| l.contains(backend) && l.contains("does not answer at start"));
        assert!(line.is_some_and(|l| l.to_lowercase().contains(cause)), "{backend}: {logged}");
    }
    let r = app.get("/v2/a/manifests/v1").await;
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    // The database comes up: the migrations that could not run are applied, and it is used.
    proxy.restore();
    wait_until(async || {
        tokio::time::sleep(Duration::from_millis(200)).await;
        app.get("/v2/a/manifests/v1").await.status() == StatusCode::NOT_FOUND
    })
    .await;
    // The line is written once the migrations return, which races the request that saw them.
    let log = app.dir.path().join("berth.log");
    let applied = || std::fs::read_to_string(&log).unwrap().contains("the database answers: migrations applied");
    for _ in 0..50 {
        if applied() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(applied(), "{}", std::fs::read_to_string(&log).unwrap());
}

/// The dry run reports what the real run then does, layers of untagged manifests included.
#[tokio::test]
async fn gc_dry_run_reports_what_the_real_run_removes() {
    let app = spawn_app().await;
    app.push_image("gc/moving", "latest", "first").await;
    app.push_image("gc/moving", "latest", "second").await;
    let run = |args: &[&str]| {
        let mut all = vec!["gc", "--grace", "0s", "--untagged"];
        all.extend_from_slice(args);
        let (ok, out, err) = berth(&all, &[("BERTH_DATA_DIR", &app.dir.path().display().to_string())]);
        assert!(ok, "{err}");
        out
    };
    let dry = run(&["--dry-run"]);
    assert!(dry.contains("would remove 1 untagged manifest(s)"), "{dry}");
    let real = run(&[]);
    assert!(real.contains("removed 1 untagged manifest(s)"), "{real}");
    // "would remove 2 unreferenced blob(s), N bytes" and "removed 2 unreferenced blob(s), N bytes".
    let blobs = |text: &str| {
        let line = text.lines().find(|l| l.contains("blob(s)")).unwrap();
        line.split_once("remove").unwrap().1.trim_start_matches('d').trim().to_owned()
    };
    assert_eq!(blobs(&dry), blobs(&real), "dry: {dry} real: {real}");
    assert!(real.contains("removed 2 unreferenced blob(s)"), "the first image's config and layer: {real}");
}

#[test]
fn users_are_listed_removed_and_legacy_entries_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("htpasswd");
    std::fs::write(&path, "carol:$apr1$legacy$hash\n").unwrap();
    let file = path.display().to_string();
    let env = [("BERTH_HTPASSWD", file.as_str())];
    let add = |user: &str| {
        let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
            .env_clear()
            .envs(env.iter().copied())
            .args(["user", "add", user])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        child.stdin.take().unwrap().write_all(b"a-password\n").unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let warned = add("alice");
    assert!(warned.contains("carol (line 1) has an MD5 (apr1) hash"), "{warned}");
    let (ok, listed, _) = berth(&["user", "list"], &env);
    assert!(ok);
    assert!(listed.contains("carol\t(an MD5 (apr1) hash") && listed.contains("alice\n"), "{listed}");
    assert!(add("carol").contains("carol had an MD5"), "the legacy entry is replaced");
    let (ok, out, _) = berth(&["user", "remove", "alice"], &env);
    assert!(ok && out.contains("alice removed"), "{out}");
    let (ok, listed, _) = berth(&["user", "list"], &env);
    assert!(ok && listed == "carol\n", "{listed}");
    let (ok, _, err) = berth(&["user", "remove", "alice"], &env);
    assert!(!ok && err.contains("alice is not in"), "{err}");
}

#[test]
fn help_points_at_the_settings_and_says_only_what_applies() {
    let (_, serve, _) = berth(&["serve", "--help"], &[]);
    assert!(serve.contains("configuration reference"), "{serve}");
    let (_, gc, _) = berth(&["gc", "--help"], &[]);
    assert!(!gc.contains("--listen") && gc.contains("--dry-run"), "{gc}");
}

#[tokio::test]
async fn the_image_health_check_needs_no_ca_certificates() {
    let app = spawn_app().await;
    let url = format!("{}/readyz", app.base);
    // As in an image without ca-certificates: no system roots to load.
    let no_roots = [("SSL_CERT_FILE", "/nonexistent/ca.pem"), ("SSL_CERT_DIR", "/nonexistent")];
    let (ok, out, err) =
        tokio::task::spawn_blocking(move || berth(&["healthcheck", "--url", &url], &no_roots)).await.unwrap();
    assert!(ok && out.contains("/readyz: 200"), "{out}{err}");

    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let closed = format!("http://127.0.0.1:{port}/readyz");
    let (ok, _, err) =
        tokio::task::spawn_blocking(move || berth(&["healthcheck", "--url", &closed], &[])).await.unwrap();
    assert!(!ok && err.contains("does not answer"), "{err}");
}
