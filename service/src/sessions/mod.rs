//! The `SessionStore` port: upload sessions in progress and the lock that keeps two chunks
//! of one upload from being written at once.
//!
//! Implementations: [`memory::MemorySessions`] (the embedded default; one replica only).
//! Every implementation passes the contract suite in `tests/sessions_contract.rs`.

pub mod instrumented;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::oci::Algorithm;
use crate::storage::UploadHandle;

/// Everything a replica needs to continue an upload that another replica started.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UploadSession {
    /// The id in the upload URL (a UUID).
    pub id: String,
    /// The repository the upload was started in; the URL of every later request must name it.
    pub repository: String,
    /// The algorithm the bytes are hashed with.
    pub algorithm: Algorithm,
    /// Bytes received so far; the next chunk must start here.
    pub offset: u64,
    /// The running hash over those bytes, as [`crate::oci::Hasher::save`] wrote it.
    #[serde(with = "hex_bytes")]
    pub hash_state: Vec<u8>,
    /// The blob store's state for this upload.
    pub handle: UploadHandle,
    /// Unix milliseconds.
    pub created_at: i64,
}

/// Proof of holding a session's lock; only its holder may save the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockToken(pub String);

impl LockToken {
    pub fn random() -> LockToken {
        LockToken(uuid::Uuid::new_v4().simple().to_string())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The store cannot be reached; the request may be retried.
    #[error("session store unavailable: {0}")]
    Unavailable(String),
    #[error("session store error: {0}")]
    Other(String),
}

/// Upload sessions.
///
/// Contract (checked by the suite):
/// - A session that has not been created, was deleted, or was idle (not saved) for longer
///   than the store's idle timeout is gone: `get` returns `Ok(None)`.
/// - `lock` succeeds for one caller at a time; a lock not renewed within `ttl` expires, so a
///   replica that dies holding it blocks the upload for at most `ttl`.
/// - `save`, `renew` and `unlock` act only with the current token; `save` and `renew`
///   return `false` (changing nothing) when the lock is no longer the caller's.
/// - `delete` is idempotent.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    fn kind(&self) -> &'static str;

    async fn create(&self, session: &UploadSession) -> Result<(), SessionError>;

    async fn get(&self, id: &str) -> Result<Option<UploadSession>, SessionError>;

    /// Takes the session's lock for `ttl`; `None` if someone else holds it.
    async fn lock(&self, id: &str, ttl: Duration) -> Result<Option<LockToken>, SessionError>;

    /// Extends a held lock by `ttl` from now, and the session's idle expiry with it.
    async fn renew(&self, id: &str, token: &LockToken, ttl: Duration) -> Result<bool, SessionError>;

    /// Stores the session if `token` still holds its lock, and refreshes its idle expiry.
    async fn save(&self, session: &UploadSession, token: &LockToken) -> Result<bool, SessionError>;

    async fn unlock(&self, id: &str, token: &LockToken) -> Result<(), SessionError>;

    async fn delete(&self, id: &str) -> Result<(), SessionError>;

    /// Takes the lease `key` (no session behind it) for `ttl`; `None` while someone else holds
    /// it. One holder at a time across every replica sharing the store: the upstream fetch of
    /// a blob is made once.
    async fn lease(&self, key: &str, ttl: Duration) -> Result<Option<LockToken>, SessionError>;

    /// Extends a held lease by `ttl` from now; `false` when it is no longer the caller's.
    async fn renew_lease(&self, key: &str, token: &LockToken, ttl: Duration) -> Result<bool, SessionError>;

    /// Gives a lease up, if `token` still holds it.
    async fn release_lease(&self, key: &str, token: &LockToken) -> Result<(), SessionError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), SessionError>;
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        hex::decode(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}
