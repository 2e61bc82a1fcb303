//! The storage lifecycle over HTTP: immutable tags, quotas, retention, and the collector
//! inside `berth serve`.

use std::process::{Command, Stdio};
use std::time::Duration;

use berth::config::{ByteSize, ImmutableEntry, QuotaEntry, RetentionEntry, Settings};
use berth::registry::lifecycle::RunOptions;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn an_immutable_tag_refuses_to_move_and_names_its_rule() {
    let app = spawn_with(|s| {
        s.immutable = vec![ImmutableEntry {
            repositories: "prod/**".into(),
            except_tags: Some("latest".into()),
            allow_delete: false,
            ..Default::default()
        }];
    })
    .await;
    let first = app.push_image("prod/app", "v1", "first").await;
    // The same digest again is fine.
    let r = app.put_manifest("prod/app", "v1", OCI_MANIFEST, &first.bytes).await;
    assert_eq!(r.status(), StatusCode::CREATED);
    let second = app.push_image("prod/app", "other", "second").await;
    let r = app.put_manifest("prod/app", "v1", OCI_MANIFEST, &second.bytes).await;
    let body = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert_eq!(
        message,
        format!(
            "tag v1 is immutable under [[immutable]] entry 1 (repositories = \"prod/**\"): it already points at \
             {}; push under a new tag",
            first.digest
        )
    );
    let tagged = app.get("/v2/prod/app/manifests/v1").await;
    assert_eq!(header(&tagged, "docker-content-digest"), Some(first.digest.as_str()));
    // latest moves freely, and outside prod/ everything does.
    for image in [&first, &second] {
        let r = app.put_manifest("prod/app", "latest", OCI_MANIFEST, &image.bytes).await;
        assert_eq!(r.status(), StatusCode::CREATED);
    }
    app.push_image("dev/app", "v1", "first").await;
    app.push_image("dev/app", "v1", "second").await;
    // allow_delete = false: neither the tag nor its manifest may be deleted.
    let r = app.delete("/v2/prod/app/manifests/v1").await;
    let body = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("may not be deleted"), "{body}");
    let r = app.delete(&format!("/v2/prod/app/manifests/{}", first.digest)).await;
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(app.delete("/v2/prod/app/manifests/latest").await.status(), StatusCode::ACCEPTED);
    assert!(berth::metrics::Metrics::get().render().contains("berth_push_refusals_total{reason=\"immutable\"}"));
}

#[tokio::test]
async fn a_quota_refuses_the_blob_that_does_not_fit_and_counts_exactly() {
    let app = spawn_with(|s| {
        s.quota = vec![QuotaEntry { namespace: "team".into(), limit: ByteSize::Text("10KB".into()) }];
    })
    .await;
    let registry = app.registry();
    let usage = async || registry.usage().await.unwrap()[0].bytes;
    let (six, five) = (pattern(6_000), vec![7u8; 5_000]);
    app.push_blob("team/a", &six).await;
    // The same blob elsewhere in the namespace is counted once; outside it, not at all.
    app.push_blob("team/b", &six).await;
    app.push_blob("other/a", &five).await;
    assert_eq!(usage().await, 6_000);
    // One that does not fit is refused when it is linked, with usage and limit: monolithic,
    // chunked, or mounted from outside.
    let r = app.post_blob("team/a", &sha256(&five), &five).await;
    let body = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(
        body["errors"][0]["message"],
        "quota of namespace team exceeded: 6000 bytes used of 10000 bytes, and this blob has 5000 bytes"
    );
    let r = app.push_streamed("team/a", &pattern(4_001), 1000).await;
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    let mount = format!("/v2/team/a/blobs/uploads/?mount={}&from=other/a", sha256(&five));
    assert_error(app.request(Method::POST, &mount).send().await.unwrap(), StatusCode::FORBIDDEN, "DENIED").await;
    for d in [sha256(&five), sha256(&pattern(4_001))] {
        assert_eq!(app.head(&format!("/v2/team/a/blobs/{d}")).await.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(usage().await, 6_000);
    // What fits goes in; once full, an upload is refused as it starts.
    app.push_blob("team/c", &pattern(4_000)).await;
    assert_eq!(usage().await, 10_000);
    let r = app.request(Method::POST, "/v2/team/a/blobs/uploads/").send().await.unwrap();
    let body = assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(body["errors"][0]["message"], "quota of namespace team exceeded: 10000 bytes used of 10000 bytes");
    // Deleting frees the space once no repository under the namespace links the blob.
    let six_digest = sha256(&six);
    assert_eq!(app.delete(&format!("/v2/team/a/blobs/{six_digest}")).await.status(), StatusCode::ACCEPTED);
    assert_eq!(usage().await, 10_000);
    assert_eq!(app.delete(&format!("/v2/team/b/blobs/{six_digest}")).await.status(), StatusCode::ACCEPTED);
    assert_eq!(usage().await, 4_000);
    assert_eq!(registry.recount_usage("team").await.unwrap(), 4_000);
    app.push_blob("team/a", &five).await;
    assert_eq!(usage().await, 9_000);
    assert_eq!(registry.recount_usage("team").await.unwrap(), 9_000);
}

#[tokio::test]
async fn retention_removes_what_its_rules_do_not_keep_and_says_why() {
    let app = spawn_with(|s| {
        s.retention = vec![RetentionEntry {
            repositories: "ret/**".into(),
            keep_last: Some(1),
            keep_tags: Some("stable".into()),
            ..Default::default()
        }];
    })
    .await;
    let old = app.push_image("ret/app", "old", "old").await;
    let stable = app.push_image("ret/app", "stable", "stable").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let new = app.push_image("ret/app", "new", "new").await;
    let untouched = app.push_image("elsewhere/app", "old", "old").await;
    // A signature of the old image follows it.
    let signature = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": sha256(b"{}").as_str(), "size": 2},
        "layers": [{"mediaType": OCI_CONFIG, "digest": sha256(b"{}").as_str(), "size": 2}],
        "subject": {"mediaType": OCI_MANIFEST, "digest": old.digest.as_str(), "size": old.bytes.len()},
    });
    app.push_blob("ret/app", b"{}").await;
    let signature = serde_json::to_vec(&signature).unwrap();
    let r = app.put_manifest("ret/app", &sha256(&signature).to_string(), OCI_MANIFEST, &signature).await;
    assert_eq!(r.status(), StatusCode::CREATED);

    let registry = app.registry();
    let plan = registry.plan_retention(None).await.unwrap();
    let said: Vec<String> = plan.iter().map(|d| format!("{} {}", d.repository, d.what)).collect();
    assert_eq!(
        said,
        [
            "ret/app tag old".to_owned(),
            format!("ret/app manifest {}", old.digest),
            format!("ret/app manifest {}", sha256(&signature))
        ]
    );
    assert!(plan[0].reason.starts_with("[[retention]] entry 1 (repositories = \"ret/**\")"), "{:?}", plan[0]);
    assert!(plan[0].reason.contains("not among the last 1 pushed"), "{:?}", plan[0]);
    assert_eq!(plan[1].reason, "every tag of it removed by [[retention]] entry 1");
    // The dry run removed nothing.
    assert_eq!(app.get("/v2/ret/app/manifests/old").await.status(), StatusCode::OK);

    let options =
        RunOptions { grace: Duration::ZERO, untagged: None, retention: true, blobs: true, batch: 2, explain: true };
    let report = registry.collect_under_lease(&options, Duration::ZERO).await.unwrap();
    assert_eq!((report.tags, report.manifests), (1, 2), "{report:?}");
    // The old image's config and layer are elsewhere/app's too: only the signature's blob goes.
    assert_eq!(report.blobs, 1, "{report:?}");
    assert_eq!(report.decisions[2].reason, "a referrer of, or listed by, a manifest that goes");
    for gone in [old.digest.to_string(), sha256(&signature).to_string(), "old".into()] {
        let r = app.get(&format!("/v2/ret/app/manifests/{gone}")).await;
        assert_eq!(r.status(), StatusCode::NOT_FOUND, "{gone}");
    }
    for kept in [&stable, &new] {
        let r = app.get(&format!("/v2/ret/app/manifests/{}", kept.digest)).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = app.get(&format!("/v2/ret/app/blobs/{}", kept.layer_digest)).await;
        assert_eq!(sha256(&r.bytes().await.unwrap()), kept.layer_digest);
    }
    // The elsewhere repository follows no rule, and shares nothing with what went.
    let r = app.get(&format!("/v2/elsewhere/app/manifests/{}", untouched.digest)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let r = app.get(&format!("/v2/elsewhere/app/blobs/{}", untouched.layer_digest)).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), untouched.layer_digest);
}

/// Pull times reach the database on the flush, and keep a pulled tag.
#[tokio::test]
async fn a_recently_pulled_tag_is_kept() {
    let app = spawn_with(|s| {
        s.retention = vec![RetentionEntry {
            repositories: "pulled/**".into(),
            keep_pulled_within: Some("1h".into()),
            ..Default::default()
        }];
    })
    .await;
    let pulled = app.push_image("pulled/app", "pulled", "pulled").await;
    let by_digest = app.push_image("pulled/app", "by-digest", "by digest").await;
    app.push_image("pulled/app", "idle", "idle").await;
    assert_eq!(app.get("/v2/pulled/app/manifests/pulled").await.status(), StatusCode::OK);
    let r = app.head(&format!("/v2/pulled/app/manifests/{}", by_digest.digest)).await;
    assert_eq!(r.status(), StatusCode::OK);
    let registry = app.registry();
    let plan = registry.plan_retention(None).await.unwrap();
    assert_eq!(plan.iter().filter(|d| d.what.starts_with("tag")).count(), 3, "not flushed yet: {plan:?}");
    registry.flush_pulls().await;
    let plan = registry.plan_retention(None).await.unwrap();
    let tags: Vec<&str> = plan.iter().filter(|d| d.what.starts_with("tag")).map(|d| d.what.as_str()).collect();
    assert_eq!(tags, ["tag idle"], "{plan:?}");
    assert!(plan[0].reason.contains("not pulled within 1h"), "{plan:?}");
    let _ = pulled;
}

/// The collector in `berth serve`: runs every interval, removes what nothing references,
/// reports itself in the metrics and one log line per run.
#[tokio::test]
async fn serve_collects_on_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{port}");
    let log = std::fs::File::create(dir.path().join("berth.log")).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .arg("serve")
        .env("BERTH_LISTEN", &listen)
        .env("BERTH_DATA_DIR", dir.path())
        .env("BERTH_GC_INTERVAL", "1")
        .env("BERTH_GC_GRACE", "2")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let app = attach(KillOnDrop(child), Settings { listen, ..Settings::default() }, dir).await;
    let image = app.push_image("gc/app", "v1", "serve").await;
    let loose = app.push_blob("gc/app", b"linked, never referenced").await;
    assert_eq!(app.delete(&format!("/v2/gc/app/manifests/{}", image.digest)).await.status(), StatusCode::ACCEPTED);
    let metric = async |name: &str| -> f64 {
        let text = app.get("/metrics").await.text().await.unwrap();
        text.lines().find_map(|l| l.strip_prefix(name)?.trim().parse().ok()).unwrap_or(0.0)
    };
    for _ in 0..150 {
        if metric("berth_gc_removed_blobs_total").await >= 3.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(metric("berth_gc_removed_blobs_total").await, 3.0);
    for blob in [&image.layer_digest, &loose] {
        assert_eq!(app.head(&format!("/v2/gc/app/blobs/{blob}")).await.status(), StatusCode::NOT_FOUND);
    }
    assert!(metric("berth_gc_runs_total{result=\"ok\"}").await >= 1.0);
    assert!(metric("berth_gc_last_success_timestamp_seconds").await > 1.7e9);
    assert!(metric("berth_gc_removed_bytes_total").await > 0.0);
    assert!(metric("berth_gc_duration_seconds_count").await >= 1.0);
    let logged = std::fs::read_to_string(app.dir.path().join("berth.log")).unwrap();
    let line = logged.lines().find(|l| l.contains("collection run finished") && !l.contains("blobs=0")).unwrap();
    for field in ["tags=0", "manifests=0", "blobs=", "bytes=", "seconds=", "longest_transaction_ms="] {
        assert!(line.contains(field), "{line}");
    }
}
