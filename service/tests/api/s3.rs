//! The registry on S3 (moto over HTTP): the same API, with redirects, and a store that goes away.

use reqwest::{Method, StatusCode};

use crate::helpers::*;
use crate::proxy::Proxy;
use crate::s3support::{self, PART};

async fn s3_app(bucket: &str, redirect: bool) -> TestApp {
    let bucket = bucket.to_owned();
    spawn_with(move |s| {
        s3support::configure(s, &bucket);
        s.s3_redirect = redirect;
    })
    .await
}

#[tokio::test]
async fn uploads_of_every_kind_round_trip_through_s3() {
    let bucket = s3support::fresh_bucket().await;
    let app = s3_app(&bucket, false).await;
    let image = app.push_image("s3/app", "v1", "s3").await;
    assert_eq!(app.get("/v2/s3/app/manifests/v1").await.bytes().await.unwrap(), image.bytes);
    let layer = app.get(&format!("/v2/s3/app/blobs/{}", image.layer_digest)).await;
    assert_eq!(layer.status(), StatusCode::OK);
    assert_eq!(sha256(&layer.bytes().await.unwrap()), image.layer_digest);

    // Streamed, larger than two parts.
    let big = pattern(2 * PART + 4321);
    assert_eq!(app.push_streamed("s3/app", &big, 300_000).await.status(), StatusCode::CREATED);
    let r = app.get(&format!("/v2/s3/app/blobs/{}", sha256(&big))).await;
    assert_eq!(r.bytes().await.unwrap(), big);

    // Chunked from 1 byte to more than a part, across replicas' worth of tails.
    let blob = pattern(PART + 100_003);
    let mut location = app.start_upload("s3/app").await;
    let mut start = 0usize;
    for size in [1usize, 2, 1000, PART - 2000, 50_000, 50_000] {
        let end = (start + size).min(blob.len()) - 1;
        let r = app
            .request(Method::PATCH, &location)
            .header("Content-Range", format!("{start}-{end}"))
            .body(blob[start..=end].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
        location = crate::helpers::location(&r);
        start = end + 1;
    }
    let r = app
        .request(Method::PUT, &format!("{location}?digest={}", sha256(&blob)))
        .header("Content-Range", format!("{start}-{}", blob.len() - 1))
        .body(blob[start..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(app.get(&format!("/v2/s3/app/blobs/{}", sha256(&blob))).await.bytes().await.unwrap(), blob);

    // Ranges are streamed by Berth.
    let r = app
        .request(Method::GET, &format!("/v2/s3/app/blobs/{}", sha256(&big)))
        .header("Range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap(), &big[10..20]);
    assert_eq!(s3support::multipart_uploads(&bucket).await, 0);
    assert!(s3support::keys(&bucket).await.iter().all(|k| !k.contains("/uploads/")), "no upload leftovers");
}

#[tokio::test]
async fn blob_gets_redirect_to_a_presigned_url() {
    let bucket = s3support::fresh_bucket().await;
    let app = s3_app(&bucket, true).await;
    let blob = pattern(3000);
    let digest = app.push_blob("r", &blob).await;
    let r = app.get(&format!("/v2/r/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()));
    let url = location(&r);
    assert!(url.contains("X-Amz-Signature=") && url.contains("X-Amz-Expires=1200"), "{url}");
    let fetched = reqwest::get(&url).await.unwrap();
    assert_eq!(fetched.status(), StatusCode::OK);
    assert_eq!(fetched.bytes().await.unwrap(), blob);
    // HEAD answers from metadata; a range is streamed, not redirected.
    assert_eq!(app.head(&format!("/v2/r/blobs/{digest}")).await.status(), StatusCode::OK);
    let r =
        app.request(Method::GET, &format!("/v2/r/blobs/{digest}")).header("Range", "bytes=0-9").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
}

#[tokio::test]
async fn a_deduplicated_push_stores_one_object() {
    let bucket = s3support::fresh_bucket().await;
    let app = s3_app(&bucket, false).await;
    let blob = pattern(2 * PART + 99);
    for repo in ["one", "two"] {
        assert_eq!(app.push_streamed(repo, &blob, 300_000).await.status(), StatusCode::CREATED);
    }
    let small = pattern(1234);
    for repo in ["one", "two"] {
        app.push_blob(repo, &small).await;
    }
    let keys = s3support::keys(&bucket).await;
    assert_eq!(keys.len(), 2, "one object per digest: {keys:?}");
    assert_eq!(s3support::multipart_uploads(&bucket).await, 0, "the second upload was aborted");
    for repo in ["one", "two"] {
        assert_eq!(app.get(&format!("/v2/{repo}/blobs/{}", sha256(&blob))).await.bytes().await.unwrap(), blob);
    }
}

#[tokio::test]
async fn a_cancelled_upload_leaves_nothing_in_the_bucket() {
    let bucket = s3support::fresh_bucket().await;
    let app = s3_app(&bucket, false).await;
    let location = app.start_upload("c").await;
    let r = app.request(Method::PATCH, &location).body(pattern(PART + 10)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(s3support::multipart_uploads(&bucket).await, 1);
    assert_eq!(app.delete(&location).await.status(), StatusCode::NO_CONTENT);
    assert_eq!(s3support::multipart_uploads(&bucket).await, 0);
    assert!(s3support::keys(&bucket).await.is_empty());
}

#[tokio::test]
async fn a_store_that_goes_away_gets_503_and_loses_nothing() {
    let bucket = s3support::fresh_bucket().await;
    let moto = crate::urlsupport::socket_of(&s3support::endpoint());
    let proxy = Proxy::start(moto).await;
    let app = spawn_with(|s| {
        s3support::configure(s, &bucket);
        s.s3_endpoint = Some(proxy.url());
        s.s3_redirect = false;
    })
    .await;
    let image = app.push_image("down", "v1", "outage").await;
    let location = app.start_upload("down").await;
    let first = pattern(PART + 5);
    let r = app
        .request(Method::PATCH, &location)
        .header("Content-Range", format!("0-{}", first.len() - 1))
        .body(first.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);

    proxy.cut();
    let r = app.get(&format!("/v2/down/blobs/{}", image.layer_digest)).await;
    assert!(header(&r, "retry-after").is_some());
    let body = assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    assert!(body.to_string().contains("the registry's blob store is unavailable"), "{body}");
    let second = pattern(PART + 7);
    let range = format!("{}-{}", first.len(), first.len() + second.len() - 1);
    let r = app
        .request(Method::PATCH, &location)
        .header("Content-Range", &range)
        .body(second.clone())
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    // What needs only metadata still works; the upload kept its place.
    assert_eq!(app.head(&format!("/v2/down/blobs/{}", image.layer_digest)).await.status(), StatusCode::OK);
    assert_eq!(app.get("/v2/down/manifests/v1").await.status(), StatusCode::OK);
    let r = app.get(&location).await;
    assert_eq!(header(&r, "range").unwrap(), format!("0-{}", first.len() - 1));

    proxy.restore();
    let r = app
        .request(Method::PATCH, &location)
        .header("Content-Range", &range)
        .body(second.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
    let whole = [first, second].concat();
    let r = app
        .request(Method::PUT, &format!("{}?digest={}", crate::helpers::location(&r), sha256(&whole)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(app.get(&format!("/v2/down/blobs/{}", sha256(&whole))).await.bytes().await.unwrap(), whole);
    let r = app.get(&format!("/v2/down/blobs/{}", image.layer_digest)).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), image.layer_digest);
}

#[tokio::test]
async fn redirects_name_the_public_endpoint_when_there_is_one() {
    let bucket = s3support::fresh_bucket().await;
    let app = spawn_with(|s| {
        s3support::configure(s, &bucket);
        s.s3_public_endpoint = Some("https://blobs.example.com:9443".into());
        s.s3_presign_expiry = 300;
    })
    .await;
    let digest = app.push_blob("p", b"public").await;
    let r = app.get(&format!("/v2/p/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let url = location(&r);
    assert!(url.starts_with(&format!("https://blobs.example.com:9443/{bucket}/registry/blobs/sha256/")), "{url}");
    assert!(url.contains("X-Amz-Expires=300"), "{url}");
}

#[tokio::test]
async fn the_janitor_aborts_uploads_no_session_knows() {
    let bucket = s3support::fresh_bucket().await;
    let app = spawn_with(|s| {
        s3support::configure(s, &bucket);
        s.upload_idle_timeout = 1;
    })
    .await;
    let location = app.start_upload("j").await;
    let r = app.request(Method::PATCH, &location).body(pattern(PART + 3)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(s3support::multipart_uploads(&bucket).await, 1);
    assert_eq!(app.registry().sweep_uploads().await, 0, "too young to sweep");
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    assert_eq!(app.registry().sweep_uploads().await, 1);
    assert_eq!(s3support::multipart_uploads(&bucket).await, 0);
    assert!(s3support::keys(&bucket).await.is_empty(), "the tail is gone too");
    assert_error(app.get(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
}
