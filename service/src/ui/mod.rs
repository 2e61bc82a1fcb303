//! The built-in web UI under `/ui/`: server-rendered HTML (every page reads without
//! JavaScript), assets embedded in the binary, the API's access rules.
//!
//! This first part is read-only: the catalog, a repository's tags and a manifest or index with
//! its config, layers, history and referrers. Pages show what the anonymous rules let anyone
//! pull (everything when authentication is off).

mod oci;
mod pages;

use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::DefaultHeaders;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::api::AppState;
use crate::auth::{Action, Identity};
use crate::metadata::{NameMatch, TagOrder};
use crate::oci::{Digest, Reference, RepoName};
use crate::registry::Error;

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
        .route("/r/{path:.*}", web::get().to(repository_path))
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

/// Who is browsing. Sign-in is not built yet: with authentication on, pages follow the
/// anonymous rules.
fn visitor() -> Identity {
    Identity::Anonymous
}

fn may_pull(state: &AppState, who: &Identity, name: &str) -> bool {
    name.parse::<RepoName>().is_ok_and(|n| state.auth.actions(who, &n).contains(&Action::Pull))
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
    use actix_web::http::StatusCode;
    let (status, message) = match error {
        Error::NameUnknown | Error::ManifestUnknown | Error::BlobUnknown => {
            (StatusCode::NOT_FOUND, "Not found.".to_owned())
        }
        Error::NameInvalid(m) | Error::ManifestInvalid(m) => (StatusCode::BAD_REQUEST, m.clone()),
        e if e.is_retryable() => (StatusCode::SERVICE_UNAVAILABLE, "A backend is unavailable; try again.".to_owned()),
        e => {
            tracing::error!(error = %e, "ui page failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong.".to_owned())
        }
    };
    HttpResponse::build(status)
        .content_type("text/html; charset=utf-8")
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .body(pages::error(status.as_u16(), &message).into_string())
}

fn query_value(req: &HttpRequest, key: &str) -> Option<String> {
    form_urlencoded::parse(req.query_string().as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// `GET /ui/?q=…&match=contains|prefix&after=…`
async fn catalog(state: State, req: HttpRequest) -> HttpResponse {
    let who = visitor();
    let q = query_value(&req, "q").unwrap_or_default().trim().to_ascii_lowercase();
    let prefix = query_value(&req, "match").as_deref() == Some("prefix");
    let after = query_value(&req, "after");
    let filter = match (q.is_empty(), prefix) {
        (true, _) => NameMatch::All,
        (false, true) => NameMatch::Prefix(&q),
        (false, false) => NameMatch::Contains(&q),
    };
    let page =
        state.registry.browse_repositories(filter, after.as_deref(), PAGE, |name| may_pull(&state, &who, name)).await;
    match page {
        Ok(page) => html(pages::catalog(&pages::CatalogView { q: &q, prefix, page: &page })),
        Err(e) => page_error(&e),
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
    let who = visitor();
    let Ok(repository) = name.parse::<RepoName>() else {
        return page_error(&Error::NameUnknown);
    };
    // Not visible and not there look the same.
    if !may_pull(&state, &who, repository.as_str()) {
        return page_error(&Error::NameUnknown);
    }
    let result = match rest.as_deref().and_then(|r| r.strip_prefix("m/")) {
        None if rest.is_none() => repository_page(&state, &req, &repository).await,
        Some(reference) => manifest_page(&state, &req, &repository, reference).await,
        _ => Err(Error::NameUnknown),
    };
    result.unwrap_or_else(|e| page_error(&e))
}

async fn repository_page(state: &AppState, req: &HttpRequest, repository: &RepoName) -> Result<HttpResponse, Error> {
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
    Ok(html(pages::repository(&pages::RepositoryView {
        repository,
        summary: &summary,
        tags: &tags,
        immutable: &immutable,
        page,
        per_page: u64::from(PAGE),
        by_name: order == TagOrder::Name,
        host: &registry_host(state, req),
    })))
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
    Ok(html(pages::manifest(&pages::ManifestView {
        repository,
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
    })))
}
