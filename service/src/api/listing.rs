//! Listings: end-8a/b (tags), end-12a/b (referrers) and the Docker catalog.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::json;

use super::error::ApiResult;
use super::headers::{self as h, query_value};
use super::{State, authorized};
use crate::auth::{Action, Scope};
use crate::metadata::Page;
use crate::oci::media_types;
use crate::registry::Error;

/// `n` and `last` of a paginated listing.
fn pagination(req: &HttpRequest) -> ApiResult<(Option<u32>, Option<String>)> {
    let query = h::query_pairs(req);
    let n = match query_value(&query, "n") {
        None | Some("") => None,
        Some(v) => Some(
            v.parse::<u32>()
                .map_err(|_| Error::PaginationInvalid(format!("n must be a non-negative integer, not {v:?}")))?,
        ),
    };
    let last = query_value(&query, "last").filter(|l| !l.is_empty()).map(str::to_owned);
    Ok((n, last))
}

/// A listing response with the RFC 5988 `Link` to the next page when there is one. When `n`
/// is zero the list is empty and there is no `Link`, as the spec says.
fn paged(path: &str, page: &Page, n: Option<u32>, body: serde_json::Value) -> HttpResponse {
    let mut response = HttpResponse::Ok();
    if let (true, Some(n), Some(last)) = (page.more, n.filter(|&n| n > 0), page.items.last()) {
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("n", &n.to_string())
            .append_pair("last", last)
            .finish();
        response.insert_header((header::LINK, format!("<{path}?{query}>; rel=\"next\"")));
    }
    response.json(body)
}

/// `GET /v2/<name>/tags/list[?n=<int>&last=<tag>]`
///
/// "The tags MUST be in lexical or 'ASCIIbetical' order … When n is zero, this endpoint MUST
/// return an empty list, and MUST NOT include a Link header."
pub async fn tags(state: State, req: HttpRequest, path: web::Path<String>) -> ApiResult<HttpResponse> {
    let name = authorized(&state, &req, &path, &[Action::Pull]).await?;
    let (n, last) = pagination(&req)?;
    let mut page = state.registry.list_tags(&name, last.as_deref(), n).await?;
    if n == Some(0) {
        page = Page { items: Vec::new(), more: false };
    }
    let body = json!({ "name": name.as_str(), "tags": page.items });
    Ok(paged(&format!("/v2/{name}/tags/list"), &page, n, body))
}

/// `GET /v2/_catalog[?n=<int>&last=<name>]`: the repositories, sorted (Docker Registry API).
pub async fn catalog(state: State, req: HttpRequest) -> ApiResult<HttpResponse> {
    state.auth.check(&super::caller(&state, &req), Scope::Catalog).await?;
    let (n, last) = pagination(&req)?;
    let mut page = state.registry.list_repositories(last.as_deref(), n).await?;
    if n == Some(0) {
        page = Page { items: Vec::new(), more: false };
    }
    let body = json!({ "repositories": page.items });
    Ok(paged("/v2/_catalog", &page, n.or(Some(crate::registry::MAX_PAGE)), body))
}

/// `GET /v2/<name>/referrers/<digest>[?artifactType=<type>]`
///
/// "the registry MUST NOT return a 404 Not Found to a referrers API requests … If a query
/// results in no matching referrers, an empty manifest list MUST be returned … If filtering
/// is requested and applied, the response MUST include a header OCI-Filters-Applied."
pub async fn referrers(state: State, req: HttpRequest, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (name, digest) = path.into_inner();
    let name = authorized(&state, &req, &name, &[Action::Pull]).await?;
    let subject = h::digest(&digest)?;
    let query = h::query_pairs(&req);
    let artifact_type = query_value(&query, "artifactType").filter(|t| !t.is_empty());
    let referrers = state.registry.referrers(&name, &subject, artifact_type).await?;
    let manifests: Vec<serde_json::Value> = referrers
        .iter()
        .map(|r| {
            let mut descriptor = json!({
                "mediaType": r.media_type,
                "digest": r.digest.as_str(),
                "size": r.size,
            });
            if let Some(t) = &r.artifact_type {
                descriptor["artifactType"] = json!(t);
            }
            if let Some(a) = r.annotations.as_deref().and_then(|a| serde_json::from_str::<serde_json::Value>(a).ok()) {
                descriptor["annotations"] = a;
            }
            descriptor
        })
        .collect();
    let mut response = HttpResponse::Ok();
    response.content_type(media_types::OCI_INDEX);
    if artifact_type.is_some() {
        response.insert_header((h::OCI_FILTERS_APPLIED, "artifactType"));
    }
    let index = json!({ "schemaVersion": 2, "mediaType": media_types::OCI_INDEX, "manifests": manifests });
    Ok(response.body(index.to_string()))
}
