//! Blob reads and deletes: end-2 and end-10.

use actix_web::body::SizedStream;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use futures_util::TryStreamExt as _;

use super::body::HeadBody;
use super::error::ApiResult;
use super::headers as h;
use super::{State, authorized, authorized_pull, through_docker_mirror};
use crate::auth::Action;
use crate::oci::Digest;
use crate::registry::BlobContent;

/// Headers every successful blob read carries. Blobs never change, so caches may keep them.
fn blob_headers(response: &mut HttpResponseBuilder, digest: &Digest) {
    response
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")))
        .insert_header((h::DOCKER_CONTENT_DIGEST, digest.as_str()))
        .insert_header((header::ETAG, format!("\"{digest}\"")))
        .insert_header((header::ACCEPT_RANGES, HeaderValue::from_static("bytes")))
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("max-age=31536000")));
}

/// `GET /v2/<name>/blobs/<digest>`
///
/// "A GET request to an existing blob URL MUST provide the expected blob, with a response
/// code that MUST be 200 OK … A registry SHOULD support the Range request header."
pub async fn get(state: State, req: HttpRequest, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (name, d) = path.into_inner();
    let (name, route) = authorized_pull(&state, &req, &name).await?;
    let digest = h::digest(&d)?;
    let range = h::range(req.headers());
    let read = match &route {
        Some(route) => state.registry.cached_blob(route, &digest, range).await?,
        None => match state.registry.read_blob(&name, &digest, range).await {
            Ok(read) => read,
            Err(e) => {
                let route = through_docker_mirror(&state, &req, &name, e).await?;
                state.registry.cached_blob(&route, &digest, range).await?
            }
        },
    };
    let (range, body) = match read.content {
        BlobContent::Redirect(url) => {
            crate::metrics::Metrics::get().bytes_redirected.inc_by(read.size);
            return Ok(HttpResponse::TemporaryRedirect()
                .insert_header((header::LOCATION, url))
                .insert_header((h::DOCKER_CONTENT_DIGEST, digest.as_str()))
                .finish());
        }
        BlobContent::Bytes { range, body } => (range, body),
    };
    let mut response = match range {
        Some(r) => {
            let mut partial = HttpResponse::PartialContent();
            partial.insert_header((header::CONTENT_RANGE, format!("bytes {}-{}/{}", r.start, r.end, read.size)));
            partial
        }
        None => HttpResponse::Ok(),
    };
    blob_headers(&mut response, &digest);
    let length = range.map_or(read.size, |r| r.len());
    // Counted as the bytes leave the store for the client, so an abandoned pull counts what it took.
    let served = &crate::metrics::Metrics::get().bytes_served;
    let body = body.inspect_ok(move |chunk| served.inc_by(chunk.len() as u64));
    Ok(response.body(SizedStream::new(length, body)))
}

/// `HEAD /v2/<name>/blobs/<digest>`
///
/// "A HEAD request to an existing blob or manifest URL MUST return 200 OK … MUST contain
/// the size in bytes … in the header Content-Length."
pub async fn head(state: State, req: HttpRequest, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (name, d) = path.into_inner();
    let (name, route) = authorized_pull(&state, &req, &name).await?;
    let digest = h::digest(&d)?;
    let size = match &route {
        Some(route) => state.registry.cached_blob_size(route, &digest).await?,
        None => match state.registry.blob_size(&name, &digest).await {
            Ok(size) => size,
            Err(e) => {
                let route = through_docker_mirror(&state, &req, &name, e).await?;
                state.registry.cached_blob_size(&route, &digest).await?
            }
        },
    };
    let mut response = HttpResponse::Ok();
    blob_headers(&mut response, &digest);
    Ok(response.body(HeadBody(size)))
}

/// `DELETE /v2/<name>/blobs/<digest>`
///
/// "Upon success, the registry MUST respond with code 202 Accepted. If the blob is not
/// found, a 404 Not Found code MUST be returned."
pub async fn delete(state: State, req: HttpRequest, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (name, d) = path.into_inner();
    let name = authorized(&state, &req, &name, &[Action::Delete]).await?;
    let digest = h::digest(&d)?;
    state.registry.delete_blob(&name, &digest).await?;
    Ok(HttpResponse::Accepted().finish())
}
