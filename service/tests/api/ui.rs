//! The web UI over HTTP: what each page shows, that pushed strings render as text, the
//! security headers, the access rules, and `BERTH_UI=false`.

use berth::config::{AuthMode, Settings};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

pub(crate) const HOSTILE: &str = "<script>alert(1)</script>";
pub(crate) const ATTRIBUTE: &str = "\"onmouseover=alert(1) x=\"";
const RLO: &str = "invoice\u{202E}fdp.exe";

async fn page(app: &TestApp, path: &str) -> (StatusCode, String) {
    let r = app.get(path).await;
    let status = r.status();
    if status == StatusCode::OK {
        assert_eq!(header(&r, "content-security-policy"), Some(berth::ui::CONTENT_SECURITY_POLICY), "{path}");
        assert!(berth::ui::CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert_eq!(header(&r, "x-frame-options"), Some("DENY"));
        assert_eq!(header(&r, "x-content-type-options"), Some("nosniff"));
    }
    (status, r.text().await.unwrap())
}

/// Pushes an image whose config and manifest carry hostile strings; returns its digest.
pub(crate) async fn push_hostile(app: &TestApp, repo: &str) -> berth::oci::Digest {
    let config = json!({
        "created": "2026-11-30T10:00:00Z", "architecture": "amd64", "os": "linux",
        "config": {
            "User": HOSTILE, "Entrypoint": ["/bin/sh", "-c"], "Cmd": [HOSTILE],
            "Env": [format!("EVIL={HOSTILE}"), format!("NAME={RLO}")],
            "Labels": {"org.example.evil": HOSTILE, "org.example.attr": ATTRIBUTE, "org.opencontainers.image.url": "javascript:alert(1)"},
            "ExposedPorts": {"8080/tcp": {}},
        },
        "history": [{"created_by": "/bin/sh -c #(nop) ADD file:<img src=x onerror=alert(1)> in /"}],
    });
    let config = serde_json::to_vec(&config).unwrap();
    let layer = b"a layer of bytes".repeat(64);
    let (config_digest, layer_digest) = (app.push_blob(repo, &config).await, app.push_blob(repo, &layer).await);
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.as_str(), "size": config.len()},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest.as_str(), "size": layer.len()}],
        "annotations": {"org.example.note": ATTRIBUTE, "org.example.rlo": RLO},
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    assert_eq!(app.put_manifest(repo, "v1", OCI_MANIFEST, &bytes).await.status(), StatusCode::CREATED);
    sha256(&bytes)
}

/// Pushes an artifact of `artifact_type` whose subject is `subject`.
pub(crate) async fn push_referrer(
    app: &TestApp,
    repo: &str,
    subject: &berth::oci::Digest,
    artifact_type: &str,
    seed: &str,
) {
    let empty = app.push_blob(repo, b"{}").await;
    let blob = app.push_blob(repo, seed.as_bytes()).await;
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty.as_str(), "size": 2},
        "layers": [{"mediaType": "application/octet-stream", "digest": blob.as_str(), "size": seed.len()}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject.as_str(), "size": 1},
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let r = app.put_manifest(repo, sha256(&bytes).as_str(), OCI_MANIFEST, &bytes).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// Pushes an index of two platform images, tagged `latest`.
pub(crate) async fn push_index(app: &TestApp, repo: &str) -> Vec<berth::oci::Digest> {
    let mut entries = Vec::new();
    let mut digests = Vec::new();
    for (arch, seed) in [("amd64", "one"), ("arm64", "two")] {
        let image = app.push_image(repo, &format!("only-{arch}"), seed).await;
        entries.push(json!({"mediaType": OCI_MANIFEST, "digest": image.digest.as_str(), "size": image.bytes.len(),
            "platform": {"os": "linux", "architecture": arch}}));
        digests.push(image.digest);
    }
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries})).unwrap();
    assert_eq!(app.put_manifest(repo, "latest", OCI_INDEX, &index).await.status(), StatusCode::CREATED);
    digests.insert(0, sha256(&index));
    digests
}

#[tokio::test]
async fn pages_show_the_catalog_an_index_an_image_and_its_referrers() {
    let app = spawn_app().await;
    let index = push_index(&app, "multi/arch").await;
    let image = push_hostile(&app, "hostile/app").await;
    push_referrer(&app, "hostile/app", &image, "application/vnd.dev.cosign.artifact.sig.v1+json", "sig").await;
    push_referrer(&app, "hostile/app", &image, "application/spdx+json", "sbom").await;

    let r = app.get("/").await;
    assert_eq!((r.status(), header(&r, "location")), (StatusCode::SEE_OTHER, Some("/ui/")));

    let (status, catalog) = page(&app, "/ui/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(catalog.contains(r#"href="/ui/r/multi/arch""#) && catalog.contains(r#"href="/ui/r/hostile/app""#));
    let (_, found) = page(&app, "/ui/?q=ARCH").await;
    assert!(found.contains("/ui/r/multi/arch") && !found.contains("/ui/r/hostile/app"), "substring search");
    let (_, found) = page(&app, "/ui/?q=arch&match=prefix").await;
    assert!(!found.contains("/ui/r/multi/arch"), "arch is no prefix of multi/arch");
    let (_, found) = page(&app, "/ui/?q=multi&match=prefix").await;
    assert!(found.contains("/ui/r/multi/arch"));
    let (_, found) = page(&app, "/ui/?q=%25").await;
    assert!(found.contains("No repositories."), "% is a character, not a wildcard");

    let (status, repo) = page(&app, "/ui/r/multi/arch").await;
    assert_eq!(status, StatusCode::OK);
    assert!(repo.contains("linux/amd64") && repo.contains("linux/arm64"), "{repo}");
    let host = app.base.trim_start_matches("http://");
    assert!(repo.contains(&format!("docker pull {host}/multi/arch:latest")));
    assert!(repo.contains(&format!("podman pull {host}/multi/arch@{}", index[0])));
    // Newest push first, by name as a toggle.
    let (_, by_name) = page(&app, "/ui/r/multi/arch?sort=name").await;
    let at = |body: &str, tag: &str| body.find(&format!("/-/m/{tag}\"")).unwrap();
    assert!(at(&repo, "latest") < at(&repo, "only-amd64"));
    assert!(
        at(&by_name, "latest") < at(&by_name, "only-amd64") && at(&by_name, "only-amd64") < at(&by_name, "only-arm64")
    );

    let (status, idx) = page(&app, "/ui/r/multi/arch/-/m/latest").await;
    assert_eq!(status, StatusCode::OK);
    assert!(idx.contains("Platforms"));
    for child in &index[1..] {
        assert!(idx.contains(&format!("/ui/r/multi/arch/-/m/{child}")), "links each platform");
    }
    let (status, child) = page(&app, &format!("/ui/r/multi/arch/-/m/{}", index[1])).await;
    assert_eq!(status, StatusCode::OK);
    assert!(child.contains("Layers") && child.contains(OCI_LAYER));

    let (status, body) = page(&app, "/ui/r/hostile/app/-/m/v1").await;
    assert_eq!(status, StatusCode::OK);
    for raw in [HOSTILE, "<img src=x", "\"onmouseover", "\u{202E}"] {
        assert!(!body.contains(raw), "{raw:?} must not reach the page unescaped");
    }
    assert!(body.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    assert!(body.contains("&quot;onmouseover=alert(1) x=&quot;"));
    assert!(body.contains("invoice<span class=\"ctl\" title=\"hidden character\">U+202E</span>fdp.exe"));
    assert!(!body.contains("href=\"javascript:"), "a URL label is text, not a link");
    for text in ["8080/tcp", "[\"/bin/sh\",\"-c\"]", "2026-11-30T10:00:00Z", "Signature (cosign)", "SBOM", "Raw JSON"] {
        assert!(body.contains(&text.replace('"', "&quot;")), "{text}");
    }
    // Each referrer links to its own page.
    let referrers: Value = app.get(&format!("/v2/hostile/app/referrers/{image}")).await.json().await.unwrap();
    for r in referrers["manifests"].as_array().unwrap() {
        let digest = r["digest"].as_str().unwrap();
        assert!(body.contains(&format!("/ui/r/hostile/app/-/m/{digest}")));
        let (status, referrer) = page(&app, &format!("/ui/r/hostile/app/-/m/{digest}")).await;
        assert_eq!(status, StatusCode::OK);
        assert!(referrer.contains(&format!("/ui/r/hostile/app/-/m/{image}")), "links back to its subject");
    }

    // What is not there is a 404 page, whatever the path holds; nothing is reflected raw.
    for path in [
        "/ui/r/hostile/app/-/m/sha256:0000000000000000000000000000000000000000000000000000000000000000",
        "/ui/r/hostile/app/-/m/%3Cscript%3E",
        "/ui/r/%3Cscript%3E",
        "/ui/r/no/such/repo",
        "/ui/r/hostile/app/-/nonsense",
        "/ui/nonsense",
        "/ui/assets/other.js",
    ] {
        let (status, body) = page(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert!(!body.contains("<script>"), "{path}");
    }
    let r = app.get("/ui/assets/app.js").await;
    assert_eq!(header(&r, "content-type"), Some("text/javascript; charset=utf-8"));
}

#[tokio::test]
async fn pages_show_only_what_the_anonymous_rules_let_anyone_pull() {
    let app = spawn_app().await;
    app.push_image("public/app", "v1", "public").await;
    app.push_image("private/app", "v1", "private").await;
    let (mut settings, dir) = app.stop().await;
    let htpasswd = dir.path().join("htpasswd");
    berth::auth::htpasswd::add_user(&htpasswd, "alice", "alice-password").unwrap();
    let rules = "[[rules]]\nusers = [\"anonymous\"]\nrepositories = [\"public/**\"]\nactions = [\"pull\"]\n";
    std::fs::write(dir.path().join("access.toml"), rules).unwrap();
    settings.auth = AuthMode::Basic;
    settings.htpasswd = Some(htpasswd);
    settings.access = Some(dir.path().join("access.toml"));
    let app = start(settings, dir).await;

    let (_, catalog) = page(&app, "/ui/").await;
    assert!(catalog.contains("/ui/r/public/app") && !catalog.contains("private"), "{catalog}");
    assert_eq!(page(&app, "/ui/r/public/app").await.0, StatusCode::OK);
    for path in ["/ui/r/private/app", "/ui/r/private/app/-/m/v1"] {
        let (status, body) = page(&app, path).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}: not visible looks like not there");
        assert!(!body.contains("private/app"));
    }
}

#[tokio::test]
async fn the_ui_can_be_turned_off() {
    let app = spawn_with(|s| s.ui = false).await;
    for path in ["/", "/ui/", "/ui/assets/app.css"] {
        assert_eq!(app.get(path).await.status(), StatusCode::NOT_FOUND, "{path}");
    }
    assert_eq!(app.get("/v2/").await.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_catalog_pages_through_many_repositories() {
    let app = spawn_app().await;
    for i in 0..53 {
        app.push_image(&format!("many/r{i:02}"), "v1", &format!("s{i}")).await;
    }
    let (_, first) = page(&app, "/ui/").await;
    assert!(
        first.contains("/ui/r/many/r00\"") && first.contains("/ui/r/many/r49\"") && !first.contains("/ui/r/many/r50\"")
    );
    assert!(first.contains("after=many%2Fr49"), "links the next page");
    let (_, second) = page(&app, "/ui/?q=&match=contains&after=many%2Fr49").await;
    assert!(second.contains("/ui/r/many/r50\"") && second.contains("/ui/r/many/r52\"") && !second.contains("r49\""));
    assert!(!second.contains("rel=\"next\""), "the last page links no further");
}

#[tokio::test]
async fn pull_commands_name_the_external_url_when_one_is_set() {
    let app = spawn_with(|s| s.external_url = Some("https://registry.example.com/".into())).await;
    app.push_image("team/app", "v1", "seed").await;
    let (_, body) = page(&app, "/ui/r/team/app").await;
    assert!(body.contains("docker pull registry.example.com/team/app:v1"), "{body}");
}

/// Restarts `app` in basic mode with `users` (name, password) and access `rules`.
pub(crate) async fn with_users(
    app: TestApp,
    users: &[(&str, &str)],
    rules: &str,
    configure: impl FnOnce(&mut Settings),
) -> TestApp {
    let (mut settings, dir) = app.stop().await;
    let htpasswd = dir.path().join("htpasswd");
    for (user, password) in users {
        berth::auth::htpasswd::add_user(&htpasswd, user, password).unwrap();
    }
    std::fs::write(dir.path().join("access.toml"), rules).unwrap();
    settings.auth = AuthMode::Basic;
    settings.htpasswd = Some(htpasswd);
    settings.access = Some(dir.path().join("access.toml"));
    configure(&mut settings);
    start(settings, dir).await
}

/// A browser's POST of a form from `origin`, with the session `cookie`.
async fn post_form(
    app: &TestApp,
    path: &str,
    origin: Option<&str>,
    cookie: Option<&str>,
    fields: &[(&str, &str)],
) -> reqwest::Response {
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
    let mut r = app.client.post(app.url(path)).header("content-type", "application/x-www-form-urlencoded").body(body);
    if let Some(origin) = origin {
        r = r.header("origin", origin);
    }
    if let Some(cookie) = cookie {
        r = r.header("cookie", cookie);
    }
    r.send().await.unwrap()
}

/// Signs in through the form; the `name=value` of the session cookie.
async fn sign_in(app: &TestApp, user: &str, password: &str) -> String {
    let r =
        post_form(app, "/ui/login", Some(&app.base), None, &[("user", user), ("password", password), ("next", "/ui/")])
            .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "{user} signs in");
    let cookie = header(&r, "set-cookie").expect("a session cookie").to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(cookie.contains(attribute), "{cookie}: {attribute}");
    }
    assert!(!cookie.contains("Secure"), "served over http, the cookie cannot be Secure: {cookie}");
    cookie.split(';').next().unwrap().to_owned()
}

async fn page_as(app: &TestApp, path: &str, cookie: &str) -> (StatusCode, String) {
    let r = app.client.get(app.url(path)).header("cookie", cookie).send().await.unwrap();
    (r.status(), r.text().await.unwrap())
}

/// The CSRF token of the first form on a page.
fn csrf_of(body: &str) -> String {
    let at = body.find("name=\"csrf\" value=\"").expect("a CSRF field") + "name=\"csrf\" value=\"".len();
    body[at..at + body[at..].find('"').unwrap()].to_owned()
}

pub(crate) const TEAM_RULES: &str = r#"
[[rules]]
users = ["alice"]
repositories = ["team/**"]
actions = ["pull", "push", "delete"]

[[rules]]
users = ["bob"]
repositories = ["team/**"]
actions = ["pull"]
"#;

#[tokio::test]
async fn a_signed_in_user_sees_and_does_what_the_rules_let_them() {
    let app = spawn_app().await;
    app.push_image("team/app", "v1", "one").await;
    app.push_image("team/app", "v2", "two").await;
    let app = with_users(app, &[("alice", "alice-password"), ("bob", "bob-password")], TEAM_RULES, |_| {}).await;
    let tag_there = async |tag: &str| {
        let r = app
            .client
            .get(app.url(&format!("/v2/team/app/manifests/{tag}")))
            .basic_auth("alice", Some("alice-password"));
        r.header("accept", OCI_MANIFEST).send().await.unwrap().status() == StatusCode::OK
    };

    // Anonymous: nothing to see, and a way to sign in.
    let (_, catalog) = page(&app, "/ui/").await;
    assert!(!catalog.contains("team/app") && catalog.contains("href=\"/ui/login\""));

    // A wrong password, or a form from elsewhere, signs nobody in.
    let r = post_form(&app, "/ui/login", Some(&app.base), None, &[("user", "alice"), ("password", "nope")]).await;
    assert_eq!((r.status(), header(&r, "set-cookie")), (StatusCode::UNAUTHORIZED, None));
    assert!(r.text().await.unwrap().contains("Invalid user name or password."));
    let fields = [("user", "alice"), ("password", "alice-password")];
    for origin in [Some("http://evil.example"), None] {
        let r = post_form(&app, "/ui/login", origin, None, &fields).await;
        assert_eq!((r.status(), header(&r, "set-cookie")), (StatusCode::FORBIDDEN, None), "{origin:?}");
    }
    let r = post_form(
        &app,
        "/ui/login",
        Some(&app.base),
        None,
        &[("user", "alice"), ("password", "alice-password"), ("next", "//evil.example/")],
    )
    .await;
    assert_eq!(header(&r, "location"), Some("/ui/"), "never sent to another site after signing in");

    // bob may pull only: he sees the tags and no delete control, and cannot delete.
    let bob = sign_in(&app, "bob", "bob-password").await;
    let (_, catalog) = page_as(&app, "/ui/", &bob).await;
    assert!(catalog.contains("/ui/r/team/app\"") && catalog.contains("bob") && catalog.contains("Sign out"));
    assert!(catalog.contains(&format!("docker login {} -u bob", app.base.trim_start_matches("http://"))));
    let (status, repo) = page_as(&app, "/ui/r/team/app", &bob).await;
    assert_eq!(status, StatusCode::OK);
    assert!(repo.contains("/-/m/v1\"") && !repo.contains("/-/delete") && !repo.contains("Delete"), "{repo}");
    let (_, manifest) = page_as(&app, "/ui/r/team/app/-/m/v1", &bob).await;
    assert!(!manifest.contains("/-/delete"));
    assert_eq!(page_as(&app, "/ui/r/team/app/-/delete?tag=v1", &bob).await.0, StatusCode::FORBIDDEN);
    let bob_csrf = csrf_of(&repo);
    let r =
        post_form(&app, "/ui/r/team/app/-/delete", Some(&app.base), Some(&bob), &[("csrf", &bob_csrf), ("tag", "v1")])
            .await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "a forged delete with bob's own token");
    assert!(tag_there("v1").await);

    // alice may delete: a control per tag, a confirmation page, and a POST that needs her token.
    let alice = sign_in(&app, "alice", "alice-password").await;
    let (_, repo) = page_as(&app, "/ui/r/team/app", &alice).await;
    assert!(repo.contains("/ui/r/team/app/-/delete?tag=v1\""), "{repo}");
    let (status, confirm) = page_as(&app, "/ui/r/team/app/-/delete?tag=v1", &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert!(confirm.contains("Delete tag v1?") && confirm.contains("method=\"post\""));
    let csrf = csrf_of(&confirm);
    let other_alice = sign_in(&app, "alice", "alice-password").await;
    let base = app.base.as_str();
    let forged = [
        (Some(base), Some(alice.as_str()), vec![("tag", "v1")], "no token"),
        (Some(base), Some(alice.as_str()), vec![("csrf", "AAAA"), ("tag", "v1")], "a made-up token"),
        (Some(base), Some(alice.as_str()), vec![("csrf", &bob_csrf), ("tag", "v1")], "bob's token"),
        (Some(base), Some(other_alice.as_str()), vec![("csrf", &csrf), ("tag", "v1")], "the token of another sign-in"),
        (Some(base), None, vec![("csrf", &csrf), ("tag", "v1")], "no session"),
        (Some("http://evil.example"), Some(alice.as_str()), vec![("csrf", &csrf), ("tag", "v1")], "another site"),
    ];
    for (origin, cookie, fields, what) in forged {
        let r = post_form(&app, "/ui/r/team/app/-/delete", origin, cookie, &fields).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}");
        assert!(tag_there("v1").await, "{what}: the tag is still there");
    }
    let r =
        post_form(&app, "/ui/r/team/app/-/delete", Some(&app.base), Some(&alice), &[("csrf", &csrf), ("tag", "v1")])
            .await;
    assert_eq!((r.status(), header(&r, "location")), (StatusCode::SEE_OTHER, Some("/ui/r/team/app")));
    assert!(!tag_there("v1").await && tag_there("v2").await, "v1 deleted, v2 kept");
    let r =
        post_form(&app, "/ui/r/team/app/-/delete", Some(&app.base), Some(&alice), &[("csrf", &csrf), ("tag", "v1")])
            .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "deleted already");

    // Signing out needs the token too, and clears the cookie.
    let r = post_form(&app, "/ui/logout", Some(&app.base), Some(&alice), &[]).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let r = post_form(&app, "/ui/logout", Some(&app.base), Some(&alice), &[("csrf", &csrf)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(header(&r, "set-cookie").is_some_and(|c| c.starts_with("berth_session=;") && c.contains("Max-Age=0")));

    // A cookie that does not verify is no sign-in.
    let (name, value) = alice.split_once('=').unwrap();
    let forged = format!("{name}={}", value.replacen(value.split('.').next().unwrap(), "Ym9i", 1));
    let (_, catalog) = page_as(&app, "/ui/", &forged).await;
    assert!(!catalog.contains("team/app") && catalog.contains("Sign in"));
}

#[tokio::test]
async fn failed_sign_ins_count_against_the_login_limiter() {
    let app = spawn_app().await;
    // Token mode: the token endpoint is there to count along.
    let app = with_users(app, &[("alice", "alice-password")], TEAM_RULES, |s| {
        s.auth = AuthMode::Token;
        s.login_max_failures = 3;
    })
    .await;
    for _ in 0..3 {
        let r = post_form(&app, "/ui/login", Some(&app.base), None, &[("user", "alice"), ("password", "guess")]).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let r =
        post_form(&app, "/ui/login", Some(&app.base), None, &[("user", "alice"), ("password", "alice-password")]).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS, "even the right password, from this address, for a while");
    assert!(header(&r, "retry-after").is_some_and(|s| s.parse::<u64>().unwrap() > 0));
    assert_eq!(header(&r, "set-cookie"), None);
    // The token endpoint counts the same failures.
    let r = app.client.get(app.url("/token")).basic_auth("alice", Some("alice-password")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test]
async fn usage_and_retention_show_to_signed_in_users() {
    let app = spawn_with(|s| {
        s.quota = vec![toml::from_str("namespace = \"team\"\nlimit = \"1 GiB\"").unwrap()];
        s.retention = vec![toml::from_str("repositories = \"team/**\"\nkeep_last = 1").unwrap()];
        s.immutable =
            vec![toml::from_str("repositories = \"team/**\"\ntags = \"release-.*\"\nallow_delete = false").unwrap()];
    })
    .await;
    app.push_image("team/app", "old", "one").await;
    app.push_image("team/app", "release-1", "two").await;
    app.push_image("team/app", "new", "three").await;
    app.push_image("team/secret", "v1", "four").await;
    let rules =
        format!("{TEAM_RULES}\n[[rules]]\nusers = [\"carol\"]\nrepositories = [\"team/app\"]\nactions = [\"pull\"]\n");
    let users = [("alice", "alice-password"), ("carol", "carol-password")];
    let app = with_users(app, &users, &rules, |_| {}).await;
    assert_eq!(app.get("/ui/usage").await.status(), StatusCode::SEE_OTHER, "anonymous visitors are sent to sign in");
    let alice = sign_in(&app, "alice", "alice-password").await;
    let (status, usage) = page_as(&app, "/ui/usage?ns=team", &alice).await;
    assert_eq!(status, StatusCode::OK);
    assert!(usage.contains("1.0 GiB") && usage.contains(">team<"), "{usage}");
    assert!(usage.contains("2 repositories · ") && usage.contains("/ui/r/team/secret\""), "{usage}");
    // carol may see team/app only: its size, but no total or quota that counts team/secret.
    let carol = sign_in(&app, "carol", "carol-password").await;
    let (_, usage) = page_as(&app, "/ui/usage?ns=team", &carol).await;
    assert!(usage.contains("/ui/r/team/app\"") && !usage.contains("team/secret"), "{usage}");
    assert!(usage.contains("No total") && !usage.contains("1.0 GiB") && !usage.contains(" repositories · "), "{usage}");
    let (_, repo) = page_as(&app, "/ui/r/team/app", &alice).await;
    // keep_last = 1 keeps `new`; release-1 is protected by an immutable rule; `old` goes.
    let row = |tag: &str| {
        let at = repo.find(&format!("/-/m/{tag}\"")).unwrap();
        repo[at..at + repo[at..].find("</tr>").unwrap()].to_owned()
    };
    assert!(row("old").contains("retention removes") && row("old").contains("[[retention]] entry 1"), "{}", row("old"));
    assert!(!row("new").contains("retention removes") && !row("release-1").contains("retention removes"));
    assert!(row("release-1").contains("immutable") && !row("release-1").contains("/-/delete"), "no delete control");
    assert!(row("old").contains("/-/delete?tag=old"));
    let (_, confirm) = page_as(&app, "/ui/r/team/app/-/m/release-1", &alice).await;
    assert!(!confirm.contains("/-/delete"), "nor for the manifest of an undeletable tag");
}

#[tokio::test]
async fn over_https_the_session_cookie_is_secure() {
    let app = spawn_app().await;
    let app = with_users(app, &[("alice", "alice-password")], TEAM_RULES, |s| {
        s.external_url = Some("https://registry.example.com".into());
    })
    .await;
    let fields = [("user", "alice"), ("password", "alice-password")];
    // A form from the external URL's origin (a TLS-terminating proxy in front).
    let r = post_form(&app, "/ui/login", Some("https://registry.example.com"), None, &fields).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let cookie = header(&r, "set-cookie").unwrap();
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
}

#[tokio::test]
async fn with_authentication_off_deletes_still_need_the_pages_token() {
    let app = spawn_app().await;
    app.push_image("open/app", "v1", "one").await;
    let (_, repo) = page(&app, "/ui/r/open/app").await;
    assert!(repo.contains("/ui/r/open/app/-/delete?tag=v1") && !repo.contains("Sign in"));
    // The confirmation page gives an anonymous visitor a session to bind its token to.
    let r = app.get("/ui/r/open/app/-/delete?tag=v1").await;
    let cookie = header(&r, "set-cookie").expect("an anonymous session").split(';').next().unwrap().to_owned();
    let csrf = csrf_of(&r.text().await.unwrap());
    for (cookie, fields) in
        [(None, vec![("csrf", csrf.as_str()), ("tag", "v1")]), (Some(cookie.as_str()), vec![("tag", "v1")])]
    {
        let r = post_form(&app, "/ui/r/open/app/-/delete", Some(&app.base), cookie, &fields).await;
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
    }
    assert_eq!(app.get("/v2/open/app/manifests/v1").await.status(), StatusCode::OK);
    let r =
        post_form(&app, "/ui/r/open/app/-/delete", Some(&app.base), Some(&cookie), &[("csrf", &csrf), ("tag", "v1")])
            .await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(app.get("/v2/open/app/manifests/v1").await.status(), StatusCode::NOT_FOUND);
    // With deletes off, there is no control and the form is refused.
    let app = spawn_with(|s| s.delete = false).await;
    app.push_image("open/app", "v1", "one").await;
    let (_, repo) = page(&app, "/ui/r/open/app").await;
    assert!(!repo.contains("/-/delete"));
    assert_eq!(app.get("/ui/r/open/app/-/delete?tag=v1").await.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn in_token_mode_replicas_sharing_the_token_key_accept_each_others_sign_ins() {
    let first = spawn_app().await;
    let second = spawn_app().await;
    let key = first.dir.path().join("shared-token-key.pem");
    std::fs::write(&key, berth::auth::token::generate_key_pem().unwrap()).unwrap();
    let token_mode = |s: &mut Settings| {
        s.auth = AuthMode::Token;
        s.token_key = Some(key.display().to_string());
    };
    let first = with_users(first, &[("alice", "alice-password")], TEAM_RULES, token_mode).await;
    let second = with_users(second, &[("alice", "alice-password")], TEAM_RULES, token_mode).await;
    let cookie = sign_in(&first, "alice", "alice-password").await;
    let (_, page) = page_as(&second, "/ui/", &cookie).await;
    assert!(page.contains("Sign out") && page.contains(">alice<"), "the other replica knows the sign-in");
    // Without the shared key (Basic mode, no BERTH_UI_SESSION_KEY), each replica has its own.
    let third = with_users(spawn_app().await, &[("alice", "alice-password")], TEAM_RULES, |_| {}).await;
    let (_, page) = page_as(&third, "/ui/", &cookie).await;
    assert!(!page.contains("Sign out"), "another key refuses the cookie");
}
