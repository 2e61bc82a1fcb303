//! Request and response bodies.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::body::{BodySize, MessageBody};
use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::error::ApiResult;
use crate::registry::{Body, BodyError, Error};

/// The request body as the registry reads it: streamed, never gathered whole.
pub fn stream(payload: web::Payload) -> Body {
    payload.map(|chunk| chunk.map_err(|e| BodyError(e.to_string()))).boxed_local()
}

/// Reads a small body (a manifest) whole, refusing more than `limit` bytes.
pub async fn read_limited(mut payload: web::Payload, limit: usize, idle: Duration) -> ApiResult<Bytes> {
    let mut buffer = BytesMut::new();
    loop {
        let next = tokio::time::timeout(idle, payload.next())
            .await
            .map_err(|_| Error::ManifestInvalid(format!("the request body sent nothing for {}s", idle.as_secs())))?;
        let Some(chunk) = next else { break };
        let chunk = chunk.map_err(|e| Error::ManifestInvalid(format!("the request body broke off: {e}")))?;
        if buffer.len() + chunk.len() > limit {
            return Err(Error::ManifestTooLarge { limit }.into());
        }
        buffer.extend_from_slice(&chunk);
    }
    Ok(buffer.freeze())
}

/// The body of a `HEAD` answer: announces the size of what a `GET` would send (so that
/// `Content-Length` is right) and sends nothing.
pub struct HeadBody(pub u64);

impl MessageBody for HeadBody {
    type Error = std::convert::Infallible;

    fn size(&self) -> BodySize {
        BodySize::Sized(self.0)
    }

    fn poll_next(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Bytes, Self::Error>>> {
        Poll::Ready(None)
    }
}
