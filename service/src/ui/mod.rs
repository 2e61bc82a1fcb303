//! The built-in web UI under `/ui/`: server-rendered HTML (every page reads without
//! JavaScript), assets embedded in the binary, the API's users and access rules.
//!
//! Pages show what the visitor may pull: a signed-in user by the rules for them, anyone else
//! by the anonymous rules (everything when authentication is off). Deleting needs the `delete`
//! action and goes through a confirmation page. Every POST must come from a page of this
//! registry (its `Origin`) and, but for the sign-in form, carry the CSRF token of the
//! visitor's session.

mod manage;
mod oci;
mod pages;
mod session;

pub use session::SessionKeys;

use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::api::AppState;
use crate::auth::{Action, Identity, Mode};
use crate::metadata::{NameMatch, TagOrder};
use crate::oci::{Digest, Reference, RepoName};
use crate::registry::Error;
use session::Session;

type State = web::Data<AppState>;

/// Scripts and styles come from `/ui/assets/` only; nothing may frame a page.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// Repositories per catalog page, tags per repository page.
const PAGE: u32 = 50;
/// Largest config blob read for a page.
const MAX_CONFIG: u64 = 4 << 20;

/// Registers `/` (a redirect) and `/ui/`.
pub fn configure(cfg: &mut web::ServiceConfig) {
    let ui = web::scope("/ui")
        .wrap(
            DefaultHeaders::new()
                .add((header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)))
                .add((header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")))
                .add((header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")))
                .add((header::REFERRER_POLICY, HeaderValue::from_static("same-origin"))),
        )
        .route("/", web::get().to(catalog))
        .route("/assets/{file}", web::get().to(asset))
        .route("/login", web::get().to(manage::login_form))
        .route("/login", web::post().to(manage::login))
        .route("/logout", web::post().to(manage::logout))
        .route("/usage", web::get().to(manage::usage))
        .route("/r/{path:.*}", web::get().to(repository_path))
        .route("/r/{path:.*}", web::post().to(manage::repository_post))
        .default_service(web::to(|| async { page_error(&Error::NameUnknown) }));
    cfg.route("/", web::get().to(to_ui)).route("/ui", web::get().to(to_ui)).service(ui);
}

async fn to_ui() -> HttpResponse {
    HttpResponse::SeeOther().insert_header((header::LOCATION, "/ui/")).finish()
}

async fn asset(file: web::Path<String>) -> HttpResponse {
    let (body, kind) = match file.as_str() {
        "app.css" => (include_str!("assets/app.css"), "text/css; charset=utf-8"),
        "app.js" => (include_str!("assets/app.js"), "text/javascript; charset=utf-8"),
        _ => return page_error(&Error::NameUnknown),
    };
    HttpResponse::Ok().content_type(kind).insert_header((header::CACHE_CONTROL, "public, max-age=3600")).body(body)
}

/// Who is browsing, and the session their forms are bound to.
struct Visitor {
    who: Identity,
    /// A signed-in user's session, or an anonymous visitor's (made for a form's CSRF token).
    session: Option<Session>,
}

impl Visitor {
    fn user(&self) -> Option<&str> {
        match &self.who {
            Identity::User(name) => Some(name),
            Identity::Anonymous => None,
        }
    }
}

/// The visitor a request's session cookie names: a user while the cookie verifies, has not
/// expired and names a user the htpasswd file still holds; anonymous otherwise.
fn visitor(state: &AppState, req: &HttpRequest) -> Visitor {
    let session = manage::cookie(req, session::COOKIE).and_then(|v| state.ui_sessions.open(&v));
    let user = session
        .as_ref()
        .map(|s| s.user.as_str())
        .filter(|u| !u.is_empty() && state.auth.mode() != Mode::None && state.auth.user_exists(u));
    match user {
        Some(user) => Visitor { who: Identity::User(user.to_owned()), session },
        // A session of a user who is gone is no session; an anonymous one stays one.
        None => Visitor { who: Identity::Anonymous, session: session.filter(|s| s.user.is_empty()) },
    }
}

fn may(state: &AppState, who: &Identity, repository: &RepoName, action: Action) -> bool {
    state.auth.actions(who, repository).contains(&action)
}

/// Whether `who` may pull the repository `name` (a stored name, as the catalog lists it).
fn may_pull(state: &AppState, who: &Identity, name: &str) -> bool {
    name.parse::<RepoName>().is_ok_and(|n| may(state, who, &n, Action::Pull))
}

/// Whether `who` may delete in `repository` here: the rules allow it, deletes are on, and it
/// is no cache of an upstream registry (read-only but to that upstream's `admins`), as for the
/// API.
fn may_delete(state: &AppState, who: &Identity, repository: &RepoName) -> bool {
    let cache_admin = match state.registry.upstreams().route(repository.as_str()) {
        Some(route) => matches!(who, Identity::User(u) if route.upstream.admins.contains(u)),
        None => true,
    };
    cache_admin && state.registry.policy().delete_enabled && may(state, who, repository, Action::Delete)
}

/// Whether `who` sees storage usage: a signed-in user, or anyone while authentication is off.
fn sees_usage(state: &AppState, who: &Identity) -> bool {
    state.auth.mode() == Mode::None || matches!(who, Identity::User(_))
}

/// What the header of every page shows of the visitor.
fn nav(state: &AppState, visitor: &Visitor) -> pages::Nav {
    pages::Nav {
        user: visitor.user().map(str::to_owned),
        csrf: visitor.session.as_ref().map(|s| state.ui_sessions.csrf(s)),
        sign_in: state.auth.mode() != Mode::None,
        usage: sees_usage(state, &visitor.who),
    }
}

/// Where clients pull from: the external URL's host, else the host this page was asked for.
fn registry_host(state: &AppState, req: &HttpRequest) -> String {
    let origin = match &state.external_url {
        Some(url) => url.trim_end_matches('/').to_owned(),
        None => state.proxies.origin(req).origin,
    };
    origin.split_once("://").map_or(origin.clone(), |(_, host)| host.to_owned())
}

fn html(markup: maud::Markup) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(markup.into_string())
}

/// A registry error as a page: 404 for what is not there (or not visible), 503 when a backend
/// is down, 500 only for what is Berth's fault.
fn page_error(error: &Error) -> HttpResponse {
    page_error_for(&pages::Nav::default(), error)
}

fn page_error_for(nav: &pages::Nav, error: &Error) -> HttpResponse {
    use actix_web::http::StatusCode;
    let (status, message) = match error {
        Error::NameUnknown | Error::ManifestUnknown | Error::BlobUnknown => {
            (StatusCode::NOT_FOUND, "Not found.".to_owned())
        }
        Error::NameInvalid(m) | Error::ManifestInvalid(m) => (StatusCode::BAD_REQUEST, m.clone()),
        Error::Denied(m) => (StatusCode::FORBIDDEN, m.clone()),
        Error::DeleteDisabled => (StatusCode::METHOD_NOT_ALLOWED, error.to_string()),
        e if e.is_retryable() => (StatusCode::SERVICE_UNAVAILABLE, "A backend is unavailable; try again.".to_owned()),
        e => {
            tracing::error!(error = %e, "ui page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong.".to_owned())
        }
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(pages::error(nav, status.as_u16(), &message).into_string())
}

fn query_value(req: &HttpRequest, key: &str) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// `GET /ui/?q=…&match=contains|prefix&after=…`
async fn catalog(state: State, req: HttpRequest) -> HttpResponse {
    let visitor = visitor(&state, &req);
    let who = &visitor.who;
    let q = query_value(&req, "q").unwrap_or_default().trim().to_ascii_lowercase();
    let prefix = query_value(&req, "match").as_deref() == Some("prefix");
    let after = query_value(&req, "after");
    let filter = match (q.is_empty(), prefix) {
        (true, _) => NameMatch::All,
        (false, true) => NameMatch::Prefix(&q),
        (false, false) => NameMatch::Contains(&q),
    };
    let page =
        state.registry.browse_repositories(filter, after.as_deref(), PAGE, |name| may_pull(&state, who, name)).await;
    let nav = nav(&state, &visitor);
    let login = visitor.user().map(|user| format!("docker login {} -u {user}", registry_host(&state, &req)));
    match page {
        Ok(page) => {
            html(pages::catalog(&nav, &pages::CatalogView { q: &q, prefix, page: &page, login: login.as_deref() }))
        }
        Err(e) => page_error_for(&nav, &e),
    }
}

/// `/ui/r/<name>` (tags), `/ui/r/<name>/-/m/<reference>` (a manifest). No repository name has
/// a `-` component, so `/-/` separates the name from what follows.
async fn repository_path(state: State, req: HttpRequest, path: web::Path<String>) -> HttpResponse {
    let path = path.into_inner();
    let (name, rest) = match path.split_once("/-/") {
        Some((name, rest)) => (name.to_owned(), Some(rest.to_owned())),
        None => (path.trim_end_matches('/').to_owned(), None),
    };
    let visitor = visitor(&state, &req);
    let nav = nav(&state, &visitor);
    let Ok(repository) = name.parse::<RepoName>() else {
        return page_error_for(&nav, &Error::NameUnknown);
    };
    // Not visible and not there look the same.
    if !may(&state, &visitor.who, &repository, Action::Pull) {
        return page_error_for(&nav, &Error::NameUnknown);
    }
    let result = match rest.as_deref() {
        None => repository_page(&state, &req, &visitor, &repository).await,
        Some("delete") => manage::confirm_delete(&state, &req, visitor, &repository).await,
        Some(rest) => match rest.strip_prefix("m/") {
            Some(reference) => manifest_page(&state, &req, &visitor, &repository, reference).await,
            None => Err(Error::NameUnknown),
        },
    };
    result.unwrap_or_else(|e| page_error_for(&nav, &e))
}

async fn repository_page(
    state: &AppState,
    req: &HttpRequest,
    visitor: &Visitor,
    repository: &RepoName,
) -> Result<HttpResponse, Error> {
    let order = if query_value(req, "sort").as_deref() == Some("name") { TagOrder::Name } else { TagOrder::Pushed };
    let page: u64 = query_value(req, "page").and_then(|p| p.parse().ok()).unwrap_or(1).max(1);
    let summary = state.registry.repository_summary(repository).await?;
    let rows = state.registry.tag_page(repository, order, (page - 1) * u64::from(PAGE), PAGE).await?;
    let mut tags = Vec::with_capacity(rows.len());
    for row in rows {
        let manifest = oci::Manifest::parse(&row.payload).unwrap_or_default();
        let index = manifest.is_index(&row.media_type);
        let created = if index {
            manifest.annotations.get("org.opencontainers.image.created").cloned()
        } else {
            created_of(state, repository, &manifest).await
        };
        tags.push(pages::TagView {
            size: if index { None } else { Some(manifest.image_size()) },
            platforms: manifest.platforms(),
            created,
            row,
        });
    }
    let rules = state.registry.lifecycle();
    let immutable: Vec<bool> =
        tags.iter().map(|t| rules.fixing(repository.as_str(), &t.row.name).next().is_some()).collect();
    let can_delete = may_delete(state, &visitor.who, repository);
    let deletable: Vec<bool> =
        tags.iter().map(|t| can_delete && rules.forbids_delete(repository.as_str(), &t.row.name).is_none()).collect();
    let retention = state.registry.retention_marks(repository).await?;
    let namespace = repository.as_str().rsplit_once('/').map(|(ns, _)| ns).filter(|_| sees_usage(state, &visitor.who));
    Ok(html(pages::repository(
        &nav(state, visitor),
        &pages::RepositoryView {
            repository,
            summary: &summary,
            tags: &tags,
            immutable: &immutable,
            deletable: &deletable,
            retention: &retention,
            namespace,
            page,
            per_page: u64::from(PAGE),
            by_name: order == TagOrder::Name,
            host: &registry_host(state, req),
        },
    )))
}

/// The `created` time of an image's config, when it is one.
async fn created_of(state: &AppState, repository: &RepoName, manifest: &oci::Manifest) -> Option<String> {
    let config = manifest.config.as_ref().filter(|c| oci::is_image_config(&c.media_type))?;
    let digest: Digest = config.digest.parse().ok()?;
    let bytes = state.registry.small_blob(repository, &digest, MAX_CONFIG).await.ok()??;
    oci::ImageConfig::parse(&bytes)?.created
}

async fn manifest_page(
    state: &AppState,
    req: &HttpRequest,
    visitor: &Visitor,
    repository: &RepoName,
    reference: &str,
) -> Result<HttpResponse, Error> {
    let reference: Reference = reference.parse().map_err(|_| Error::ManifestUnknown)?;
    let stored = state.registry.inspect_manifest(repository, &reference).await?;
    let payload = stored.payload.clone().unwrap_or_default();
    let manifest = oci::Manifest::parse(&payload).unwrap_or_default();
    let index = manifest.is_index(&stored.media_type);
    let config_descriptor = manifest.config.as_ref();
    let config_bytes = match config_descriptor.and_then(|c| c.digest.parse::<Digest>().ok()) {
        Some(digest) => state.registry.small_blob(repository, &digest, MAX_CONFIG).await.unwrap_or(None),
        None => None,
    };
    let config = config_bytes
        .as_deref()
        .filter(|_| config_descriptor.is_some_and(|c| oci::is_image_config(&c.media_type)))
        .and_then(oci::ImageConfig::parse);
    // The platforms' own sizes, from their manifests.
    let mut platform_sizes = Vec::new();
    for child in &manifest.manifests {
        let size = match child.digest.parse::<Digest>() {
            Ok(d) => match state.registry.inspect_manifest(repository, &Reference::Digest(d)).await {
                Ok(m) => m.payload.as_deref().and_then(oci::Manifest::parse).map(|m| m.image_size()),
                Err(_) => None,
            },
            Err(_) => None,
        };
        platform_sizes.push(size);
    }
    let referrers = state.registry.referrers(repository, &stored.digest, None).await?;
    let tags = state.registry.tags_of(repository, &stored.digest).await?;
    let pretty = serde_json::from_slice::<serde_json::Value>(&payload)
        .ok()
        .and_then(|v| serde_json::to_string_pretty(&v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(&payload).into_owned());
    let rules = state.registry.lifecycle();
    let deletable = may_delete(state, &visitor.who, repository)
        && tags.iter().all(|t| rules.forbids_delete(repository.as_str(), t.as_str()).is_none());
    Ok(html(pages::manifest(
        &nav(state, visitor),
        &pages::ManifestView {
            repository,
            deletable,
            stored: &stored,
            manifest: &manifest,
            index,
            config: config.as_ref(),
            config_raw: config_bytes.as_deref().filter(|_| config.is_none()).map(String::from_utf8_lossy).as_deref(),
            platform_sizes: &platform_sizes,
            referrers: &referrers,
            tags: &tags,
            raw: &pretty,
            host: &registry_host(state, req),
        },
    )))
}
