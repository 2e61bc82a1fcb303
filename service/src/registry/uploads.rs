//! Blob uploads: sessions, chunks, digest verification and commit.
//!
//! Every chunk is written under the session's lock and starts exactly at the offset the
//! session records. The session (offset, hash state, store handle) is saved only after the
//! store has taken every byte of the chunk, so a chunk that fails half-way changes nothing:
//! the upload stays at its last saved offset and the chunk can be sent again.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use tracing::instrument;

use super::{Body, Error, Registry};
use crate::metadata::{BlobRecord, MetadataError};
use crate::metrics::{Metrics, Raised};
use crate::oci::{Algorithm, Digest, Hasher, RepoName};
use crate::sessions::{LockToken, SessionStore, UploadSession};
use crate::storage::UploadWriter;

/// Where an upload stands, for the response headers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadState {
    pub id: String,
    /// Bytes received so far.
    pub offset: u64,
}

/// One chunk of an upload: the body and what the request headers claim about it.
pub struct Chunk {
    /// Inclusive byte range from `Content-Range`.
    pub range: Option<(u64, u64)>,
    /// `Content-Length`, when the body is not sent with chunked transfer encoding.
    pub length: Option<u64>,
    pub body: Body,
}

/// A held session lock, released when dropped (also when the request is cancelled because
/// the client went away).
struct HeldLock {
    sessions: Arc<dyn SessionStore>,
    id: String,
    token: Option<LockToken>,
}

impl HeldLock {
    fn token(&self) -> &LockToken {
        self.token.as_ref().expect("token is only taken on release or drop")
    }

    /// Releases the lock before the response goes out, so that a client sending its next
    /// chunk at once does not find the upload still locked.
    async fn release(mut self) {
        if let Some(token) = self.token.take()
            && let Err(e) = self.sessions.unlock(&self.id, &token).await
        {
            tracing::warn!(upload = %self.id, error = %e, "could not release upload lock; it expires by itself");
        }
    }
}

impl Drop for HeldLock {
    fn drop(&mut self) {
        let (Some(token), Ok(runtime)) = (self.token.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (sessions, id) = (self.sessions.clone(), std::mem::take(&mut self.id));
        runtime.spawn(async move {
            if let Err(e) = sessions.unlock(&id, &token).await {
                tracing::warn!(upload = %id, error = %e, "could not release upload lock; it expires by itself");
            }
        });
    }
}

/// Milliseconds since the epoch, now.
pub(super) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Registry {
    /// Opens an upload session in `repository` (`POST /v2/<name>/blobs/uploads/`).
    #[instrument(skip(self), fields(repository = %repository))]
    pub async fn start_upload(&self, repository: &RepoName, algorithm: Algorithm) -> Result<UploadState, Error> {
        // A namespace at its quota already takes no more bytes; one with room left is checked
        // exactly when the blob is linked, its size known.
        self.check_quota_room(repository).await?;
        let id = uuid::Uuid::new_v4().to_string();
        let handle = self.blobs.start_upload(&id).await?;
        let session = UploadSession {
            id: id.clone(),
            repository: repository.to_string(),
            algorithm,
            offset: 0,
            hash_state: Hasher::new(algorithm).save(),
            handle,
            created_at: now_ms(),
        };
        if let Err(e) = self.sessions.create(&session).await {
            let _ = self.blobs.abort_upload(&id, Some(&session.handle)).await;
            return Err(e.into());
        }
        Ok(UploadState { id, offset: 0 })
    }

    /// The chunk size below which the blob store does extra work, if it has one.
    pub fn min_chunk_length(&self) -> Option<u64> {
        self.blobs.min_chunk_length()
    }

    /// Where an upload stands (`GET <location>`).
    pub async fn upload_state(&self, repository: &RepoName, id: &str) -> Result<UploadState, Error> {
        let session = self.session(repository, id).await?;
        Ok(UploadState { id: session.id, offset: session.offset })
    }

    /// Appends a chunk (`PATCH <location>`).
    #[instrument(skip(self, chunk), fields(repository = %repository))]
    pub async fn write_chunk(&self, repository: &RepoName, id: &str, chunk: Chunk) -> Result<UploadState, Error> {
        let (mut session, lock) = self.lock_session(repository, id).await?;
        let _receiving = Raised::new(&Metrics::get().uploads_in_progress);
        let written = async {
            let mut hasher = restore_hasher(&session)?;
            let (writer, received) = self.receive(&session, &lock, chunk, None, &mut hasher).await?;
            if let Some(writer) = writer {
                session.handle = writer.finish(None).await?;
            }
            session.offset += received;
            session.hash_state = hasher.save();
            self.save(&session, &lock).await
        }
        .await;
        lock.release().await;
        written?;
        Ok(UploadState { id: session.id, offset: session.offset })
    }

    /// Appends the last chunk if there is one, verifies the digest and makes the blob
    /// visible in the repository (`PUT <location>?digest=`). Returns the blob's size.
    #[instrument(skip(self, chunk), fields(repository = %repository, digest = %digest))]
    pub async fn finish_upload(
        &self,
        repository: &RepoName,
        id: &str,
        digest: &Digest,
        chunk: Option<Chunk>,
    ) -> Result<u64, Error> {
        let (session, lock) = self.lock_session(repository, id).await?;
        let _receiving = Raised::new(&Metrics::get().uploads_in_progress);
        let finished = self.finish_locked(repository, session, &lock, digest, chunk).await;
        lock.release().await;
        finished
    }

    async fn finish_locked(
        &self,
        repository: &RepoName,
        mut session: UploadSession,
        lock: &HeldLock,
        digest: &Digest,
        chunk: Option<Chunk>,
    ) -> Result<u64, Error> {
        // The algorithm is fixed by the first byte hashed; until then the digest decides it,
        // so a POST without `digest-algorithm` followed by one PUT works for sha512 too.
        if session.offset == 0 && session.algorithm != digest.algorithm() {
            session.algorithm = digest.algorithm();
            session.hash_state = Hasher::new(session.algorithm).save();
        }
        // A digest of another algorithm than the upload was hashed with (the client sent no
        // `digest-algorithm`, which the spec only recommends) is checked by reading the bytes
        // back once, rather than hashing every upload with every algorithm as it arrives.
        let read_back = session.algorithm != digest.algorithm();
        let mut hasher = restore_hasher(&session)?;
        let mut writer = None;
        if let Some(chunk) = chunk {
            // Unverified bytes are never written where the blob would end up.
            let announced = (!read_back).then_some(digest);
            let (w, received) = self.receive(&session, lock, chunk, announced, &mut hasher).await?;
            writer = w;
            session.offset += received;
        }
        let computed = if read_back {
            if let Some(writer) = writer.take() {
                session.handle = writer.finish(None).await?;
            }
            // Saved with the handle should the store move the bytes to read them.
            session.hash_state = hasher.save();
            self.hash_upload(&mut session, lock, digest).await?
        } else {
            hasher.finish()
        };
        if computed != *digest {
            drop(writer);
            self.discard(&session).await;
            return Err(Error::DigestInvalid(format!(
                "provided digest {digest} does not match the uploaded content ({computed}, {} bytes)",
                session.offset
            )));
        }
        let size = session.offset;
        // A blob with this digest may be stored already (pushed to another repository, or by
        // this very upload on an attempt whose response was lost): keep the one copy. The
        // upload's own bytes go only once the stored blob is linked, so that a garbage
        // collection racing this commit cannot leave the repository with neither.
        let linked = patiently(digest, async || self.metadata.link_stored_blob(repository, digest, size).await).await;
        if let Err(Error::Denied(_)) = &linked {
            writer.take();
            self.discard(&session).await;
            Metrics::get().refusals.with_label_values(&["quota"]).inc();
        }
        if let Some(stored) = linked? {
            if self.bytes_present(digest, &stored).await? {
                drop(writer);
                self.blobs.abort_upload(&session.id, Some(&session.handle)).await?;
                self.sessions.delete(&session.id).await?;
                return Ok(size);
            }
            // A record whose bytes are gone: forget it and store ours in their place.
            self.forget_lost_blob(repository, digest).await?;
        }
        if let Some(writer) = writer {
            session.handle = writer.finish(Some(digest)).await?;
        }
        let location = self.blobs.commit_upload(&session.id, &session.handle, size, digest).await?;
        let ours = BlobRecord { size, location };
        let stored = match patiently(digest, async || self.metadata.link_blob(repository, digest, &ours).await).await {
            Err(Error::Denied(message)) => {
                Metrics::get().refusals.with_label_values(&["quota"]).inc();
                self.refused_commit(digest, &ours).await;
                self.sessions.delete(&session.id).await?;
                return Err(Error::Denied(message));
            }
            linked => linked?,
        };
        if stored.location != ours.location
            && let Some(location) = &ours.location
        {
            // Another upload of the same digest, on this replica or another, was recorded
            // between our check and our commit: keep its copy, drop ours.
            if let Err(e) = self.blobs.delete(digest, Some(location)).await {
                tracing::warn!(%digest, location, error = %e, "could not delete a duplicate copy of a blob");
            }
        }
        self.sessions.delete(&session.id).await?;
        // The same digest stored by another upload while this one committed, left unreferenced
        // past the collector's grace time and removed, took these bytes with it if they share
        // its content-addressed place. Only a grace time shorter than a commit allows that; the
        // client then pushes again, and is never told that a blob is there when it is not.
        if !self.bytes_present(digest, &stored).await? {
            self.forget_lost_blob(repository, digest).await?;
            return Err(Error::TryAgain(format!(
                "blob {digest} was garbage-collected while it was being stored; push it again"
            )));
        }
        Ok(size)
    }

    /// After a quota refused to link a committed blob: its record stays, linked nowhere, for
    /// the collector to remove after the grace time; a copy of ours at a place of its own that
    /// the record does not name would be left to nobody, and goes now.
    async fn refused_commit(&self, digest: &Digest, ours: &BlobRecord) {
        let Some(location) = &ours.location else { return };
        match self.metadata.blob(digest).await {
            Ok(Some(kept)) if kept.location == ours.location => {}
            Ok(_) => {
                if let Err(e) = self.blobs.delete(digest, Some(location)).await {
                    tracing::warn!(%digest, location, error = %e, "could not delete the copy of a refused blob");
                }
            }
            Err(e) => tracing::warn!(%digest, error = %e, "could not look up a refused blob; its copy stays"),
        }
    }

    /// Hashes the bytes of an upload whose chunks are all in with `digest`'s algorithm, read
    /// back from the store a buffer at a time. When the store moved them to read them, the
    /// session is saved with its new handle, so that a closing PUT retried after a failure
    /// finds the upload as it now is.
    async fn hash_upload(
        &self,
        session: &mut UploadSession,
        lock: &HeldLock,
        digest: &Digest,
    ) -> Result<Digest, Error> {
        let (handle, mut bytes) = self.blobs.read_upload(&session.id, &session.handle, session.offset).await?;
        if handle != session.handle {
            session.handle = handle;
            self.save(session, lock).await?;
        }
        let mut hasher = Hasher::new(digest.algorithm());
        let mut read = 0u64;
        while let Some(chunk) = bytes.next().await {
            let chunk = chunk?;
            read += chunk.len() as u64;
            hasher.update(&chunk);
        }
        if read != session.offset {
            return Err(Error::Internal(format!("upload {} read back {read} bytes of {}", session.id, session.offset)));
        }
        Ok(hasher.finish())
    }

    /// Uploads a whole blob in one request (`POST ?digest=` with a body).
    pub async fn push_blob(&self, repository: &RepoName, digest: &Digest, chunk: Chunk) -> Result<u64, Error> {
        let upload = self.start_upload(repository, digest.algorithm()).await?;
        let result = self.finish_upload(repository, &upload.id, digest, Some(chunk)).await;
        if result.is_err() {
            // The client never learnt of this session, so nobody will resume it.
            let _ = self.cancel_upload(repository, &upload.id).await;
        }
        result
    }

    /// Cancels an upload and discards its bytes (`DELETE <location>`).
    #[instrument(skip(self), fields(repository = %repository))]
    pub async fn cancel_upload(&self, repository: &RepoName, id: &str) -> Result<(), Error> {
        let session = self.session(repository, id).await?;
        self.sessions.delete(id).await?;
        self.blobs.abort_upload(id, Some(&session.handle)).await?;
        Ok(())
    }

    /// The session `id`, if it exists and belongs to `repository`.
    async fn session(&self, repository: &RepoName, id: &str) -> Result<UploadSession, Error> {
        match self.sessions.get(id).await? {
            Some(s) if s.repository == repository.as_str() => Ok(s),
            _ => Err(Error::BlobUploadUnknown),
        }
    }

    async fn lock_session(&self, repository: &RepoName, id: &str) -> Result<(UploadSession, HeldLock), Error> {
        let session = self.session(repository, id).await?;
        let Some(token) = self.sessions.lock(id, self.policy.lock_ttl).await? else {
            return Err(Error::UploadOutOfOrder {
                offset: session.offset,
                reason: "another chunk of this upload is being written".into(),
            });
        };
        let lock = HeldLock { sessions: self.sessions.clone(), id: id.to_owned(), token: Some(token) };
        // Read again under the lock: another replica may have saved a chunk in between.
        let session = self.session(repository, id).await?;
        Ok((session, lock))
    }

    async fn save(&self, session: &UploadSession, lock: &HeldLock) -> Result<(), Error> {
        if self.sessions.save(session, lock.token()).await? {
            Ok(())
        } else {
            Err(Error::UploadOutOfOrder {
                offset: session.offset,
                reason: "the upload's lock expired while this chunk was written; send it again".into(),
            })
        }
    }

    /// Drops a failed upload for good: its bytes and its session.
    async fn discard(&self, session: &UploadSession) {
        if let Err(e) = self.sessions.delete(&session.id).await {
            tracing::warn!(upload = %session.id, error = %e, "could not delete upload session");
        }
        if let Err(e) = self.blobs.abort_upload(&session.id, Some(&session.handle)).await {
            tracing::warn!(upload = %session.id, error = %e, "could not discard upload; the janitor will");
        }
    }

    /// Streams a chunk into the store, hashing it on the way. Returns the writer, not yet
    /// finished (`None` for an empty chunk), and the number of bytes received. `digest` is
    /// the digest of the whole blob when the client gave it with this chunk.
    async fn receive(
        &self,
        session: &UploadSession,
        lock: &HeldLock,
        chunk: Chunk,
        digest: Option<&Digest>,
        hasher: &mut Hasher,
    ) -> Result<(Option<Box<dyn UploadWriter>>, u64), Error> {
        let Chunk { range, length, mut body } = chunk;
        let expected = match (range, length) {
            (Some((start, _)), _) if start != session.offset => {
                return Err(Error::UploadOutOfOrder {
                    offset: session.offset,
                    reason: format!("the chunk starts at byte {start}"),
                });
            }
            (Some((start, end)), Some(len)) if end - start + 1 != len => {
                return Err(Error::SizeInvalid(format!(
                    "Content-Range covers {} bytes but Content-Length is {len}",
                    end - start + 1
                )));
            }
            (Some((start, end)), _) => Some(end - start + 1),
            (None, len) => len,
        };
        let mut writer: Option<Box<dyn UploadWriter>> = None;
        let mut received = 0u64;
        let mut renewed = Instant::now();
        let timeout = self.policy.body_idle_timeout;
        loop {
            let next = tokio::time::timeout(timeout, body.next()).await.map_err(|_| {
                Error::BlobUploadInvalid(format!("the request body sent nothing for {}s", timeout.as_secs()))
            })?;
            let Some(bytes) = next else { break };
            let bytes = bytes.map_err(|e| Error::BlobUploadInvalid(format!("the request body broke off: {e}")))?;
            received += bytes.len() as u64;
            if let Some(n) = expected.filter(|&n| received > n) {
                return Err(Error::SizeInvalid(format!("the body is longer than the {n} bytes announced")));
            }
            hasher.update(&bytes);
            let w = match &mut writer {
                Some(w) => w,
                None => writer.insert(
                    self.blobs.open_writer(&session.id, &session.handle, session.offset, digest, expected).await?,
                ),
            };
            w.write(bytes).await?;
            if renewed.elapsed() > self.policy.lock_ttl / 3 {
                if !self.sessions.renew(&session.id, lock.token(), self.policy.lock_ttl).await? {
                    return Err(Error::UploadOutOfOrder {
                        offset: session.offset,
                        reason: "the upload's lock was lost while this chunk was written".into(),
                    });
                }
                renewed = Instant::now();
            }
        }
        if let Some(n) = expected.filter(|&n| n != received) {
            return Err(Error::SizeInvalid(format!("received {received} bytes but {n} were announced")));
        }
        Ok((writer, received))
    }
}

/// Runs `attempt` again while the garbage collector removes the blob `digest`, which takes it
/// one store call, for up to ten seconds.
async fn patiently<T>(digest: &Digest, attempt: impl AsyncFn() -> Result<T, MetadataError>) -> Result<T, Error> {
    for _ in 0..50 {
        match attempt().await {
            Err(MetadataError::BlobBeingRemoved(_)) => tokio::time::sleep(Duration::from_millis(200)).await,
            done => return Ok(done?),
        }
    }
    Err(Error::TryAgain(format!(
        "blob {digest} is being garbage-collected and its removal has not finished; \
         the collector's next run finishes it (or run `berth gc`)"
    )))
}

fn restore_hasher(session: &UploadSession) -> Result<Hasher, Error> {
    Hasher::restore(session.algorithm, &session.hash_state)
        .ok_or_else(|| Error::Internal(format!("upload {} has a corrupt hash state", session.id)))
}
