//! Around every request: a trace span named after the endpoint (continuing the client's
//! `traceparent`), the request metrics, and one access-log line.

use std::future::Future;
use std::time::Instant;

use actix_web::body::{BodySize, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderMap};
use actix_web::{Error, HttpResponse};
use opentelemetry::propagation::Extractor;
use opentelemetry::trace::TraceContextExt as _;
use sha2::Digest as _;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::metrics::{Metrics, Raised};

/// actix's headers as OpenTelemetry's propagators read them.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The route label: the matched pattern without its regular expressions
/// (`/v2/{name}/blobs/{digest}`), never the path itself.
fn route(pattern: Option<&str>) -> String {
    let Some(pattern) = pattern else { return "unmatched".into() };
    let mut route = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        route.push_str(&rest[..open]);
        let close = rest[open..].find('}').map_or(rest.len(), |c| open + c);
        let name = rest[open + 1..close].split(':').next().unwrap_or("");
        route.push('{');
        route.push_str(name);
        route.push('}');
        rest = rest.get(close + 1..).unwrap_or("");
    }
    route.push_str(rest);
    route
}

/// A bounded method label.
fn method(m: &actix_web::http::Method) -> &'static str {
    match m.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "PUT" => "PUT",
        "POST" => "POST",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "OTHER",
    }
}

/// The trace id for the log line: the exported span's, or the one the client sent.
fn trace_id(span: &tracing::Span, headers: &HeaderMap) -> String {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        return span_context.trace_id().to_string();
    }
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|id| id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()))
        .unwrap_or("-")
        .to_owned()
}

tokio::task_local! {
    /// The id of the request being answered, for error answers to name.
    static REQUEST_ID: String;
}

/// The id of the request being answered, when called while answering one: what a client
/// quotes, and what every log line of the request carries.
pub fn request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// A request id: the trace id when there is one, so that logs and traces meet; 16 random hex
/// digits otherwise.
fn new_request_id(trace: &str) -> String {
    if trace != "-" { trace.to_owned() } else { format!("{:016x}", rand::random::<u64>()) }
}

/// The middleware, for `App::wrap_fn`.
pub fn request<S, B>(
    req: ServiceRequest,
    service: &S,
) -> impl Future<Output = Result<ServiceResponse<B>, Error>> + use<S, B>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error>,
    B: MessageBody,
{
    let started = Instant::now();
    let metrics = Metrics::get();
    let method = method(req.method());
    // The route is known once the router has matched the request (asking before would match
    // the path against every pattern a second time); the span gets its name then.
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        http.request.method = method,
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = tracing::field::Empty,
    );
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&Headers(req.headers())));
    let _ = span.set_parent(parent);
    let trace = trace_id(&span, req.headers());
    let request_id = new_request_id(&trace);
    span.record("request_id", request_id.as_str());
    let in_flight = Raised::new(&metrics.requests_in_flight);
    let response = REQUEST_ID.scope(request_id.clone(), service.call(req));
    async move {
        let mut response = response.instrument(span.clone()).await?;
        if let Ok(value) = header::HeaderValue::from_str(&request_id) {
            response.headers_mut().insert(header::HeaderName::from_static("x-request-id"), value);
        }
        drop(in_flight);
        let elapsed = started.elapsed();
        let request = response.request();
        let announced = request
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let route = route(request.match_pattern().as_deref());
        let status = response.status();
        // The OpenTelemetry span exists by now (`trace_id` made it), so it is renamed directly.
        span.context().span().update_name(format!("{method} {route}"));
        span.record("http.route", route.as_str());
        span.record("http.response.status_code", i64::from(status.as_u16()));
        let labels = [route.as_str(), method, status.as_str()];
        metrics.requests.with_label_values(&labels).inc();
        metrics.request_seconds.with_label_values(&labels).observe(elapsed.as_secs_f64());
        metrics.request_bytes.with_label_values(&[&route]).inc_by(announced);
        if let BodySize::Sized(n) = response.response().body().size() {
            metrics.response_bytes.with_label_values(&[&route]).inc_by(n);
        }
        tracing::info!(
            target: "berth::access",
            method = %method,
            path = %request.path(),
            query = %request.query_string(),
            status = status.as_u16(),
            micros = elapsed.as_micros() as u64,
            trace_id = %trace,
            request_id = %request_id,
            "request"
        );
        Ok(response)
    }
}

/// `GET /metrics`: the Prometheus text exposition.
pub async fn metrics() -> HttpResponse {
    HttpResponse::Ok().content_type("text/plain; version=0.0.4; charset=utf-8").body(Metrics::get().render())
}

/// The `/metrics` route; with a token, only a request bearing it is answered
/// (`Authorization: Bearer <token>`, which Prometheus sends with `authorization.credentials`).
pub fn metrics_route(token: Option<crate::config::Secret>) -> actix_web::Route {
    let token = std::sync::Arc::new(token);
    actix_web::web::get().to(move |req: actix_web::HttpRequest| {
        let token = token.clone();
        async move {
            let Some(token) = token.as_ref() else { return metrics().await };
            let presented = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            let (a, b) = (sha2::Sha256::digest(presented.as_bytes()), sha2::Sha256::digest(token.expose().as_bytes()));
            if crate::auth::htpasswd::constant_time_eq(&a, &b) {
                metrics().await
            } else {
                HttpResponse::Unauthorized()
                    .insert_header((header::WWW_AUTHENTICATE, "Bearer realm=\"metrics\""))
                    .finish()
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_lose_their_regular_expressions_and_never_carry_names() {
        assert_eq!(route(Some("/v2/{name:.+}/blobs/{digest}")), "/v2/{name}/blobs/{digest}");
        assert_eq!(route(Some("/v2/{name:.+}/blobs/uploads/")), "/v2/{name}/blobs/uploads/");
        assert_eq!(route(Some("/healthz")), "/healthz");
        assert_eq!(route(None), "unmatched");
    }
}
