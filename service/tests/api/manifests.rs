//! Manifest pushes, pulls and deletes.

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";

#[tokio::test]
async fn a_manifest_comes_back_byte_for_byte_by_tag_and_by_digest() {
    let app = spawn_app().await;
    let image = app.push_image("lib/app", "v1", "a").await;
    for reference in ["v1".to_owned(), image.digest.to_string()] {
        let r = app.get(&format!("/v2/lib/app/manifests/{reference}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
        assert_eq!(header(&r, "docker-content-digest"), Some(image.digest.as_str()));
        assert_eq!(r.bytes().await.unwrap(), image.bytes, "exact bytes, pretty-printing included");
        let r = app.head(&format!("/v2/lib/app/manifests/{reference}")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-length").unwrap(), image.bytes.len().to_string());
        assert_eq!(header(&r, "docker-content-digest"), Some(image.digest.as_str()));
    }
}

#[tokio::test]
async fn put_answers_201_with_location_and_digest() {
    let app = spawn_app().await;
    let image = app.push_image("a", "v1", "a").await;
    let r = app.put_manifest("a", "v2", OCI_MANIFEST, &image.bytes).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(location(&r), format!("/v2/a/manifests/{}", image.digest));
    assert_eq!(header(&r, "docker-content-digest"), Some(image.digest.as_str()));
    assert_eq!(header(&r, "oci-subject"), None);
}

#[tokio::test]
async fn put_by_digest_with_tag_parameters() {
    let app = spawn_app().await;
    let image = app.push_image("a", "first", "a").await;
    let r = app
        .request(Method::PUT, &format!("/v2/a/manifests/{}?tag=1.2.3&tag=1.2&tag=latest", image.digest))
        .header("Content-Type", OCI_MANIFEST)
        .body(image.bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let tags: Vec<&str> = r.headers().get_all("oci-tag").iter().map(|v| v.to_str().unwrap()).collect();
    assert_eq!(tags, ["1.2.3", "1.2", "latest"]);
    for tag in ["1.2.3", "1.2", "latest", "first"] {
        assert_eq!(app.get(&format!("/v2/a/manifests/{tag}")).await.status(), StatusCode::OK, "{tag}");
    }
    // One bad tag refuses the whole push.
    let r = app
        .request(Method::PUT, &format!("/v2/a/manifests/{}?tag=ok&tag=-bad", image.digest))
        .header("Content-Type", OCI_MANIFEST)
        .body(image.bytes.clone())
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    assert_eq!(app.get("/v2/a/manifests/ok").await.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_subject_is_accepted_before_it_exists_and_reported() {
    let app = spawn_app().await;
    let image = app.push_image("a", "v1", "a").await;
    let absent = sha256(b"not pushed yet");
    let mut referrer = image.manifest.clone();
    referrer["subject"] = json!({"mediaType": OCI_MANIFEST, "digest": absent.as_str(), "size": 123});
    referrer["artifactType"] = json!("application/vnd.example.sbom");
    let bytes = serde_json::to_vec(&referrer).unwrap();
    let r = app.put_manifest("a", &sha256(&bytes).to_string(), OCI_MANIFEST, &bytes).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(header(&r, "oci-subject"), Some(absent.as_str()));
}

#[tokio::test]
async fn a_manifest_naming_a_missing_blob_is_refused_and_stores_nothing() {
    let app = spawn_app().await;
    let image = app.push_image("a", "v1", "a").await;
    let missing = sha256(b"never uploaded");
    let mut broken = image.manifest.clone();
    broken["layers"][0]["digest"] = json!(missing.as_str());
    let bytes = serde_json::to_vec(&broken).unwrap();
    let body = assert_error(
        app.put_manifest("a", "v1", OCI_MANIFEST, &bytes).await,
        StatusCode::BAD_REQUEST,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
    assert_eq!(body["errors"][0]["detail"]["digest"], json!(missing.as_str()));
    // The tag still points at the old manifest, and the new one is nowhere.
    assert_eq!(app.get("/v2/a/manifests/v1").await.bytes().await.unwrap(), image.bytes);
    assert_eq!(app.get(&format!("/v2/a/manifests/{}", sha256(&bytes))).await.status(), StatusCode::NOT_FOUND);
    // A blob of another repository does not count.
    let elsewhere = app.push_blob("b", b"in b only").await;
    broken["layers"][0] = json!({"mediaType": OCI_LAYER, "digest": elsewhere.as_str(), "size": 9});
    let bytes = serde_json::to_vec(&broken).unwrap();
    assert_error(
        app.put_manifest("a", "v2", OCI_MANIFEST, &bytes).await,
        StatusCode::BAD_REQUEST,
        "MANIFEST_BLOB_UNKNOWN",
    )
    .await;
    // Nor does the right blob with the wrong size.
    broken["layers"][0] = json!({"mediaType": OCI_LAYER, "digest": image.layer_digest.as_str(), "size": 1});
    let bytes = serde_json::to_vec(&broken).unwrap();
    assert_error(app.put_manifest("a", "v2", OCI_MANIFEST, &bytes).await, StatusCode::BAD_REQUEST, "MANIFEST_INVALID")
        .await;
}

#[tokio::test]
async fn malformed_and_schema1_manifests_are_refused() {
    let app = spawn_app().await;
    let image = app.push_image("a", "v1", "a").await;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (OCI_MANIFEST, b"{not json".to_vec()),
        (OCI_MANIFEST, b"[]".to_vec()),
        (OCI_MANIFEST, br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json"}"#.to_vec()),
        (OCI_MANIFEST, br#"{"schemaVersion":3,"config":{},"layers":[]}"#.to_vec()),
        (OCI_INDEX, image.bytes.clone()),
        ("application/vnd.example.unknown+json", image.bytes.clone()),
    ];
    for (media_type, body) in cases {
        let r = app.put_manifest("a", "v1", media_type, &body).await;
        assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    }
    let schema1 = br#"{"schemaVersion":1,"name":"a","tag":"v1","fsLayers":[],"history":[]}"#;
    for media_type in ["application/vnd.docker.distribution.manifest.v1+prettyjws", "application/json"] {
        let body = assert_error(
            app.put_manifest("a", "v1", media_type, schema1).await,
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        )
        .await;
        assert!(body.to_string().contains("schema 1"), "{body}");
    }
    assert_eq!(app.get("/v2/a/manifests/v1").await.bytes().await.unwrap(), image.bytes);
}

#[tokio::test]
async fn the_digest_in_the_url_must_match() {
    let app = spawn_app().await;
    let image = app.push_image("a", "v1", "a").await;
    let wrong = sha256(b"other");
    assert_error(
        app.put_manifest("a", wrong.as_str(), OCI_MANIFEST, &image.bytes).await,
        StatusCode::BAD_REQUEST,
        "DIGEST_INVALID",
    )
    .await;
    assert_eq!(app.get(&format!("/v2/a/manifests/{wrong}")).await.status(), StatusCode::NOT_FOUND);
    // sha512 manifests are addressed by their sha512 digest.
    let sha512 = berth::oci::Digest::compute(berth::oci::Algorithm::Sha512, &image.bytes);
    assert_eq!(app.put_manifest("a", sha512.as_str(), OCI_MANIFEST, &image.bytes).await.status(), StatusCode::CREATED);
    let r = app.get(&format!("/v2/a/manifests/{sha512}")).await;
    assert_eq!(header(&r, "docker-content-digest"), Some(sha512.as_str()));
}

#[tokio::test]
async fn oversized_manifests_get_413() {
    let app = spawn_app().await;
    let image = app.push_image("a", "v1", "a").await;
    let mut big = image.manifest.clone();
    big["annotations"] = json!({"padding": "x".repeat(4 << 20)});
    let r = app.put_manifest("a", "v2", OCI_MANIFEST, &serde_json::to_vec(&big).unwrap()).await;
    assert_error(r, StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID").await;
    // Just under the limit is fine.
    big["annotations"] = json!({"padding": "x".repeat((4 << 20) - 2000)});
    let r = app.put_manifest("a", "v2", OCI_MANIFEST, &serde_json::to_vec(&big).unwrap()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn a_manifest_without_layers_is_accepted() {
    let app = spawn_app().await;
    let config = app.push_blob("a", b"{}").await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.thing",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.as_str(), "size": 2},
        "layers": [],
    });
    let r = app.put_manifest("a", "empty", OCI_MANIFEST, &serde_json::to_vec(&manifest).unwrap()).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn docker_schema2_manifests_and_lists() {
    let app = spawn_app().await;
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let layer = b"docker layer bytes";
    let config_digest = app.push_blob("d", config).await;
    let layer_digest = app.push_blob("d", layer).await;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest.as_str()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": layer.len(), "digest": layer_digest.as_str()}],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    assert_eq!(app.put_manifest("d", "amd64", DOCKER_MANIFEST, &bytes).await.status(), StatusCode::CREATED);
    let list = json!({
        "schemaVersion": 2,
        "mediaType": DOCKER_LIST,
        "manifests": [{"mediaType": DOCKER_MANIFEST, "size": bytes.len(), "digest": sha256(&bytes).as_str(), "platform": {"architecture": "amd64", "os": "linux"}}],
    });
    let list_bytes = serde_json::to_vec(&list).unwrap();
    assert_eq!(app.put_manifest("d", "latest", DOCKER_LIST, &list_bytes).await.status(), StatusCode::CREATED);
    let r = app.get("/v2/d/manifests/latest").await;
    assert_eq!(header(&r, "content-type"), Some(DOCKER_LIST));
    assert_eq!(r.bytes().await.unwrap(), list_bytes);
    assert_eq!(header(&app.get("/v2/d/manifests/amd64").await, "content-type"), Some(DOCKER_MANIFEST));
}

#[tokio::test]
async fn an_index_needs_its_manifests_in_the_repository() {
    let app = spawn_app().await;
    let child = app.push_image("a", "child", "c").await;
    let index = |digest: &str, size: usize| {
        serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [{"mediaType": OCI_MANIFEST, "digest": digest, "size": size, "platform": {"architecture": "arm64", "os": "linux"}}],
        }))
        .unwrap()
    };
    let good = index(child.digest.as_str(), child.bytes.len());
    assert_eq!(app.put_manifest("a", "multi", OCI_INDEX, &good).await.status(), StatusCode::CREATED);
    let missing = sha256(b"no such manifest");
    let r = app.put_manifest("a", "broken", OCI_INDEX, &index(missing.as_str(), 10)).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
    let r = app.put_manifest("other", "multi", OCI_INDEX, &good).await;
    assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn the_shapes_the_conformance_suite_pushes_are_accepted() {
    let app = spawn_app().await;
    // No mediaType in the body (Content-Type names it), no layers, and descriptor fields a
    // registry must carry through untouched: embedded `data` and a field from a future spec.
    let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = app.push_blob("a", config).await;
    let bare = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.as_str(), "size": config.len(),
                   "data": "e30=", "newUnspecifiedField": "aGVsbG8gd29ybGQ="},
        "layers": [],
    }))
    .unwrap();
    assert_eq!(app.put_manifest("a", "emptylayer", OCI_MANIFEST, &bare).await.status(), StatusCode::CREATED);
    let r = app.get("/v2/a/manifests/emptylayer").await;
    assert_eq!(header(&r, "content-type"), Some(OCI_MANIFEST));
    assert_eq!(r.bytes().await.unwrap(), bare);

    // An index whose only entry is another index.
    let inner = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX, "artifactType": "application/vnd.food.stand",
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": sha256(&bare).as_str(), "size": bare.len()}],
    }))
    .unwrap();
    let inner_digest = sha256(&inner);
    assert_eq!(app.put_manifest("a", inner_digest.as_str(), OCI_INDEX, &inner).await.status(), StatusCode::CREATED);
    let outer = serde_json::to_vec(&json!({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_INDEX, "digest": inner_digest.as_str(), "size": inner.len()}],
    }))
    .unwrap();
    let outer_digest = sha256(&outer);
    assert_eq!(app.put_manifest("a", outer_digest.as_str(), OCI_INDEX, &outer).await.status(), StatusCode::CREATED);
    assert_eq!(app.get(&format!("/v2/a/manifests/{outer_digest}")).await.bytes().await.unwrap(), outer);
}

#[tokio::test]
async fn a_tag_moves_and_the_old_manifest_stays_by_digest() {
    let app = spawn_app().await;
    let first = app.push_image("a", "latest", "one").await;
    let second = app.push_image("a", "latest", "two").await;
    assert_eq!(app.get("/v2/a/manifests/latest").await.bytes().await.unwrap(), second.bytes);
    assert_eq!(app.get(&format!("/v2/a/manifests/{}", first.digest)).await.bytes().await.unwrap(), first.bytes);
}

#[tokio::test]
async fn deleting_a_tag_keeps_the_manifest_and_deleting_a_manifest_drops_its_tags() {
    let app = spawn_app().await;
    let image = app.push_image("a", "v1", "a").await;
    assert_eq!(app.put_manifest("a", "v2", OCI_MANIFEST, &image.bytes).await.status(), StatusCode::CREATED);
    assert_eq!(app.delete("/v2/a/manifests/v1").await.status(), StatusCode::ACCEPTED);
    assert_error(app.get("/v2/a/manifests/v1").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(app.get("/v2/a/manifests/v2").await.status(), StatusCode::OK);
    assert_eq!(app.get(&format!("/v2/a/manifests/{}", image.digest)).await.status(), StatusCode::OK);
    assert_error(app.delete("/v2/a/manifests/v1").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;

    assert_eq!(app.delete(&format!("/v2/a/manifests/{}", image.digest)).await.status(), StatusCode::ACCEPTED);
    assert_error(
        app.get(&format!("/v2/a/manifests/{}", image.digest)).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    assert_error(app.get("/v2/a/manifests/v2").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_error(
        app.delete(&format!("/v2/a/manifests/{}", image.digest)).await,
        StatusCode::NOT_FOUND,
        "MANIFEST_UNKNOWN",
    )
    .await;
    // Its blobs are still there.
    assert_eq!(app.head(&format!("/v2/a/blobs/{}", image.layer_digest)).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn unknown_manifests_and_invalid_references() {
    let app = spawn_app().await;
    app.push_image("a", "v1", "a").await;
    assert_error(app.get("/v2/a/manifests/v9").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_error(app.get("/v2/nope/manifests/v1").await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(app.head("/v2/a/manifests/v9").await.status(), StatusCode::NOT_FOUND);
    let too_long = "t".repeat(129);
    // A tag that cannot exist names no manifest: GET, HEAD and DELETE answer 404, as the
    // conformance suite's "nonexistent manifest" checks ask (with a tag starting with a dot);
    // a PUT, which asks to create it, is refused as invalid, saying why.
    for bad in [".hidden", "-dash", too_long.as_str(), "a%2Fb"] {
        let path = format!("/v2/a/manifests/{bad}");
        assert_error(app.get(&path).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        assert_eq!(app.head(&path).await.status(), StatusCode::NOT_FOUND, "HEAD {bad}");
        assert_error(app.delete(&path).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
        let r = app.put_manifest("a", bad, OCI_MANIFEST, b"{}").await;
        let body = assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
        assert!(body.to_string().contains("invalid tag"), "{body}");
    }
    assert_error(app.get("/v2/A/manifests/.hidden").await, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
    assert_error(app.get("/v2/a/manifests/sha256:abc").await, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}
