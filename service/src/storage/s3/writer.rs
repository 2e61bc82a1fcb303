//! The writer of one chunk of an S3 upload: bytes into parts, the parts to the store while the
//! chunk still arrives, the rest where the next chunk finds it.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};

use super::streaming::{Pieces, StreamedPart};
use super::{Inner, MAX_PARTS, MIN_PART_SIZE, Part, S3Upload, Tail, part_size, s3_error};
use crate::oci::Digest;
use crate::storage::{StorageError, UploadHandle, UploadWriter};

/// Streams one chunk of an upload into parts.
pub(super) struct S3Writer {
    inner: Arc<Inner>,
    id: String,
    state: S3Upload,
    /// Where a multipart upload begun by this writer goes when the client named the digest.
    final_key: Option<String>,
    /// Number of the next part this writer sends. Numbers are never reused within a writer;
    /// a writer after a failed chunk reuses the failed chunk's numbers, replacing its parts.
    next_number: u32,
    /// A multipart upload this writer began (key, upload id): the session learns of it only
    /// when the writer finishes, so an abandoned writer aborts it itself.
    created: Option<(String, String)>,
    finished: bool,
    /// The previous chunk's tail, read back before the first byte of this chunk is added.
    pending_tail: Option<Tail>,
    /// Bytes received so far in the upload.
    offset: u64,
    /// Bytes of this chunk still to come, when the request said how many it has: a part is
    /// made a little larger rather than leave a remainder too small to be a part.
    chunk_left: Option<u64>,
    /// The part being filled: the request's own buffers, not a copy of them.
    buffer: Pieces,
    parts: JoinSet<Result<Part, StorageError>>,
    /// One permit per part buffer, filling or in flight: when all are taken, writing waits,
    /// and so does the client's request body.
    slots: Arc<Semaphore>,
    /// The slot of the buffer being filled.
    buffer_slot: Option<OwnedSemaphorePermit>,
    /// The part going up as its bytes arrive, when there is one (see [`super::streaming`]).
    streaming: Option<StreamedPart>,
}

impl S3Writer {
    /// A writer for the upload `id` at `offset`, whose state is `state`.
    pub(super) fn new(
        inner: Arc<Inner>,
        id: &str,
        mut state: S3Upload,
        final_key: Option<String>,
        offset: u64,
        length: Option<u64>,
    ) -> S3Writer {
        let slots = Arc::new(Semaphore::new(inner.options.concurrency));
        S3Writer {
            inner,
            id: id.to_owned(),
            final_key,
            next_number: state.next_part(),
            created: None,
            finished: false,
            pending_tail: state.tail.take(),
            state,
            offset,
            chunk_left: length,
            buffer: Pieces::default(),
            parts: JoinSet::new(),
            slots,
            buffer_slot: None,
            streaming: None,
        }
    }

    /// Takes the previous tail back into the buffer, ahead of this chunk's bytes.
    async fn load_tail(&mut self) -> Result<(), StorageError> {
        if let Some(tail) = self.pending_tail.take() {
            let bytes = self.inner.get_bytes(&tail.key).await?;
            if bytes.len() as u64 != tail.size || bytes.len() >= self.room().await? {
                return Err(StorageError::Io(std::io::Error::other("upload tail has an unexpected size")));
            }
            self.buffer.push(bytes);
            self.state.stale.push(tail.key);
        }
        Ok(())
    }

    async fn ensure_multipart(&mut self) -> Result<(String, String), StorageError> {
        if let (Some(key), Some(upload_id)) = (&self.state.key, &self.state.upload_id) {
            return Ok((key.clone(), upload_id.clone()));
        }
        let (key, content_addressed) = match self.final_key.take() {
            Some(key) => (key, true),
            None => (self.inner.object_key(&self.id), false),
        };
        let created = self
            .inner
            .client
            .create_multipart_upload()
            .bucket(self.inner.bucket())
            .key(&key)
            .send()
            .await
            .map_err(|e| s3_error("CreateMultipartUpload", e))?;
        let upload_id = created
            .upload_id()
            .ok_or_else(|| StorageError::Io(std::io::Error::other("CreateMultipartUpload returned no upload id")))?
            .to_owned();
        self.state.key = Some(key.clone());
        self.state.upload_id = Some(upload_id.clone());
        self.state.content_addressed = content_addressed;
        self.created = Some((key.clone(), upload_id.clone()));
        Ok((key, upload_id))
    }

    /// The multipart upload, the next part's number and a slot to send it in.
    async fn next_part(&mut self) -> Result<(String, String, u32, OwnedSemaphorePermit), StorageError> {
        let (key, upload_id) = self.ensure_multipart().await?;
        let number = self.next_number;
        self.next_number += 1;
        if number > MAX_PARTS {
            return Err(StorageError::Io(std::io::Error::other("blob too large: more than 10,000 parts")));
        }
        let permit = match self.buffer_slot.take() {
            Some(permit) => permit,
            None => self.slot().await?,
        };
        Ok((key, upload_id, number, permit))
    }

    /// Sends `bytes` as the next part, in the background once a slot is free.
    async fn send_part(&mut self, bytes: Pieces) -> Result<(), StorageError> {
        let (key, upload_id, number, permit) = self.next_part().await?;
        let inner = self.inner.clone();
        self.parts.spawn(async move {
            let size = bytes.len() as u64;
            let part = inner.upload_part(key, upload_id, number, size, bytes.body()).await;
            drop(permit);
            part
        });
        Ok(())
    }

    /// The size of the next part, when it can go up as it arrives: the chunk said its length
    /// (so the part's is known now), nothing is buffered ahead of it, and requests are not
    /// signed (a signature would need every byte before the first is sent). Parts of any size
    /// but the last must be whole parts.
    fn streamable(&self) -> Option<u64> {
        let options = &self.inner.options;
        let left = self.chunk_left?;
        if !options.unsigned_payload || !self.buffer.is_empty() || self.pending_tail.is_some() {
            return None;
        }
        let planned = (self.full_part_size() as u64).min(left);
        let whole = if options.uniform_parts {
            planned == self.full_part_size() as u64
        } else {
            planned >= MIN_PART_SIZE as u64
        };
        whole.then_some(planned)
    }

    /// Begins part `size` bytes long, streamed.
    async fn start_streaming(&mut self, size: u64) -> Result<(), StorageError> {
        let (key, upload_id, number, permit) = self.next_part().await?;
        self.streaming = Some(StreamedPart::start(self.inner.clone(), key, upload_id, number, size, permit));
        Ok(())
    }

    /// Records a part that went up, in number order, or passes on why it did not.
    fn finished_part(&mut self, done: Result<Result<Part, StorageError>, JoinError>) -> Result<(), StorageError> {
        let part = done.map_err(|e| StorageError::Io(std::io::Error::other(e)))??;
        let at = self.state.parts.partition_point(|p| p.number < part.number);
        self.state.parts.insert(at, part);
        Ok(())
    }

    /// Waits for every part in flight and records them.
    async fn drain(&mut self) -> Result<(), StorageError> {
        while let Some(done) = self.parts.join_next().await {
            self.finished_part(done)?;
        }
        Ok(())
    }

    /// The size the part being filled goes out at: the configured size (growing with the
    /// part number), or, unless parts must be uniform, that plus what would remain of the
    /// chunk if that remainder is too small to be a part of its own.
    fn full_part_size(&self) -> usize {
        let size = part_size(self.inner.options.part_size, self.next_number);
        let Some(left) = self.chunk_left.filter(|_| !self.inner.options.uniform_parts) else { return size };
        let room = size.saturating_sub(self.buffer.len()) as u64;
        match left.checked_sub(room) {
            // What is left of the chunk then goes in this part too.
            Some(after) if after > 0 && after < MIN_PART_SIZE as u64 => self.buffer.len() + left as usize,
            _ => size,
        }
    }

    /// Bytes the part being filled still takes. The part holds a slot from its first byte, so
    /// that parts filling and parts in flight together never exceed `concurrency`.
    async fn room(&mut self) -> Result<usize, StorageError> {
        if self.buffer_slot.is_none() {
            self.buffer_slot = Some(self.slot().await?);
        }
        Ok(self.full_part_size().saturating_sub(self.buffer.len()))
    }

    /// Waits for a free slot, and fails fast if a part already in flight failed.
    async fn slot(&mut self) -> Result<OwnedSemaphorePermit, StorageError> {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StorageError::Io(std::io::Error::other("part slots closed")))?;
        while let Some(done) = self.parts.try_join_next() {
            self.finished_part(done)?;
        }
        Ok(permit)
    }
}

/// Counts `n` more bytes of the chunk (whose rest is `chunk_left`, when known) as received.
fn taken(chunk_left: &mut Option<u64>, n: usize) {
    if let Some(left) = chunk_left {
        *left = left.saturating_sub(n as u64);
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // Parts still in flight are cancelled with the JoinSet.
        let (Some((key, upload_id)), false) = (self.created.take(), self.finished) else { return };
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let inner = self.inner.clone();
        runtime.spawn(async move {
            if let Err(e) = inner.abort_multipart(&key, &upload_id).await {
                tracing::warn!(%key, error = %e, "could not abort an abandoned multipart upload; the janitor will");
            }
        });
    }
}

#[async_trait]
impl UploadWriter for S3Writer {
    async fn write(&mut self, mut bytes: Bytes) -> Result<(), StorageError> {
        self.load_tail().await?;
        self.offset += bytes.len() as u64;
        while !bytes.is_empty() {
            if self.streaming.is_none()
                && let Some(size) = self.streamable()
            {
                self.start_streaming(size).await?;
            }
            if let Some(part) = &mut self.streaming {
                let take = (part.room() as usize).min(bytes.len());
                taken(&mut self.chunk_left, take);
                part.feed(bytes.split_to(take)).await;
                if part.room() == 0
                    && let Some(part) = self.streaming.take()
                {
                    let inner = self.inner.clone();
                    self.parts.spawn(part.stored(inner));
                }
                continue;
            }
            let take = self.room().await?.min(bytes.len());
            taken(&mut self.chunk_left, take);
            self.buffer.push(bytes.split_to(take));
            if self.room().await? == 0 {
                let part = std::mem::take(&mut self.buffer);
                self.send_part(part).await?;
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>, last: Option<&Digest>) -> Result<UploadHandle, StorageError> {
        let handle = self.store_rest(last).await?;
        self.finished = true;
        Ok(handle)
    }
}

impl S3Writer {
    /// The work of [`UploadWriter::finish`]: waits for the parts in flight and puts the
    /// bytes short of a part where they belong.
    async fn store_rest(&mut self, last: Option<&Digest>) -> Result<UploadHandle, StorageError> {
        if self.pending_tail.is_some() {
            // No byte came in this chunk: the upload is as it was.
            self.state.tail = self.pending_tail.take();
            return Ok(self.state.to_handle());
        }
        if let Some(part) = &self.streaming {
            // The chunk ended before a part its length planned: the request said more than it sent.
            return Err(StorageError::Io(std::io::Error::other(format!(
                "part {} of the chunk has {} of its {} bytes",
                part.number, part.sent, part.size
            ))));
        }
        self.drain().await?;
        let rest = std::mem::take(&mut self.buffer);
        match last {
            // The final bytes, with the digest verified: they go where the blob ends.
            Some(digest) if self.state.upload_id.is_none() => {
                let key = self.inner.blob_key(digest);
                self.inner.put_object(&key, rest.concat()).await?;
                self.state.stored = true;
            }
            Some(_) if !rest.is_empty() => {
                self.send_part(rest).await?;
                self.drain().await?;
            }
            Some(_) => {}
            // More chunks may follow. Enough for a part is one; less is kept where any replica
            // can find it, until the next chunk makes a part of it.
            None if rest.len() >= MIN_PART_SIZE && !self.inner.options.uniform_parts => {
                self.send_part(rest).await?;
                self.drain().await?;
            }
            None if !rest.is_empty() => {
                // Named by the range it holds: a tail that grew keeps its start but not its end,
                // so the tail it replaces (deleted later) never shares its key.
                let start = self.offset - rest.len() as u64;
                let key = format!("{}tail-{start}-{}", self.inner.upload_prefix(&self.id), self.offset);
                let size = rest.len() as u64;
                self.inner.put_object(&key, rest.concat()).await?;
                self.state.tail = Some(Tail { key, size });
            }
            None => {}
        }
        Ok(self.state.to_handle())
    }
}
