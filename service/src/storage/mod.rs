//! The `BlobStore` port: where blob bytes live, content-addressed, and where uploads in
//! progress accumulate until they are committed.
//!
//! Implementations: [`filesystem::FilesystemStore`] (the embedded default). Every
//! implementation passes the contract suite in `tests/blobstore_contract.rs`.
//!
//! The store knows nothing of repositories, sessions or metadata: the domain layer decides
//! *whether* a blob may be read or committed; the store only moves bytes.

pub mod filesystem;
pub mod instrumented;
pub mod s3;

use std::pin::Pin;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::oci::Digest;

/// Blob bytes as they arrive from the store.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, StorageError>> + Send>>;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The blob or upload does not exist.
    #[error("not found")]
    NotFound,
    /// The store cannot be reached or refuses service for now; the request may be retried.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error("storage I/O error: {0}")]
    Io(#[from] std::io::Error),
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound)
            || matches!(self, StorageError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// An inclusive byte range of a blob, already checked against its size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// The store's state for one upload in progress (part numbers, temporary keys, …), saved
/// in the upload session between chunks so that any replica can continue it. Opaque to
/// everything but the store that made it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UploadHandle(pub serde_json::Value);

/// An upload the store holds, as the janitor sees it.
#[derive(Clone, Debug)]
pub struct StoredUpload {
    pub id: String,
    /// Last time bytes were written to it.
    pub modified: SystemTime,
}

/// Blob storage.
///
/// A blob lives at the store's content-addressed place for its digest, or, when
/// [`BlobStore::commit_upload`] says so, at a *location* the store chose (an object key).
/// The metadata store records that location next to the digest and hands it back on every
/// read: a "metadata pointer" that lets a store commit an upload without moving its bytes.
///
/// Contract (checked by the suite):
/// - Blobs are immutable; committing a digest that is already stored keeps one copy.
/// - `stat`/`get` of a missing blob return `Ok(None)` / `Err(NotFound)`.
/// - An upload is written through a [`UploadWriter`] opened at the offset the session holds;
///   bytes past that offset from an earlier, failed writer are discarded, so a chunk that
///   failed half-way can simply be sent again.
/// - Nothing of an upload is visible as a blob before `commit_upload`.
/// - `abort_upload` and `delete` are idempotent, and an aborted upload leaves nothing behind.
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Short backend name for logs and metrics.
    fn kind(&self) -> &'static str;

    /// Size of the blob, or `None` if it is not stored.
    async fn stat(&self, digest: &Digest, location: Option<&str>) -> Result<Option<u64>, StorageError>;

    /// The blob's bytes, or only `range` of them.
    async fn get(
        &self,
        digest: &Digest,
        location: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ByteStream, StorageError>;

    /// A short-lived URL from which a client can fetch the whole blob without Berth, when
    /// the store offers one and is configured to; `None` means Berth serves the bytes.
    async fn redirect_url(&self, _digest: &Digest, _location: Option<&str>) -> Result<Option<String>, StorageError> {
        Ok(None)
    }

    /// Removes a blob. Only the garbage collector calls this.
    async fn delete(&self, digest: &Digest, location: Option<&str>) -> Result<(), StorageError>;

    /// Removes blobs (digest and location each), as many at once as the store allows; fails
    /// if any could not be removed.
    async fn delete_many(&self, blobs: &[(Digest, Option<String>)]) -> Result<(), StorageError> {
        for chunk in blobs.chunks(16) {
            let mut deletes = Vec::with_capacity(chunk.len());
            for (digest, location) in chunk {
                deletes.push(self.delete(digest, location.as_deref()));
            }
            for result in futures_util::future::join_all(deletes).await {
                result?;
            }
        }
        Ok(())
    }

    /// Prepares a new upload with the given id.
    async fn start_upload(&self, id: &str) -> Result<UploadHandle, StorageError>;

    /// Opens the upload for appending at `offset`. `digest` is the digest the client
    /// announced for the whole blob, when it did so up front (not yet verified): a store may
    /// use it to write straight to where the blob will end up. `length` is how many bytes
    /// this writer will be given, when the request said (`Content-Length`): a store may plan
    /// its parts by it.
    async fn open_writer(
        &self,
        id: &str,
        handle: &UploadHandle,
        offset: u64,
        digest: Option<&Digest>,
        length: Option<u64>,
    ) -> Result<Box<dyn UploadWriter>, StorageError>;

    /// The smallest chunk that does not cost the store extra work, for the
    /// `OCI-Chunk-Min-Length` a `POST` advertises; `None` when any size is as good.
    fn min_chunk_length(&self) -> Option<u64> {
        None
    }

    /// The first `size` bytes of an upload in progress, all of its chunks finished, streamed:
    /// for checking a closing digest of another algorithm than the one the upload was hashed
    /// with as it arrived. The store may first move the bytes to where it can read them, but
    /// only to a place of this upload's own, never where a blob of some digest is kept: they
    /// are not verified yet. The handle returned replaces the session's for the commit or
    /// abort that follows.
    async fn read_upload(
        &self,
        id: &str,
        handle: &UploadHandle,
        size: u64,
    ) -> Result<(UploadHandle, ByteStream), StorageError>;

    /// Makes the first `size` bytes of the upload the blob `digest` (already verified by
    /// the caller) and releases the upload. Returns the blob's location when it is not at
    /// its content-addressed place.
    async fn commit_upload(
        &self,
        id: &str,
        handle: &UploadHandle,
        size: u64,
        digest: &Digest,
    ) -> Result<Option<String>, StorageError>;

    /// Discards an upload and everything it stored; `handle` is `None` when the session that
    /// knew it is gone.
    async fn abort_upload(&self, id: &str, handle: Option<&UploadHandle>) -> Result<(), StorageError>;

    /// Uploads the store holds, for the janitor to find the ones no session knows any more.
    async fn list_uploads(&self) -> Result<Vec<StoredUpload>, StorageError>;

    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StorageError>;
}

/// Appends the bytes of one chunk to an upload.
#[async_trait]
pub trait UploadWriter: Send {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError>;

    /// Waits until every byte written is stored and returns the handle to save in the
    /// session. `last` is the verified digest of the whole blob when these were the upload's
    /// final bytes, so that the store can put them where the blob ends instead of keeping
    /// them for a next chunk. Dropping a writer without calling this abandons the chunk.
    async fn finish(self: Box<Self>, last: Option<&Digest>) -> Result<UploadHandle, StorageError>;
}
