//! `berth gc` run as an operator runs it: the real binary, against the data directory of a
//! registry that keeps serving.

use std::path::Path;

use reqwest::StatusCode;

use crate::helpers::*;

/// Runs `berth gc` on the embedded default in `data_dir`; returns what it printed.
fn berth_gc(data_dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .env_clear()
        .arg("gc")
        .arg("--data-dir")
        .arg(data_dir)
        .args(args)
        .output()
        .expect("berth gc runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "berth gc failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Files under the filesystem store's committed blobs.
fn stored_blobs(data_dir: &Path) -> usize {
    fn count(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map_or(0, |entries| entries.flatten().map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 }).sum())
    }
    count(&data_dir.join("blobs"))
}

#[tokio::test]
async fn gc_removes_what_no_manifest_references_and_keeps_the_rest() {
    let app = spawn_app().await;
    let dir = app.dir.path();
    let shared_a = app.push_image("gc/a", "v1", "shared").await;
    app.push_image("gc/b", "v1", "shared").await;
    let alone = app.push_image("gc/c", "v1", "alone").await;
    let loose = app.push_blob("gc/c", b"a layer whose manifest never came").await;
    assert_eq!(stored_blobs(dir), 5);

    // Nothing is older than the default grace time of a day.
    assert_eq!(app.delete(&format!("/v2/gc/c/manifests/{}", alone.digest)).await.status(), StatusCode::ACCEPTED);
    let out = berth_gc(dir, &[]);
    assert!(out.contains("removed 0 unreferenced blob(s)"), "{out}");
    assert_eq!(stored_blobs(dir), 5);

    // A dry run names what would go and removes nothing.
    let out = berth_gc(dir, &["--grace", "0s", "--dry-run"]);
    assert!(out.contains("would remove 3 unreferenced blob(s)"), "{out}");
    assert_eq!(stored_blobs(dir), 5);

    // The deleted image's config and layer and the loose blob go; the layers that the image in
    // gc/b still references stay, in gc/a too, although gc/a's manifest is gone as well.
    assert_eq!(app.delete(&format!("/v2/gc/a/manifests/{}", shared_a.digest)).await.status(), StatusCode::ACCEPTED);
    let out = berth_gc(dir, &["--grace", "0s"]);
    assert!(out.contains("removed 3 unreferenced blob(s)"), "{out}");
    assert_eq!(stored_blobs(dir), 2);
    for (repo, digest) in [("gc/c", &alone.layer_digest), ("gc/c", &loose)] {
        let r = app.get(&format!("/v2/{repo}/blobs/{digest}")).await;
        assert_error(r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN").await;
    }
    for repo in ["gc/a", "gc/b"] {
        let r = app.get(&format!("/v2/{repo}/blobs/{}", shared_a.layer_digest)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(sha256(&r.bytes().await.unwrap()), shared_a.layer_digest);
    }
    assert_eq!(app.get("/v2/gc/b/manifests/v1").await.status(), StatusCode::OK);

    // What was removed can be pushed again, and is whole.
    let again = app.push_image("gc/c", "v2", "alone").await;
    assert_eq!(again.layer_digest, alone.layer_digest);
    let r = app.get(&format!("/v2/gc/c/blobs/{}", again.layer_digest)).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), again.layer_digest);
    assert_eq!(stored_blobs(dir), 4);
}

#[tokio::test]
async fn gc_untagged_removes_the_manifests_no_tag_keeps_and_then_their_blobs() {
    let app = spawn_app().await;
    let dir = app.dir.path();
    let old = app.push_image("gc/app", "latest", "yesterday's build").await;
    let current = app.push_image("gc/app", "latest", "today's build").await;
    assert_eq!(stored_blobs(dir), 4);

    // Without --untagged, an untagged manifest stays, and so do its blobs.
    let out = berth_gc(dir, &["--grace", "0s"]);
    assert!(out.contains("removed 0 unreferenced blob(s)") && !out.contains("manifest"), "{out}");
    let old_path = format!("/v2/gc/app/manifests/{}", old.digest);
    assert_eq!(app.get(&old_path).await.status(), StatusCode::OK);

    let out = berth_gc(dir, &["--grace", "0s", "--untagged", "--dry-run"]);
    assert!(out.contains("would remove 1 untagged manifest(s)"), "{out}");
    assert_eq!(app.get(&old_path).await.status(), StatusCode::OK);

    // With it, the manifest the tag moved away from goes, then its config and layer.
    let out = berth_gc(dir, &["--grace", "0s", "--untagged"]);
    assert!(out.contains("removed 1 untagged manifest(s)") && out.contains("removed 2 unreferenced blob(s)"), "{out}");
    assert_error(app.get(&old_path).await, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN").await;
    assert_eq!(stored_blobs(dir), 2);
    assert_eq!(app.get("/v2/gc/app/manifests/latest").await.bytes().await.unwrap(), current.bytes);
    let r = app.get(&format!("/v2/gc/app/blobs/{}", current.layer_digest)).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), current.layer_digest);
}

/// A blob's record can outlive its bytes: an upload commits them at their content-addressed
/// place just before a collection deletes the previous blob there, and records the blob just
/// after. Berth must never take such a record for a stored blob: neither a push of the same
/// bytes (which stores them again) nor a mount (which becomes an upload) answers 201 on it.
#[tokio::test]
async fn a_blob_record_that_lost_its_bytes_is_never_taken_for_stored() {
    let app = spawn_app().await;
    let bytes = b"a layer whose bytes went";
    let digest = app.push_blob("lost/a", bytes).await;
    let encoded = digest.as_str().trim_start_matches("sha256:");
    let place = app.dir.path().join("blobs/sha256").join(&encoded[..2]).join(encoded);
    std::fs::remove_file(&place).unwrap();

    // A mount from a repository whose record lost its bytes starts an upload instead.
    let r = app
        .request(reqwest::Method::POST, &format!("/v2/lost/b/blobs/uploads/?mount={digest}&from=lost/a"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    assert_eq!(app.head(&format!("/v2/lost/b/blobs/{digest}")).await.status(), StatusCode::NOT_FOUND);

    // Pushing the bytes again stores them again, and the blob reads back whole.
    assert_eq!(app.post_blob("lost/c", &digest, bytes).await.status(), StatusCode::CREATED);
    assert!(place.exists());
    let r = app.get(&format!("/v2/lost/c/blobs/{digest}")).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap(), &bytes[..]);
}
