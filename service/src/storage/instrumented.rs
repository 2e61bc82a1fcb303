//! A `BlobStore` that times every operation into the metrics and wraps it in a trace span,
//! around whichever store it is given.

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use super::{BlobStore, ByteRange, ByteStream, StorageError, StoredUpload, UploadHandle, UploadWriter};
use crate::metrics::{self, Metrics};
use crate::oci::Digest;

pub struct Instrumented(pub Arc<dyn BlobStore>);

async fn timed<T>(
    backend: &'static str,
    operation: &'static str,
    work: impl Future<Output = Result<T, StorageError>>,
) -> Result<T, StorageError> {
    let m = Metrics::get();
    let span = tracing::info_span!("storage", otel.name = %format_args!("storage.{operation}"), backend, operation);
    metrics::timed(span, (&m.storage_seconds, &m.storage_errors), backend, operation, work).await
}

#[async_trait]
impl BlobStore for Instrumented {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    async fn stat(&self, digest: &Digest, location: Option<&str>) -> Result<Option<u64>, StorageError> {
        timed(self.kind(), "stat", self.0.stat(digest, location)).await
    }

    async fn get(
        &self,
        digest: &Digest,
        location: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ByteStream, StorageError> {
        timed(self.kind(), "get", self.0.get(digest, location, range)).await
    }

    async fn redirect_url(&self, digest: &Digest, location: Option<&str>) -> Result<Option<String>, StorageError> {
        timed(self.kind(), "presign", self.0.redirect_url(digest, location)).await
    }

    async fn delete(&self, digest: &Digest, location: Option<&str>) -> Result<(), StorageError> {
        timed(self.kind(), "delete", self.0.delete(digest, location)).await
    }

    async fn delete_many(&self, blobs: &[(Digest, Option<String>)]) -> Result<(), StorageError> {
        timed(self.kind(), "delete_many", self.0.delete_many(blobs)).await
    }

    async fn start_upload(&self, id: &str) -> Result<UploadHandle, StorageError> {
        timed(self.kind(), "start_upload", self.0.start_upload(id)).await
    }

    async fn open_writer(
        &self,
        id: &str,
        handle: &UploadHandle,
        offset: u64,
        digest: Option<&Digest>,
        length: Option<u64>,
    ) -> Result<Box<dyn UploadWriter>, StorageError> {
        let inner = timed(self.kind(), "open_writer", self.0.open_writer(id, handle, offset, digest, length)).await?;
        Ok(Box::new(Counted { inner, backend: self.kind() }))
    }

    fn min_chunk_length(&self) -> Option<u64> {
        self.0.min_chunk_length()
    }

    async fn read_upload(
        &self,
        id: &str,
        handle: &UploadHandle,
        size: u64,
    ) -> Result<(UploadHandle, ByteStream), StorageError> {
        timed(self.kind(), "read_upload", self.0.read_upload(id, handle, size)).await
    }

    async fn commit_upload(
        &self,
        id: &str,
        handle: &UploadHandle,
        size: u64,
        digest: &Digest,
    ) -> Result<Option<String>, StorageError> {
        timed(self.kind(), "commit_upload", self.0.commit_upload(id, handle, size, digest)).await
    }

    async fn abort_upload(&self, id: &str, handle: Option<&UploadHandle>) -> Result<(), StorageError> {
        timed(self.kind(), "abort_upload", self.0.abort_upload(id, handle)).await
    }

    async fn list_uploads(&self) -> Result<Vec<StoredUpload>, StorageError> {
        timed(self.kind(), "list_uploads", self.0.list_uploads()).await
    }

    async fn ping(&self) -> Result<(), StorageError> {
        timed(self.kind(), "ping", self.0.ping()).await
    }
}

/// Counts the bytes a writer takes; its final flush is timed like any operation.
struct Counted {
    inner: Box<dyn UploadWriter>,
    backend: &'static str,
}

#[async_trait]
impl UploadWriter for Counted {
    async fn write(&mut self, bytes: Bytes) -> Result<(), StorageError> {
        Metrics::get().bytes_uploaded.inc_by(bytes.len() as u64);
        self.inner.write(bytes).await
    }

    async fn finish(self: Box<Self>, last: Option<&Digest>) -> Result<UploadHandle, StorageError> {
        let Counted { inner, backend } = *self;
        timed(backend, "finish_chunk", inner.finish(last)).await
    }
}
