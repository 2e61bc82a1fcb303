//! The `BlobStore` contract.

use std::sync::Arc;

use berth::oci::{Algorithm, Digest};
use berth::storage::{BlobStore, ByteRange, UploadHandle};
use bytes::Bytes;
use futures_util::StreamExt;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn digest(bytes: &[u8]) -> Digest {
    Digest::compute(Algorithm::Sha256, bytes)
}

/// A blob's bytes (or a range of them) as the store streams them.
pub(crate) async fn read(
    store: &dyn BlobStore,
    d: &Digest,
    location: Option<&str>,
    range: Option<ByteRange>,
) -> Vec<u8> {
    let mut stream = store.get(d, location, range).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

/// Writes `chunks` one writer each, as successive PATCH requests would; returns the handle.
async fn upload(store: &dyn BlobStore, id: &str, chunks: &[&[u8]]) -> UploadHandle {
    let mut handle = store.start_upload(id).await.unwrap();
    let mut offset = 0u64;
    for chunk in chunks {
        let mut writer = store.open_writer(id, &handle, offset, None, None).await.unwrap();
        writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        handle = writer.finish(None).await.unwrap();
        offset += chunk.len() as u64;
    }
    handle
}

fn id() -> String {
    uuid::Uuid::new_v4().to_string()
}

pub async fn missing_blobs_are_not_found(store: Arc<dyn BlobStore>) {
    let d = digest(b"absent");
    assert_eq!(store.stat(&d, None).await.unwrap(), None);
    assert!(store.get(&d, None, None).await.err().unwrap().is_not_found());
    store.delete(&d, None).await.unwrap();
    store.ping().await.unwrap();
}

pub async fn committed_uploads_read_back_whole_and_in_ranges(store: Arc<dyn BlobStore>) {
    let data = pattern(300_000, 1);
    let id = id();
    let handle = upload(&*store, &id, &[&data[..1], &data[1..100_000], &data[100_000..]]).await;
    let d = digest(&data);
    let at = store.commit_upload(&id, &handle, data.len() as u64, &d).await.unwrap();
    assert_eq!(store.stat(&d, at.as_deref()).await.unwrap(), Some(data.len() as u64));
    assert_eq!(read(&*store, &d, at.as_deref(), None).await, data);
    let range = ByteRange { start: 99_999, end: 200_000 };
    assert_eq!(read(&*store, &d, at.as_deref(), Some(range)).await, &data[99_999..=200_000]);
    assert!(store.list_uploads().await.unwrap().iter().all(|u| u.id != id), "a committed upload is gone");
}

pub async fn chunks_from_one_byte_to_twenty_mebibytes_mix(store: Arc<dyn BlobStore>) {
    let data = pattern((20 << 20) + 4_000, 2);
    let sizes = [1usize, 1, 2, 3, 1000, 5 << 20, 1, 20 << 20];
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut start = 0;
    for size in sizes {
        let end = (start + size).min(data.len());
        chunks.push(&data[start..end]);
        start = end;
    }
    chunks.push(&data[start..]);
    let id = id();
    let handle = upload(&*store, &id, &chunks).await;
    let d = digest(&data);
    let at = store.commit_upload(&id, &handle, data.len() as u64, &d).await.unwrap();
    assert_eq!(digest(&read(&*store, &d, at.as_deref(), None).await), d);
}

pub async fn one_gibibyte_streams_through(store: Arc<dyn BlobStore>) {
    let id = id();
    let mut handle = store.start_upload(&id).await.unwrap();
    let piece = Bytes::from(pattern(4 << 20, 3));
    let mut hasher = berth::oci::Hasher::new(Algorithm::Sha256);
    let mut writer = store.open_writer(&id, &handle, 0, None, None).await.unwrap();
    for _ in 0..256 {
        hasher.update(&piece);
        writer.write(piece.clone()).await.unwrap();
    }
    handle = writer.finish(None).await.unwrap();
    let d = hasher.finish();
    let at = store.commit_upload(&id, &handle, 1 << 30, &d).await.unwrap();
    assert_eq!(store.stat(&d, at.as_deref()).await.unwrap(), Some(1 << 30));
    let mut stream = store.get(&d, at.as_deref(), None).await.unwrap();
    let mut check = berth::oci::Hasher::new(Algorithm::Sha256);
    while let Some(chunk) = stream.next().await {
        check.update(&chunk.unwrap());
    }
    assert_eq!(check.finish(), d);
    store.delete(&d, at.as_deref()).await.unwrap();
}

pub async fn a_chunk_abandoned_half_way_is_discarded(store: Arc<dyn BlobStore>) {
    let data = pattern(50_000, 4);
    let id = id();
    let handle = upload(&*store, &id, &[&data[..20_000]]).await;
    // A writer that takes bytes and is dropped without finishing, like a PATCH whose client
    // went away.
    let mut broken = store.open_writer(&id, &handle, 20_000, None, None).await.unwrap();
    broken.write(Bytes::from(vec![0xEE; 10_000])).await.unwrap();
    drop(broken);
    let mut writer = store.open_writer(&id, &handle, 20_000, None, None).await.unwrap();
    writer.write(Bytes::copy_from_slice(&data[20_000..])).await.unwrap();
    let handle = writer.finish(None).await.unwrap();
    let d = digest(&data);
    let at = store.commit_upload(&id, &handle, data.len() as u64, &d).await.unwrap();
    assert_eq!(read(&*store, &d, at.as_deref(), None).await, data);
}

pub async fn committing_an_existing_digest_keeps_one_copy(store: Arc<dyn BlobStore>) {
    let data = pattern(10_000, 5);
    let d = digest(&data);
    let mut at = None;
    for _ in 0..2 {
        let id = id();
        let handle = upload(&*store, &id, &[&data]).await;
        at = store.commit_upload(&id, &handle, data.len() as u64, &d).await.unwrap();
        assert!(store.list_uploads().await.unwrap().iter().all(|u| u.id != id));
    }
    assert_eq!(read(&*store, &d, at.as_deref(), None).await, data);
}

pub async fn aborted_uploads_leave_nothing(store: Arc<dyn BlobStore>) {
    let id = id();
    // Enough for an object store to hold a multipart upload and a tail.
    let data = pattern(12 << 20, 6);
    let handle = upload(&*store, &id, &[&data[..7 << 20], &data[7 << 20..]]).await;
    assert!(store.list_uploads().await.unwrap().iter().any(|u| u.id == id));
    store.abort_upload(&id, Some(&handle)).await.unwrap();
    store.abort_upload(&id, None).await.unwrap();
    assert!(store.list_uploads().await.unwrap().iter().all(|u| u.id != id));
    assert!(store.open_writer(&id, &handle, 10, None, None).await.is_err());
}

pub async fn deleted_blobs_are_gone(store: Arc<dyn BlobStore>) {
    let data = b"to be deleted";
    let id = id();
    let handle = upload(&*store, &id, &[data]).await;
    let d = digest(data);
    let at = store.commit_upload(&id, &handle, data.len() as u64, &d).await.unwrap();
    store.delete(&d, at.as_deref()).await.unwrap();
    assert_eq!(store.stat(&d, at.as_deref()).await.unwrap(), None);
    store.delete(&d, at.as_deref()).await.unwrap();
}

/// An upload in progress reads back whole, before it is committed (for a digest of another
/// algorithm), and is then committed or aborted from the handle the read gave back. Nothing of
/// it is at a blob's place until the commit.
pub async fn uploads_read_back_before_they_are_committed(store: Arc<dyn BlobStore>) {
    // Small (a tail only), and large (a multipart upload with a tail), for an object store.
    for (len, seed) in [(3_000usize, 7u8), ((12 << 20) + 5, 8)] {
        let data = pattern(len, seed);
        let d = Digest::compute(Algorithm::Sha512, &data);
        for commit in [true, false] {
            let id = id();
            let half = len / 2;
            let handle = upload(&*store, &id, &[&data[..half], &data[half..]]).await;
            let (handle, mut bytes) = store.read_upload(&id, &handle, len as u64).await.unwrap();
            let mut back = Vec::new();
            while let Some(chunk) = bytes.next().await {
                back.extend_from_slice(&chunk.unwrap());
            }
            assert!(back == data, "{len} bytes read back");
            assert_eq!(store.stat(&d, None).await.unwrap(), None, "not yet a blob");
            if commit {
                let at = store.commit_upload(&id, &handle, len as u64, &d).await.unwrap();
                assert!(read(&*store, &d, at.as_deref(), None).await == data);
                store.delete(&d, at.as_deref()).await.unwrap();
            } else {
                store.abort_upload(&id, Some(&handle)).await.unwrap();
            }
            assert!(store.list_uploads().await.unwrap().iter().all(|u| u.id != id));
        }
    }
}

/// The whole case list, for every backend.
macro_rules! blob_store_contract {
    ($backend:ident, $make:ident) => {
        contract!(
            $backend,
            $make,
            [
                missing_blobs_are_not_found,
                committed_uploads_read_back_whole_and_in_ranges,
                chunks_from_one_byte_to_twenty_mebibytes_mix,
                one_gibibyte_streams_through,
                a_chunk_abandoned_half_way_is_discarded,
                committing_an_existing_digest_keeps_one_copy,
                aborted_uploads_leave_nothing,
                deleted_blobs_are_gone,
                uploads_read_back_before_they_are_committed,
            ]
        );
    };
}

async fn filesystem() -> (Arc<dyn BlobStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = berth::storage::filesystem::FilesystemStore::open(dir.path()).unwrap();
    (Arc::new(store), dir)
}

blob_store_contract!(filesystem, filesystem);

async fn s3() -> (Arc<dyn BlobStore>, String) {
    let bucket = crate::s3support::fresh_bucket().await;
    (Arc::new(crate::s3support::store(&bucket).await), bucket)
}

blob_store_contract!(s3, s3);
