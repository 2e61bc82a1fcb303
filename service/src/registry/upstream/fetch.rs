//! Reads of cached repositories: from the cache when it may answer, from upstream when not.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use reqwest::Method;
use reqwest::header::{CONTENT_TYPE, HeaderMap};

use super::client::MANIFEST_ACCEPT;
use super::{Route, UpstreamError};
use crate::metadata::{PutManifest, StoredManifest};
use crate::oci::{Digest, Reference, Tag};
use crate::registry::{BlobContent, BlobRead, BodyError, Chunk, Error, RangeRequest, Registry};
use crate::storage::{ByteStream, StorageError};

/// A manifest from a cached repository, and whether it is a stale copy (upstream failed).
pub struct Served {
    pub manifest: StoredManifest,
    pub stale: bool,
}

/// How long the request fetching a blob holds its lock without renewing it.
const LOCK_TTL: Duration = Duration::from_secs(30);
/// How long a request waits for a blob another request is fetching.
const FOLLOW_LIMIT: Duration = Duration::from_secs(15 * 60);
/// How often a waiting request looks whether the blob is stored.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

use crate::registry::uploads::now_ms;

/// The digest an upstream's answer says it carries (`Docker-Content-Digest`).
fn content_digest(headers: &HeaderMap) -> Option<Digest> {
    headers.get("docker-content-digest")?.to_str().ok()?.parse().ok()
}

/// The items of a channel, as a stream.
fn received<T: 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

/// Why a fetch failed: upstream, or here.
enum Failure {
    Upstream(UpstreamError),
    Local(Error),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Local(e)
    }
}

impl From<UpstreamError> for Failure {
    fn from(e: UpstreamError) -> Self {
        Failure::Upstream(e)
    }
}

/// What a client is told when upstream fails and the cache cannot stand in.
fn refusal(route: &Route<'_>, what: &str, e: Failure, not_found: Error) -> Error {
    let name = &route.upstream.name;
    match e {
        Failure::Local(e) => e,
        Failure::Upstream(UpstreamError::NotFound) => not_found,
        Failure::Upstream(UpstreamError::Unavailable(detail)) => {
            Error::TryAgain(format!("the upstream registry {name} is unavailable ({detail}) and {what} is not cached"))
        }
        Failure::Upstream(UpstreamError::Refused(detail)) => {
            Error::Denied(format!("the upstream registry {name} refused to serve {what}: {detail}"))
        }
        Failure::Upstream(UpstreamError::Invalid(detail)) => {
            crate::metrics::Metrics::get().upstream_cache.with_label_values(&[name, "refused"]).inc();
            Error::BadUpstream(format!("the upstream registry {name} sent {what} that Berth refused: {detail}"))
        }
    }
}

fn media_type(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    Some(value.split(';').next().unwrap_or(value).trim().to_owned())
}

impl Registry {
    fn count_cache(&self, route: &Route<'_>, result: &str) {
        crate::metrics::Metrics::get().upstream_cache.with_label_values(&[&route.upstream.name, result]).inc();
    }

    fn check_fetchable(&self, route: &Route<'_>) -> Result<(), Error> {
        if route.upstream.allows(&route.remote) {
            Ok(())
        } else {
            Err(Error::Denied(format!(
                "{} is not among the repositories [[upstream]] {} may fetch",
                route.remote, route.upstream.name
            )))
        }
    }

    /// A manifest of a cached repository (`GET`/`HEAD`). By digest: from the cache once
    /// there. By tag: from the cache within the upstream's `ttl`, else revalidated with a `HEAD`
    /// upstream, fetched only when its digest changed, and served stale when upstream fails.
    pub async fn cached_manifest(
        &self,
        route: &Route<'_>,
        reference: &Reference,
        with_payload: bool,
    ) -> Result<Served, Error> {
        let local = &route.local;
        let cached = self.metadata.get_manifest(local, reference, with_payload).await?;
        let what = format!("{}:{reference}", route.remote);
        let served = match (reference, cached) {
            (Reference::Digest(_), Some(manifest)) => {
                self.count_cache(route, "hit");
                Served { manifest, stale: false }
            }
            (Reference::Digest(digest), None) => {
                self.check_fetchable(route)?;
                let manifest = self
                    .fetch_manifest(route, digest.as_str(), Some(digest), None)
                    .await
                    .map_err(|e| refusal(route, &what, e, Error::ManifestUnknown))?;
                self.count_cache(route, "miss");
                Served { manifest, stale: false }
            }
            (Reference::Tag(tag), Some(manifest)) => {
                // Never checked: an admin pushed it here, and it is this registry's own.
                let checked = self.metadata.tag_checked_at(local, tag).await?;
                let ttl = route.upstream.ttl.as_millis().min(i64::MAX as u128) as i64;
                if checked.is_none_or(|at| now_ms().saturating_sub(at) < ttl) {
                    self.count_cache(route, "hit");
                    Served { manifest, stale: false }
                } else {
                    self.revalidate(route, tag, manifest, &what).await?
                }
            }
            (Reference::Tag(tag), None) => {
                self.check_fetchable(route)?;
                let manifest = self
                    .fetch_manifest(route, tag.as_str(), None, Some(tag))
                    .await
                    .map_err(|e| refusal(route, &what, e, Error::ManifestUnknown))?;
                self.count_cache(route, "miss");
                Served { manifest, stale: false }
            }
        };
        self.pulls.record(local, reference);
        Ok(served)
    }

    /// A cached tag past its `ttl`: a `HEAD` upstream says whether it moved.
    async fn revalidate(
        &self,
        route: &Route<'_>,
        tag: &Tag,
        cached: StoredManifest,
        what: &str,
    ) -> Result<Served, Error> {
        let path = format!("/v2/{}/manifests/{tag}", route.remote);
        let client = &route.upstream.client;
        let head = client.send(Method::HEAD, &path, &route.remote, Some(MANIFEST_ACCEPT), "manifest").await;
        let upstream_digest = match head {
            Ok(answer) => content_digest(answer.response.headers()),
            Err(UpstreamError::NotFound) => return Err(Error::ManifestUnknown),
            Err(e) => return Ok(self.stale(route, cached, what, &e)),
        };
        if upstream_digest.as_ref() == Some(&cached.digest) {
            self.metadata.mark_tag_checked(&route.local, tag, now_ms()).await?;
            self.count_cache(route, "revalidated");
            return Ok(Served { manifest: cached, stale: false });
        }
        // Moved (or the HEAD gave no digest): fetch it.
        match self.fetch_manifest(route, tag.as_str(), None, Some(tag)).await {
            Ok(manifest) => {
                self.count_cache(route, "changed");
                Ok(Served { manifest, stale: false })
            }
            Err(Failure::Upstream(UpstreamError::NotFound)) => Err(Error::ManifestUnknown),
            Err(Failure::Upstream(e @ (UpstreamError::Unavailable(_) | UpstreamError::Refused(_)))) => {
                Ok(self.stale(route, cached, what, &e))
            }
            Err(e) => Err(refusal(route, what, e, Error::ManifestUnknown)),
        }
    }

    fn stale(&self, route: &Route<'_>, manifest: StoredManifest, what: &str, e: &UpstreamError) -> Served {
        tracing::warn!(upstream = %route.upstream.name, what, error = %e, "upstream failed; serving the cached copy");
        self.count_cache(route, "stale");
        Served { manifest, stale: true }
    }

    /// Fetches a manifest by tag or digest, checks it (size, digest, media type) and stores it
    /// without what it lists: each blob and platform comes when a client asks for it.
    async fn fetch_manifest(
        &self,
        route: &Route<'_>,
        reference: &str,
        expected: Option<&Digest>,
        tag: Option<&Tag>,
    ) -> Result<StoredManifest, Failure> {
        let client = &route.upstream.client;
        let path = format!("/v2/{}/manifests/{reference}", route.remote);
        let answer = client.send(Method::GET, &path, &route.remote, Some(MANIFEST_ACCEPT), "manifest").await?;
        let limit = client.max_manifest;
        if answer.response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(UpstreamError::Invalid(format!("a manifest larger than the limit of {limit} bytes")).into());
        }
        let content_type = media_type(answer.response.headers());
        let claimed = content_digest(answer.response.headers());
        let mut body = Vec::new();
        let mut stream = answer.response.bytes_stream();
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| UpstreamError::Unavailable(format!("the manifest broke off: {e}")))?;
            if body.len() + piece.len() > limit {
                return Err(UpstreamError::Invalid(format!("a manifest larger than the limit of {limit} bytes")).into());
            }
            body.extend_from_slice(&piece);
        }
        let digest = match expected.or(claimed.as_ref()) {
            Some(d) => {
                let computed = Digest::compute(d.algorithm(), &body);
                if computed != *d {
                    return Err(
                        UpstreamError::Invalid(format!("a manifest whose digest is {computed}, not {d}")).into()
                    );
                }
                computed
            }
            None => Digest::compute(crate::oci::Algorithm::Sha256, &body),
        };
        let record = self
            .manifest_record(&route.local, &digest, content_type.as_deref(), Bytes::from(body), true)
            .map_err(|e| match e {
                Error::ManifestInvalid(m) => Failure::Upstream(UpstreamError::Invalid(m)),
                e => Failure::Local(e),
            })?;
        let tags: Vec<Tag> = tag.into_iter().cloned().collect();
        match self.metadata.put_manifest(&record, &tags, &[]).await.map_err(Error::from)? {
            PutManifest::Stored => {}
            other => return Err(Error::Internal(format!("storing a fetched manifest: {other:?}")).into()),
        }
        if let Some(tag) = tag {
            self.metadata.mark_tag_checked(&route.local, tag, now_ms()).await.map_err(Error::from)?;
        }
        let stored =
            self.metadata.get_manifest(&route.local, &Reference::Digest(digest), true).await.map_err(Error::from)?;
        Ok(stored.ok_or_else(|| Error::Internal("a fetched manifest vanished".into()))?)
    }

    /// A blob of a cached repository (`GET`): from the cache, or fetched from upstream once
    /// whoever asks (the others wait for it), streamed to the client that made the fetch.
    pub async fn cached_blob(
        &self,
        route: &Route<'_>,
        digest: &Digest,
        range: Option<RangeRequest>,
    ) -> Result<BlobRead, Error> {
        let local = &route.local;
        if self.metadata.blob_in_repository(local, digest).await?.is_some() {
            self.count_cache(route, "hit");
            return self.read_blob(local, digest, range).await;
        }
        // Stored here already for another repository: linked, not fetched again.
        if let Some(stored) = self.metadata.blob(digest).await?
            && self.metadata.link_stored_blob(local, digest, stored.size).await?.is_some()
        {
            self.count_cache(route, "hit");
            return self.read_blob(local, digest, range).await;
        }
        self.check_fetchable(route)?;
        let key = format!("upstream-blob:{digest}");
        let what = format!("blob {digest} of {}", route.remote);
        let started = Instant::now();
        let mut followed = false;
        loop {
            if let Some(token) = self.sessions.lease(&key, LOCK_TTL).await? {
                // Stored meanwhile; or, for a request that waited, fetched and failed.
                let stored = self.metadata.blob_in_repository(local, digest).await?.is_some();
                if !stored && !followed {
                    return self.lead_fetch(route, digest, range, key, token, &what).await;
                }
                self.sessions.release_lease(&key, &token).await?;
                if !stored {
                    return Err(Error::TryAgain(format!(
                        "fetching {what} from {} failed; try again",
                        route.upstream.name
                    )));
                }
                return self.read_blob(local, digest, range).await;
            }
            followed = true;
            tokio::time::sleep(FOLLOW_POLL).await;
            if self.metadata.blob_in_repository(local, digest).await?.is_some() {
                self.count_cache(route, "followed");
                return self.read_blob(local, digest, range).await;
            }
            if started.elapsed() > FOLLOW_LIMIT {
                return Err(Error::TryAgain(format!("{what} is still being fetched; try again")));
            }
        }
    }

    /// Fetches a blob, holding the lock `key`: stored (and verified) in the background, and
    /// streamed to this client as it arrives when it asked for the whole blob and upstream
    /// said its size; otherwise this request waits for it to be stored, like the others.
    async fn lead_fetch(
        &self,
        route: &Route<'_>,
        digest: &Digest,
        range: Option<RangeRequest>,
        key: String,
        token: crate::sessions::LockToken,
        what: &str,
    ) -> Result<BlobRead, Error> {
        let path = format!("/v2/{}/blobs/{digest}", route.remote);
        let answer = match route.upstream.client.send(Method::GET, &path, &route.remote, None, "blob").await {
            Ok(a) => a,
            Err(e) => {
                self.sessions.release_lease(&key, &token).await?;
                return Err(refusal(route, what, e.into(), Error::BlobUnknown));
            }
        };
        self.count_cache(route, "miss");
        let size = answer.response.content_length();
        let stream_to_client = range.is_none() && size.is_some();
        let (client_tx, client_rx) = tokio::sync::mpsc::channel::<Result<Bytes, StorageError>>(64);
        let (store_tx, store_rx) = tokio::sync::mpsc::channel::<Result<Bytes, BodyError>>(64);
        let (registry, local, digest_owned, upstream) =
            (self.clone(), route.local.clone(), digest.clone(), route.upstream.name.clone());
        let (sessions, key_owned, token_owned) = (self.sessions.clone(), key.clone(), token.clone());
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<bool>();
        actix_web::rt::spawn(async move {
            let body = received(store_rx).boxed_local();
            // The upload checks the digest as it stores the bytes; its verdict decides whether
            // the client gets the last piece.
            let (verdict_tx, verdict_rx) = tokio::sync::oneshot::channel::<bool>();
            let store = async {
                let stored = registry.push_blob(&local, &digest_owned, Chunk { range: None, length: size, body }).await;
                let _ = verdict_tx.send(stored.is_ok());
                stored
            };
            let bytes_metric = crate::metrics::Metrics::get().upstream_bytes.with_label_values(&[&upstream]);
            let pump = async {
                let (answer, client_tx, store_tx) = (answer, client_tx, store_tx);
                let _permit = answer.permit;
                let mut client = stream_to_client.then_some(client_tx);
                let mut stream = answer.response.bytes_stream();
                // The last piece waits for the digest check: a client never gets a whole blob
                // that does not match.
                let mut held: Option<Bytes> = None;
                let mut renewed = Instant::now();
                while let Some(piece) = stream.next().await {
                    let piece = match piece {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::warn!(upstream = %upstream, error = %e, "a download from upstream broke off");
                            let message = "the download from upstream broke off".to_owned();
                            let _ = store_tx.send(Err(BodyError(message.clone()))).await;
                            if let Some(c) = &client {
                                let _ = c.send(Err(StorageError::Unavailable(message))).await;
                            }
                            return;
                        }
                    };
                    bytes_metric.inc_by(piece.len() as u64);
                    if let Some(previous) = held.replace(piece) {
                        if store_tx.send(Ok(previous.clone())).await.is_err() {
                            break;
                        }
                        if let Some(c) = &client
                            && c.send(Ok(previous)).await.is_err()
                        {
                            // The client went away; the blob is still stored for the next.
                            client = None;
                        }
                    }
                    if renewed.elapsed() > LOCK_TTL / 3 {
                        let _ = sessions.renew_lease(&key_owned, &token_owned, LOCK_TTL).await;
                        renewed = Instant::now();
                    }
                }
                if let Some(last) = held.clone() {
                    let _ = store_tx.send(Ok(last)).await;
                }
                drop(store_tx);
                let verified = verdict_rx.await.unwrap_or(false);
                if let Some(c) = &client {
                    match (verified, held) {
                        (true, Some(last)) => {
                            let _ = c.send(Ok(last)).await;
                        }
                        (true, None) => {}
                        (false, _) => {
                            let refused = "the upstream's bytes were not stored: they do not match the digest, or the store failed";
                            let _ = c.send(Err(StorageError::Unavailable(refused.into()))).await;
                        }
                    }
                }
            };
            let (stored, ()) = futures_util::join!(store, pump);
            let ok = match stored {
                Ok(_) => true,
                Err(e) => {
                    tracing::warn!(upstream = %upstream, digest = %digest_owned, error = %e, "a blob from upstream was not stored");
                    if matches!(e, Error::DigestInvalid(_)) {
                        crate::metrics::Metrics::get().upstream_cache.with_label_values(&[&upstream, "refused"]).inc();
                    }
                    false
                }
            };
            let _ = sessions.release_lease(&key_owned, &token_owned).await;
            let _ = done_tx.send(ok);
        });
        if stream_to_client {
            let body: ByteStream = Box::pin(received(client_rx));
            let size = size.unwrap_or_default();
            return Ok(BlobRead { size, content: BlobContent::Bytes { range: None, body } });
        }
        drop(client_rx);
        if done_rx.await.unwrap_or(false) {
            self.read_blob(&route.local, digest, range).await
        } else {
            // The fetching task has counted a refused blob already.
            Err(Error::BadUpstream(format!(
                "{what} from {} could not be stored or did not match its digest",
                route.upstream.name
            )))
        }
    }

    /// A blob's size in a cached repository (`HEAD`): from the cache, else from upstream's
    /// `HEAD` (nothing is fetched).
    pub async fn cached_blob_size(&self, route: &Route<'_>, digest: &Digest) -> Result<u64, Error> {
        if let Some(blob) = self.metadata.blob_in_repository(&route.local, digest).await? {
            return Ok(blob.size);
        }
        if let Some(stored) = self.metadata.blob(digest).await? {
            return Ok(stored.size);
        }
        self.check_fetchable(route)?;
        let what = format!("blob {digest} of {}", route.remote);
        let path = format!("/v2/{}/blobs/{digest}", route.remote);
        let answer = route
            .upstream
            .client
            .send(Method::HEAD, &path, &route.remote, None, "blob")
            .await
            .map_err(|e| refusal(route, &what, e.into(), Error::BlobUnknown))?;
        let length = answer.response.headers().get(reqwest::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
        length.and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| {
            Error::BadUpstream(format!("{} answered a HEAD of {what} without its size", route.upstream.name))
        })
    }
}
