//! A full disk on the embedded default: clear answers, nothing lost, and the registry recovers
//! by itself once space is freed. The real binary runs on a small tmpfs of its own, mounted in
//! a user and mount namespace (`unshare`), so the test needs no privileges.

use std::process::{Command, Stdio};

use berth::config::Settings;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::helpers::*;

/// `berth serve` with its data directory on a tmpfs of `mib` MiB.
async fn on_small_disk(mib: u32) -> TestApp {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let settings = Settings { listen: format!("127.0.0.1:{port}"), data_dir: data.clone(), ..Settings::default() };
    let log = std::fs::File::create(dir.path().join("berth.log")).unwrap();
    let child = Command::new("unshare")
        .args(["--user", "--map-root-user", "--mount", "sh", "-c"])
        .arg(format!(r#"mount -t tmpfs -o size={mib}m tmpfs "$1" && exec "$2" serve"#))
        .arg("sh")
        .arg(&data)
        .arg(env!("CARGO_BIN_EXE_berth"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("BERTH_LISTEN", &settings.listen)
        .env("BERTH_DATA_DIR", &data)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("unshare (util-linux) runs");
    attach(KillOnDrop(child), settings, dir).await
}

/// PATCHes `len` bytes at `offset`; returns the status.
async fn patch_at(app: &TestApp, location: &str, offset: u64, len: usize) -> StatusCode {
    app.request(Method::PATCH, location)
        .header("Content-Type", "application/octet-stream")
        .header("Content-Range", format!("{offset}-{}", offset + len as u64 - 1))
        .body(pattern(len))
        .send()
        .await
        .expect("PATCH")
        .status()
}

#[tokio::test]
async fn a_full_disk_gets_507_loses_nothing_and_recovers() {
    let app = on_small_disk(16).await;
    let image = app.push_image("full/app", "v1", "stored before the disk filled").await;

    // A blob bigger than the disk, in one streamed PATCH: refused with a clear error, the
    // upload stays where it was, and the space its bytes took is given back at once.
    let location = app.start_upload("full/big").await;
    let big = pattern(24 << 20);
    let r = app.patch_streamed(&location, None, big.chunks(1 << 20).map(<[u8]>::to_vec).collect()).await;
    let body = assert_error(r, StatusCode::INSUFFICIENT_STORAGE, "UNAVAILABLE").await;
    assert!(body.to_string().contains("storage is full"), "{body}");
    let r = app.get(&location).await;
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&r, "range"), Some("0-0"));
    let ten_mib: Vec<u8> = pattern(10 << 20).into_iter().map(|b| b ^ 0x5a).collect();
    let kept = app.push_blob("full/big", &ten_mib).await;

    // Fill what is left with an upload's chunks, ever smaller, until not one page fits.
    let layer = app.push_blob("full/app", b"").await;
    let filler = app.start_upload("full/filler").await;
    let mut offset = 0u64;
    for chunk in [1 << 20, 64 << 10, 4 << 10] {
        loop {
            match patch_at(&app, &filler, offset, chunk).await {
                StatusCode::ACCEPTED => offset += chunk as u64,
                StatusCode::INSUFFICIENT_STORAGE => break,
                other => panic!("PATCH of {chunk} bytes at {offset} got {other}"),
            }
        }
    }
    assert!(offset > 0, "the filler stored nothing");

    // The database cannot grow either: a manifest push is refused the same way.
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": image.manifest["config"],
        "layers": [{"mediaType": OCI_LAYER, "digest": layer.as_str(), "size": 0}],
        "annotations": {"padding": "x".repeat(1 << 20)},
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let r = app.put_manifest("full/app", "v2", OCI_MANIFEST, &bytes).await;
    assert_error(r, StatusCode::INSUFFICIENT_STORAGE, "UNAVAILABLE").await;

    // Space freed (the filler cancelled): pushes work again, without a restart.
    assert_eq!(app.delete(&filler).await.status(), StatusCode::NO_CONTENT);
    let r = app.put_manifest("full/app", "v2", OCI_MANIFEST, &bytes).await;
    assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap_or_default());
    assert_eq!(app.get("/v2/full/app/manifests/v2").await.bytes().await.unwrap(), bytes);

    // Nothing stored before or between was lost.
    assert_eq!(app.get("/v2/full/app/manifests/v1").await.bytes().await.unwrap(), image.bytes);
    let r = app.get(&format!("/v2/full/app/blobs/{}", image.layer_digest)).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), image.layer_digest);
    let r = app.get(&format!("/v2/full/big/blobs/{kept}")).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), kept);
}
