//! The HTTP layer: routes, request parsing and responses of the OCI Distribution API (and
//! the Docker Registry v2 API it grew from).
//!
//! Handlers parse their input, check access, make one call into [`crate::registry`] and
//! build the response. They never touch SQL, files or sessions directly.

mod blobs;
mod body;
pub mod error;
pub mod forwarded;
pub mod headers;
mod health;
mod listing;
mod manifests;
pub mod observe;
mod token;
mod uploads;

use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpRequest, HttpResponse, Resource, web};

use crate::auth::{Action, Authorizer, Caller, Credentials, Scope};
use crate::oci::RepoName;
use crate::registry::Registry;
use error::{ApiError, ApiResult};

/// What every handler can reach.
pub struct AppState {
    pub registry: Registry,
    pub auth: Authorizer,
    /// Which forwarded headers to believe, for the client's address and origin.
    pub proxies: forwarded::Proxies,
    /// `BERTH_EXTERNAL_URL`: where clients reach Berth, whatever the authentication mode.
    pub external_url: Option<String>,
    /// What the web UI signs its sign-in cookies and CSRF tokens with.
    pub ui_sessions: std::sync::Arc<crate::ui::SessionKeys>,
}

type State = web::Data<AppState>;

/// Registers the API under `/v2`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let v2 = web::scope("/v2")
        .wrap(
            DefaultHeaders::new()
                .add((headers::DOCKER_API_VERSION, HeaderValue::from_static("registry/2.0")))
                .add((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"))),
        )
        .service(resource("").route(web::get().to(version_check)).route(web::head().to(version_check)))
        .service(resource("/").route(web::get().to(version_check)).route(web::head().to(version_check)))
        .service(resource("/_catalog").route(web::get().to(listing::catalog)))
        .service(resource("/{name:.+}/blobs/uploads/").route(web::post().to(uploads::start)))
        .service(
            resource("/{name:.+}/blobs/uploads/{id}")
                .route(web::patch().to(uploads::patch))
                .route(web::put().to(uploads::put))
                .route(web::get().to(uploads::status))
                .route(web::delete().to(uploads::cancel)),
        )
        .service(
            resource("/{name:.+}/blobs/{digest}")
                .route(web::get().to(blobs::get))
                .route(web::head().to(blobs::head))
                .route(web::delete().to(blobs::delete)),
        )
        .service(
            resource("/{name:.+}/manifests/{reference}")
                .route(web::get().to(manifests::get))
                .route(web::head().to(manifests::head))
                .route(web::put().to(manifests::put))
                .route(web::delete().to(manifests::delete)),
        )
        .service(resource("/{name:.+}/tags/list").route(web::get().to(listing::tags)))
        .service(resource("/{name:.+}/referrers/{digest}").route(web::get().to(listing::referrers)))
        .default_service(web::to(not_found));
    cfg.configure(health::configure).configure(token::configure).service(v2);
}

/// A route whose unhandled methods get an OCI `UNSUPPORTED` error rather than an empty 405.
fn resource(path: &str) -> Resource {
    web::resource(path).default_service(web::to(method_not_allowed))
}

/// `GET /v2/`: tells clients that this is a registry speaking the v2 API (end-1), and, with
/// authentication on, how to authenticate.
async fn version_check(state: State, req: HttpRequest) -> ApiResult<HttpResponse> {
    state.auth.check(&caller(&state, &req), Scope::Base).await?;
    Ok(HttpResponse::Ok().content_type("application/json").body("{}"))
}

async fn not_found(req: HttpRequest) -> ApiResult<HttpResponse> {
    Err(ApiError::NotFound(format!("no such endpoint: {} {}", req.method(), req.path())))
}

async fn method_not_allowed() -> ApiResult<HttpResponse> {
    Err(ApiError::MethodNotAllowed)
}

/// Parses the `{name}` path segment.
fn repository(name: &str) -> ApiResult<RepoName> {
    Ok(name.parse::<RepoName>().map_err(crate::registry::Error::from)?)
}

/// The request as the authorizer sees it.
fn caller(state: &AppState, req: &HttpRequest) -> Caller {
    let credentials = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(Credentials::parse);
    let forwarded::Origin { address, origin } = state.proxies.origin(req);
    Caller { credentials, address, origin }
}

/// Parses the repository name and checks that the request may act on it.
/// A cached repository (`[[upstream]]`) is read-only but to that upstream's `admins`.
async fn authorized(state: &AppState, req: &HttpRequest, name: &str, actions: &[Action]) -> ApiResult<RepoName> {
    let name = repository(name)?;
    let who = state.auth.check(&caller(state, req), Scope::Repository(&name, actions)).await?;
    if actions.iter().any(|a| *a != Action::Pull)
        && let Some(route) = state.registry.upstreams().route(name.as_str())
    {
        let admin = matches!(&who, crate::auth::Identity::User(u) if route.upstream.admins.contains(u));
        if !admin {
            return Err(crate::registry::Error::Denied(format!(
                "{name} is a read-only cache of the upstream registry {} ({}); push to a repository outside {}/",
                route.upstream.name, route.upstream.url, route.upstream.name
            ))
            .into());
        }
    }
    Ok(name)
}

/// The registry host a containerd mirror request names (`?ns=docker.io`).
fn mirror_ns(req: &HttpRequest) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes()).find(|(k, _)| k == "ns").map(|(_, v)| v.into_owned())
}

/// For reads: the repository, checked for `pull`, and the upstream it caches when it is a
/// cached one: by its first path component, or, for a containerd mirror request
/// (`?ns=docker.io`), by the upstream registry's host.
async fn authorized_pull<'s>(
    state: &'s AppState,
    req: &HttpRequest,
    name: &str,
) -> ApiResult<(RepoName, Option<crate::registry::upstream::Route<'s>>)> {
    let upstreams = state.registry.upstreams();
    let route = if upstreams.is_empty() {
        None
    } else {
        match mirror_ns(req) {
            Some(ns) => upstreams.mirror(&ns, name),
            None => upstreams.route(name),
        }
    };
    let local = route.as_ref().map_or(name, |r| r.local.as_str());
    let name = authorized(state, req, local, &[Action::Pull]).await?;
    Ok((name, route))
}

/// A pull of an unprefixed name that found nothing here, retried through the upstream set as
/// `docker_mirror` (Docker's `registry-mirrors` send `library/nginx` as it is); the error as it
/// was otherwise.
async fn through_docker_mirror<'s>(
    state: &'s AppState,
    req: &HttpRequest,
    name: &RepoName,
    error: crate::registry::Error,
) -> ApiResult<crate::registry::upstream::Route<'s>> {
    use crate::registry::Error as E;
    let missing = matches!(error, E::ManifestUnknown | E::NameUnknown | E::BlobUnknown);
    match state.registry.upstreams().docker_mirror(name.as_str()) {
        Some(route)
            if missing && mirror_ns(req).is_none() && state.registry.upstreams().route(name.as_str()).is_none() =>
        {
            authorized(state, req, route.local.as_str(), &[Action::Pull]).await?;
            Ok(route)
        }
        _ => Err(error.into()),
    }
}
