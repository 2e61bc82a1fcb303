//! The domain: what pushing, pulling and deleting mean, independent of HTTP.
//!
//! Layering: `api` → `registry` → (`storage`, `metadata`, `sessions`) → `oci`. Handlers
//! parse and answer; this layer decides; the ports do I/O. Nothing here sees an HTTP type,
//! and no port sees another.

mod blobs;
pub mod browse;
mod error;
mod health;
pub mod janitor;
pub mod lifecycle;
mod listing;
mod manifests;
mod uploads;
pub mod upstream;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::LocalBoxStream;

pub use blobs::{BlobContent, BlobRead, RangeRequest};
pub use error::Error;
pub use health::Check;
pub use listing::MAX_PAGE;
pub use manifests::PushedManifest;
pub use uploads::{Chunk, UploadState};

use crate::metadata::MetadataStore;
use crate::sessions::SessionStore;
use crate::storage::BlobStore;

/// A request body as it arrives.
pub type Body = LocalBoxStream<'static, Result<Bytes, BodyError>>;

/// Why a request body could not be read to its end.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BodyError(pub String);

/// Rules the operator can change.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Whether manifests, tags and blobs may be deleted.
    pub delete_enabled: bool,
    /// Largest manifest accepted, in bytes.
    pub max_manifest_size: usize,
    /// How long a chunk may hold its upload's lock without renewing it. A replica that dies
    /// mid-chunk blocks the upload for at most this long.
    pub lock_ttl: Duration,
    /// How long a request body may send nothing before the request is given up.
    pub body_idle_timeout: Duration,
    /// How long an upload may see no chunk before it is dropped.
    pub upload_idle_timeout: Duration,
    /// Retention, immutable tags and quotas.
    pub lifecycle: lifecycle::Lifecycle,
    /// The collector in `serve`.
    pub collector: lifecycle::Collector,
    /// Upstream registries cached here (`[[upstream]]`).
    pub upstreams: std::sync::Arc<upstream::Upstreams>,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            delete_enabled: true,
            max_manifest_size: 4 << 20,
            lock_ttl: Duration::from_secs(60),
            body_idle_timeout: Duration::from_secs(30),
            upload_idle_timeout: Duration::from_secs(3600),
            lifecycle: lifecycle::Lifecycle::default(),
            collector: lifecycle::Collector::default(),
            upstreams: std::sync::Arc::default(),
        }
    }
}

/// The registry: the three ports and the rules.
#[derive(Clone)]
pub struct Registry {
    pub(crate) blobs: Arc<dyn BlobStore>,
    pub(crate) metadata: Arc<dyn MetadataStore>,
    pub(crate) sessions: Arc<dyn SessionStore>,
    pub(crate) policy: Arc<Policy>,
    /// Pull times not yet written.
    pub(crate) pulls: Arc<lifecycle::pulls::Pulls>,
    /// The components the last readiness check found down, to log only the changes.
    down: Arc<std::sync::Mutex<std::collections::BTreeSet<&'static str>>>,
}

impl Registry {
    pub fn new(
        blobs: Arc<dyn BlobStore>,
        metadata: Arc<dyn MetadataStore>,
        sessions: Arc<dyn SessionStore>,
        policy: Policy,
    ) -> Registry {
        Registry { blobs, metadata, sessions, policy: Arc::new(policy), pulls: Arc::default(), down: Arc::default() }
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    pub fn upstreams(&self) -> &upstream::Upstreams {
        &self.policy.upstreams
    }

    fn check_delete_enabled(&self) -> Result<(), Error> {
        if self.policy.delete_enabled { Ok(()) } else { Err(Error::DeleteDisabled) }
    }
}
