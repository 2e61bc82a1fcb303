//! Authentication and authorisation: Basic and token modes, access rules, every way in that
//! must stay shut, and brute-force limits.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use berth::config::{AuthMode, Settings};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::*;

const RULES: &str = r#"
[[rules]]
users = ["alice"]
repositories = ["**"]
actions = ["*"]
catalog = true

[[rules]]
users = ["bob"]
repositories = ["team/**"]
actions = ["pull"]

[[rules]]
users = ["carol"]
repositories = ["carol/**"]
actions = ["pull", "push", "delete"]

[[rules]]
users = ["anonymous"]
repositories = ["public/**"]
actions = ["pull"]
"#;

/// Writes the users and rules into `dir` and points the settings at them.
fn secure(settings: &mut Settings, dir: &Path, mode: AuthMode) {
    let htpasswd = dir.join("htpasswd");
    berth::auth::htpasswd::add_user(&htpasswd, "alice", "alice-password").unwrap();
    berth::auth::htpasswd::add_user(&htpasswd, "bob", "bob-password").unwrap();
    berth::auth::htpasswd::add_user(&htpasswd, "carol", "carol-password").unwrap();
    std::fs::write(dir.join("access.toml"), RULES).unwrap();
    settings.auth = mode;
    settings.htpasswd = Some(htpasswd);
    settings.access = Some(dir.join("access.toml"));
    settings.service = "registry.test".into();
    settings.external_url = Some("https://registry.test".into());
    settings.login_max_failures = 5;
    settings.login_failure_window = 2;
}

pub(crate) async fn secured(mode: AuthMode) -> (TestApp, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    (spawn_with(|s| secure(s, &path, mode)).await, dir)
}

pub(crate) fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// A token from the token endpoint.
pub(crate) async fn token(app: &TestApp, credentials: Option<(&str, &str)>, scopes: &[&str]) -> String {
    let query: Vec<(&str, &str)> =
        std::iter::once(("service", "registry.test")).chain(scopes.iter().map(|s| ("scope", *s))).collect();
    let mut request = app.request(Method::GET, "/token").query(&query);
    if let Some((user, password)) = credentials {
        request = request.header("Authorization", basic(user, password));
    }
    let r = request.send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK, "{}", r.text().await.unwrap());
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["token"], body["access_token"]);
    assert!(body["expires_in"].as_u64().unwrap() >= 60);
    body["token"].as_str().unwrap().to_owned()
}

pub(crate) fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The repository content the attacks must leave alone.
pub(crate) async fn fixture(app: &TestApp, authorization: &str) -> Image {
    // Push as alice with whatever credentials the mode wants, through the helpers' client.
    let r = app
        .request(Method::POST, "/v2/team/app/blobs/uploads/?digest=sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a")
        .header("Authorization", authorization)
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let manifest = json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a", "size": 2},
        "layers": [],
    });
    let bytes = serde_json::to_vec(&manifest).unwrap();
    let r = app
        .request(Method::PUT, "/v2/team/app/manifests/v1")
        .header("Authorization", authorization)
        .header("Content-Type", OCI_MANIFEST)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    Image { digest: sha256(&bytes), bytes, manifest, layer_digest: sha256(b"{}") }
}

pub(crate) async fn status(
    app: &TestApp,
    method: Method,
    path: &str,
    authorization: Option<&str>,
) -> reqwest::Response {
    let mut request = app.request(method, path);
    if let Some(a) = authorization {
        request = request.header("Authorization", a);
    }
    request.send().await.unwrap()
}

/// The OAuth2 side of the token endpoint: a POST with the grant in a form.
async fn oauth_token(app: &TestApp, form: &[(&str, &str)]) -> reqwest::Response {
    app.request(Method::POST, "/token").form(form).send().await.unwrap()
}

#[tokio::test]
async fn basic_mode_asks_checks_and_applies_the_rules() {
    let (app, _dir) = secured(AuthMode::Basic).await;
    let alice = basic("alice", "alice-password");
    let image = fixture(&app, &alice).await;
    let r = status(&app, Method::GET, "/v2/", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&r, "www-authenticate"), Some("Basic realm=\"registry.test\""));
    assert_error(r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED").await;
    assert_eq!(status(&app, Method::GET, "/v2/", Some(&alice)).await.status(), StatusCode::OK);
    for wrong in [basic("alice", "nope"), basic("mallory", "alice-password"), "Basic garbage".into(), "Bearer x".into()]
    {
        assert_eq!(
            status(&app, Method::GET, "/v2/team/app/manifests/v1", Some(&wrong)).await.status(),
            StatusCode::UNAUTHORIZED
        );
    }
    let bob = basic("bob", "bob-password");
    assert_eq!(status(&app, Method::GET, "/v2/team/app/manifests/v1", Some(&bob)).await.status(), StatusCode::OK);
    let r = app
        .request(Method::PUT, "/v2/team/app/manifests/v2")
        .header("Authorization", &bob)
        .body(image.bytes.clone())
        .send()
        .await
        .unwrap();
    assert_error(r, StatusCode::FORBIDDEN, "DENIED").await;
    assert_error(
        status(&app, Method::DELETE, "/v2/team/app/manifests/v1", Some(&bob)).await,
        StatusCode::FORBIDDEN,
        "DENIED",
    )
    .await;
    assert_error(status(&app, Method::GET, "/v2/_catalog", Some(&bob)).await, StatusCode::FORBIDDEN, "DENIED").await;
    assert_eq!(status(&app, Method::GET, "/v2/_catalog", Some(&alice)).await.status(), StatusCode::OK);
    // Anonymous users may pull public repositories, nothing else.
    assert_eq!(status(&app, Method::GET, "/v2/public/x/tags/list", None).await.status(), StatusCode::NOT_FOUND);
    assert_eq!(status(&app, Method::GET, "/v2/team/app/tags/list", None).await.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        status(&app, Method::GET, "/v2/team/app/manifests/v1", Some(&alice)).await.bytes().await.unwrap(),
        image.bytes
    );
    assert_eq!(
        status(&app, Method::GET, "/v2/team/app/tags/list", Some(&alice)).await.json::<Value>().await.unwrap()["tags"],
        json!(["v1"])
    );
}

#[tokio::test]
async fn failed_logins_are_limited_and_the_limit_ends() {
    let (app, _dir) = secured(AuthMode::Token).await;
    for _ in 0..5 {
        let r = status(&app, Method::GET, "/token?service=registry.test", Some(&basic("alice", "guess"))).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    // Even the right password is refused now, from this address.
    let r = status(&app, Method::GET, "/token?service=registry.test", Some(&basic("alice", "alice-password"))).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&r, "retry-after").is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
    assert_error(r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS").await;
    let r = oauth_token(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "alice"),
            ("password", "alice-password"),
            ("service", "registry.test"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    token(&app, Some(("alice", "alice-password")), &[]).await;
}

#[tokio::test]
async fn token_mode_challenges_issues_and_accepts() {
    let (app, _dir) = secured(AuthMode::Token).await;
    let r = status(&app, Method::GET, "/v2/", None).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        header(&r, "www-authenticate"),
        Some("Bearer realm=\"https://registry.test/token\",service=\"registry.test\"")
    );
    let r = status(&app, Method::PUT, "/v2/team/app/manifests/v1", None).await;
    assert_eq!(
        header(&r, "www-authenticate"),
        Some(
            "Bearer realm=\"https://registry.test/token\",service=\"registry.test\",scope=\"repository:team/app:pull,push\""
        )
    );
    let push = token(&app, Some(("alice", "alice-password")), &["repository:team/app:pull,push"]).await;
    let image = fixture(&app, &bearer(&push)).await;
    assert_eq!(status(&app, Method::GET, "/v2/", Some(&bearer(&push))).await.status(), StatusCode::OK);
    // The OAuth2 password grant, then a refresh.
    let r = oauth_token(
        &app,
        &[
            ("grant_type", "password"),
            ("username", "bob"),
            ("password", "bob-password"),
            ("service", "registry.test"),
            ("client_id", "test"),
            ("access_type", "offline"),
            ("scope", "repository:team/app:pull,push"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["scope"], "repository:team/app:pull", "bob gets only what the rules allow");
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    let pulled =
        status(&app, Method::GET, "/v2/team/app/manifests/v1", Some(&bearer(body["access_token"].as_str().unwrap())))
            .await;
    assert_eq!(pulled.bytes().await.unwrap(), image.bytes);
    let r = oauth_token(
        &app,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh.as_str()),
            ("service", "registry.test"),
            ("scope", "repository:team/app:pull"),
        ],
    )
    .await;
    assert_eq!(r.status(), StatusCode::OK);
    let refreshed: Value = r.json().await.unwrap();
    assert_eq!(refreshed["scope"], "repository:team/app:pull");
    // A refresh token is no access token.
    assert_eq!(
        status(&app, Method::GET, "/v2/team/app/manifests/v1", Some(&bearer(&refresh))).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Anonymous tokens carry what anonymous users may do.
    let anonymous = token(&app, None, &["repository:public/x:pull", "repository:team/app:pull"]).await;
    let claims = claims_of(&anonymous);
    assert_eq!(
        claims["access"],
        json!([
            {"type": "repository", "name": "public/x", "actions": ["pull"]},
            {"type": "repository", "name": "team/app", "actions": []},
        ])
    );
    // The JWKS names the key that signs.
    let jwks: Value = app.get("/token/jwks.json").await.json().await.unwrap();
    let kid = jsonwebtoken::decode_header(&push).unwrap().kid.unwrap();
    assert_eq!(jwks["keys"][0]["kid"], json!(kid));
    assert_eq!(jwks["keys"][0]["alg"], "ES256");
    assert!(jwks["keys"][0].get("d").is_none(), "no private part");
}

pub(crate) fn claims_of(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// Claims as Berth would issue them for alice, to be tampered with.
fn good_claims(access: Value) -> Value {
    json!({"iss": "berth", "sub": "alice", "aud": "registry.test", "exp": now() + 300, "nbf": now() - 5, "iat": now(), "jti": "x", "access": access})
}

fn sign(key_pem: &[u8], kid: &str, claims: &Value) -> String {
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_ec_pem(key_pem).unwrap()).unwrap()
}

/// Every forged or misused token the issue lists, each refused with nothing changed.
#[tokio::test]
async fn forged_and_misused_tokens_are_refused() {
    let (app, dir) = secured(AuthMode::Token).await;
    let alice_push = token(&app, Some(("alice", "alice-password")), &["repository:team/app:pull,push"]).await;
    let image = fixture(&app, &bearer(&alice_push)).await;
    let key: PathBuf = app.settings.data_dir.join("token-key.pem");
    let key_pem = std::fs::read(&key).unwrap();
    let kid = jsonwebtoken::decode_header(&alice_push).unwrap().kid.unwrap();
    let pull_a = json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}]);
    let all_a = json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push", "delete"]}]);

    let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap());
    let alg_none =
        format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT", "kid": kid})), b64(&good_claims(all_a.clone())));
    let public_jwk: Value = app.get("/token/jwks.json").await.json().await.unwrap();
    let hs256_with_public_key = {
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(kid.clone());
        let secret = serde_json::to_vec(&public_jwk["keys"][0]).unwrap();
        jsonwebtoken::encode(&header, &good_claims(all_a.clone()), &EncodingKey::from_secret(&secret)).unwrap()
    };
    let mut expired = good_claims(all_a.clone());
    expired["exp"] = json!(now() - 120);
    let mut early = good_claims(all_a.clone());
    early["nbf"] = json!(now() + 600);
    let mut other_audience = good_claims(all_a.clone());
    other_audience["aud"] = json!("another.registry");
    let mut other_issuer = good_claims(all_a.clone());
    other_issuer["iss"] = json!("evil");
    let edited = {
        let honest = sign(&key_pem, &kid, &good_claims(pull_a.clone()));
        let parts: Vec<&str> = honest.split('.').collect();
        format!("{}.{}.{}", parts[0], b64(&good_claims(all_a.clone())), parts[2])
    };
    let stranger_key = berth::auth::token::generate_key_pem().unwrap();
    let unknown_key = sign(stranger_key.as_bytes(), &kid, &good_claims(all_a.clone()));
    let unknown_kid = sign(stranger_key.as_bytes(), "not-a-known-key", &good_claims(all_a.clone()));
    let other_repo = token(&app, Some(("alice", "alice-password")), &["repository:team/other:pull,push,delete"]).await;
    let bob_pull = token(&app, Some(("bob", "bob-password")), &["repository:team/app:pull,push,delete"]).await;
    let tricky = token(
        &app,
        Some(("alice", "alice-password")),
        &["repository:Team/App:pull,push", "repository:team/x/../app:push,delete"],
    )
    .await;
    assert_eq!(claims_of(&tricky)["access"], json!([]), "case and path tricks grant nothing");
    let no_catalog = token(&app, Some(("bob", "bob-password")), &["registry:catalog:*"]).await;

    let upload = "/v2/team/app/blobs/uploads/";
    let cases: Vec<(&str, Method, &str, Option<String>)> = vec![
        ("no credentials", Method::PUT, "/v2/team/app/manifests/v1", None),
        ("alg: none", Method::PUT, "/v2/team/app/manifests/v1", Some(bearer(&alg_none))),
        (
            "HS256 signed with the public key",
            Method::PUT,
            "/v2/team/app/manifests/v1",
            Some(bearer(&hs256_with_public_key)),
        ),
        ("expired", Method::DELETE, "/v2/team/app/manifests/v1", Some(bearer(&sign(&key_pem, &kid, &expired)))),
        ("not yet valid", Method::DELETE, "/v2/team/app/manifests/v1", Some(bearer(&sign(&key_pem, &kid, &early)))),
        (
            "wrong audience",
            Method::DELETE,
            "/v2/team/app/manifests/v1",
            Some(bearer(&sign(&key_pem, &kid, &other_audience))),
        ),
        (
            "wrong issuer",
            Method::DELETE,
            "/v2/team/app/manifests/v1",
            Some(bearer(&sign(&key_pem, &kid, &other_issuer))),
        ),
        ("payload edited after signing", Method::DELETE, "/v2/team/app/manifests/v1", Some(bearer(&edited))),
        ("signed by an unknown key", Method::DELETE, "/v2/team/app/manifests/v1", Some(bearer(&unknown_key))),
        ("unknown kid", Method::DELETE, "/v2/team/app/manifests/v1", Some(bearer(&unknown_kid))),
        ("token for repository b used on a", Method::DELETE, "/v2/team/app/manifests/v1", Some(bearer(&other_repo))),
        ("pull token used to push", Method::POST, upload, Some(bearer(&bob_pull))),
        ("pull token used to delete", Method::DELETE, "/v2/team/app/manifests/v1", Some(bearer(&bob_pull))),
        ("catalog without catalog rights", Method::GET, "/v2/_catalog", Some(bearer(&no_catalog))),
        ("case and path tricks in the scope", Method::DELETE, "/v2/team/app/manifests/v1", Some(bearer(&tricky))),
    ];
    let mut table = Vec::new();
    for (attack, method, path, authorization) in cases {
        let r = status(&app, method.clone(), path, authorization.as_deref()).await;
        let code = r.status();
        let challenge = header(&r, "www-authenticate").unwrap_or("").to_owned();
        let error = challenge.split("error=").nth(1).unwrap_or("").trim_matches('"').to_owned();
        let body: Value = r.json().await.unwrap();
        table.push(format!("{attack}: {} {} {error}", code.as_u16(), body["errors"][0]["code"].as_str().unwrap()));
        assert!(challenge.starts_with("Bearer realm="), "{attack}: {challenge}");
        // A missing or bad token is 401, and so is a good token without the scope, as
        // distribution answers: the challenge names the scope needed, for the client to ask for.
        assert_eq!(code, StatusCode::UNAUTHORIZED, "{attack}");
        if error == "insufficient_scope" {
            assert!(
                challenge.contains(",scope=\"repository:team/app:") || challenge.contains("registry:catalog:*"),
                "{attack}: {challenge}"
            );
        }
    }
    let scope_refusals = table.iter().filter(|t| t.contains("insufficient_scope")).count();
    assert_eq!(scope_refusals, 5, "{table:?}");
    // Wrong passwords and unknown users at the token endpoint.
    for (user, password) in [("alice", "wrong"), ("nobody", "alice-password")] {
        let r = status(
            &app,
            Method::GET,
            "/token?service=registry.test&scope=repository:team/app:push",
            Some(&basic(user, password)),
        )
        .await;
        table.push(format!("token request as {user} with a bad password: {}", r.status().as_u16()));
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    println!("attacks and their answers:\n  {}", table.join("\n  "));
    // Nothing changed.
    let r = status(&app, Method::GET, "/v2/team/app/manifests/v1", Some(&bearer(&alice_push))).await;
    assert_eq!(r.bytes().await.unwrap(), image.bytes);
    let r = status(&app, Method::GET, "/v2/team/app/tags/list", Some(&bearer(&alice_push))).await;
    assert_eq!(r.json::<Value>().await.unwrap()["tags"], json!(["v1"]));
    drop(dir);
}

#[tokio::test]
async fn a_token_from_one_replica_works_on_another_and_an_external_issuer_is_trusted() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("shared-key.pem");
    std::fs::write(&key, berth::auth::token::generate_key_pem().unwrap()).unwrap();
    let external = berth::auth::token::generate_key_pem().unwrap();
    let external_pub = {
        use p256::pkcs8::{DecodePrivateKey, EncodePublicKey, LineEnding};
        let secret = p256::SecretKey::from_pkcs8_pem(&external).unwrap();
        secret.public_key().to_public_key_pem(LineEnding::LF).unwrap()
    };
    std::fs::write(dir.path().join("external.pem"), &external_pub).unwrap();
    let configure = |s: &mut Settings| {
        secure(s, dir.path(), AuthMode::Token);
        s.token_key = Some(key.display().to_string());
        s.token_trusted_issuer = Some("https://sso.example.com".into());
        s.token_trusted_keys = Some(dir.path().join("external.pem").display().to_string());
    };
    let a = spawn_with(configure).await;
    let b = spawn_with(configure).await;
    let from_a = token(&a, Some(("alice", "alice-password")), &["repository:team/app:pull,push"]).await;
    fixture(&b, &bearer(&from_a)).await;
    // The external issuer's token names its key by the PEM's fingerprint.
    use sha2::Digest as _;
    let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(external_pub.as_bytes()));
    let mut claims = good_claims(json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}]));
    claims["iss"] = json!("https://sso.example.com");
    let external_token = sign(external.as_bytes(), &kid, &claims);
    assert_eq!(
        status(&b, Method::GET, "/v2/team/app/manifests/v1", Some(&bearer(&external_token))).await.status(),
        StatusCode::OK
    );
    // But it cannot pose as Berth's own issuer.
    claims["iss"] = json!("berth");
    let posing = sign(external.as_bytes(), &kid, &claims);
    assert_eq!(
        status(&b, Method::GET, "/v2/team/app/manifests/v1", Some(&bearer(&posing))).await.status(),
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn replicas_sharing_redis_share_tokens_and_failed_login_counts() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("shared-key.pem");
    std::fs::write(&key, berth::auth::token::generate_key_pem().unwrap()).unwrap();
    let prefix = crate::redissupport::fresh_prefix();
    let configure = |s: &mut Settings| {
        secure(s, dir.path(), AuthMode::Token);
        s.token_key = Some(key.display().to_string());
        s.redis_url = Some(berth::config::Secret::new(crate::redissupport::url()));
        s.redis_prefix = prefix.clone();
    };
    let (a, b) = (spawn_with(configure).await, spawn_with(configure).await);
    let from_a = token(&a, Some(("alice", "alice-password")), &["repository:team/app:pull,push"]).await;
    let image = fixture(&b, &bearer(&from_a)).await;
    let r = status(&b, Method::GET, "/v2/team/app/manifests/v1", Some(&bearer(&from_a))).await;
    assert_eq!(r.bytes().await.unwrap(), image.bytes);
    // Guesses spread over both replicas add up.
    for i in 0..5 {
        let replica = if i % 2 == 0 { &a } else { &b };
        let r = status(replica, Method::GET, "/token?service=registry.test", Some(&basic("bob", "guess"))).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    for replica in [&a, &b] {
        let r = status(replica, Method::GET, "/token?service=registry.test", Some(&basic("bob", "bob-password"))).await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
