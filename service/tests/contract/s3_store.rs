//! What the S3 store promises beyond the `BlobStore` contract: how bytes travel.

use std::collections::BTreeMap;

use berth::oci::{Algorithm, Digest, Hasher};
use berth::storage::BlobStore;
use berth::storage::s3::{S3Connection, S3Store};
use bytes::Bytes;

use crate::blob_store::read;
use crate::s3support::{self, PART};
use crate::tlssupport::TlsFront;
use crate::urlsupport::socket_of;

fn data(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 253) as u8).collect()
}

fn count(requests: &BTreeMap<String, u64>, operation: &str) -> u64 {
    requests.get(operation).copied().unwrap_or(0)
}

/// Streams `chunks` as successive writers; the last one is finished with `last`.
async fn push(store: &S3Store, id: &str, chunks: &[&[u8]], announced: Option<&Digest>, last: bool) -> Digest {
    let mut handle = store.start_upload(id).await.unwrap();
    let mut hasher = Hasher::new(Algorithm::Sha256);
    let mut offset = 0;
    for (i, chunk) in chunks.iter().enumerate() {
        hasher.update(chunk);
        let is_last = last && i == chunks.len() - 1;
        let mut writer =
            store.open_writer(id, &handle, offset, if is_last { announced } else { None }, None).await.unwrap();
        writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        let digest = hasher.clone().finish();
        handle = writer.finish(if is_last { Some(&digest) } else { None }).await.unwrap();
        offset += chunk.len() as u64;
    }
    let digest = hasher.finish();
    let location = store.commit_upload(id, &handle, offset, &digest).await.unwrap();
    assert_eq!(store.stat(&digest, location.as_deref()).await.unwrap(), Some(offset));
    digest
}

#[tokio::test]
async fn a_small_blob_is_one_put_object_and_never_multipart() {
    let bucket = s3support::fresh_bucket().await;
    let store = s3support::store(&bucket).await;
    let blob = data(1000);
    let digest = push(&store, "small-a", &[&blob], None, true).await;
    let requests = store.requests();
    assert_eq!(count(&requests, "CreateMultipartUpload"), 0, "{requests:?}");
    assert_eq!(count(&requests, "PutObject"), 1, "{requests:?}");
    assert_eq!(count(&requests, "CopyObject"), 0, "{requests:?}");
    let key = format!("registry/blobs/sha256/{}/{}", &digest.encoded()[..2], digest.encoded());
    assert_eq!(s3support::keys(&bucket).await, vec![key]);
}

#[tokio::test]
async fn a_known_digest_completes_at_the_final_key_without_copies() {
    let bucket = s3support::fresh_bucket().await;
    let store = s3support::store(&bucket).await;
    let blob = data(3 * PART + 12345);
    let digest = Digest::compute(Algorithm::Sha256, &blob);
    push(&store, "known", &[&blob], Some(&digest), true).await;
    let requests = store.requests();
    assert_eq!(count(&requests, "CreateMultipartUpload"), 1, "{requests:?}");
    assert_eq!(count(&requests, "UploadPart"), 4, "{requests:?}");
    for copy in ["CopyObject", "UploadPartCopy", "GetObject"] {
        assert_eq!(count(&requests, copy), 0, "{copy}: {requests:?}");
    }
    let key = format!("registry/blobs/sha256/{}/{}", &digest.encoded()[..2], digest.encoded());
    assert_eq!(s3support::keys(&bucket).await, vec![key]);
    assert_eq!(s3support::multipart_uploads(&bucket).await, 0);
}

#[tokio::test]
async fn a_late_digest_commits_in_place_and_reads_nothing_back() {
    let bucket = s3support::fresh_bucket().await;
    let store = s3support::store(&bucket).await;
    // The Docker flow: one streamed PATCH, then a PUT with no body.
    let blob = data(2 * PART + 777);
    let mut handle = store.start_upload("late").await.unwrap();
    let mut writer = store.open_writer("late", &handle, 0, None, None).await.unwrap();
    for piece in blob.chunks(100_000) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    handle = writer.finish(None).await.unwrap();
    let digest = Digest::compute(Algorithm::Sha256, &blob);
    let location = store.commit_upload("late", &handle, blob.len() as u64, &digest).await.unwrap();
    assert_eq!(location.as_deref(), Some("registry/objects/late"));
    let requests = store.requests();
    assert_eq!(count(&requests, "UploadPart"), 2, "{requests:?}");
    // Only the bytes after the last full part (777 here) are copied, inside the store.
    assert_eq!(count(&requests, "UploadPartCopy"), 1, "{requests:?}");
    assert_eq!(count(&requests, "CopyObject") + count(&requests, "GetObject"), 0, "{requests:?}");
    assert_eq!(s3support::keys(&bucket).await, vec!["registry/objects/late".to_owned()]);
}

/// Writes `chunks` as PATCHes with `Content-Length` would (each writer told its length), all
/// but the last; returns the handle and the offset.
async fn patch_chunks(store: &S3Store, id: &str, chunks: &[&[u8]]) -> (berth::storage::UploadHandle, u64) {
    let mut handle = store.start_upload(id).await.unwrap();
    let mut offset = 0;
    for chunk in chunks {
        let mut writer = store.open_writer(id, &handle, offset, None, Some(chunk.len() as u64)).await.unwrap();
        for piece in chunk.chunks(64 << 10) {
            writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
        }
        handle = writer.finish(None).await.unwrap();
        offset += chunk.len() as u64;
    }
    (handle, offset)
}

#[tokio::test]
async fn chunks_of_a_part_or_more_go_up_as_parts_of_their_own() {
    parts_of_their_own(false).await;
}

/// Unsigned, parts whose size a chunk's length fixes go up as they arrive: the same parts.
#[tokio::test]
async fn streamed_parts_are_the_same_parts() {
    parts_of_their_own(true).await;
}

async fn parts_of_their_own(unsigned_payload: bool) {
    let bucket = s3support::fresh_bucket().await;
    let options = berth::storage::s3::S3Options { unsigned_payload, ..s3support::options(&bucket) };
    let store = S3Store::connect(&s3support::connection(), options).await.unwrap();
    let mib = 1 << 20;
    // 8 MiB: one part (a 5 MiB part would leave 3 MiB, too little for a part). 11 MiB: 5 and
    // 6 MiB (the rest of 1 MiB joins the last part). Nothing is held back as a tail.
    let blob = data(19 * mib + 4321);
    let (eight, eleven, rest) = (&blob[..8 * mib], &blob[8 * mib..19 * mib], &blob[19 * mib..]);
    let (handle, offset) = patch_chunks(&store, "planned", &[eight, eleven]).await;
    assert_eq!(s3support::part_sizes(&bucket).await, [8 * mib as i64, 5 * mib as i64, 6 * mib as i64]);
    let requests = store.requests();
    for tail in ["PutObject", "GetObject", "UploadPartCopy"] {
        assert_eq!(count(&requests, tail), 0, "{tail}: {requests:?}");
    }
    // The last chunk, with the PUT: the short last part.
    let digest = Digest::compute(Algorithm::Sha256, &blob);
    let mut writer = store.open_writer("planned", &handle, offset, None, Some(rest.len() as u64)).await.unwrap();
    writer.write(Bytes::copy_from_slice(rest)).await.unwrap();
    let handle = writer.finish(Some(&digest)).await.unwrap();
    let location = store.commit_upload("planned", &handle, blob.len() as u64, &digest).await.unwrap();
    let read = read(&store, &digest, location.as_deref(), None).await;
    assert!(read == blob, "read back whole");
    assert_eq!(count(&store.requests(), "UploadPart"), 4);
}

/// A chunk broken off in the middle of a streamed part leaves the upload as it was: the next
/// attempt at the chunk replaces the part, and the blob is whole.
#[tokio::test]
async fn a_streamed_part_cut_short_is_sent_again_whole() {
    let bucket = s3support::fresh_bucket().await;
    let options = berth::storage::s3::S3Options { unsigned_payload: true, ..s3support::options(&bucket) };
    let store = S3Store::connect(&s3support::connection(), options).await.unwrap();
    let blob = data(12 << 20);
    let handle = store.start_upload("cut").await.unwrap();
    let mut broken = store.open_writer("cut", &handle, 0, None, Some(blob.len() as u64)).await.unwrap();
    broken.write(Bytes::copy_from_slice(&blob[..7 << 20])).await.unwrap();
    drop(broken);
    let mut writer = store.open_writer("cut", &handle, 0, None, Some(blob.len() as u64)).await.unwrap();
    for piece in blob.chunks(1 << 20) {
        writer.write(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    let digest = Digest::compute(Algorithm::Sha256, &blob);
    let handle = writer.finish(Some(&digest)).await.unwrap();
    let location = store.commit_upload("cut", &handle, blob.len() as u64, &digest).await.unwrap();
    let read = read(&store, &digest, location.as_deref(), None).await;
    assert!(read == blob, "read back whole");
}

#[tokio::test]
async fn uniform_parts_hold_the_rest_of_a_chunk_back_for_the_next() {
    let bucket = s3support::fresh_bucket().await;
    let options = berth::storage::s3::S3Options { uniform_parts: true, ..s3support::options(&bucket) };
    let store = S3Store::connect(&s3support::connection(), options).await.unwrap();
    let mib = 1 << 20;
    let blob = data(19 * mib);
    patch_chunks(&store, "uniform", &[&blob[..8 * mib], &blob[8 * mib..]]).await;
    // Parts of exactly 5 MiB: 5, then 3 MiB held back and 2 more make the second, and so on.
    assert_eq!(s3support::part_sizes(&bucket).await, [5 * mib as i64; 3]);
    let requests = store.requests();
    assert_eq!(count(&requests, "PutObject"), 2, "the tails: {requests:?}");
    assert_eq!(count(&requests, "GetObject"), 1, "the first tail read back: {requests:?}");
}

#[tokio::test]
async fn a_cancelled_upload_leaves_no_object_and_no_multipart_upload() {
    let bucket = s3support::fresh_bucket().await;
    let store = s3support::store(&bucket).await;
    let blob = data(2 * PART + 10);
    let handle = store.start_upload("gone").await.unwrap();
    let mut writer = store.open_writer("gone", &handle, 0, None, None).await.unwrap();
    writer.write(Bytes::from(blob)).await.unwrap();
    let handle = writer.finish(None).await.unwrap();
    assert_eq!(s3support::multipart_uploads(&bucket).await, 1);
    assert_eq!(s3support::keys(&bucket).await.len(), 1, "the tail");
    store.abort_upload("gone", Some(&handle)).await.unwrap();
    assert_eq!(s3support::multipart_uploads(&bucket).await, 0);
    assert!(s3support::keys(&bucket).await.is_empty());
}

#[tokio::test]
async fn an_abandoned_writer_aborts_the_multipart_upload_it_began() {
    let bucket = s3support::fresh_bucket().await;
    let store = s3support::store(&bucket).await;
    let handle = store.start_upload("dropped").await.unwrap();
    let mut writer = store.open_writer("dropped", &handle, 0, None, None).await.unwrap();
    writer.write(Bytes::from(data(PART + 1))).await.unwrap();
    drop(writer);
    for _ in 0..50 {
        if s3support::multipart_uploads(&bucket).await == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the abandoned multipart upload is still there");
}

#[tokio::test]
async fn the_janitor_view_finds_uploads_without_sessions() {
    let bucket = s3support::fresh_bucket().await;
    let store = s3support::store(&bucket).await;
    let handle = store.start_upload("orphan").await.unwrap();
    let mut writer = store.open_writer("orphan", &handle, 0, None, None).await.unwrap();
    writer.write(Bytes::from(data(PART + 3))).await.unwrap();
    writer.finish(None).await.unwrap();
    let listed = store.list_uploads().await.unwrap();
    assert_eq!(listed.iter().map(|u| u.id.as_str()).collect::<Vec<_>>(), ["orphan"]);
    // What the janitor does once no session knows the upload: abort without a handle.
    store.abort_upload("orphan", None).await.unwrap();
    assert_eq!(s3support::multipart_uploads(&bucket).await, 0);
    assert!(s3support::keys(&bucket).await.is_empty());
}

#[tokio::test]
async fn a_store_behind_a_private_ca_is_trusted_only_with_that_ca() {
    let bucket = s3support::fresh_bucket().await;
    let front = TlsFront::start(socket_of(&s3support::endpoint())).await;
    let connection = |ca_file: Option<std::path::PathBuf>| S3Connection {
        endpoint: Some(format!("https://{}", front.addr)),
        ca_file,
        ..s3support::connection()
    };
    let trusting = S3Store::connect(&connection(Some(front.ca_file.clone())), s3support::options(&bucket))
        .await
        .expect("S3 store over TLS");
    let blob = data(PART + 1000);
    let known = Digest::compute(Algorithm::Sha256, &blob);
    let digest = push(&trusting, "over-tls", &[&blob], Some(&known), true).await;
    let read = read(&trusting, &digest, None, None).await;
    assert_eq!(read, blob);
    assert!(front.handshakes() > 0, "the store went through TLS");

    let before = front.handshakes();
    let untrusting = S3Store::connect(&connection(None), s3support::options(&bucket)).await.expect("S3 store");
    let refused = untrusting.stat(&digest, None).await;
    assert!(refused.is_err(), "a certificate from an unknown CA is refused: {refused:?}");
    assert_eq!(front.handshakes(), before);
}
