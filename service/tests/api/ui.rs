//! The web UI over HTTP: what each page shows, that pushed strings render as text, the
//! security headers, the access rules, and `BERTH_UI=false`.

use berth::config::AuthMode;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

const HOSTILE: &str = "<script>alert(1)</script>";
const ATTRIBUTE: &str = "\"onmouseover=alert(1) x=\"";
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
async fn push_hostile(app: &TestApp, repo: &str) -> berth::oci::Digest {
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
async fn push_referrer(app: &TestApp, repo: &str, subject: &berth::oci::Digest, artifact_type: &str, seed: &str) {
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
async fn push_index(app: &TestApp, repo: &str) -> Vec<berth::oci::Digest> {
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
