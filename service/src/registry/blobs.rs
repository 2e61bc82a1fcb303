//! Blob reads, deletes and cross-repository mounts.

use std::time::{Duration, SystemTime};

use tracing::instrument;

use super::{Error, Registry};
use crate::metadata::BlobRecord;
use crate::oci::{Digest, RepoName};
use crate::storage::{ByteRange, ByteStream};

/// A `Range` request, before the blob's size is known.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// `bytes=start-` or `bytes=start-end`.
    From { start: u64, end: Option<u64> },
    /// `bytes=-n`: the last `n` bytes.
    Suffix(u64),
}

impl RangeRequest {
    /// The bytes this request asks for in a blob of `size` bytes, if any (RFC 9110 §14.1.2).
    pub fn resolve(self, size: u64) -> Option<ByteRange> {
        match self {
            RangeRequest::From { start, end } if start < size => {
                let end = end.map_or(size - 1, |e| e.min(size - 1));
                (end >= start).then_some(ByteRange { start, end })
            }
            RangeRequest::Suffix(n) if n > 0 && size > 0 => {
                Some(ByteRange { start: size.saturating_sub(n), end: size - 1 })
            }
            _ => None,
        }
    }
}

/// A blob being read.
pub struct BlobRead {
    /// Size of the whole blob.
    pub size: u64,
    pub content: BlobContent,
}

/// How the blob's bytes reach the client.
pub enum BlobContent {
    /// From a short-lived URL of the blob store.
    Redirect(String),
    /// Through Berth; `range` is the part being sent when a range was asked for.
    Bytes { range: Option<ByteRange>, body: ByteStream },
}

impl Registry {
    /// Size of a blob linked to the repository (`HEAD`): answered from metadata alone.
    pub async fn blob_size(&self, repository: &RepoName, digest: &Digest) -> Result<u64, Error> {
        Ok(self.metadata.blob_in_repository(repository, digest).await?.ok_or(Error::BlobUnknown)?.size)
    }

    /// A blob's bytes, or a range of them (`GET`).
    #[instrument(skip(self), fields(repository = %repository, digest = %digest))]
    pub async fn read_blob(
        &self,
        repository: &RepoName,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<BlobRead, Error> {
        let blob = self.metadata.blob_in_repository(repository, digest).await?.ok_or(Error::BlobUnknown)?;
        let (size, location) = (blob.size, blob.location.as_deref());
        let range = match range {
            Some(r) => Some(r.resolve(size).ok_or(Error::RangeNotSatisfiable { size })?),
            None => None,
        };
        if range.is_none()
            && let Some(url) = self.blobs.redirect_url(digest, location).await?
        {
            return Ok(BlobRead { size, content: BlobContent::Redirect(url) });
        }
        // The store is told the whole blob's range when the client asked for no range, so that
        // it can read a large blob in pieces.
        let whole = (size > 0).then(|| ByteRange { start: 0, end: size - 1 });
        let body = self.blobs.get(digest, location, range.or(whole)).await.map_err(|e| {
            if e.is_not_found() {
                // Metadata says the blob is there but its bytes are not: that is data loss, not
                // something the client did.
                Error::Internal(format!("blob {digest} is recorded but missing from the blob store"))
            } else {
                e.into()
            }
        })?;
        Ok(BlobRead { size, content: BlobContent::Bytes { range, body } })
    }

    /// Unlinks a blob from the repository; its bytes stay for other repositories until the
    /// garbage collector finds nothing links them.
    #[instrument(skip(self), fields(repository = %repository, digest = %digest))]
    pub async fn delete_blob(&self, repository: &RepoName, digest: &Digest) -> Result<(), Error> {
        self.check_delete_enabled()?;
        if self.metadata.unlink_blob(repository, digest).await? { Ok(()) } else { Err(Error::BlobUnknown) }
    }

    /// Links a blob that `from` holds into `repository` without moving any bytes. `None`
    /// when `from` does not hold it, and the client has to upload it.
    #[instrument(skip(self), fields(repository = %repository, digest = %digest, from = %from))]
    pub async fn mount_blob(
        &self,
        repository: &RepoName,
        digest: &Digest,
        from: &RepoName,
    ) -> Result<Option<u64>, Error> {
        let Some(stored) = self.metadata.mount_blob(from, repository, digest).await? else { return Ok(None) };
        if self.bytes_present(digest, &stored).await? {
            return Ok(Some(stored.size));
        }
        self.forget_lost_blob(repository, digest).await?;
        Ok(None)
    }

    /// Whether the bytes of a recorded blob are where its record says. A blob kept at its
    /// content-addressed place can have lost them while its record stayed: an upload that
    /// committed there just before the garbage collector deleted the place's previous blob,
    /// and recorded the blob again just after (its bytes at a place of their own, in the S3
    /// store, are never shared and never lost this way).
    pub(super) async fn bytes_present(&self, digest: &Digest, stored: &BlobRecord) -> Result<bool, Error> {
        Ok(stored.location.is_some() || self.blobs.stat(digest, None).await?.is_some())
    }

    /// Forgets a blob whose record outlived its bytes: unlinks it from `repository` and,
    /// unless a manifest references it already, removes its record, so that nothing takes it
    /// for stored and the next push of it stores the bytes again. The place is not deleted: an
    /// upload may be putting the bytes back there at this moment.
    pub(super) async fn forget_lost_blob(&self, repository: &RepoName, digest: &Digest) -> Result<(), Error> {
        tracing::warn!(%repository, %digest, "blob record without bytes (garbage-collected while stored); forgetting it");
        self.metadata.unlink_blob(repository, digest).await?;
        let unless_referenced = SystemTime::now() + Duration::from_secs(365 * 24 * 3600);
        if self.metadata.begin_blob_removal(digest, unless_referenced).await?.is_some() {
            self.metadata.finish_blob_removal(digest).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_resolve_as_rfc_9110_says() {
        let r = |start, end| Some(ByteRange { start, end });
        assert_eq!(RangeRequest::From { start: 0, end: Some(9) }.resolve(100), r(0, 9));
        assert_eq!(RangeRequest::From { start: 90, end: Some(200) }.resolve(100), r(90, 99));
        assert_eq!(RangeRequest::From { start: 5, end: None }.resolve(10), r(5, 9));
        assert_eq!(RangeRequest::Suffix(3).resolve(10), r(7, 9));
        assert_eq!(RangeRequest::Suffix(30).resolve(10), r(0, 9));
        assert_eq!(RangeRequest::From { start: 10, end: None }.resolve(10), None);
        assert_eq!(RangeRequest::From { start: 5, end: Some(4) }.resolve(10), None);
        assert_eq!(RangeRequest::Suffix(0).resolve(10), None);
        assert_eq!(RangeRequest::Suffix(1).resolve(0), None);
    }
}
