//! The one error table: every domain error's HTTP status and OCI error code, and the
//! `{"errors":[…]}` body they are rendered into.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde_json::json;

use crate::auth::Denial;
use crate::registry::Error;

/// Seconds a client is told to wait before retrying when a backend is down.
const RETRY_AFTER_SECONDS: &str = "5";

/// A response-ready error: a domain error, or one the HTTP layer found on its own.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Registry(#[from] Error),
    #[error("{0}")]
    NotFound(String),
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error(transparent)]
    Auth(#[from] Denial),
}

/// The OCI error codes (distribution-spec, "Error Codes"), plus the two used on 5xx answers,
/// which the spec leaves free.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Code {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
    Internal,
}

impl Code {
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BlobUnknown => "BLOB_UNKNOWN",
            Code::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            Code::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            Code::DigestInvalid => "DIGEST_INVALID",
            Code::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            Code::ManifestInvalid => "MANIFEST_INVALID",
            Code::ManifestUnknown => "MANIFEST_UNKNOWN",
            Code::NameInvalid => "NAME_INVALID",
            Code::NameUnknown => "NAME_UNKNOWN",
            Code::SizeInvalid => "SIZE_INVALID",
            Code::Unauthorized => "UNAUTHORIZED",
            Code::Denied => "DENIED",
            Code::Unsupported => "UNSUPPORTED",
            Code::TooManyRequests => "TOOMANYREQUESTS",
            Code::Unavailable => "UNAVAILABLE",
            Code::Internal => "INTERNAL_ERROR",
        }
    }
}

impl ApiError {
    /// The table.
    pub fn classify(&self) -> (StatusCode, Code) {
        use StatusCode as S;
        match self {
            ApiError::Registry(e) => match e {
                Error::BlobUnknown => (S::NOT_FOUND, Code::BlobUnknown),
                Error::BlobUploadUnknown => (S::NOT_FOUND, Code::BlobUploadUnknown),
                Error::BlobUploadInvalid(_) => (S::BAD_REQUEST, Code::BlobUploadInvalid),
                Error::UploadOutOfOrder { .. } => (S::RANGE_NOT_SATISFIABLE, Code::BlobUploadInvalid),
                Error::RangeNotSatisfiable { .. } => (S::RANGE_NOT_SATISFIABLE, Code::SizeInvalid),
                Error::DigestInvalid(_) => (S::BAD_REQUEST, Code::DigestInvalid),
                Error::ManifestBlobUnknown(_) => (S::BAD_REQUEST, Code::ManifestBlobUnknown),
                Error::ManifestInvalid(_) => (S::BAD_REQUEST, Code::ManifestInvalid),
                Error::ManifestUnknown => (S::NOT_FOUND, Code::ManifestUnknown),
                Error::ManifestTooLarge { .. } => (S::PAYLOAD_TOO_LARGE, Code::SizeInvalid),
                Error::NameInvalid(_) => (S::BAD_REQUEST, Code::NameInvalid),
                Error::NameUnknown => (S::NOT_FOUND, Code::NameUnknown),
                Error::TagInvalid(_) => (S::BAD_REQUEST, Code::ManifestInvalid),
                Error::SizeInvalid(_) => (S::BAD_REQUEST, Code::SizeInvalid),
                Error::PaginationInvalid(_) => (S::BAD_REQUEST, Code::Unsupported),
                Error::TooManyTags { .. } => (S::URI_TOO_LONG, Code::Unsupported),
                Error::DeleteDisabled => (S::METHOD_NOT_ALLOWED, Code::Unsupported),
                Error::Denied(_) => (S::FORBIDDEN, Code::Denied),
                Error::LeaseLost => (S::SERVICE_UNAVAILABLE, Code::Unavailable),
                Error::Unavailable { .. } | Error::TryAgain(_) => (S::SERVICE_UNAVAILABLE, Code::Unavailable),
                Error::StorageFull(_) => (S::INSUFFICIENT_STORAGE, Code::Unavailable),
                Error::BadUpstream(_) => (S::BAD_GATEWAY, Code::Unavailable),
                Error::Internal(_) => (S::INTERNAL_SERVER_ERROR, Code::Internal),
            },
            ApiError::NotFound(_) => (S::NOT_FOUND, Code::NameUnknown),
            ApiError::MethodNotAllowed => (S::METHOD_NOT_ALLOWED, Code::Unsupported),
            ApiError::Auth(denial) => match denial {
                Denial::Unauthenticated { .. } | Denial::InsufficientScope { again: false, .. } => {
                    (S::UNAUTHORIZED, Code::Unauthorized)
                }
                Denial::Forbidden(_) | Denial::InsufficientScope { again: true, .. } => (S::FORBIDDEN, Code::Denied),
                Denial::TooManyAttempts { .. } => (S::TOO_MANY_REQUESTS, Code::TooManyRequests),
                Denial::BadRequest(_) => (S::BAD_REQUEST, Code::Unsupported),
            },
        }
    }

    /// What the client is told. Server errors say what kind of trouble it is and nothing of its
    /// detail (an address, a path, a store's own words), which goes to the log with the
    /// request id the answer carries.
    fn message(&self) -> String {
        match self {
            ApiError::Registry(Error::Unavailable { component, .. }) => {
                format!("the registry's {component} is unavailable; try again shortly")
            }
            ApiError::Registry(Error::StorageFull(_)) => {
                "the registry's storage is full; nothing more can be stored until space is freed".into()
            }
            ApiError::Registry(Error::Internal(_)) => "internal error".into(),
            other => other.to_string(),
        }
    }

    /// The `errors` entries: one per missing reference for `MANIFEST_BLOB_UNKNOWN`, as the
    /// spec asks, one otherwise. Server errors name the request id under which the log has
    /// the rest.
    fn entries(&self, code: Code, status: StatusCode) -> Vec<serde_json::Value> {
        if let ApiError::Registry(Error::ManifestBlobUnknown(missing)) = self {
            return missing
                .iter()
                .map(|d| json!({"code": code.as_str(), "message": "manifest references a blob or manifest unknown to this repository", "detail": {"digest": d.as_str()}}))
                .collect();
        }
        let message = self.message();
        match super::observe::request_id().filter(|_| status.is_server_error()) {
            Some(id) => vec![json!({
                "code": code.as_str(),
                "message": format!("{message} (request id {id})"),
                "detail": {"request_id": id},
            })],
            None => vec![json!({"code": code.as_str(), "message": message})],
        }
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.classify().0
    }

    fn error_response(&self) -> HttpResponse {
        let (status, code) = self.classify();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), error = %self, "request failed");
        }
        let mut response = HttpResponse::build(status);
        if status.is_server_error() {
            // The request's body may be unread (a chunk cut short by the failure): close the
            // connection after the answer rather than leave the client's upload stalled on it.
            response.force_close();
        }
        match self {
            ApiError::Registry(Error::UploadOutOfOrder { offset, .. }) => {
                response.insert_header((header::RANGE, super::headers::upload_range(*offset)));
            }
            ApiError::Registry(Error::RangeNotSatisfiable { size }) => {
                response.insert_header((header::CONTENT_RANGE, format!("bytes */{size}")));
            }
            ApiError::Registry(e) if e.is_retryable() => {
                response.insert_header((header::RETRY_AFTER, HeaderValue::from_static(RETRY_AFTER_SECONDS)));
            }
            ApiError::Auth(Denial::Unauthenticated { challenge, .. } | Denial::InsufficientScope { challenge, .. }) => {
                response.insert_header((header::WWW_AUTHENTICATE, challenge.as_str()));
            }
            ApiError::Auth(Denial::TooManyAttempts { retry_after }) => {
                response.insert_header((header::RETRY_AFTER, retry_after.as_secs().max(1).to_string()));
            }
            _ => {}
        }
        response.json(json!({ "errors": self.entries(code, status) }))
    }
}

/// Shorthand for handler results.
pub type ApiResult<T> = Result<T, ApiError>;
