//! Manifests: end-3, end-7a/b and end-9.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::body::{self, HeadBody};
use super::error::ApiResult;
use super::headers::{self as h};
use super::{AppState, State, authorized, authorized_pull, through_docker_mirror};
use crate::auth::Action;
use crate::metadata::StoredManifest;
use crate::oci::{NameError, Reference, RepoName, Tag};
use crate::registry::Error;
use crate::registry::upstream::Route;

/// The repository and reference of a manifest URL that is to be created: a reference that is
/// not a valid tag or digest is refused, saying why.
fn parse(path: web::Path<(String, String)>) -> ApiResult<(String, Reference)> {
    let (name, reference) = path.into_inner();
    let reference = reference.parse::<Reference>().map_err(Error::from)?;
    Ok((name, reference))
}

/// The reference of a manifest URL that is read or deleted, once the caller may do so. A tag
/// that could never have been pushed names no manifest: that is `MANIFEST_UNKNOWN` (404), as
/// the conformance suite expects, not a bad request. A malformed digest stays `DIGEST_INVALID`.
fn existing(reference: &str) -> ApiResult<Reference> {
    match reference.parse::<Reference>() {
        Ok(reference) => Ok(reference),
        Err(NameError::Tag(_)) => Err(Error::ManifestUnknown.into()),
        Err(e) => Err(Error::from(e).into()),
    }
}

fn found(manifest: &StoredManifest) -> actix_web::HttpResponseBuilder {
    let mut response = HttpResponse::Ok();
    response
        .insert_header((header::CONTENT_TYPE, manifest.media_type.as_str()))
        .insert_header((h::DOCKER_CONTENT_DIGEST, manifest.digest.as_str()))
        .insert_header((header::ETAG, format!("\"{}\"", manifest.digest)));
    response
}

/// `GET /v2/<name>/manifests/<tag-or-digest>`
///
/// "A GET request to an existing manifest URL MUST provide the expected manifest … The
/// Content-Type header SHOULD match what the client pushed as the manifest's Content-Type."
pub async fn get(state: State, req: HttpRequest, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (name, reference) = path.into_inner();
    let (name, route) = authorized_pull(&state, &req, &name).await?;
    let reference = existing(&reference)?;
    let (manifest, stale) = read(&state, &req, &name, route, &reference, true).await?;
    let payload = manifest.payload.clone().unwrap_or_default();
    Ok(with_warning(found(&manifest), stale).body(payload))
}

/// A manifest from this registry, or from the cache of its upstream; whether it is a stale
/// cached copy.
async fn read(
    state: &AppState,
    req: &HttpRequest,
    name: &RepoName,
    route: Option<Route<'_>>,
    reference: &Reference,
    with_payload: bool,
) -> ApiResult<(StoredManifest, bool)> {
    let route = match route {
        Some(route) => route,
        None => match state.registry.manifest(name, reference, with_payload).await {
            Ok(manifest) => return Ok((manifest, false)),
            Err(e) => through_docker_mirror(state, req, name, e).await?,
        },
    };
    let served = state.registry.cached_manifest(&route, reference, with_payload).await?;
    Ok((served.manifest, served.stale))
}

/// A cached copy served because its upstream failed says so (RFC 9111's `110`).
fn with_warning(mut response: actix_web::HttpResponseBuilder, stale: bool) -> actix_web::HttpResponseBuilder {
    if stale {
        response.insert_header(("warning", "110 berth \"Response is Stale: the upstream registry is unavailable\""));
    }
    response
}

/// `HEAD /v2/<name>/manifests/<tag-or-digest>`: the headers of a GET, from metadata alone.
pub async fn head(state: State, req: HttpRequest, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (name, reference) = path.into_inner();
    let (name, route) = authorized_pull(&state, &req, &name).await?;
    let reference = existing(&reference)?;
    let (manifest, stale) = read(&state, &req, &name, route, &reference, false).await?;
    Ok(with_warning(found(&manifest), stale).body(HeadBody(manifest.size)))
}

/// `PUT /v2/<name>/manifests/<tag-or-digest>[?tag=<tag>…]`
///
/// "The registry MUST store the manifest in the exact byte representation provided by the
/// client. Upon a successful upload, the registry MUST return response code 201 Created";
/// with a `subject`, "MUST respond with the response header OCI-Subject"; with `tag`
/// parameters, "MUST include an OCI-Tag response header … for each accepted tag".
pub async fn put(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let (name, reference) = parse(path)?;
    let name = authorized(&state, &req, &name, &[Action::Pull, Action::Push]).await?;
    let extra_tags = h::query_pairs(&req)
        .into_iter()
        .filter(|(k, _)| k == "tag")
        .map(|(_, v)| v.parse::<Tag>().map_err(Error::from))
        .collect::<Result<Vec<_>, _>>()?;
    let policy = state.registry.policy();
    let limit = policy.max_manifest_size;
    if h::content_length(req.headers())?.is_some_and(|n| n > limit as u64) {
        return Err(Error::ManifestTooLarge { limit }.into());
    }
    let bytes = body::read_limited(payload, limit, policy.body_idle_timeout).await?;
    let content_type = h::content_type(req.headers());
    let pushed = state.registry.push_manifest(&name, &reference, extra_tags, content_type, bytes).await?;
    let mut response = HttpResponse::Created();
    response
        .insert_header((header::LOCATION, manifest_location(&name, pushed.digest.as_str())))
        .insert_header((h::DOCKER_CONTENT_DIGEST, pushed.digest.as_str()));
    if let Some(subject) = &pushed.subject {
        response.insert_header((h::OCI_SUBJECT, subject.as_str()));
    }
    if matches!(reference, Reference::Digest(_)) {
        for tag in &pushed.tags {
            response.append_header((h::OCI_TAG, tag.as_str()));
        }
    }
    Ok(response.finish())
}

/// `DELETE /v2/<name>/manifests/<tag-or-digest>`
///
/// "To delete a tag … Upon success, the registry MUST respond with a 202 Accepted code";
/// by digest, the manifest and every tag pointing to it are removed.
pub async fn delete(state: State, req: HttpRequest, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (name, reference) = path.into_inner();
    let name = authorized(&state, &req, &name, &[Action::Delete]).await?;
    let reference = existing(&reference)?;
    state.registry.delete_manifest(&name, &reference).await?;
    Ok(HttpResponse::Accepted().finish())
}

fn manifest_location(name: &RepoName, reference: &str) -> String {
    format!("/v2/{name}/manifests/{reference}")
}
