//! Blob uploads: end-4a/b/c, end-5, end-6, end-11, end-13 and end-14.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};

use super::error::ApiResult;
use super::headers::{self as h, query_value};
use super::{AppState, State, authorized, body, caller};
use crate::auth::Action;
use crate::oci::{Algorithm, Digest, RepoName};
use crate::registry::{Chunk, Error, UploadState};

fn chunk(req: &HttpRequest, payload: web::Payload) -> ApiResult<Chunk> {
    Ok(Chunk {
        range: h::content_range(req.headers())?,
        length: h::content_length(req.headers())?,
        body: body::stream(payload),
    })
}

fn accepted(name: &RepoName, state: &UploadState, status: actix_web::http::StatusCode) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::LOCATION, h::upload_location(name, &state.id)))
        .insert_header((header::RANGE, h::upload_range(state.offset)))
        .insert_header((h::DOCKER_UPLOAD_UUID, state.id.as_str()))
        .finish()
}

/// The repository and upload id of an upload URL, once the request may push there.
async fn upload_target(
    state: &AppState,
    req: &HttpRequest,
    path: web::Path<(String, String)>,
) -> ApiResult<(RepoName, String)> {
    let (name, id) = path.into_inner();
    Ok((authorized(state, req, &name, &[Action::Pull, Action::Push]).await?, id))
}

fn created(name: &RepoName, digest: &Digest) -> HttpResponse {
    HttpResponse::Created()
        .insert_header((header::LOCATION, h::blob_location(name, digest)))
        .insert_header((h::DOCKER_CONTENT_DIGEST, digest.as_str()))
        .finish()
}

/// `POST /v2/<name>/blobs/uploads/`
///
/// "To obtain a session ID, perform a POST request … Upon success, the response MUST have a
/// code of 202 Accepted"; with `?digest=` and a body, a single-request upload answered 201;
/// with `?mount=<digest>&from=<other_name>`, "the response to a successful mount MUST be
/// 201 Created", and a blob that cannot be mounted starts a session (202) instead.
pub async fn start(
    state: State,
    req: HttpRequest,
    path: web::Path<String>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let query = h::query_pairs(&req);
    let mount_from = match (query_value(&query, "mount"), query_value(&query, "from")) {
        (Some(_), Some(from)) => Some(super::repository(from)?),
        _ => None,
    };
    let (name, may_mount) = match &mount_from {
        Some(from) => {
            let name = super::repository(&path)?;
            // A source the caller may not read is treated as one that lacks the blob.
            let readable = state.auth.check_mount(&caller(&state, &req), &name, from).await?;
            (name, readable)
        }
        None => (authorized(&state, &req, &path, &[Action::Pull, Action::Push]).await?, false),
    };
    let registry = &state.registry;
    if let Some(mount) = query_value(&query, "mount") {
        let digest = h::digest(mount)?;
        if let (Some(from), true) = (&mount_from, may_mount)
            && registry.mount_blob(&name, &digest, from).await?.is_some()
        {
            return Ok(created(&name, &digest));
        }
    } else if let Some(digest) = query_value(&query, "digest") {
        let digest = h::digest(digest)?;
        let empty_blob = digest == Digest::compute(digest.algorithm(), b"");
        if h::has_body(req.headers())? || empty_blob {
            registry.push_blob(&name, &digest, chunk(&req, payload)?).await?;
            return Ok(created(&name, &digest));
        }
    }
    let algorithm = match query_value(&query, "digest-algorithm") {
        Some(a) => a.parse::<Algorithm>().map_err(|e| Error::DigestInvalid(e.to_string()))?,
        None => Algorithm::Sha256,
    };
    let upload = registry.start_upload(&name, algorithm).await?;
    let mut response = accepted(&name, &upload, actix_web::http::StatusCode::ACCEPTED);
    // "If the registry has a minimum chunk size, the POST response SHOULD include …
    // OCI-Chunk-Min-Length": smaller chunks cost the S3 store a tail object.
    if let Some(min) = registry.min_chunk_length()
        && let Ok(value) = header::HeaderValue::from_str(&min.to_string())
    {
        response.headers_mut().insert(header::HeaderName::from_static("oci-chunk-min-length"), value);
    }
    Ok(response)
}

/// `PATCH <location>`
///
/// "The response for each successful chunk upload MUST be 202 Accepted … If a chunk is
/// uploaded out of order, the registry MUST respond with a 416."
pub async fn patch(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let (name, id) = upload_target(&state, &req, path).await?;
    let upload = state.registry.write_chunk(&name, &id, chunk(&req, payload)?).await?;
    Ok(accepted(&name, &upload, actix_web::http::StatusCode::ACCEPTED))
}

/// `PUT <location>?digest=<digest>`
///
/// "The closing PUT request MUST include the <digest> of the whole blob … The response to a
/// successful closing of the session MUST be 201 Created."
pub async fn put(
    state: State,
    req: HttpRequest,
    path: web::Path<(String, String)>,
    payload: web::Payload,
) -> ApiResult<HttpResponse> {
    let (name, id) = upload_target(&state, &req, path).await?;
    let query = h::query_pairs(&req);
    let digest = query_value(&query, "digest")
        .ok_or_else(|| Error::DigestInvalid("the closing PUT needs ?digest=<digest of the whole blob>".into()))?;
    let digest = h::digest(digest)?;
    let last_chunk = if h::has_body(req.headers())? { Some(chunk(&req, payload)?) } else { None };
    state.registry.finish_upload(&name, &id, &digest, last_chunk).await?;
    Ok(created(&name, &digest))
}

/// `GET <location>`
///
/// "The response to an active upload <blob-push-location> MUST be a 204 No Content response
/// code, and MUST have the following headers: Location, Range."
pub async fn status(state: State, req: HttpRequest, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (name, id) = upload_target(&state, &req, path).await?;
    let upload = state.registry.upload_state(&name, &id).await?;
    Ok(accepted(&name, &upload, actix_web::http::StatusCode::NO_CONTENT))
}

/// `DELETE <location>`
///
/// "During a blob upload, the session may be canceled with a DELETE request … If successful,
/// the response SHOULD be a 204 No Content response code."
pub async fn cancel(state: State, req: HttpRequest, path: web::Path<(String, String)>) -> ApiResult<HttpResponse> {
    let (name, id) = upload_target(&state, &req, path).await?;
    state.registry.cancel_upload(&name, &id).await?;
    Ok(HttpResponse::NoContent().finish())
}
