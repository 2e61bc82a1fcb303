//! Blob uploads: monolithic, chunked, streamed, mounts, cancels and every way they can go wrong.

use berth::oci::{Algorithm, Digest};
use reqwest::{Method, StatusCode};

use crate::helpers::*;

async fn patch(app: &TestApp, location: &str, range: Option<(u64, u64)>, bytes: &[u8]) -> reqwest::Response {
    let mut request = app.request(Method::PATCH, location).header("Content-Type", "application/octet-stream");
    if let Some((start, end)) = range {
        request = request.header("Content-Range", format!("{start}-{end}"));
    }
    request.body(bytes.to_vec()).send().await.expect("PATCH")
}

async fn put(app: &TestApp, location: &str, digest: &Digest, body: Option<&[u8]>) -> reqwest::Response {
    let separator = if location.contains('?') { '&' } else { '?' };
    let mut request = app.request(Method::PUT, &format!("{location}{separator}digest={digest}"));
    if let Some(body) = body {
        request = request.header("Content-Type", "application/octet-stream").body(body.to_vec());
    }
    request.send().await.expect("PUT")
}

async fn offset_of(app: &TestApp, location: &str) -> String {
    let r = app.get(location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    header(&r, "range").expect("Range").to_owned()
}

#[tokio::test]
async fn single_post_with_digest_stores_the_blob() {
    let app = spawn_app().await;
    let blob = pattern(1000);
    let digest = sha256(&blob);
    let r = app.post_blob("a", &digest, &blob).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(location(&r), format!("/v2/a/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    assert_eq!(header(&r, "content-length"), Some("0"));
    let r = app.get(&format!("/v2/a/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn post_then_put_with_the_whole_blob() {
    let app = spawn_app().await;
    let location = app.start_upload("a/b").await;
    assert!(location.starts_with("/v2/a/b/blobs/uploads/"));
    let blob = pattern(5000);
    let r = put(&app, &location, &sha256(&blob), Some(&blob)).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(app.get(&format!("/v2/a/b/blobs/{}", sha256(&blob))).await.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn post_answers_with_session_headers() {
    let app = spawn_app().await;
    let r = app.request(Method::POST, "/v2/a/blobs/uploads/").header("Content-Length", "0").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let uuid = header(&r, "docker-upload-uuid").expect("Docker-Upload-UUID").to_owned();
    assert!(uuid::Uuid::parse_str(&uuid).is_ok());
    assert!(location(&r).ends_with(&uuid));
    assert_eq!(header(&r, "range"), Some("0-0"));
    assert_eq!(header(&r, "content-length"), Some("0"));
}

#[tokio::test]
async fn chunks_of_any_size_from_one_byte_add_up() {
    let app = spawn_app().await;
    let blob = pattern(70_001);
    let mut location = app.start_upload("a").await;
    let mut start = 0usize;
    for size in [1usize, 1, 2, 17, 65_536, 4_000, 444] {
        let end = start + size - 1;
        let r = patch(&app, &location, Some((start as u64, end as u64)), &blob[start..=end]).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        assert_eq!(header(&r, "range").unwrap(), format!("0-{end}"));
        assert!(header(&r, "docker-upload-uuid").is_some());
        location = crate::helpers::location(&r);
        start = end + 1;
    }
    assert_eq!(offset_of(&app, &location).await, format!("0-{}", start - 1));
    // The last chunk comes with the closing PUT.
    let r = app
        .request(Method::PUT, &format!("{location}?digest={}", sha256(&blob)))
        .header("Content-Range", format!("{start}-{}", blob.len() - 1))
        .body(blob[start..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    assert_eq!(app.get(&format!("/v2/a/blobs/{}", sha256(&blob))).await.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn one_streamed_patch_with_chunked_encoding() {
    let app = spawn_app().await;
    let blob = pattern(3 << 20);
    let location = app.start_upload("a").await;
    let r = app.patch_streamed(&location, None, blob.chunks(100_000).map(<[u8]>::to_vec).collect()).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(header(&r, "range").unwrap(), format!("0-{}", blob.len() - 1));
    let r = put(&app, &crate::helpers::location(&r), &sha256(&blob), None).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = app.get(&format!("/v2/a/blobs/{}", sha256(&blob))).await;
    assert_eq!(header(&r, "content-length").unwrap(), blob.len().to_string());
    assert_eq!(r.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn out_of_order_chunks_get_416_and_change_nothing() {
    let app = spawn_app().await;
    let blob = pattern(100);
    let location = app.start_upload("a").await;
    // A first chunk that does not start at 0.
    let r = patch(&app, &location, Some((10, 19)), &blob[10..20]).await;
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&r, "range"), Some("0-0"));
    assert_eq!(patch(&app, &location, Some((0, 49)), &blob[..50]).await.status(), StatusCode::ACCEPTED);
    // A gap, and an overlap.
    let gap = patch(&app, &location, Some((51, 60)), &blob[51..61]).await;
    assert_error(gap, StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID").await;
    let overlap = patch(&app, &location, Some((40, 59)), &blob[40..60]).await;
    assert_eq!(overlap.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(header(&overlap, "range"), Some("0-49"));
    // A closing PUT whose chunk is out of order.
    let r = app
        .request(Method::PUT, &format!("{location}?digest={}", sha256(&blob)))
        .header("Content-Range", "60-99")
        .body(blob[60..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(offset_of(&app, &location).await, "0-49");
    assert_eq!(patch(&app, &location, Some((50, 99)), &blob[50..]).await.status(), StatusCode::ACCEPTED);
    assert_eq!(put(&app, &location, &sha256(&blob), None).await.status(), StatusCode::CREATED);
    assert_eq!(app.get(&format!("/v2/a/blobs/{}", sha256(&blob))).await.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn a_wrong_digest_discards_the_upload_and_stores_nothing() {
    let app = spawn_app().await;
    let blob = pattern(1000);
    let location = app.start_upload("a").await;
    assert_eq!(patch(&app, &location, Some((0, 999)), &blob).await.status(), StatusCode::ACCEPTED);
    let wrong = sha256(b"something else");
    assert_error(put(&app, &location, &wrong, None).await, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(app.head(&format!("/v2/a/blobs/{wrong}")).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(app.head(&format!("/v2/a/blobs/{}", sha256(&blob))).await.status(), StatusCode::NOT_FOUND);
    assert_error(app.get(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    // A single POST with a wrong digest stores nothing either.
    let r = app.post_blob("a", &wrong, &blob).await;
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    assert_eq!(app.head(&format!("/v2/a/blobs/{wrong}")).await.status(), StatusCode::NOT_FOUND);
    let leftover = std::fs::read_dir(app.dir.path().join("uploads")).unwrap().count();
    assert_eq!(leftover, 0, "failed uploads leave no bytes behind");
}

#[tokio::test]
async fn invalid_or_missing_digests_are_refused() {
    let app = spawn_app().await;
    let location = app.start_upload("a").await;
    for bad in ["sha256:abc", "md5:d41d8cd98f00b204e9800998ecf8427e", "nonsense", "sha256:ZZ"] {
        let r = app.request(Method::PUT, &format!("{location}?digest={bad}")).send().await.unwrap();
        assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    }
    let r = app.request(Method::PUT, &location).send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r = app.request(Method::POST, "/v2/a/blobs/uploads/?digest=sha256:xyz").body("x").send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r = app.request(Method::POST, "/v2/a/blobs/uploads/?digest-algorithm=md5").send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    // The upload is still usable after all that.
    assert_eq!(offset_of(&app, &location).await, "0-0");
}

#[tokio::test]
async fn sha512_blobs_chunked_and_monolithic() {
    let app = spawn_app().await;
    let blob = pattern(10_000);
    let digest = Digest::compute(Algorithm::Sha512, &blob);
    let r = app.request(Method::POST, "/v2/a/blobs/uploads/?digest-algorithm=sha512").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let r = patch(&app, &location(&r), Some((0, 4999)), &blob[..5000]).await;
    let r = patch(&app, &location(&r), Some((5000, 9999)), &blob[5000..]).await;
    assert_eq!(put(&app, &location(&r), &digest, None).await.status(), StatusCode::CREATED);
    let r = app.get(&format!("/v2/a/blobs/{digest}")).await;
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    assert_eq!(r.bytes().await.unwrap(), blob);

    // POST without digest-algorithm, then one PUT with a sha512 digest.
    let other = pattern(777);
    let digest = Digest::compute(Algorithm::Sha512, &other);
    let location = app.start_upload("b").await;
    assert_eq!(put(&app, &location, &digest, Some(&other)).await.status(), StatusCode::CREATED);
    assert_eq!(app.head(&format!("/v2/b/blobs/{digest}")).await.status(), StatusCode::OK);

    // Single POST.
    let third = pattern(333);
    let digest = Digest::compute(Algorithm::Sha512, &third);
    let r = app.post_blob("c", &digest, &third).await;
    assert_eq!(r.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn mounts_link_blobs_across_repositories() {
    let app = spawn_app().await;
    let digest = app.push_blob("source", b"shared layer").await;
    let r = app
        .request(Method::POST, &format!("/v2/target/blobs/uploads/?mount={digest}&from=source"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(location(&r), format!("/v2/target/blobs/{digest}"));
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    assert_eq!(app.get(&format!("/v2/target/blobs/{digest}")).await.bytes().await.unwrap(), &b"shared layer"[..]);

    // Not in the source repository: a new session instead.
    let missing = sha256(b"nowhere");
    let r = app
        .request(Method::POST, &format!("/v2/target/blobs/uploads/?mount={missing}&from=source"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert!(location(&r).starts_with("/v2/target/blobs/uploads/"));
    // Without `from`, Berth does not go looking in repositories the client did not name.
    let r = app.request(Method::POST, &format!("/v2/third/blobs/uploads/?mount={digest}")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(app.head(&format!("/v2/third/blobs/{digest}")).await.status(), StatusCode::NOT_FOUND);
    // A malformed mount request is refused.
    let r = app.request(Method::POST, "/v2/target/blobs/uploads/?mount=sha256:00&from=source").send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
    let r =
        app.request(Method::POST, &format!("/v2/target/blobs/uploads/?mount={digest}&from=Bad")).send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
}

#[tokio::test]
async fn cancelled_and_unknown_uploads_are_gone() {
    let app = spawn_app().await;
    let location = app.start_upload("a").await;
    assert_eq!(patch(&app, &location, Some((0, 2)), b"abc").await.status(), StatusCode::ACCEPTED);
    let r = app.delete(&location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_error(patch(&app, &location, Some((3, 5)), b"def").await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN")
        .await;
    assert_error(put(&app, &location, &sha256(b"abc"), None).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(app.get(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(app.delete(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    let unknown = "/v2/a/blobs/uploads/00000000-0000-0000-0000-000000000000";
    assert_error(patch(&app, unknown, None, b"x").await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(app.get("/v2/a/blobs/uploads/..%2F..%2Fetc").await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN")
        .await;
    assert_eq!(std::fs::read_dir(app.dir.path().join("uploads")).unwrap().count(), 0);
}

#[tokio::test]
async fn an_upload_belongs_to_its_repository() {
    let app = spawn_app().await;
    let location = app.start_upload("a").await;
    let elsewhere = location.replacen("/v2/a/", "/v2/b/", 1);
    assert_error(patch(&app, &elsewhere, None, b"x").await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_error(app.get(&elsewhere).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}

#[tokio::test]
async fn announced_lengths_must_match_the_body() {
    let app = spawn_app().await;
    let location = app.start_upload("a").await;
    // Content-Range covering more than Content-Length.
    let r =
        app.request(Method::PATCH, &location).header("Content-Range", "0-19").body(vec![1u8; 10]).send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "SIZE_INVALID").await;
    // A chunked body longer than its Content-Range.
    let r = app.patch_streamed(&location, Some("0-9"), vec![vec![1u8; 10], vec![2u8; 10]]).await;
    assert_error(r, StatusCode::BAD_REQUEST, "SIZE_INVALID").await;
    // A chunked body shorter than its Content-Range.
    let r = app.patch_streamed(&location, Some("0-9"), vec![vec![1u8; 5]]).await;
    assert_error(r, StatusCode::BAD_REQUEST, "SIZE_INVALID").await;
    let r = app.request(Method::PATCH, &location).header("Content-Range", "bytes=9-0").body("x").send().await.unwrap();
    assert_error(r, StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID").await;
    assert_eq!(offset_of(&app, &location).await, "0-0", "nothing was kept from the refused chunks");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_chunk_leaves_the_upload_where_it_was() {
    let app = spawn_app().await;
    let blob = pattern(200_000);
    let location = app.start_upload("a").await;
    assert_eq!(patch(&app, &location, Some((0, 99_999)), &blob[..100_000]).await.status(), StatusCode::ACCEPTED);
    let head = format!(
        "PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Range: 100000-199999\r\nContent-Length: 100000\r\n\r\n"
    );
    raw_request(&app, &head, &blob[100_000..160_000], true).await;
    // The broken chunk left nothing: the upload resumes at the last complete chunk.
    wait_until(async || offset_of(&app, &location).await == "0-99999").await;
    assert_eq!(app.head(&format!("/v2/a/blobs/{}", sha256(&blob))).await.status(), StatusCode::NOT_FOUND);
    let r = patch(&app, &location, Some((100_000, 199_999)), &blob[100_000..]).await;
    assert_eq!(r.status(), StatusCode::ACCEPTED, "the lock of the broken chunk was released");
    assert_eq!(put(&app, &location, &sha256(&blob), None).await.status(), StatusCode::CREATED);
    assert_eq!(app.get(&format!("/v2/a/blobs/{}", sha256(&blob))).await.bytes().await.unwrap(), blob);
}

#[tokio::test]
async fn a_body_longer_than_content_length_is_cut_at_the_length() {
    let app = spawn_app().await;
    let location = app.start_upload("a").await;
    let head = format!("PATCH {location} HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nConnection: close\r\n\r\n");
    let answer = raw_request(&app, &head, b"abcdEXTRA", false).await;
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    assert_eq!(offset_of(&app, &location).await, "0-3");
    assert_eq!(put(&app, &location, &sha256(b"abcd"), None).await.status(), StatusCode::CREATED);
}

#[tokio::test]
async fn blobs_are_invisible_until_their_digest_is_verified() {
    let app = spawn_app().await;
    let blob = pattern(1000);
    let location = app.start_upload("a").await;
    assert_eq!(patch(&app, &location, Some((0, 999)), &blob).await.status(), StatusCode::ACCEPTED);
    let path = format!("/v2/a/blobs/{}", sha256(&blob));
    assert_eq!(app.head(&path).await.status(), StatusCode::NOT_FOUND);
    assert_error(app.get(&path).await, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    assert_eq!(put(&app, &location, &sha256(&blob), None).await.status(), StatusCode::CREATED);
    assert_eq!(app.head(&path).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn abandoned_uploads_are_swept() {
    let app = spawn_with(|s| s.upload_idle_timeout = 1).await;
    let location = app.start_upload("a").await;
    assert_eq!(patch(&app, &location, Some((0, 2)), b"abc").await.status(), StatusCode::ACCEPTED);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_error(app.get(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(app.registry().sweep_uploads().await, 1);
    assert_eq!(std::fs::read_dir(app.dir.path().join("uploads")).unwrap().count(), 0);
}

#[tokio::test]
async fn the_next_request_never_finds_the_upload_still_locked() {
    let app = spawn_app().await;
    for i in 0..100u32 {
        let blob = format!("blob number {i}").into_bytes();
        let location = app.start_upload("a").await;
        // A refused chunk releases the lock before its answer, too.
        let refused = patch(&app, &location, Some((5, 6)), b"xy").await;
        assert_eq!(refused.status(), StatusCode::RANGE_NOT_SATISFIABLE);
        let r = patch(&app, &location, Some((0, blob.len() as u64 - 1)), &blob).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "round {i}");
        let r = put(&app, &crate::helpers::location(&r), &sha256(&blob), None).await;
        assert_eq!(r.status(), StatusCode::CREATED, "round {i}");
    }
}
