//! Tags, catalog and referrers.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::*;

#[tokio::test]
async fn tags_are_sorted_asciibetically_and_paginated() {
    let app = spawn_app().await;
    let image = app.push_image("a", "b", "x").await;
    for tag in ["a", "B", "c", "A", "_z", "10", "9"] {
        assert_eq!(app.put_manifest("a", tag, OCI_MANIFEST, &image.bytes).await.status(), StatusCode::CREATED);
    }
    let all: Value = app.get("/v2/a/tags/list").await.json().await.unwrap();
    assert_eq!(all, json!({"name": "a", "tags": ["10", "9", "A", "B", "_z", "a", "b", "c"]}));

    let r = app.get("/v2/a/tags/list?n=3").await;
    assert_eq!(header(&r, "link"), Some("</v2/a/tags/list?n=3&last=A>; rel=\"next\""));
    let page: Value = r.json().await.unwrap();
    assert_eq!(page["tags"], json!(["10", "9", "A"]));
    let r = app.get("/v2/a/tags/list?n=3&last=A").await;
    assert!(header(&r, "link").is_some());
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["B", "_z", "a"]));
    let r = app.get("/v2/a/tags/list?n=3&last=a").await;
    assert_eq!(header(&r, "link"), None, "the last page has no Link");
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["b", "c"]));
    let r = app.get("/v2/a/tags/list?last=b").await;
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["c"]));
    let r = app.get("/v2/a/tags/list?n=0").await;
    assert_eq!(header(&r, "link"), None);
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!([]));
    let r = app.get("/v2/a/tags/list?n=8").await;
    assert_eq!(header(&r, "link"), None, "exactly n tags left: no next page");
}

#[tokio::test]
async fn tags_of_unknown_repositories_and_bad_pagination() {
    let app = spawn_app().await;
    assert_error(app.get("/v2/nope/tags/list").await, StatusCode::NOT_FOUND, "NAME_UNKNOWN").await;
    app.push_blob("blobs/only", b"x").await;
    let r: Value = app.get("/v2/blobs/only/tags/list").await.json().await.unwrap();
    assert_eq!(r["tags"], json!([]));
    for bad in ["n=-1", "n=abc", "n=1.5"] {
        assert_error(app.get(&format!("/v2/blobs/only/tags/list?{bad}")).await, StatusCode::BAD_REQUEST, "UNSUPPORTED")
            .await;
    }
}

#[tokio::test]
async fn catalog_lists_repositories_with_pagination() {
    let app = spawn_app().await;
    for repo in ["b", "a/x", "c", "a"] {
        app.push_blob(repo, b"x").await;
    }
    let all: Value = app.get("/v2/_catalog").await.json().await.unwrap();
    assert_eq!(all, json!({"repositories": ["a", "a/x", "b", "c"]}));
    let r = app.get("/v2/_catalog?n=2").await;
    assert_eq!(header(&r, "link"), Some("</v2/_catalog?n=2&last=a%2Fx>; rel=\"next\""));
    assert_eq!(r.json::<Value>().await.unwrap()["repositories"], json!(["a", "a/x"]));
    let r: Value = app.get("/v2/_catalog?n=2&last=a%2Fx").await.json().await.unwrap();
    assert_eq!(r["repositories"], json!(["b", "c"]));
}

#[tokio::test]
async fn referrers_list_manifests_with_a_subject() {
    let app = spawn_app().await;
    let image = app.push_image("a", "v1", "subject").await;
    let empty: Value = {
        let r = app.get(&format!("/v2/a/referrers/{}", image.digest)).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "content-type"), Some(OCI_INDEX));
        r.json().await.unwrap()
    };
    assert_eq!(empty, json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}));

    let config = app.push_blob("a", b"{}").await;
    let subject = json!({"mediaType": OCI_MANIFEST, "digest": image.digest.as_str(), "size": image.bytes.len()});
    let sbom = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.example.sbom",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config.as_str(), "size": 2},
        "layers": [], "subject": subject, "annotations": {"org.example.kind": "sbom"},
    });
    let signature = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.example.signature.config", "digest": config.as_str(), "size": 2},
        "layers": [], "subject": subject,
    });
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [], "subject": subject});
    let mut pushed = Vec::new();
    for (manifest, media_type) in [(&sbom, OCI_MANIFEST), (&signature, OCI_MANIFEST), (&index, OCI_INDEX)] {
        let bytes = serde_json::to_vec(manifest).unwrap();
        let digest = sha256(&bytes);
        let r = app.put_manifest("a", digest.as_str(), media_type, &bytes).await;
        assert_eq!(r.status(), StatusCode::CREATED);
        assert_eq!(header(&r, "oci-subject"), Some(image.digest.as_str()));
        pushed.push((digest, bytes.len()));
    }
    let r = app.get(&format!("/v2/a/referrers/{}", image.digest)).await;
    assert_eq!(header(&r, "oci-filters-applied"), None);
    let list: Value = r.json().await.unwrap();
    let manifests = list["manifests"].as_array().unwrap();
    assert_eq!(manifests.len(), 3);
    let find =
        |digest: &berth::oci::Digest| manifests.iter().find(|m| m["digest"] == json!(digest.as_str())).unwrap().clone();
    assert_eq!(
        find(&pushed[0].0),
        json!({"mediaType": OCI_MANIFEST, "digest": pushed[0].0.as_str(), "size": pushed[0].1,
               "artifactType": "application/vnd.example.sbom", "annotations": {"org.example.kind": "sbom"}})
    );
    assert_eq!(find(&pushed[1].0)["artifactType"], json!("application/vnd.example.signature.config"));
    assert_eq!(find(&pushed[2].0).get("artifactType"), None, "an index without artifactType has none");

    let r = app.get(&format!("/v2/a/referrers/{}?artifactType=application/vnd.example.sbom", image.digest)).await;
    assert_eq!(header(&r, "oci-filters-applied"), Some("artifactType"));
    let filtered: Value = r.json().await.unwrap();
    assert_eq!(filtered["manifests"].as_array().unwrap().len(), 1);

    // Referrers live in their repository.
    let elsewhere: Value = app.get(&format!("/v2/b/referrers/{}", image.digest)).await.json().await.unwrap();
    assert_eq!(elsewhere["manifests"], json!([]));
    assert_error(app.get("/v2/a/referrers/sha256:nope").await, StatusCode::BAD_REQUEST, "DIGEST_INVALID").await;
}
