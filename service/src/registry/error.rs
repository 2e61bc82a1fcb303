//! Domain errors. Each variant is one row of the error table in `api::error`, which gives it
//! its OCI error code and HTTP status.

use crate::metadata::MetadataError;
use crate::oci::{Digest, NameError};
use crate::sessions::SessionError;
use crate::storage::StorageError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("blob upload unknown to registry")]
    BlobUploadUnknown,
    #[error("blob upload invalid: {0}")]
    BlobUploadInvalid(String),
    /// A chunk that does not start where the upload stands, or that arrived while another
    /// chunk of the upload was being written.
    #[error("{reason}; the upload stands at offset {offset}")]
    UploadOutOfOrder { offset: u64, reason: String },
    #[error("requested range not satisfiable: the blob has {size} bytes")]
    RangeNotSatisfiable { size: u64 },
    #[error("{0}")]
    DigestInvalid(String),
    #[error("manifest references content unknown to this repository: {}", list(.0))]
    ManifestBlobUnknown(Vec<Digest>),
    #[error("{0}")]
    ManifestInvalid(String),
    #[error("manifest unknown to registry")]
    ManifestUnknown,
    #[error("manifest is larger than the limit of {limit} bytes")]
    ManifestTooLarge { limit: usize },
    #[error("{0}")]
    NameInvalid(String),
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("{0}")]
    TagInvalid(String),
    #[error("{0}")]
    SizeInvalid(String),
    #[error("{0}")]
    PaginationInvalid(String),
    #[error("too many tags in one request (at most {limit})")]
    TooManyTags { limit: usize },
    #[error("deletes are disabled on this registry")]
    DeleteDisabled,
    /// A lifecycle rule (an immutable tag, a quota) refuses the request; the message says
    /// which and why.
    #[error("{0}")]
    Denied(String),
    /// The collector's lease was taken over: the run stops, having changed nothing more.
    #[error("the collector's lease was taken over")]
    LeaseLost,
    /// A backend cannot be reached; the client may retry. The detail is for the log: clients
    /// are told which part of the registry is down, never its address or its error.
    #[error("the registry's {component} is unavailable: {detail}")]
    Unavailable { component: &'static str, detail: String },
    /// A request the client may retry shortly, in words meant for it.
    #[error("{0}")]
    TryAgain(String),
    /// The blob store or the database has no space left: nothing more can be stored until the
    /// operator frees some. What was stored before is untouched. The detail is for the log.
    #[error("the registry's storage is full ({0}); nothing more can be stored until space is freed")]
    StorageFull(String),
    /// An upstream registry sent what Berth refuses to cache (bytes that do not match their
    /// digest, a manifest over the limit, a redirect loop): 502.
    #[error("{0}")]
    BadUpstream(String),
    /// Something that is not the client's doing; the detail is for the log.
    #[error("internal error: {0}")]
    Internal(String),
}

fn list(digests: &[Digest]) -> String {
    digests.iter().map(Digest::as_str).collect::<Vec<_>>().join(", ")
}

impl Error {
    /// Whether the client may retry the request as it is.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Unavailable { .. } | Error::TryAgain(_))
    }
}

impl From<NameError> for Error {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Repository(..) => Error::NameInvalid(e.to_string()),
            NameError::Tag(_) => Error::TagInvalid(e.to_string()),
            NameError::Digest(..) => Error::DigestInvalid(e.to_string()),
        }
    }
}

impl From<StorageError> for Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Unavailable(detail) => Error::Unavailable { component: "blob store", detail },
            StorageError::Io(ref io)
                if matches!(io.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded) =>
            {
                Error::StorageFull(e.to_string())
            }
            other => Error::Internal(other.to_string()),
        }
    }
}

impl From<MetadataError> for Error {
    fn from(e: MetadataError) -> Self {
        match e {
            MetadataError::Unavailable(detail) => Error::Unavailable { component: "database", detail },
            MetadataError::BlobBeingRemoved(d) => {
                Error::TryAgain(format!("blob {d} is being garbage-collected; try again shortly"))
            }
            MetadataError::Full(m) => Error::StorageFull(m),
            MetadataError::QuotaExceeded(q) => Error::Denied(q.to_string()),
            MetadataError::Fenced(_) => Error::LeaseLost,
            MetadataError::Other(m) => Error::Internal(m),
        }
    }
}

impl From<SessionError> for Error {
    fn from(e: SessionError) -> Self {
        match e {
            SessionError::Unavailable(detail) => Error::Unavailable { component: "session store", detail },
            SessionError::Other(m) => Error::Internal(m),
        }
    }
}
