//! Blob reads and deletes.

use reqwest::{Method, StatusCode};

use crate::helpers::*;

#[tokio::test]
async fn get_and_head_answer_with_digest_length_and_type() {
    let app = spawn_app().await;
    let blob = pattern(4321);
    let digest = app.push_blob("a", &blob).await;
    let path = format!("/v2/a/blobs/{digest}");
    for r in [app.get(&path).await, app.head(&path).await] {
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
        assert_eq!(header(&r, "content-length"), Some("4321"));
        assert_eq!(header(&r, "content-type"), Some("application/octet-stream"));
        assert_eq!(header(&r, "docker-distribution-api-version"), Some("registry/2.0"));
        assert_eq!(header(&r, "accept-ranges"), Some("bytes"));
    }
    assert_eq!(app.head(&path).await.bytes().await.unwrap().len(), 0);
    assert_eq!(app.get(&path).await.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn unknown_blobs_and_blobs_of_other_repositories_are_404() {
    let app = spawn_app().await;
    let digest = app.push_blob("a", b"mine").await;
    assert_error(app.get(&format!("/v2/b/blobs/{digest}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(app.head(&format!("/v2/b/blobs/{digest}")).await.status(), StatusCode::NOT_FOUND);
    let unknown = sha256(b"unknown");
    assert_error(app.get(&format!("/v2/a/blobs/{unknown}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_error(app.get("/v2/a/blobs/sha256:1234").await, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}

#[tokio::test]
async fn ranges_are_served_as_206() {
    let app = spawn_app().await;
    let blob = pattern(1000);
    let digest = app.push_blob("a", &blob).await;
    let path = format!("/v2/a/blobs/{digest}");
    let cases = [("bytes=0-9", 0, 9), ("bytes=990-", 990, 999), ("bytes=-5", 995, 999), ("bytes=500-5000", 500, 999)];
    for (range, start, end) in cases {
        let r = app.request(Method::GET, &path).header("Range", range).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT, "{range}");
        assert_eq!(header(&r, "content-range").unwrap(), format!("bytes {start}-{end}/1000"));
        assert_eq!(header(&r, "content-length").unwrap(), (end - start + 1).to_string());
        assert_eq!(r.bytes().await.unwrap(), &blob[start..=end]);
    }
    let r = app.request(Method::GET, &path).header("Range", "bytes=1000-").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "content-range"), Some("bytes */1000"));
    // Several ranges at once, or nonsense, get the whole blob.
    let r = app.request(Method::GET, &path).header("Range", "bytes=0-1,5-6").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn deleting_a_blob_unlinks_it_from_one_repository() {
    let app = spawn_app().await;
    let digest = app.push_blob("a", b"shared").await;
    app.push_blob("b", b"shared").await;
    let r = app.delete(&format!("/v2/a/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_error(app.get(&format!("/v2/a/blobs/{digest}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(app.get(&format!("/v2/b/blobs/{digest}")).await.bytes().await.unwrap(), &b"shared"[..]);
    assert_error(app.delete(&format!("/v2/a/blobs/{digest}")).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
}

#[tokio::test]
async fn deletes_can_be_turned_off() {
    let app = spawn_with(|s| s.delete = false).await;
    let image = app.push_image("a", "v1", "x").await;
    for path in [
        format!("/v2/a/blobs/{}", image.layer_digest),
        format!("/v2/a/manifests/{}", image.digest),
        "/v2/a/manifests/v1".to_owned(),
    ] {
        assert_error(app.delete(&path).await, StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED").await;
    }
    assert_eq!(app.get("/v2/a/manifests/v1").await.status(), StatusCode::OK);
    assert_eq!(app.head(&format!("/v2/a/blobs/{}", image.layer_digest)).await.status(), StatusCode::OK);
    // Cancelling an upload is not a delete of content.
    let location = app.start_upload("a").await;
    assert_eq!(app.delete(&location).await.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn everything_pushed_survives_a_restart() {
    let app = spawn_app().await;
    let image = app.push_image("keep/me", "v1", "restart").await;
    let (mut settings, dir) = app.stop().await;
    settings.listen = "127.0.0.1:0".into();
    let app = start(settings, dir).await;
    let r = app.get("/v2/keep/me/manifests/v1").await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), image.bytes);
    let r = app.get(&format!("/v2/keep/me/blobs/{}", image.layer_digest)).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), image.layer_digest);
}
