//! Requests to an upstream registry, as any client makes them: Basic credentials, or the
//! token flow (a `401` with a `Bearer` challenge, a token from its realm for the scope, the
//! request again), within the upstream's rate and concurrency limits.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use base64::Engine;
use reqwest::header::{ACCEPT, AUTHORIZATION, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why an upstream did not give what was asked.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Unreachable, timed out, or answered 429 or 5xx: a cached copy may stand in.
    #[error("{0}")]
    Unavailable(String),
    /// It has no such manifest or blob.
    #[error("not found upstream")]
    NotFound,
    /// It refused Berth's credentials, or the repository.
    #[error("{0}")]
    Refused(String),
    /// It answered with something Berth will not store: bytes that do not match their digest,
    /// a manifest over the size limit, a redirect loop.
    #[error("{0}")]
    Invalid(String),
}

/// An answer, with the concurrency permit it holds until its body is read.
pub struct Answer {
    pub response: Response,
    pub permit: OwnedSemaphorePermit,
}

pub struct Client {
    base: String,
    name: String,
    http: reqwest::Client,
    credentials: Option<(String, String)>,
    /// Tokens by scope, with when they expire.
    tokens: Mutex<HashMap<String, (String, Instant)>>,
    permits: Arc<Semaphore>,
    /// The earliest time the next request may start, when a rate is set.
    rate: Option<(Duration, Mutex<Instant>)>,
    pub max_manifest: usize,
}

/// Manifest media types asked for, most specific first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

impl Client {
    pub fn new(
        base: &str,
        name: &str,
        credentials: Option<(String, String)>,
        rate: Option<f64>,
        concurrency: usize,
        max_manifest: usize,
    ) -> Result<Client, String> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            // Blob downloads redirect to a CDN; a loop is refused.
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION"), " (pull-through cache)"))
            .build()
            .map_err(|e| format!("cannot build an HTTP client: {e}"))?;
        Ok(Client {
            base: base.to_owned(),
            name: name.to_owned(),
            http,
            credentials,
            tokens: Mutex::default(),
            permits: Arc::new(Semaphore::new(concurrency)),
            rate: rate.map(|r| (Duration::from_secs_f64(1.0 / r), Mutex::new(Instant::now()))),
            max_manifest,
        })
    }

    /// Waits for the rate limit's next slot.
    async fn pace(&self) {
        let Some((interval, next)) = &self.rate else { return };
        let slot = {
            let mut next = next.lock().unwrap_or_else(|p| p.into_inner());
            let slot = (*next).max(Instant::now());
            *next = slot + *interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }

    fn count(&self, kind: &str, status: &str) {
        crate::metrics::Metrics::get().upstream_requests.with_label_values(&[&self.name, kind, status]).inc();
    }

    /// `method path` for `repository`, authenticated as the upstream asks. `kind` labels the
    /// metric (`manifest`, `blob`).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        repository: &str,
        accept: Option<&str>,
        kind: &str,
    ) -> Result<Answer, UpstreamError> {
        let permit = self.permits.clone().acquire_owned().await.expect("the semaphore is never closed");
        let scope = format!("repository:{repository}:pull");
        let mut authorization = self.cached_token(&scope);
        for attempt in 0..2 {
            self.pace().await;
            let mut request = self.http.request(method.clone(), format!("{}{path}", self.base));
            if kind == "manifest" {
                request = request.timeout(Duration::from_secs(30));
            }
            if let Some(a) = &authorization {
                request = request.header(AUTHORIZATION, a);
            }
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            let response = match request.send().await {
                Ok(r) => r,
                Err(e) if e.is_redirect() => {
                    self.count(kind, "redirect_loop");
                    tracing::warn!(upstream = %self.name, error = %e, "an upstream redirects too often");
                    return Err(UpstreamError::Invalid(format!("{} redirects too often", self.name)));
                }
                Err(e) => {
                    self.count(kind, "unreachable");
                    tracing::warn!(upstream = %self.name, error = %e, "an upstream request failed");
                    let why = if e.is_timeout() { "timed out" } else { "does not answer" };
                    return Err(UpstreamError::Unavailable(format!("{} {why}", self.name)));
                }
            };
            let status = response.status();
            self.count(kind, status.as_str());
            match status {
                s if s.is_success() => return Ok(Answer { response, permit }),
                StatusCode::UNAUTHORIZED if attempt == 0 => {
                    authorization = Some(self.authenticate(&response, &scope).await?);
                }
                StatusCode::NOT_FOUND => return Err(UpstreamError::NotFound),
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    return Err(UpstreamError::Refused(format!("{} refused the request ({status})", self.name)));
                }
                s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                    return Err(UpstreamError::Unavailable(format!("{} answered {status}", self.name)));
                }
                s => return Err(UpstreamError::Invalid(format!("{} answered {s}", self.name))),
            }
        }
        Err(UpstreamError::Refused(format!("{} refused the credentials", self.name)))
    }

    fn cached_token(&self, scope: &str) -> Option<String> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.get(scope).filter(|(_, until)| *until > Instant::now()).map(|(t, _)| t.clone())
    }

    fn basic(&self) -> Option<String> {
        self.credentials.as_ref().map(|(user, password)| {
            format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
        })
    }

    /// The `Authorization` a `401` asks for: Basic credentials, or a token from the
    /// challenge's realm.
    async fn authenticate(&self, refused: &Response, scope: &str) -> Result<String, UpstreamError> {
        let challenge = refused.headers().get(WWW_AUTHENTICATE).and_then(|v| v.to_str().ok()).unwrap_or_default();
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return self.basic().ok_or_else(|| UpstreamError::Refused(format!("{} needs credentials", self.name)));
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(UpstreamError::Refused(format!("{} asks for {scheme:?} authentication", self.name)));
        }
        let params = challenge_params(params);
        let realm = params
            .get("realm")
            .ok_or_else(|| UpstreamError::Invalid(format!("{}: a challenge without a realm", self.name)))?;
        let mut query: Vec<(&str, &str)> = vec![("scope", scope)];
        if let Some(service) = params.get("service") {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query).timeout(Duration::from_secs(30));
        if let Some(basic) = self.basic() {
            request = request.header(AUTHORIZATION, basic);
        }
        let response = request.send().await.map_err(|e| {
            self.count("token", "unreachable");
            tracing::warn!(upstream = %self.name, error = %e, "an upstream token request failed");
            UpstreamError::Unavailable(format!("{}'s token service does not answer", self.name))
        })?;
        self.count("token", response.status().as_str());
        match response.status() {
            s if s.is_success() => {}
            s if s == StatusCode::TOO_MANY_REQUESTS || s.is_server_error() => {
                return Err(UpstreamError::Unavailable(format!("{}'s token service answered {s}", self.name)));
            }
            s => return Err(UpstreamError::Refused(format!("{}'s token service answered {s}", self.name))),
        }
        #[derive(serde::Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let body = response.bytes().await.map_err(|e| UpstreamError::Unavailable(e.to_string()))?;
        let t: Token = serde_json::from_slice(&body)
            .map_err(|e| UpstreamError::Invalid(format!("{}'s token service answered no token: {e}", self.name)))?;
        let token =
            t.token.or(t.access_token).ok_or_else(|| UpstreamError::Invalid(format!("{}: no token", self.name)))?;
        // Kept a little less long than it lives (60 s when the answer does not say).
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(60).saturating_sub(10).max(5));
        let value = format!("Bearer {token}");
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(scope.to_owned(), (value.clone(), Instant::now() + lifetime));
        Ok(value)
    }
}

/// `realm="…",service="…"` as a map.
fn challenge_params(text: &str) -> HashMap<String, String> {
    let mut params = HashMap::new();
    let mut rest = text.trim();
    while let Some((key, after)) = rest.split_once('=') {
        let key = key.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, next) = if let Some(quoted) = after.strip_prefix('"') {
            match quoted.find('"') {
                Some(end) => (&quoted[..end], &quoted[end + 1..]),
                None => (quoted, ""),
            }
        } else {
            match after.find(',') {
                Some(end) => (&after[..end], &after[end..]),
                None => (after, ""),
            }
        };
        params.insert(key, value.to_owned());
        rest = next.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
    }
    params
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn requests_keep_to_the_rate() {
        let client = Client::new("http://127.0.0.1:9", "t", None, Some(20.0), 2, 1024).unwrap();
        let started = Instant::now();
        for _ in 0..9 {
            client.pace().await;
        }
        // 9 requests at 20 a second: the first at once, the ninth 400 ms later (at least).
        assert!(started.elapsed() >= Duration::from_millis(400), "{:?}", started.elapsed());
    }

    #[tokio::test]
    async fn requests_keep_to_the_concurrency() {
        let client = Client::new("http://127.0.0.1:9", "t", None, None, 2, 1024).unwrap();
        let (a, b) = (client.permits.clone().try_acquire_owned(), client.permits.clone().try_acquire_owned());
        assert!(a.is_ok() && b.is_ok());
        assert!(client.permits.clone().try_acquire_owned().is_err(), "a third waits");
    }

    #[test]
    fn challenges_parse() {
        let p = challenge_params(
            r#"realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#,
        );
        assert_eq!(p["realm"], "https://auth.docker.io/token");
        assert_eq!(p["service"], "registry.docker.io");
        assert_eq!(p["scope"], "repository:library/nginx:pull");
        let p = challenge_params("realm=x, service=y");
        assert_eq!((p["realm"].as_str(), p["service"].as_str()), ("x", "y"));
    }
}
