//! Names, unknown endpoints and the error format.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::*;

#[tokio::test]
async fn the_version_check_answers_200() {
    let app = spawn_app().await;
    for path in ["/v2/", "/v2"] {
        let r = app.get(path).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(header(&r, "docker-distribution-api-version"), Some("registry/2.0"));
    }
}

#[tokio::test]
async fn invalid_repository_names_get_name_invalid() {
    let app = spawn_app().await;
    let long = "a".repeat(256);
    let names = ["Upper", "a..b", "-a", "a_", "a%20b", long.as_str()];
    for name in names {
        for (method, suffix) in [
            (Method::GET, "tags/list".to_owned()),
            (Method::GET, "manifests/latest".to_owned()),
            (Method::PUT, "manifests/latest".to_owned()),
            (Method::POST, "blobs/uploads/".to_owned()),
            (Method::HEAD, format!("blobs/{}", sha256(b"x"))),
        ] {
            let r = app.request(method.clone(), &format!("/v2/{name}/{suffix}")).send().await.unwrap();
            assert_eq!(r.status(), StatusCode::BAD_REQUEST, "{method} {name}/{suffix}");
            if method != Method::HEAD {
                assert_error(r, StatusCode::BAD_REQUEST, "NAME_INVALID").await;
            }
        }
    }
    // Dot segments and a leading slash, sent as they are (HTTP clients would normalise them).
    for path in ["/v2/a/../b/tags/list", "/v2/a/./b/tags/list", "/v2/../a/tags/list", "/v2//a/tags/list"] {
        let answer =
            raw_request(&app, &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"), b"", false)
                .await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{path}: {answer}");
        assert!(answer.contains("NAME_INVALID"), "{path}: {answer}");
    }
    // 255 characters is the limit, not an error.
    let longest = "a".repeat(255);
    assert_eq!(
        app.request(Method::POST, &format!("/v2/{longest}/blobs/uploads/")).send().await.unwrap().status(),
        StatusCode::ACCEPTED
    );
}

#[tokio::test]
async fn unknown_endpoints_and_methods_get_json_errors() {
    let app = spawn_app().await;
    let r = app.get("/v2/a/nonsense").await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert!(body["errors"][0]["code"].is_string());
    assert_error(
        app.request(Method::PATCH, "/v2/a/manifests/x").send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
    )
    .await;
    assert_error(
        app.request(Method::POST, "/v2/a/tags/list").send().await.unwrap(),
        StatusCode::METHOD_NOT_ALLOWED,
        "UNSUPPORTED",
    )
    .await;
}

#[tokio::test]
async fn errors_have_the_oci_shape() {
    let app = spawn_app().await;
    let r = app.get(&format!("/v2/a/blobs/{}", sha256(b"x"))).await;
    assert_eq!(header(&r, "content-type"), Some("application/json"));
    let body: Value = r.json().await.unwrap();
    let error = &body["errors"][0];
    assert_eq!(error["code"], "BLOB_UNKNOWN");
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
}
