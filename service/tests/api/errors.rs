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

/// Random garbage in every part of a request: never a 5xx, and nothing stored changes.
#[tokio::test]
async fn no_input_gets_a_server_error() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let app = spawn_app().await;
    let image = app.push_image("keep/this", "stable", "fuzz").await;
    let upload = app.start_upload("a/b").await;
    let mut rng = StdRng::seed_from_u64(0xB3E7);
    let digest = sha256(b"x").to_string();
    let names = ["a/b", "keep/this", "A", "a..b", "a//b", "-", "%00", "a%2Fb", "ü", &"x".repeat(300)];
    let references = ["latest", "v1", &digest, "sha256:", "sha512:abc", ":", "..", "%20", &"t".repeat(200)];
    let ids = ["00000000-0000-0000-0000-000000000000", "..", "%2E%2E", "x", upload.rsplit('/').next().unwrap()];
    let values = [
        "",
        "0",
        "-1",
        "1-0",
        "0-",
        "bytes=0-1",
        "bytes=-",
        "99999999999999999999-1",
        "a",
        "0-18446744073709551615",
        "bytes=0-1,2-3",
        "*/*",
    ];
    let bodies: [&[u8]; 8] = [
        b"",
        b"{}",
        b"null",
        b"{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.index.v1+json\",\"manifests\":[{}]}",
        b"{\"schemaVersion\":2,\"config\":{\"digest\":\"sha256:00\",\"size\":1e309},\"layers\":null}",
        b"{\"schemaVersion\":2,\"manifests\":[],\"subject\":{\"mediaType\":\"x\",\"digest\":\"sha256:zz\",\"size\":1}}",
        &[0xff, 0xfe, 0x00, 0x01],
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[",
    ];
    let methods =
        [Method::GET, Method::HEAD, Method::PUT, Method::POST, Method::PATCH, Method::DELETE, Method::OPTIONS];
    for round in 0..1500 {
        let name = names[rng.random_range(0..names.len())];
        let pick = |rng: &mut StdRng, list: &[&str]| list[rng.random_range(0..list.len())].to_owned();
        let path = match rng.random_range(0..8) {
            0 => format!(
                "/v2/{name}/blobs/uploads/?digest={}&mount={}&from={}&digest-algorithm={}",
                pick(&mut rng, &references),
                pick(&mut rng, &references),
                pick(&mut rng, &names),
                pick(&mut rng, &values)
            ),
            1 => format!("/v2/{name}/blobs/uploads/{}?digest={}", pick(&mut rng, &ids), pick(&mut rng, &references)),
            2 => format!("/v2/{name}/blobs/{}", pick(&mut rng, &references)),
            3 => format!(
                "/v2/{name}/manifests/{}?tag={}&tag={}",
                pick(&mut rng, &references),
                pick(&mut rng, &references),
                pick(&mut rng, &values)
            ),
            4 => format!("/v2/{name}/tags/list?n={}&last={}", pick(&mut rng, &values), pick(&mut rng, &references)),
            5 => {
                format!("/v2/{name}/referrers/{}?artifactType={}", pick(&mut rng, &references), pick(&mut rng, &values))
            }
            6 => format!("/v2/_catalog?n={}&last={}", pick(&mut rng, &values), pick(&mut rng, &names)),
            _ => format!("/v2/{name}/{}", pick(&mut rng, &values)),
        };
        let method = methods[rng.random_range(0..methods.len())].clone();
        let mut request = app.request(method.clone(), &path);
        for header in ["Content-Range", "Range", "Content-Type"] {
            if rng.random_bool(0.5) {
                request = request.header(header, pick(&mut rng, &values));
            }
        }
        let body = bodies[rng.random_range(0..bodies.len())];
        let r = request.body(body.to_vec()).send().await.unwrap();
        assert!(r.status().as_u16() < 500, "round {round}: {method} {path} gave {}", r.status());
        if r.status() == StatusCode::ACCEPTED && method == Method::DELETE {
            // A random delete may only have hit something this test did not keep.
            assert!(!path.contains("keep/this/manifests/stable"), "{path}");
        }
    }
    assert_eq!(app.get("/v2/").await.status(), StatusCode::OK);
    assert_eq!(app.get("/v2/keep/this/manifests/stable").await.bytes().await.unwrap(), image.bytes);
    let r = app.get(&format!("/v2/keep/this/blobs/{}", image.layer_digest)).await;
    assert_eq!(sha256(&r.bytes().await.unwrap()), image.layer_digest);
}
