//! A part that goes up while its bytes arrive: when a chunk says its length, the size of each
//! of its parts is known before its first byte, so the part's `UploadPart` can start at once,
//! its body fed from the request's, instead of waiting for the whole part to be buffered. The
//! store then works while the client sends, and a chunked push runs at the pace of the slower
//! of the two rather than of the two one after the other.
//!
//! The bytes are also kept (the request's own buffers, not a copy) until the part is stored:
//! a body fed as it arrives cannot be sent twice, so when the streamed attempt fails, the kept
//! bytes go up again the ordinary way, with the SDK's retries.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use aws_sdk_s3::primitives::ByteStream as S3Body;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::task::JoinHandle;

use super::{Inner, Part};
use crate::storage::StorageError;

/// Frames queued between the request and the part's upload.
const QUEUED: usize = 16;

/// The body of a streamed `UploadPart`: what the request sends, as it comes.
struct Fed {
    receiver: mpsc::Receiver<Bytes>,
    left: u64,
}

impl Body for Fed {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.receiver.poll_recv(cx) {
            Poll::Ready(Some(bytes)) => {
                self.left = self.left.saturating_sub(bytes.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(None) if self.left == 0 => Poll::Ready(None),
            // The request broke off before the part was whole: the upload of it fails.
            Poll::Ready(None) => Poll::Ready(Some(Err(std::io::Error::other("the chunk ended before its part did")))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.left == 0 && self.receiver.is_closed()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// Bytes kept as the buffers they arrived in, for a part: gathering them into one buffer would
/// copy each of them once more, into fresh memory the size of a part.
#[derive(Clone, Debug, Default)]
pub(super) struct Pieces {
    pieces: std::collections::VecDeque<Bytes>,
    len: usize,
}

impl Pieces {
    pub fn push(&mut self, bytes: Bytes) {
        self.len += bytes.len();
        self.pieces.push_back(bytes);
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// One buffer of them all, for a small object.
    pub fn concat(&self) -> Bytes {
        let mut whole = BytesMut::with_capacity(self.len);
        for piece in &self.pieces {
            whole.extend_from_slice(piece);
        }
        whole.freeze()
    }

    /// A request body of them, which the SDK may send again on a retry.
    pub fn body(self) -> S3Body {
        S3Body::new(aws_sdk_s3::primitives::SdkBody::retryable(move || {
            aws_sdk_s3::primitives::SdkBody::from_body_1_x(self.clone())
        }))
    }
}

impl Body for Pieces {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.pieces.pop_front() {
            Some(bytes) => {
                self.len -= bytes.len();
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pieces.is_empty()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.len as u64)
    }
}

/// A part being streamed.
pub(super) struct StreamedPart {
    pub number: u32,
    /// Its size, as its `Content-Length` says.
    pub size: u64,
    /// Bytes fed so far.
    pub sent: u64,
    feed: Option<mpsc::Sender<Bytes>>,
    /// The bytes fed, kept for a second attempt.
    kept: Pieces,
    upload: JoinHandle<Result<Part, StorageError>>,
    key: String,
    upload_id: String,
    /// The writer's slot, held until the part is stored.
    permit: Option<OwnedSemaphorePermit>,
}

impl StreamedPart {
    /// Starts the upload of part `number` of `size` bytes.
    pub fn start(
        inner: Arc<Inner>,
        key: String,
        upload_id: String,
        number: u32,
        size: u64,
        permit: OwnedSemaphorePermit,
    ) -> StreamedPart {
        let (feed, receiver) = mpsc::channel(QUEUED);
        let body = S3Body::from_body_1_x(Fed { receiver, left: size });
        let upload = tokio::spawn(inner.upload_part(key.clone(), upload_id.clone(), number, size, body));
        StreamedPart {
            number,
            size,
            sent: 0,
            feed: Some(feed),
            kept: Pieces::default(),
            upload,
            key,
            upload_id,
            permit: Some(permit),
        }
    }

    /// Bytes still wanted.
    pub fn room(&self) -> u64 {
        self.size - self.sent
    }

    /// Feeds `bytes` (at most [`StreamedPart::room`]) to the upload.
    pub async fn feed(&mut self, bytes: Bytes) {
        self.sent += bytes.len() as u64;
        self.kept.push(bytes.clone());
        if let Some(feed) = &self.feed
            && feed.send(bytes).await.is_err()
        {
            // The upload already failed; the kept bytes go up again once the part is whole.
            self.feed = None;
        }
    }

    /// Once every byte is fed: the part, stored by the streamed attempt or, failing that, by
    /// an ordinary upload of the kept bytes.
    pub async fn stored(mut self, inner: Arc<Inner>) -> Result<Part, StorageError> {
        self.feed = None;
        let permit = self.permit.take();
        let why = match (&mut self.upload).await {
            Ok(Ok(part)) => return Ok(part),
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        tracing::info!(part = self.number, error = %why, "streamed part failed; sending it again");
        let body = std::mem::take(&mut self.kept).body();
        let part = inner.upload_part(self.key.clone(), self.upload_id.clone(), self.number, self.size, body).await;
        drop(permit);
        part
    }
}

impl Drop for StreamedPart {
    fn drop(&mut self) {
        // A part abandoned with its chunk: its upload goes too.
        self.upload.abort();
    }
}
