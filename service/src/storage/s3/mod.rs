//! Blobs in S3-compatible object storage (AWS S3, MinIO, Garage).
//!
//! Keys, under an optional prefix:
//! - `blobs/<algorithm>/<first two hex>/<hex>`: a blob at its content-addressed key.
//! - `objects/<upload id>`: a blob whose multipart upload began before its digest was known
//!   (the Docker flow: POST, PATCH…, PUT `?digest=`). Commit completes the multipart upload
//!   where it is and the metadata records this key: no byte is copied or moved.
//! - `uploads/<upload id>/tail-<start>-<end>`: the bytes of an upload short of a full part at the
//!   end of a chunk, kept here (not in a replica's memory) so that any replica can continue.
//!
//! Uploads stream: parts go to the store while the request body is still arriving, so the
//! push runs at the speed of the store; part buffers, the one filling and those in flight
//! together, never number more than `concurrency`, so the memory an upload holds is bounded
//! by `concurrency × part size` whatever the blob's size. A blob smaller than one part goes
//! up in one `PutObject`, never as a multipart upload.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as S3Body;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{BlobStore, ByteRange, ByteStream, StorageError, StoredUpload, UploadHandle, UploadWriter};
use crate::oci::Digest;

mod streaming;
mod writer;

use writer::S3Writer;

/// Reads of at least this many bytes are fetched in pieces, several at once.
const PARALLEL_READ_FROM: u64 = 32 << 20;
/// The size of those pieces.
const READ_PIECE: u64 = 8 << 20;
/// Reads fetched in pieces at once, per replica; more read in one stream meanwhile. With 4 in
/// flight, about 80 MiB of pieces at most, whatever the number of pulls.
const PARALLEL_READS: usize = 2;

/// The smallest part S3 accepts (except the last one).
pub const MIN_PART_SIZE: usize = 5 << 20;
/// The most parts one multipart upload may have.
const MAX_PARTS: u32 = 10_000;

/// How the store behaves, from the settings.
#[derive(Clone, Debug)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix, empty or ending in `/`.
    pub prefix: String,
    /// Bytes per part of a multipart upload (at least [`MIN_PART_SIZE`]).
    pub part_size: usize,
    /// Parts of one upload in flight at once.
    pub concurrency: usize,
    /// Answer blob GETs with a redirect to a presigned URL.
    pub redirect: bool,
    /// How long a presigned URL stays valid.
    pub presign_expiry: Duration,
    /// Send `UNSIGNED-PAYLOAD` instead of hashing every byte a second time for the
    /// signature (the digest already hashes it once), and making the store hash it again to
    /// check that signature.
    pub unsigned_payload: bool,
    /// Ranged GETs of one large read in flight at once; 1 reads in one stream.
    pub read_concurrency: usize,
    /// Every part but the last the same size (`part_size`), as Cloudflare R2 requires. When
    /// off, a chunk of at least [`MIN_PART_SIZE`] becomes parts of its own, whatever its
    /// size, instead of being held back as a tail until the next chunk completes a part.
    pub uniform_parts: bool,
}

pub struct S3Store {
    inner: Arc<Inner>,
    requests: Arc<RequestCounts>,
}

/// Requests sent to the store, by operation (retries included): what the tests check to
/// know how a blob travelled, and what metrics will report.
#[derive(Debug, Default)]
pub struct RequestCounts(std::sync::Mutex<std::collections::BTreeMap<String, u64>>);

impl RequestCounts {
    pub fn snapshot(&self) -> std::collections::BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn add(&self, operation: &str) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(operation.to_owned()).or_default() += 1;
        crate::metrics::Metrics::get().s3_requests.with_label_values(&[operation]).inc();
    }
}

/// Counts every attempt of every operation the SDK sends.
#[derive(Debug)]
struct CountRequests(Arc<RequestCounts>);

impl aws_sdk_s3::config::Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "berth-request-counts"
    }

    fn read_before_attempt(
        &self,
        _context: &aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef<'_>,
        _components: &aws_sdk_s3::config::RuntimeComponents,
        cfg: &mut aws_sdk_s3::config::ConfigBag,
    ) -> Result<(), aws_smithy_runtime_api::box_error::BoxError> {
        if let Some(metadata) = cfg.load::<aws_smithy_runtime_api::client::orchestrator::Metadata>() {
            self.0.add(metadata.name());
        }
        Ok(())
    }
}

struct Inner {
    client: Client,
    /// Reads allowed to fetch in pieces at once: each holds up to `read_concurrency + 1`
    /// pieces of memory.
    parallel_reads: Arc<Semaphore>,
    /// Signs redirect URLs; talks to the public endpoint when it differs.
    presigner: Client,
    options: S3Options,
}

/// What the session keeps of an S3 upload.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct S3Upload {
    /// The key the multipart upload completes at, once it has begun.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    /// Whether `key` is the blob's content-addressed key (the digest was known up front).
    #[serde(default)]
    content_addressed: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    upload_id: Option<String>,
    #[serde(default)]
    parts: Vec<Part>,
    /// Bytes past the last part, in their own object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tail: Option<Tail>,
    /// Tail objects no longer part of the upload, deleted by the next writer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    stale: Vec<String>,
    /// The whole blob is already at its content-addressed key (a small blob whose last
    /// chunk came with its verified digest).
    #[serde(default)]
    stored: bool,
    /// The multipart upload was completed at `key`, this upload's own, so that its bytes
    /// could be read back to check a digest of another algorithm; not yet a blob.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    completed: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Part {
    number: u32,
    etag: String,
    size: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Tail {
    key: String,
    size: u64,
}

impl S3Upload {
    fn from_handle(handle: &UploadHandle) -> Result<S3Upload, StorageError> {
        if handle.0.is_null() {
            return Ok(S3Upload::default());
        }
        serde_json::from_value(handle.0.clone())
            .map_err(|e| StorageError::Io(std::io::Error::other(format!("corrupt S3 upload state: {e}"))))
    }

    fn to_handle(&self) -> UploadHandle {
        UploadHandle(serde_json::to_value(self).unwrap_or_default())
    }

    fn next_part(&self) -> u32 {
        self.parts.last().map_or(1, |p| p.number + 1)
    }
}

/// Part sizes grow with the part number so that a streamed upload of unknown length never
/// runs out of the 10,000 parts S3 allows: 1,000 parts at the configured size, then 1,000 at
/// twice that, and so on (with 16 MiB parts, over 5 TB in all).
fn part_size(base: usize, number: u32) -> usize {
    base << ((number.saturating_sub(1)) / 1_000).min(6)
}

/// How to reach the store, from the settings.
#[derive(Clone, Debug, Default)]
pub struct S3Connection {
    /// Endpoint of an S3-compatible store (MinIO, Garage); AWS when `None`.
    pub endpoint: Option<String>,
    /// Endpoint clients are redirected to, when it differs from `endpoint`.
    pub public_endpoint: Option<String>,
    pub region: Option<String>,
    pub force_path_style: bool,
    /// PEM file of extra CA certificates to trust.
    pub ca_file: Option<std::path::PathBuf>,
    /// Static credentials; the standard AWS chain (environment, profile, instance role, web
    /// identity) when `None`.
    pub credentials: Option<(String, String)>,
    /// Send and check the optional CRC checksums the SDK adds by default. Off by default:
    /// some S3-compatible stores reject them, and the digest already covers every byte.
    pub checksums: bool,
}

impl S3Store {
    /// Builds the S3 clients and the store.
    pub async fn connect(connection: &S3Connection, options: S3Options) -> Result<S3Store, String> {
        use aws_sdk_s3::config::{
            Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation, retry::RetryConfig,
            timeout::TimeoutConfig,
        };
        let http = http_client(connection.ca_file.as_deref())?;
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest()).http_client(http);
        // Without a region, AWS's chain asks the instance metadata service; an S3-compatible
        // store at its own endpoint has nothing to do with that, and rarely cares.
        let region = connection.region.clone().or_else(|| connection.endpoint.as_ref().map(|_| "us-east-1".to_owned()));
        if let Some(region) = region {
            loader = loader.region(Region::new(region));
        }
        if let Some((id, secret)) = &connection.credentials {
            loader = loader.credentials_provider(Credentials::new(id, secret, None, None, "berth-settings"));
        }
        let shared = loader.load().await;
        let (request_checksums, response_checksums) = if connection.checksums {
            (RequestChecksumCalculation::WhenSupported, ResponseChecksumValidation::WhenSupported)
        } else {
            (RequestChecksumCalculation::WhenRequired, ResponseChecksumValidation::WhenRequired)
        };
        let requests = Arc::new(RequestCounts::default());
        let mut base = aws_sdk_s3::config::Builder::from(&shared);
        if shared.region().is_none() {
            // MinIO and Garage do not care; AWS would say which region the bucket is in.
            base.set_region(Some(Region::new("us-east-1")));
        }
        let base = base
            .interceptor(CountRequests(requests.clone()))
            .force_path_style(connection.force_path_style)
            // Throttling and 5xx answers are retried with exponential backoff and jitter.
            .retry_config(RetryConfig::standard().with_max_attempts(5).with_initial_backoff(Duration::from_millis(200)))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            .request_checksum_calculation(request_checksums)
            .response_checksum_validation(response_checksums);
        let mut own = base.clone();
        own.set_endpoint_url(connection.endpoint.clone());
        let client = Client::from_conf(own.build());
        let presigner = match &connection.public_endpoint {
            Some(public) => Client::from_conf(base.endpoint_url(public).build()),
            None => client.clone(),
        };
        let mut store = S3Store::new(client, presigner, options);
        store.requests = requests;
        Ok(store)
    }

    /// Requests sent so far, by operation.
    pub fn requests(&self) -> std::collections::BTreeMap<String, u64> {
        self.requests.snapshot()
    }

    /// A store on `client`; `presigner` signs redirect URLs (give the same client when the
    /// store's public address is the one Berth uses).
    pub fn new(client: Client, presigner: Client, mut options: S3Options) -> S3Store {
        options.part_size = options.part_size.max(MIN_PART_SIZE);
        options.concurrency = options.concurrency.max(1);
        options.read_concurrency = options.read_concurrency.max(1);
        if !options.prefix.is_empty() && !options.prefix.ends_with('/') {
            options.prefix.push('/');
        }
        let parallel_reads = Arc::new(Semaphore::new(PARALLEL_READS));
        S3Store { inner: Arc::new(Inner { client, presigner, parallel_reads, options }), requests: Arc::default() }
    }
}

impl Inner {
    fn bucket(&self) -> &str {
        &self.options.bucket
    }

    fn blob_key(&self, digest: &Digest) -> String {
        let encoded = digest.encoded();
        format!("{}blobs/{}/{}/{}", self.options.prefix, digest.algorithm(), &encoded[..2], encoded)
    }

    fn object_key(&self, id: &str) -> String {
        format!("{}objects/{id}", self.options.prefix)
    }

    fn upload_prefix(&self, id: &str) -> String {
        format!("{}uploads/{id}/", self.options.prefix)
    }

    fn key_of(&self, digest: &Digest, location: Option<&str>) -> String {
        location.map_or_else(|| self.blob_key(digest), str::to_owned)
    }

    /// `bucket/key`, URL-encoded, as `x-amz-copy-source` wants it.
    fn copy_source(&self, key: &str) -> String {
        let encoded: String = form_urlencoded::byte_serialize(key.as_bytes()).collect();
        format!("{}/{}", self.bucket(), encoded.replace("%2F", "/"))
    }

    async fn put_object(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let len = bytes.len() as i64;
        let request =
            self.client.put_object().bucket(self.bucket()).key(key).content_length(len).body(S3Body::from(bytes));
        let request = request.customize();
        let request = if self.options.unsigned_payload { request.disable_payload_signing() } else { request };
        request.send().await.map_err(|e| s3_error("PutObject", e))?;
        Ok(())
    }

    /// Uploads part `number` of `size` bytes.
    async fn upload_part(
        self: Arc<Self>,
        key: String,
        upload_id: String,
        number: u32,
        size: u64,
        body: S3Body,
    ) -> Result<Part, StorageError> {
        let request = self
            .client
            .upload_part()
            .bucket(self.bucket())
            .key(&key)
            .upload_id(&upload_id)
            .part_number(number as i32)
            .content_length(size as i64)
            .body(body)
            .customize();
        let request = if self.options.unsigned_payload { request.disable_payload_signing() } else { request };
        let uploaded = request.send().await.map_err(|e| s3_error("UploadPart", e))?;
        let etag = uploaded.e_tag().unwrap_or_default().to_owned();
        Ok(Part { number, etag, size })
    }

    /// An object's bytes, or a range of them, as they arrive.
    async fn stream(&self, key: &str, range: Option<ByteRange>) -> Result<ByteStream, StorageError> {
        let request = self.client.get_object().bucket(self.bucket()).key(key);
        let request = match range {
            Some(r) => request.range(format!("bytes={}-{}", r.start, r.end)),
            None => request,
        };
        let output = request.send().await.map_err(|e| s3_error("GetObject", e))?;
        let body = futures_util::stream::unfold(output.body, |mut body| async move {
            match body.try_next().await {
                Ok(Some(bytes)) => Some((Ok(bytes), body)),
                Ok(None) => None,
                Err(e) => Some((Err(StorageError::Unavailable(format!("GetObject body: {e}"))), body)),
            }
        });
        Ok(Box::pin(body))
    }

    /// `range` of an object read as pieces of [`READ_PIECE`] fetched `read_concurrency` at a
    /// time and sent in order: a store answers several streams faster than one. Fetched pieces
    /// wait for the client, and no more are fetched meanwhile: a slow client holds at most
    /// `read_concurrency` pieces (plus the one being sent), whatever the blob's size.
    /// The first piece is awaited before the stream is handed out, so that a missing object
    /// or a store that is down is an error of the request, not a body cut short.
    async fn parallel_stream(
        self: Arc<Self>,
        key: String,
        range: ByteRange,
        permit: OwnedSemaphorePermit,
    ) -> Result<ByteStream, StorageError> {
        use futures_util::StreamExt as _;
        let pieces = (range.start..=range.end)
            .step_by(READ_PIECE as usize)
            .map(move |start| ByteRange { start, end: (start + READ_PIECE - 1).min(range.end) });
        let concurrency = self.options.read_concurrency;
        let fetches = futures_util::stream::iter(pieces).map(move |piece| {
            let (inner, key) = (self.clone(), key.clone());
            async move {
                let output = inner
                    .client
                    .get_object()
                    .bucket(inner.bucket())
                    .key(&key)
                    .range(format!("bytes={}-{}", piece.start, piece.end))
                    .send()
                    .await
                    .map_err(|e| s3_error("GetObject", e))?;
                // Kept as the buffers it arrived in: gathering them into one would copy every
                // byte again, into a fresh allocation the size of the piece.
                let body = output
                    .body
                    .collect()
                    .await
                    .map_err(|e| StorageError::Unavailable(format!("GetObject body: {e}")))?;
                let segments: Vec<Bytes> = body.into_segments().collect();
                let got: usize = segments.iter().map(Bytes::len).sum();
                if got as u64 != piece.len() {
                    return Err(StorageError::Io(std::io::Error::other(format!(
                        "GetObject of {key} gave {got} bytes for a range of {}",
                        piece.len()
                    ))));
                }
                Ok(segments)
            }
        });
        let mut pieces = fetches.buffered(concurrency);
        let first = pieces.next().await.unwrap_or_else(|| Ok(Vec::new()))?;
        // The permit goes with the stream: it is given back when the read ends or is dropped.
        let rest = pieces.map(move |piece| {
            let _held = &permit;
            piece
        });
        let pieces = futures_util::stream::once(async move { Ok(first) }).chain(rest);
        let bytes = pieces.flat_map(|piece: Result<Vec<Bytes>, StorageError>| match piece {
            Ok(segments) => futures_util::stream::iter(segments.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => futures_util::stream::iter(vec![Err(e)]),
        });
        Ok(Box::pin(bytes))
    }

    /// Completes the upload's multipart upload where it is, its tail (the bytes after the
    /// last full part) becoming the short last part, copied inside the store: at most one
    /// part's worth, never the blob. Returns the key.
    async fn complete_multipart(&self, state: &mut S3Upload) -> Result<String, StorageError> {
        let (Some(key), Some(upload_id)) = (state.key.clone(), state.upload_id.clone()) else {
            return Err(StorageError::Io(std::io::Error::other("the upload has no multipart upload to complete")));
        };
        if let Some(tail) = state.tail.take() {
            let number = state.next_part();
            let copied = self
                .client
                .upload_part_copy()
                .bucket(self.bucket())
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number as i32)
                .copy_source(self.copy_source(&tail.key))
                .send()
                .await
                .map_err(|e| s3_error("UploadPartCopy", e))?;
            let etag = copied.copy_part_result().and_then(|r| r.e_tag()).unwrap_or_default().to_owned();
            state.parts.push(Part { number, etag, size: tail.size });
        }
        let parts = state
            .parts
            .iter()
            .map(|p| CompletedPart::builder().part_number(p.number as i32).e_tag(&p.etag).build())
            .collect();
        self.client
            .complete_multipart_upload()
            .bucket(self.bucket())
            .key(&key)
            .upload_id(&upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| s3_error("CompleteMultipartUpload", e))?;
        state.completed = true;
        Ok(key)
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let output = self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(key)
            .send()
            .await
            .map_err(|e| s3_error("GetObject", e))?;
        let body =
            output.body.collect().await.map_err(|e| StorageError::Unavailable(format!("GetObject body: {e}")))?;
        Ok(body.into_bytes())
    }

    async fn delete_keys(&self, keys: Vec<String>) -> Result<(), StorageError> {
        for batch in keys.chunks(1000) {
            let objects = batch
                .iter()
                .map(|k| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
            let output = self
                .client
                .delete_objects()
                .bucket(self.bucket())
                .delete(delete)
                .send()
                .await
                .map_err(|e| s3_error("DeleteObjects", e))?;
            // Quiet mode lists only the keys that could not be deleted.
            if let Some(failed) = output.errors().first() {
                return Err(StorageError::Unavailable(format!(
                    "DeleteObjects left {} of {} keys, {:?} first: {}",
                    output.errors().len(),
                    batch.len(),
                    failed.key().unwrap_or_default(),
                    failed.message().unwrap_or_default()
                )));
            }
        }
        Ok(())
    }

    /// Keys of every object under `prefix`.
    async fn list_keys(&self, prefix: &str) -> Result<Vec<(String, SystemTime)>, StorageError> {
        let mut keys = Vec::new();
        let mut pages = self.client.list_objects_v2().bucket(self.bucket()).prefix(prefix).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| s3_error("ListObjectsV2", e))?;
            for object in page.contents() {
                let modified = object
                    .last_modified()
                    .and_then(|t| SystemTime::try_from(*t).ok())
                    .unwrap_or(SystemTime::UNIX_EPOCH);
                if let Some(key) = object.key() {
                    keys.push((key.to_owned(), modified));
                }
            }
        }
        Ok(keys)
    }

    async fn abort_multipart(&self, key: &str, upload_id: &str) -> Result<(), StorageError> {
        match self.client.abort_multipart_upload().bucket(self.bucket()).key(key).upload_id(upload_id).send().await {
            Ok(_) => Ok(()),
            Err(e) => match s3_error("AbortMultipartUpload", e) {
                e if e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }

    /// When the last part of a multipart upload arrived: an upload begun long ago may still
    /// be receiving parts.
    async fn last_part_time(&self, key: &str, upload_id: &str) -> Result<SystemTime, StorageError> {
        let mut latest = SystemTime::UNIX_EPOCH;
        let mut pages =
            self.client.list_parts().bucket(self.bucket()).key(key).upload_id(upload_id).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = match page.map_err(|e| s3_error("ListParts", e)) {
                Err(e) if e.is_not_found() => break,
                other => other?,
            };
            for part in page.parts() {
                if let Some(t) = part.last_modified().and_then(|t| SystemTime::try_from(*t).ok()) {
                    latest = latest.max(t);
                }
            }
        }
        Ok(latest)
    }

    /// Multipart uploads under the prefix: key, upload id, initiation time.
    async fn multipart_uploads(&self) -> Result<Vec<(String, String, SystemTime)>, StorageError> {
        self.multipart_uploads_at(&self.options.prefix).await
    }

    /// Multipart uploads whose key starts with `prefix`.
    async fn multipart_uploads_at(&self, prefix: &str) -> Result<Vec<(String, String, SystemTime)>, StorageError> {
        let mut found = Vec::new();
        let (mut key_marker, mut id_marker) = (None::<String>, None::<String>);
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(self.bucket())
                .prefix(prefix)
                .set_key_marker(key_marker.clone())
                .set_upload_id_marker(id_marker.clone())
                .send()
                .await
                .map_err(|e| s3_error("ListMultipartUploads", e))?;
            for upload in page.uploads() {
                if let (Some(key), Some(id)) = (upload.key(), upload.upload_id()) {
                    let started = upload
                        .initiated()
                        .and_then(|t| SystemTime::try_from(*t).ok())
                        .unwrap_or(SystemTime::UNIX_EPOCH);
                    found.push((key.to_owned(), id.to_owned(), started));
                }
            }
            if page.is_truncated() != Some(true) {
                return Ok(found);
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            id_marker = page.next_upload_id_marker().map(str::to_owned);
        }
    }
}

/// The HTTPS client the SDK uses (rustls with ring), trusting the system roots and, when
/// given, the certificates of `ca_file`.
pub fn http_client(ca_file: Option<&std::path::Path>) -> Result<aws_sdk_s3::config::SharedHttpClient, String> {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let mut trust = TrustStore::empty().with_native_roots(true);
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
        trust = trust.with_pem_certificate(pem);
    }
    let context = TlsContext::builder().with_trust_store(trust).build().map_err(|e| format!("TLS setup: {e}"))?;
    Ok(aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(context)
        .build_https())
}

/// Turns an SDK error into a storage error: missing objects are `NotFound`; a full store or an
/// exhausted quota (MinIO answers 507) is an I/O error of kind `StorageFull`, which clients
/// get as 507; throttling, other server errors and unreachable stores (after the SDK's own
/// retries) are `Unavailable`.
fn s3_error<E>(operation: &str, e: SdkError<E, HttpResponse>) -> StorageError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match &e {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or("");
            if status == 404 || matches!(code, "NoSuchKey" | "NotFound" | "NoSuchUpload") {
                StorageError::NotFound
            } else if status == 507
                || matches!(code, "XMinioStorageFull" | "XMinioAdminBucketQuotaExceeded" | "QuotaExceeded")
            {
                StorageError::Io(std::io::Error::new(
                    std::io::ErrorKind::StorageFull,
                    format!("{operation}: {status} {code}"),
                ))
            } else if status >= 500
                || status == 429
                || matches!(code, "SlowDown" | "Throttling" | "ThrottlingException" | "RequestTimeout")
            {
                StorageError::Unavailable(format!("{operation}: {status} {code}"))
            } else {
                StorageError::Io(std::io::Error::other(format!(
                    "{operation}: {status} {}",
                    aws_sdk_s3::error::DisplayErrorContext(&e)
                )))
            }
        }
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            StorageError::Unavailable(format!("{operation}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)))
        }
        _ => StorageError::Io(std::io::Error::other(format!(
            "{operation}: {}",
            aws_sdk_s3::error::DisplayErrorContext(&e)
        ))),
    }
}

#[async_trait]
impl BlobStore for S3Store {
    fn kind(&self) -> &'static str {
        "s3"
    }

    async fn stat(&self, digest: &Digest, location: Option<&str>) -> Result<Option<u64>, StorageError> {
        let inner = &self.inner;
        let key = inner.key_of(digest, location);
        match inner.client.head_object().bucket(inner.bucket()).key(&key).send().await {
            Ok(head) => Ok(Some(head.content_length().unwrap_or(0).max(0) as u64)),
            Err(e) => match s3_error("HeadObject", e) {
                e if e.is_not_found() => Ok(None),
                e => Err(e),
            },
        }
    }

    async fn get(
        &self,
        digest: &Digest,
        location: Option<&str>,
        range: Option<ByteRange>,
    ) -> Result<ByteStream, StorageError> {
        let inner = &self.inner;
        let key = inner.key_of(digest, location);
        match range {
            Some(r) if inner.options.read_concurrency > 1 && r.len() >= PARALLEL_READ_FROM => {
                // A few reads at a time are read in pieces; the others, while these hold the
                // pieces' memory, in one stream.
                match inner.parallel_reads.clone().try_acquire_owned() {
                    Ok(permit) => inner.clone().parallel_stream(key, r, permit).await,
                    Err(_) => inner.stream(&key, range).await,
                }
            }
            _ => inner.stream(&key, range).await,
        }
    }

    async fn redirect_url(&self, digest: &Digest, location: Option<&str>) -> Result<Option<String>, StorageError> {
        let inner = &self.inner;
        if !inner.options.redirect {
            return Ok(None);
        }
        let config = PresigningConfig::expires_in(inner.options.presign_expiry)
            .map_err(|e| StorageError::Io(std::io::Error::other(e)))?;
        let key = inner.key_of(digest, location);
        let presigned = inner
            .presigner
            .get_object()
            .bucket(inner.bucket())
            .key(key)
            .presigned(config)
            .await
            .map_err(|e| s3_error("presign GetObject", e))?;
        Ok(Some(presigned.uri().to_owned()))
    }

    async fn delete(&self, digest: &Digest, location: Option<&str>) -> Result<(), StorageError> {
        let inner = &self.inner;
        let key = inner.key_of(digest, location);
        match inner.client.delete_object().bucket(inner.bucket()).key(key).send().await {
            Ok(_) => Ok(()),
            Err(e) => match s3_error("DeleteObject", e) {
                e if e.is_not_found() => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn delete_many(&self, blobs: &[(Digest, Option<String>)]) -> Result<(), StorageError> {
        let inner = &self.inner;
        inner.delete_keys(blobs.iter().map(|(d, l)| inner.key_of(d, l.as_deref())).collect()).await
    }

    async fn start_upload(&self, _id: &str) -> Result<UploadHandle, StorageError> {
        // Nothing to do until bytes arrive: a blob smaller than a part never starts a
        // multipart upload at all.
        Ok(S3Upload::default().to_handle())
    }

    async fn open_writer(
        &self,
        id: &str,
        handle: &UploadHandle,
        offset: u64,
        digest: Option<&Digest>,
        length: Option<u64>,
    ) -> Result<Box<dyn UploadWriter>, StorageError> {
        let mut state = S3Upload::from_handle(handle)?;
        let recorded = state.parts.iter().map(|p| p.size).sum::<u64>() + state.tail.as_ref().map_or(0, |t| t.size);
        if recorded != offset || state.stored {
            return Err(StorageError::Io(std::io::Error::other(format!(
                "upload {id} holds {recorded} bytes, the session says {offset}"
            ))));
        }
        let stale = std::mem::take(&mut state.stale);
        if !stale.is_empty() {
            self.inner.delete_keys(stale).await?;
        }
        let final_key = digest.filter(|_| state.key.is_none()).map(|d| self.inner.blob_key(d));
        Ok(Box::new(S3Writer::new(self.inner.clone(), id, state, final_key, offset, length)))
    }

    fn min_chunk_length(&self) -> Option<u64> {
        let options = &self.inner.options;
        Some(if options.uniform_parts { options.part_size } else { MIN_PART_SIZE } as u64)
    }

    async fn read_upload(
        &self,
        _id: &str,
        handle: &UploadHandle,
        size: u64,
    ) -> Result<(UploadHandle, ByteStream), StorageError> {
        let inner = &self.inner;
        let mut state = S3Upload::from_handle(handle)?;
        if state.stored || state.content_addressed {
            return Err(StorageError::Io(std::io::Error::other("the upload is already at a blob's key")));
        }
        let key = match (&state.upload_id, &state.tail) {
            (Some(_), _) if state.completed => state.key.clone().unwrap_or_default(),
            // Parts of a multipart upload cannot be read until it is complete; it completes
            // at the upload's own key, `objects/<id>`, which no other blob ever shares.
            (Some(_), _) => inner.complete_multipart(&mut state).await?,
            (None, Some(tail)) => tail.key.clone(),
            (None, None) => return Ok((handle.clone(), Box::pin(futures_util::stream::empty()))),
        };
        let body = match size {
            0 => Box::pin(futures_util::stream::empty()),
            _ => inner.stream(&key, Some(ByteRange { start: 0, end: size - 1 })).await?,
        };
        Ok((state.to_handle(), body))
    }

    async fn commit_upload(
        &self,
        id: &str,
        handle: &UploadHandle,
        _size: u64,
        digest: &Digest,
    ) -> Result<Option<String>, StorageError> {
        let inner = &self.inner;
        let mut state = S3Upload::from_handle(handle)?;
        let location = if state.stored {
            None
        } else if let (Some(key), Some(upload_id)) = (state.key.clone(), state.upload_id.clone()) {
            if !state.completed {
                inner.complete_multipart(&mut state).await?;
            }
            if state.content_addressed {
                None
            } else {
                // A writer that died before its session learnt of its multipart upload (a
                // replica killed mid-chunk) left one on this upload's own key: abort it.
                for (other_key, other_id, _) in inner.multipart_uploads_at(&key).await? {
                    if other_key == key && other_id != upload_id {
                        inner.abort_multipart(&other_key, &other_id).await?;
                    }
                }
                Some(key)
            }
        } else {
            // A blob smaller than a part, pushed in chunks before its digest was known: its
            // bytes are the tail (or nothing at all, for the empty blob).
            let target = inner.blob_key(digest);
            match &state.tail {
                Some(tail) => {
                    inner
                        .client
                        .copy_object()
                        .bucket(inner.bucket())
                        .key(&target)
                        .copy_source(inner.copy_source(&tail.key))
                        .send()
                        .await
                        .map_err(|e| s3_error("CopyObject", e))?;
                }
                None => inner.put_object(&target, Bytes::new()).await?,
            }
            None
        };
        let leftovers = inner.list_keys(&inner.upload_prefix(id)).await?;
        inner.delete_keys(leftovers.into_iter().map(|(k, _)| k).collect()).await?;
        Ok(location)
    }

    async fn abort_upload(&self, id: &str, handle: Option<&UploadHandle>) -> Result<(), StorageError> {
        let inner = &self.inner;
        let state = handle.map(S3Upload::from_handle).transpose()?.unwrap_or_default();
        match (&state.key, &state.upload_id) {
            // Completed only to be read back, at the upload's own key: no blob is there yet.
            (Some(key), Some(_)) if state.completed => inner.delete_keys(vec![key.clone()]).await?,
            (Some(key), Some(upload_id)) => inner.abort_multipart(key, upload_id).await?,
            _ => {
                // The session is gone: find the multipart upload by its key (or, for an
                // upload the janitor found at a blob key, by the id it listed it under).
                let (own_key, listed) = (inner.object_key(id), id.split_once(':'));
                for (key, upload_id, _) in inner.multipart_uploads().await? {
                    let ours = key == own_key || listed.is_some_and(|(_, listed_id)| listed_id == upload_id);
                    if ours {
                        inner.abort_multipart(&key, &upload_id).await?;
                    }
                }
            }
        }
        let leftovers = inner.list_keys(&inner.upload_prefix(id)).await?;
        inner.delete_keys(leftovers.into_iter().map(|(k, _)| k).collect()).await
    }

    async fn list_uploads(&self) -> Result<Vec<StoredUpload>, StorageError> {
        let inner = &self.inner;
        let objects_prefix = format!("{}objects/", inner.options.prefix);
        let mut uploads: Vec<StoredUpload> = Vec::new();
        for (key, upload_id, started) in inner.multipart_uploads().await? {
            // A multipart upload at a blob key belongs to a single request that knew its digest;
            // it is listed under an id the abort above recognises.
            let id = match key.strip_prefix(&objects_prefix) {
                Some(id) => id.to_owned(),
                None => format!("multipart:{upload_id}"),
            };
            let modified = started.max(inner.last_part_time(&key, &upload_id).await?);
            uploads.push(StoredUpload { id, modified });
        }
        let uploads_prefix = format!("{}uploads/", inner.options.prefix);
        for (key, modified) in inner.list_keys(&uploads_prefix).await? {
            let Some(id) = key.strip_prefix(&uploads_prefix).and_then(|rest| rest.split('/').next()) else { continue };
            match uploads.iter_mut().find(|u| u.id == id) {
                Some(u) => u.modified = u.modified.max(modified),
                None => uploads.push(StoredUpload { id: id.to_owned(), modified }),
            }
        }
        Ok(uploads)
    }

    async fn ping(&self) -> Result<(), StorageError> {
        let inner = &self.inner;
        // One attempt: a readiness check asks whether the store answers now. With the SDK's
        // retries and their backoff, a store that refuses connections took longer than the
        // check waits, and was reported as slow rather than unreachable.
        let once = aws_sdk_s3::config::Builder::new()
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(1));
        inner
            .client
            .head_bucket()
            .bucket(inner.bucket())
            .customize()
            .config_override(once)
            .send()
            .await
            .map_err(|e| s3_error("HeadBucket", e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_answers_map_to_storage_errors() {
        use aws_sdk_s3::error::ErrorMetadata;
        use aws_sdk_s3::operation::put_object::PutObjectError;
        use aws_smithy_runtime_api::http::StatusCode;
        let answer = |status: u16, code: &str| {
            let raw =
                HttpResponse::new(StatusCode::try_from(status).unwrap(), aws_sdk_s3::primitives::SdkBody::empty());
            let error = PutObjectError::generic(ErrorMetadata::builder().code(code).build());
            s3_error("PutObject", SdkError::service_error(error, raw))
        };
        let full = |e: &StorageError| matches!(e, StorageError::Io(io) if io.kind() == std::io::ErrorKind::StorageFull);
        assert!(full(&answer(507, "XMinioStorageFull")));
        assert!(full(&answer(400, "XMinioAdminBucketQuotaExceeded")));
        assert!(matches!(answer(404, "NoSuchKey"), StorageError::NotFound));
        assert!(matches!(answer(503, "SlowDown"), StorageError::Unavailable(_)));
        assert!(matches!(answer(500, "InternalError"), StorageError::Unavailable(_)));
        assert!(
            matches!(answer(403, "AccessDenied"), StorageError::Io(ref io) if io.kind() == std::io::ErrorKind::Other)
        );
    }

    #[test]
    fn parts_grow_so_that_ten_thousand_hold_terabytes() {
        let base = 16 << 20;
        assert_eq!(part_size(base, 1), base);
        assert_eq!(part_size(base, 1000), base);
        assert_eq!(part_size(base, 1001), 2 * base);
        assert_eq!(part_size(base, 10_000), 64 * base);
        let total: u64 = (1..=MAX_PARTS).map(|n| part_size(base, n) as u64).sum();
        assert!(total > 5_000_000_000_000, "{total}: about 5 TB, what S3 allows in one object");
    }

    #[test]
    fn upload_state_round_trips_through_the_session() {
        let state = S3Upload {
            key: Some("objects/x".into()),
            upload_id: Some("u".into()),
            parts: vec![Part { number: 1, etag: "\"e\"".into(), size: 5 }],
            tail: Some(Tail { key: "uploads/x/tail-5".into(), size: 1 }),
            ..S3Upload::default()
        };
        assert_eq!(S3Upload::from_handle(&state.to_handle()).expect("parses"), state);
        assert_eq!(S3Upload::from_handle(&UploadHandle::default()).expect("empty"), S3Upload::default());
    }
}
