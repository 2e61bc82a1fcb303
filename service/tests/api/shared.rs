//! Replicas sharing PostgreSQL, Redis and S3, in one process: races between them, and
//! backends that go away and come back.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;
use crate::proxy::Proxy;
use crate::urlsupport::{authority, socket_of};
use crate::{pgsupport, redissupport, s3support};

/// Where the shared backends are, for every replica of one test.
struct Shared {
    database: String,
    redis: String,
    prefix: String,
    bucket: String,
}

impl Shared {
    async fn new() -> Shared {
        Shared {
            database: pgsupport::fresh_database().await,
            redis: redissupport::url(),
            prefix: redissupport::fresh_prefix(),
            bucket: s3support::fresh_bucket().await,
        }
    }

    async fn replica(&self) -> TestApp {
        spawn_with(|s| {
            s3support::configure(s, &self.bucket);
            s.s3_redirect = false;
            s.database_url = Some(self.database.clone());
            s.redis_url = Some(berth::config::Secret::new(self.redis.clone()));
            s.redis_prefix = self.prefix.clone();
        })
        .await
    }
}

#[tokio::test]
async fn an_upload_moves_between_replicas_chunk_by_chunk() {
    let shared = Shared::new().await;
    let replicas = [shared.replica().await, shared.replica().await, shared.replica().await];
    let blob = pattern(2 * s3support::PART + 12345);
    let location = replicas[0].start_upload("walk").await;
    let mut start = 0;
    for (i, size) in [1usize, 3 << 20, 4 << 20, 1000, 2 << 20].into_iter().enumerate() {
        let end = start + size - 1;
        let r = replicas[(i + 1) % 3]
            .request(Method::PATCH, &location)
            .header("Content-Range", format!("{start}-{end}"))
            .body(blob[start..=end].to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::ACCEPTED, "{}", r.text().await.unwrap());
        start = end + 1;
    }
    let r = replicas[2]
        .request(Method::PUT, &format!("{location}?digest={}", sha256(&blob)))
        .body(blob[start..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
    for replica in &replicas {
        let r = replica.get(&format!("/v2/walk/blobs/{}", sha256(&blob))).await;
        assert_eq!(r.bytes().await.unwrap(), blob);
    }
}

#[tokio::test]
async fn the_same_blob_pushed_at_once_through_two_replicas_is_stored_once() {
    let shared = Shared::new().await;
    let (a, b) = (shared.replica().await, shared.replica().await);
    for round in 0..3 {
        let blob = pattern(s3support::PART + 1000 + round);
        let (ra, rb) =
            tokio::join!(a.push_streamed("race/a", &blob, 500_000), b.push_streamed("race/b", &blob, 500_000));
        assert_eq!((ra.status(), rb.status()), (StatusCode::CREATED, StatusCode::CREATED));
        // Monolithic pushes name the digest up front and race for the same key.
        let small = pattern(2000 + round);
        let digest = sha256(&small);
        let (ra, rb) = tokio::join!(a.post_blob("race/m", &digest, &small), b.post_blob("race/m", &digest, &small));
        assert_eq!((ra.status(), rb.status()), (StatusCode::CREATED, StatusCode::CREATED));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let keys = s3support::keys(&shared.bucket).await;
    assert_eq!(keys.len(), 6, "one object per digest: {keys:?}");
    assert_eq!(s3support::multipart_uploads(&shared.bucket).await, 0);
}

#[tokio::test]
async fn the_same_tag_pushed_at_once_points_at_one_manifest_and_keeps_both() {
    let shared = Shared::new().await;
    let (a, b) = (shared.replica().await, shared.replica().await);
    let first = a.push_image("tags", "setup-a", "one").await;
    let second = b.push_image("tags", "setup-b", "two").await;
    for round in 0..10 {
        let tag = format!("race{round}");
        let (ra, rb) = tokio::join!(
            a.put_manifest("tags", &tag, OCI_MANIFEST, &first.bytes),
            b.put_manifest("tags", &tag, OCI_MANIFEST, &second.bytes)
        );
        assert_eq!((ra.status(), rb.status()), (StatusCode::CREATED, StatusCode::CREATED));
        let winner = a.get(&format!("/v2/tags/manifests/{tag}")).await.bytes().await.unwrap();
        assert!(winner == first.bytes || winner == second.bytes);
        assert_eq!(b.get(&format!("/v2/tags/manifests/{tag}")).await.bytes().await.unwrap(), winner, "replicas agree");
    }
    for image in [&first, &second] {
        for replica in [&a, &b] {
            let r = replica.get(&format!("/v2/tags/manifests/{}", image.digest)).await;
            assert_eq!(r.bytes().await.unwrap(), image.bytes);
        }
    }
}

#[tokio::test]
async fn a_manifest_racing_its_last_blob_is_stored_whole_or_refused() {
    let shared = Shared::new().await;
    let (a, b) = (shared.replica().await, shared.replica().await);
    let config = a.push_blob("mbu", b"{}").await;
    let (mut stored, mut refused) = (0, 0);
    for round in 0..12 {
        let layer = pattern(300_000 + round);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": config.as_str(), "size": 2},
            "layers": [{"mediaType": OCI_LAYER, "digest": sha256(&layer).as_str(), "size": layer.len()}],
        }))
        .unwrap();
        let tag = format!("r{round}");
        let delay = Duration::from_millis((round as u64 % 4) * 3);
        let (blob, put) = tokio::join!(a.push_streamed("mbu", &layer, 500_000), async {
            tokio::time::sleep(delay).await;
            b.put_manifest("mbu", &tag, OCI_MANIFEST, &manifest).await
        });
        assert_eq!(blob.status(), StatusCode::CREATED);
        match put.status() {
            StatusCode::CREATED => {
                stored += 1;
                let r = a.get(&format!("/v2/mbu/blobs/{}", sha256(&layer))).await;
                assert_eq!(r.bytes().await.unwrap(), layer, "a stored manifest's layer is there");
            }
            StatusCode::BAD_REQUEST => {
                refused += 1;
                let body: Value = put.json().await.unwrap();
                assert_eq!(body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN");
                assert_eq!(a.get(&format!("/v2/mbu/manifests/{tag}")).await.status(), StatusCode::NOT_FOUND);
            }
            other => panic!("manifest PUT gave {other}"),
        }
    }
    assert_eq!(stored + refused, 12);
}

#[tokio::test]
async fn a_database_that_goes_away_gets_503_and_readyz_says_so() {
    let shared = Shared::new().await;
    let postgres = socket_of(&shared.database);
    let proxy = Proxy::start(postgres).await;
    let through_proxy = shared.database.replacen(&authority(&shared.database), &proxy.addr.to_string(), 1);
    let app = spawn_with(|s| {
        s3support::configure(s, &shared.bucket);
        s.database_url = Some(through_proxy.clone());
    })
    .await;
    let image = app.push_image("db", "v1", "outage").await;
    proxy.cut();
    let r = app.get("/v2/db/manifests/v1").await;
    assert!(header(&r, "retry-after").is_some());
    let body = assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    assert!(body.to_string().contains("the registry's database is unavailable"), "{body}");
    let ready = app.get("/readyz").await;
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = ready.json().await.unwrap();
    assert_discreet(&body.to_string());
    assert_eq!(body["components"]["metadata"]["status"], "unavailable", "{body}");
    assert_eq!(body["components"]["storage"]["status"], "ok", "{body}");
    assert_eq!(app.get("/healthz").await.status(), StatusCode::OK);
    proxy.restore();
    // The pool reconnects by itself.
    wait_until(async || app.get("/readyz").await.status() == StatusCode::OK).await;
    assert_eq!(app.get("/v2/db/manifests/v1").await.bytes().await.unwrap(), image.bytes);
}

#[tokio::test]
async fn a_redis_that_goes_away_gets_503_and_comes_back() {
    let shared = Shared::new().await;
    let redis = socket_of(&shared.redis);
    let proxy = Proxy::start(redis).await;
    let app = spawn_with(|s| {
        s3support::configure(s, &shared.bucket);
        s.database_url = Some(shared.database.clone());
        s.redis_url = Some(berth::config::Secret::new(format!("redis://{}", proxy.addr)));
        s.redis_prefix = shared.prefix.clone();
    })
    .await;
    let image = app.push_image("r", "v1", "redis").await;
    let location = app.start_upload("r").await;
    proxy.cut();
    let r = app.request(Method::POST, "/v2/r/blobs/uploads/").send().await.unwrap();
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    let r = app.request(Method::PATCH, &location).body("abc").send().await.unwrap();
    assert_error(r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE").await;
    let body: Value = app.get("/readyz").await.json().await.unwrap();
    assert_discreet(&body.to_string());
    assert_eq!(body["components"]["sessions"]["status"], "unavailable", "{body}");
    // Pulls need no session.
    assert_eq!(app.get("/v2/r/manifests/v1").await.bytes().await.unwrap(), image.bytes);
    proxy.restore();
    wait_until(async || app.get("/readyz").await.status() == StatusCode::OK).await;
    let r = app.request(Method::PATCH, &location).body("abc").send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED, "the upload survived the outage");
}

#[tokio::test]
async fn losing_redis_loses_the_uploads_in_progress_and_nothing_else() {
    let shared = Shared::new().await;
    let app = shared.replica().await;
    let image = app.push_image("lost", "v1", "flush").await;
    let location = app.start_upload("lost").await;
    let r = app.request(Method::PATCH, &location).body(pattern(s3support::PART + 1)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    // What a Redis restart without persistence does to this test's keys.
    let client = redis::Client::open(shared.redis.as_str()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> =
        redis::cmd("KEYS").arg(format!("{}*", shared.prefix)).query_async(&mut connection).await.unwrap();
    assert!(!keys.is_empty());
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut connection).await.unwrap();
    assert_error(app.get(&location).await, StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN").await;
    assert_eq!(app.get("/v2/lost/manifests/v1").await.bytes().await.unwrap(), image.bytes);
    let r = app.get(&format!("/v2/lost/blobs/{}", image.layer_digest)).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), image.layer_digest);
    // The client starts over, and that works.
    let blob = pattern(s3support::PART + 1);
    assert_eq!(app.push_streamed("lost", &blob, 500_000).await.status(), StatusCode::CREATED);
}

/// Pushes a blob in one request, again when told 503 as a client would: with no grace time,
/// the collector may remove the blob while it is being stored.
async fn push_retrying(app: &TestApp, bytes: &[u8]) -> berth::oci::Digest {
    let digest = sha256(bytes);
    for _ in 0..20 {
        let r = app.post_blob("gcrace", &digest, bytes).await;
        match r.status() {
            StatusCode::CREATED => return digest,
            StatusCode::SERVICE_UNAVAILABLE => continue,
            other => panic!("blob push gave {other}: {}", r.text().await.unwrap_or_default()),
        }
    }
    panic!("blob push kept getting 503");
}

/// Garbage collection (untagged manifests, then blobs) running flat out with next to no grace
/// time while two replicas push images that share layers, each by digest and then listed by a
/// tagged index, and delete some indexes: every push is stored whole or refused
/// (`MANIFEST_BLOB_UNKNOWN` when a layer or the image was collected before what names it
/// came), and no stored index ever loses its image nor an image a layer.
#[tokio::test]
async fn gc_racing_pushes_and_deletes_never_takes_a_layer_from_a_manifest() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let shared = Shared::new().await;
    let replicas = [shared.replica().await, shared.replica().await];
    let layers: Vec<Vec<u8>> = (0..5).map(|i| pattern(20_000 + i)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let collector = {
        let (registry, stop) = (replicas[1].registry().clone(), stop.clone());
        async move {
            let (mut runs, mut removed, mut removed_manifests) = (0, 0, 0);
            while !stop.load(Ordering::Relaxed) {
                // Every fourth collection with no grace time at all, the others with about as much
                // as a push takes; pauses in between, so that some pushes finish unharmed.
                let grace = Duration::from_millis([0, 200, 200, 200][runs % 4]);
                removed_manifests += registry.collect_manifests(grace, false).await.expect("collection");
                removed += registry.collect_blobs(grace, false).await.expect("collection").blobs;
                tokio::time::sleep(Duration::from_millis([0, 10, 10, 30][runs % 4])).await;
                runs += 1;
            }
            (runs, removed, removed_manifests)
        }
    };
    let pusher = |worker: usize| {
        let (replicas, layers) = (&replicas, &layers);
        async move {
            let mut kept = Vec::new();
            let mut refused = 0;
            for round in 0..20 {
                let (push, put) = (&replicas[(worker + round) % 2], &replicas[(worker + round + 1) % 2]);
                let config = format!(r#"{{"worker":{worker},"round":{round}}}"#).into_bytes();
                let picked = [&layers[(worker + round) % 5], &layers[(worker + 2 * round + 1) % 5]];
                // A refused push is pushed again, blobs and all, as a client would; on a slow
                // machine every try of a round may meet a collection with no grace time.
                for _ in 0..10 {
                    let mut descriptors = Vec::new();
                    for layer in picked {
                        let digest = push_retrying(push, layer).await;
                        descriptors
                            .push(json!({"mediaType": OCI_LAYER, "digest": digest.as_str(), "size": layer.len()}));
                    }
                    let config_digest = push_retrying(push, &config).await;
                    let manifest = serde_json::to_vec(&json!({
                        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                        "config": {"mediaType": OCI_CONFIG, "digest": config_digest.as_str(), "size": config.len()},
                        "layers": descriptors,
                    }))
                    .unwrap();
                    let image = sha256(&manifest);
                    let index = serde_json::to_vec(&json!({
                        "schemaVersion": 2, "mediaType": OCI_INDEX,
                        "manifests": [{"mediaType": OCI_MANIFEST, "digest": image.as_str(), "size": manifest.len(),
                                       "platform": {"architecture": "amd64", "os": "linux"}}],
                    }))
                    .unwrap();
                    let mut r = put.put_manifest("gcrace", image.as_str(), OCI_MANIFEST, &manifest).await;
                    if r.status() == StatusCode::CREATED {
                        r = push.put_manifest("gcrace", &format!("w{worker}-{round}"), OCI_INDEX, &index).await;
                    }
                    if r.status() == StatusCode::CREATED {
                        if round % 3 == 0 {
                            let r = push.delete(&format!("/v2/gcrace/manifests/{}", sha256(&index))).await;
                            assert_eq!(r.status(), StatusCode::ACCEPTED);
                        } else {
                            kept.push((index, manifest));
                        }
                        break;
                    }
                    let status = r.status();
                    let body: Value = r.json().await.unwrap_or_default();
                    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
                    assert_eq!(body["errors"][0]["code"], "MANIFEST_BLOB_UNKNOWN", "{body}");
                    refused += 1;
                }
            }
            (kept, refused)
        }
    };
    let ((runs, removed, removed_manifests), pushed) = tokio::join!(collector, async {
        let pushed = tokio::join!(pusher(0), pusher(1), pusher(2));
        stop.store(true, Ordering::Relaxed);
        pushed
    });
    let (kept, refused): (Vec<_>, usize) =
        [pushed.0, pushed.1, pushed.2].into_iter().fold((Vec::new(), 0), |(mut all, n), (kept, refused)| {
            all.extend(kept);
            (all, n + refused)
        });
    eprintln!(
        "{runs} collections removed {removed_manifests} manifests and {removed} blobs; {} images kept, {refused} \
         pushes refused",
        kept.len()
    );
    assert!(
        removed > 0 && removed_manifests > 0 && !kept.is_empty(),
        "the race was not run: {removed_manifests} manifests and {removed} blobs removed, {} kept",
        kept.len()
    );

    // One more collection after the dust settles: only what a kept index lists stays.
    replicas[0].registry().collect_manifests(Duration::ZERO, false).await.unwrap();
    replicas[0].registry().collect_blobs(Duration::ZERO, false).await.unwrap();
    let mut referenced = std::collections::HashSet::new();
    for (index, manifest) in &kept {
        let r = replicas[1].get(&format!("/v2/gcrace/manifests/{}", sha256(index))).await;
        assert_eq!(r.bytes().await.unwrap(), *index);
        let parsed: Value = serde_json::from_slice(manifest).unwrap();
        let r = replicas[0].get(&format!("/v2/gcrace/manifests/{}", sha256(manifest))).await;
        assert_eq!(r.bytes().await.unwrap(), *manifest, "the image of a kept index");
        let blobs = std::iter::once(&parsed["config"]).chain(parsed["layers"].as_array().unwrap());
        for descriptor in blobs {
            let digest = descriptor["digest"].as_str().unwrap();
            for replica in &replicas {
                let r = replica.get(&format!("/v2/gcrace/blobs/{digest}")).await;
                assert_eq!(r.status(), StatusCode::OK, "{digest} of a kept manifest");
                assert_eq!(sha256(&r.bytes().await.unwrap()).as_str(), digest);
            }
            referenced.insert(digest.trim_start_matches("sha256:").to_owned());
        }
    }
    let stored: std::collections::HashSet<String> = s3support::keys(&shared.bucket)
        .await
        .into_iter()
        .filter_map(|k| k.rsplit_once("/sha256/").map(|(_, hex)| hex.rsplit('/').next().unwrap().to_owned()))
        .collect();
    assert_eq!(stored, referenced, "the bucket holds exactly the blobs kept manifests reference");
}
