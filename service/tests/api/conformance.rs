//! The checks of the upstream OCI conformance suites that Berth once failed, replayed as the
//! suites send them: a reference that cannot exist, sha512 blobs pushed without
//! `digest-algorithm`, and token-mode clients that widen their token after a challenge.
//!
//! The flows follow the suite's `BlobPatchChunked` and `BlobPatchStream` (distribution-spec
//! `conformance/api.go`, main branch): a `POST` with `Content-Length: 0` and no query, chunks
//! with `Content-Length` and `Content-Range`, an out-of-order chunk answered 416 and recovered
//! with a `GET` of the upload, and a closing `PUT ?digest=` with or without the last chunk.

use berth::config::AuthMode;
use berth::oci::{Algorithm, Digest};
use reqwest::{Method, StatusCode};

use crate::auth::{basic, bearer, fixture, secured, status, token};
use crate::helpers::*;
use crate::s3support;

/// The suite's name for a manifest that does not exist: not even a valid tag.
const NONEXISTENT_MANIFEST: &str = ".INVALID_MANIFEST_NAME";

#[tokio::test]
async fn a_reference_that_cannot_exist_is_not_found() {
    let app = spawn_app().await;
    app.push_image("conformance/pull", "tagtest0", "x").await;
    let path = format!("/v2/conformance/pull/manifests/{NONEXISTENT_MANIFEST}");
    // "HEAD request to nonexistent manifest should return 404".
    assert_eq!(app.head(&path).await.status(), StatusCode::NOT_FOUND);
    // "GET nonexistent manifest should return 404", in the pull and the push sections.
    assert_error(app.get(&path).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_error(app.delete(&path).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    // Creating it is asking for something invalid, and the answer says so.
    let r = app.put_manifest("conformance/pull", NONEXISTENT_MANIFEST, OCI_MANIFEST, b"{}").await;
    let body = assert_error(r, StatusCode::BAD_REQUEST, "MANIFEST_INVALID").await;
    assert!(body.to_string().contains("invalid tag"), "{body}");
}

/// How a blob was pushed.
#[derive(Clone, Copy, Debug)]
enum Flow {
    ChunkedSingle,
    Stream,
    ChunkedMulti,
    ChunkedMultiPutChunk,
    ChunkedOutOfOrder,
    ChunkedOutOfOrderPutChunk,
}

const FLOWS: [Flow; 6] = [
    Flow::ChunkedSingle,
    Flow::Stream,
    Flow::ChunkedMulti,
    Flow::ChunkedMultiPutChunk,
    Flow::ChunkedOutOfOrder,
    Flow::ChunkedOutOfOrderPutChunk,
];

/// `POST /v2/<repo>/blobs/uploads/` as the suite sends it; the upload's location and the
/// `OCI-Chunk-Min-Length` the registry advertises, if any.
async fn post(app: &TestApp, repo: &str) -> (String, Option<usize>) {
    let r = app
        .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
        .header("Content-Length", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let min = header(&r, "oci-chunk-min-length").map(|v| v.parse().unwrap());
    (location(&r), min)
}

/// One chunk with its `Content-Length` and `Content-Range`, by `PATCH`, or by the closing
/// `PUT ?digest=` when `close` names the digest.
async fn send_chunk(
    app: &TestApp,
    location: &str,
    blob: &[u8],
    start: usize,
    last: usize,
    close: Option<&Digest>,
) -> reqwest::Response {
    let (method, url) = match close {
        Some(digest) => (Method::PUT, format!("{location}?digest={digest}")),
        None => (Method::PATCH, location.to_owned()),
    };
    app.request(method, &url)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{start}-{last}"))
        .body(blob[start..=last].to_vec())
        .send()
        .await
        .unwrap()
}

/// Pushes `blob` as the suite's flow does, with chunks of at least `min_chunk` bytes; returns
/// the closing `PUT`'s answer.
async fn push(
    app: &TestApp,
    repo: &str,
    blob: &[u8],
    digest: &Digest,
    flow: Flow,
    min_chunk: usize,
) -> reqwest::Response {
    let (mut location, advertised) = post(app, repo).await;
    if let Flow::Stream = flow {
        let r = app.patch_streamed(&location, None, blob.chunks(64 << 10).map(<[u8]>::to_vec).collect()).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let url = format!("{}?digest={digest}", crate::helpers::location(&r));
        return app.request(Method::PUT, &url).header("Content-Length", "0").send().await.unwrap();
    }
    let put_last = matches!(flow, Flow::ChunkedMultiPutChunk | Flow::ChunkedOutOfOrderPutChunk);
    let out_of_order = matches!(flow, Flow::ChunkedOutOfOrder | Flow::ChunkedOutOfOrderPutChunk);
    let chunk = (blob.len() / 3 + 1).max(advertised.unwrap_or(0)).max(min_chunk).min(blob.len());
    let len = blob.len();
    let mut next = 0usize;
    while next < len {
        if out_of_order {
            // Skip a chunk ahead (or back to the start): 416, then find the upload's place.
            let bad_start = if next + chunk >= len { 0 } else { next + chunk };
            let bad_last = (bad_start + chunk - 1).min(len - 1);
            let close = (put_last && bad_last == len - 1).then_some(digest);
            let r = send_chunk(app, &location, blob, bad_start, bad_last, close).await;
            assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE, "{flow:?}: out-of-order chunk at {bad_start}");
            let r = app.get(&location).await;
            assert_eq!(r.status(), StatusCode::NO_CONTENT);
            let range = header(&r, "range").unwrap().to_owned();
            let last_byte: usize = range.strip_prefix("0-").expect("Range starts with 0-").parse().unwrap();
            if next > 0 {
                assert_eq!(last_byte, next - 1, "{flow:?}: the upload stayed where it was");
            }
            location = crate::helpers::location(&r);
        }
        let last = (next + chunk - 1).min(len - 1);
        if put_last && last == len - 1 {
            return send_chunk(app, &location, blob, next, last, Some(digest)).await;
        }
        let r = send_chunk(app, &location, blob, next, last, None).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{flow:?}: {}", r.text().await.unwrap());
        location = crate::helpers::location(&r);
        next = last + 1;
    }
    let url = format!("{location}?digest={digest}");
    app.request(Method::PUT, &url)
        .header("Content-Length", "0")
        .header("Content-Type", "application/octet-stream")
        .send()
        .await
        .unwrap()
}

/// Pushes a blob by every flow, closing with its sha512 digest although no upload said
/// `digest-algorithm`, then checks it as the suite does: HEAD, GET, DELETE.
async fn sha512_blobs(app: &TestApp, min_chunk: usize) {
    // As the suite does: its "chunked single" push learns the registry's minimum chunk, and
    // the multi-chunk blobs are made three of those long.
    let (probe, advertised) = post(app, "conformance/sha512").await;
    assert_eq!(app.delete(&probe).await.status(), StatusCode::NO_CONTENT);
    let min_chunk = min_chunk.max(advertised.unwrap_or(0));
    for (i, flow) in FLOWS.into_iter().enumerate() {
        let size = match flow {
            Flow::ChunkedSingle | Flow::Stream => min_chunk.min(512),
            _ => min_chunk * 3 - 5,
        };
        let blob: Vec<u8> = pattern(size + i).into_iter().map(|b| b.wrapping_add(i as u8)).collect();
        let digest = Digest::compute(Algorithm::Sha512, &blob);
        let r = push(app, "conformance/sha512", &blob, &digest, flow, min_chunk).await;
        assert_eq!(r.status(), StatusCode::CREATED, "{flow:?}: {}", r.text().await.unwrap());
        assert_eq!(header(&r, "docker-content-digest"), Some(digest.as_str()), "{flow:?}");
        let at = location(&r);
        let head = app.head(&at).await;
        assert_eq!(head.status(), StatusCode::OK, "{flow:?}");
        assert_eq!(header(&head, "content-length"), Some(blob.len().to_string().as_str()));
        assert_eq!(header(&head, "docker-content-digest"), Some(digest.as_str()));
        let got = app.get(&at).await;
        assert_eq!(got.status(), StatusCode::OK);
        assert!(got.bytes().await.unwrap() == blob, "{flow:?}: the bytes came back whole");
        assert_eq!(app.delete(&at).await.status(), StatusCode::ACCEPTED, "{flow:?}");
    }
}

/// A sha512 digest that does not match is refused and leaves nothing visible.
async fn a_wrong_sha512_digest_is_refused(app: &TestApp, size: usize) {
    let blob = pattern(size);
    let wrong = Digest::compute(Algorithm::Sha512, b"something else");
    for flow in [Flow::ChunkedMulti, Flow::ChunkedMultiPutChunk, Flow::Stream] {
        let r = push(app, "conformance/bad", &blob, &wrong, flow, size / 3 + 1).await;
        assert_error(r, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
        assert_eq!(app.head(&format!("/v2/conformance/bad/blobs/{wrong}")).await.status(), StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn sha512_blobs_without_digest_algorithm_on_the_embedded_default() {
    let app = spawn_app().await;
    sha512_blobs(&app, 1024).await;
    sha512_blobs(&app, 3 << 20).await;
    a_wrong_sha512_digest_is_refused(&app, 100_000).await;
    let uploads = std::fs::read_dir(app.settings.data_dir.join("uploads")).unwrap().count();
    assert_eq!(uploads, 0, "no upload is left behind");
}

/// `berth_s3_requests_total{operation="…"}` as the registry reports it.
async fn s3_requests(app: &TestApp, operation: &str) -> u64 {
    let text = app.get("/metrics").await.text().await.unwrap();
    let prefix = format!("berth_s3_requests_total{{operation=\"{operation}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map_or(0, |n| n.parse().unwrap())
}

#[tokio::test]
async fn sha512_blobs_without_digest_algorithm_on_s3() {
    let bucket = s3support::fresh_bucket().await;
    let app = spawn_with(|s| {
        s3support::configure(s, &bucket);
        s.s3_redirect = false;
    })
    .await;
    // A refused upload leaves not one object, although it was completed to be read back.
    a_wrong_sha512_digest_is_refused(&app, 2 * s3support::PART + 7).await;
    assert_eq!(s3support::keys(&bucket).await, Vec::<String>::new());
    sha512_blobs(&app, 1024).await;
    // Chunks above the part size: multipart uploads with a tail, completed at the upload's own
    // key to be read back.
    sha512_blobs(&app, s3support::PART + 1_000_000).await;
    assert_eq!(s3support::multipart_uploads(&bucket).await, 0, "no multipart upload is left behind");
    let keys = s3support::keys(&bucket).await;
    assert!(keys.iter().all(|k| !k.contains("/uploads/")), "no upload leftovers: {keys:?}");

    // The read-back costs one GetObject, and only when the algorithms differ: a sha256 push
    // reads nothing back, the same push closed with sha512 reads the blob once.
    let blob = pattern(2 * s3support::PART + 12_345);
    let mut reads = Vec::new();
    for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
        let digest = Digest::compute(algorithm, &blob);
        for flow in [Flow::Stream, Flow::ChunkedMulti] {
            let before = s3_requests(&app, "GetObject").await;
            let r = push(&app, "conformance/reads", &blob, &digest, flow, s3support::PART + 1).await;
            assert_eq!(r.status(), StatusCode::CREATED);
            reads.push(s3_requests(&app, "GetObject").await - before);
            assert_eq!(app.delete(&location(&r)).await.status(), StatusCode::ACCEPTED);
        }
    }
    println!("GetObject per push (stream, chunked) with sha256: {:?}, with sha512: {:?}", &reads[..2], &reads[2..]);
    assert_eq!(reads[0], 0, "a streamed sha256 push reads nothing back");
    assert_eq!(reads[2], 1, "a streamed sha512 push reads the blob back once");
    assert_eq!(reads[3], reads[1] + 1, "a chunked sha512 push reads once more than a sha256 one (its tails)");
}

/// The scope a challenge names.
fn challenged_scope(r: &reqwest::Response) -> String {
    let challenge = header(r, "www-authenticate").expect("a challenge");
    assert!(challenge.contains("error=\"insufficient_scope\""), "{challenge}");
    challenge.split("scope=\"").nth(1).and_then(|rest| rest.split('"').next()).expect("a scope").to_owned()
}

/// crane: a `push,pull` token first, the 401 challenge naming `delete`, a token with it, the
/// delete; the deleted manifest no longer resolves.
#[tokio::test]
async fn token_mode_a_delete_widens_its_token_after_the_challenge() {
    let (app, _dir) = secured(AuthMode::Token).await;
    let alice = Some(("alice", "alice-password"));
    let push = token(&app, alice, &["repository:team/app:push,pull"]).await;
    let image = fixture(&app, &bearer(&push)).await;
    let path = format!("/v2/team/app/manifests/{}", image.digest);
    let r = status(&app, Method::DELETE, &path, Some(&bearer(&push))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "crane reads a 401 as: ask for a wider token");
    let scope = challenged_scope(&r);
    assert_eq!(scope, "repository:team/app:delete");
    assert_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    let wider = token(&app, alice, &[&scope]).await;
    assert_eq!(status(&app, Method::DELETE, &path, Some(&bearer(&wider))).await.status(), StatusCode::ACCEPTED);
    let r = status(&app, Method::GET, "/v2/team/app/manifests/v1", Some(&bearer(&push))).await;
    assert_error(r, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    // A user who may not delete gets the same challenge with the token the rules allow him,
    // and stays refused.
    let image = fixture(&app, &bearer(&push)).await;
    let path = format!("/v2/team/app/manifests/{}", image.digest);
    let bob = token(&app, Some(("bob", "bob-password")), &["repository:team/app:delete"]).await;
    let r = status(&app, Method::DELETE, &path, Some(&bearer(&bob))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(challenged_scope(&r), "repository:team/app:delete");
    // The same token again: it was told, so now it is forbidden.
    let r = status(&app, Method::DELETE, &path, Some(&bearer(&bob))).await;
    assert_eq!(challenged_scope(&r), "repository:team/app:delete");
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(status(&app, Method::GET, &path, Some(&bearer(&push))).await.status(), StatusCode::OK);
}

/// oras-py: the token a pull challenge gave it, sent again after the 401 of a push; the 403
/// that answers the repeat makes it ask for the scope the challenge names, and the push goes on.
#[tokio::test]
async fn token_mode_a_token_sent_again_after_its_challenge_is_forbidden() {
    let (app, _dir) = secured(AuthMode::Token).await;
    let alice = Some(("alice", "alice-password"));
    let pull = token(&app, alice, &["repository:team/py:pull"]).await;
    let upload = "/v2/team/py/blobs/uploads/";
    let r = status(&app, Method::POST, upload, Some(&bearer(&pull))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = status(&app, Method::POST, upload, Some(&bearer(&pull))).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let scope = challenged_scope(&r);
    assert_eq!(scope, "repository:team/py:pull,push");
    let push = token(&app, alice, &[&scope]).await;
    assert_eq!(status(&app, Method::POST, upload, Some(&bearer(&push))).await.status(), StatusCode::ACCEPTED);
    // Another scope for the same token is a first time again.
    let r = status(&app, Method::DELETE, "/v2/team/py/manifests/v1", Some(&bearer(&pull))).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
}

/// The suite's cross-repository mount: a token for the target only, the 401 challenge naming
/// both repositories, a token with both, the mount (201), and a mount of a blob the source
/// lacks (202 with a session).
#[tokio::test]
async fn token_mode_a_mount_widens_its_token_to_the_source() {
    let (app, _dir) = secured(AuthMode::Token).await;
    let alice = Some(("alice", "alice-password"));
    let source = token(&app, alice, &["repository:team/from:pull,push"]).await;
    let blob = b"a layer to mount".to_vec();
    let r = app
        .request(Method::POST, &format!("/v2/team/from/blobs/uploads/?digest={}", sha256(&blob)))
        .header("Authorization", bearer(&source))
        .body(blob.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    for (digest, expected) in [(sha256(&blob), StatusCode::CREATED), (sha256(b"nowhere"), StatusCode::ACCEPTED)] {
        let target = token(&app, alice, &["repository:team/to:pull,push"]).await;
        let path = format!("/v2/team/to/blobs/uploads/?mount={digest}&from=team/from");
        let r = status(&app, Method::POST, &path, Some(&bearer(&target))).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let scope = challenged_scope(&r);
        assert_eq!(scope, "repository:team/to:pull,push repository:team/from:pull");
        let both = token(&app, alice, &[&scope]).await;
        let r = status(&app, Method::POST, &path, Some(&bearer(&both))).await;
        assert_eq!(r.status(), expected, "{digest}");
        if expected == StatusCode::ACCEPTED {
            assert!(header(&r, "docker-upload-uuid").is_some(), "a session id");
            assert!(location(&r).contains("/v2/team/to/blobs/uploads/"));
        }
    }
    let target = token(&app, alice, &["repository:team/to:pull"]).await;
    let r = status(&app, Method::HEAD, &format!("/v2/team/to/blobs/{}", sha256(&blob)), Some(&bearer(&target))).await;
    assert_eq!(r.status(), StatusCode::OK);
}

/// A mount from a repository the user may not pull: the wider token still lacks it, and the
/// mount becomes an upload (202) instead of a refusal or a leak; in Basic mode too.
#[tokio::test]
async fn a_mount_from_a_repository_the_user_cannot_pull_becomes_an_upload() {
    for mode in [AuthMode::Token, AuthMode::Basic] {
        let (app, _dir) = secured(mode).await;
        let alice = match mode {
            AuthMode::Token => {
                bearer(&token(&app, Some(("alice", "alice-password")), &["repository:team/app:pull,push"]).await)
            }
            _ => basic("alice", "alice-password"),
        };
        let image = fixture(&app, &alice).await;
        let carol = match mode {
            AuthMode::Token => {
                let asked = "repository:carol/app:pull,push repository:team/app:pull";
                let t = token(&app, Some(("carol", "carol-password")), &[asked]).await;
                assert_eq!(
                    crate::auth::claims_of(&t)["access"][1],
                    serde_json::json!({"type": "repository", "name": "team/app", "actions": []})
                );
                bearer(&t)
            }
            _ => basic("carol", "carol-password"),
        };
        let path = format!("/v2/carol/app/blobs/uploads/?mount={}&from=team/app", image.layer_digest);
        let r = status(&app, Method::POST, &path, Some(&carol)).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{mode:?}: {}", r.text().await.unwrap());
        let r = status(&app, Method::HEAD, &format!("/v2/carol/app/blobs/{}", image.layer_digest), Some(&carol)).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{mode:?}: nothing was mounted");
    }
}
