//! The `MetadataStore` port: repositories, blob links, manifests, tags and referrers.
//!
//! Implementation: [`sql::SqlMetadata`] on SQLite (the embedded default). Every
//! implementation passes the contract suite in `tests/metadata_contract.rs`.

pub mod instrumented;
pub mod sql;

use std::time::SystemTime;

use async_trait::async_trait;

use crate::oci::{Digest, Reference, RepoName, Tag};

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The database cannot be reached; the request may be retried.
    #[error("metadata store unavailable: {0}")]
    Unavailable(String),
    /// The garbage collector is removing the blob: nothing may link it until it is done.
    #[error("blob {0} is being garbage-collected")]
    BlobBeingRemoved(Digest),
    /// The database has no space left to write.
    #[error("metadata store is full: {0}")]
    Full(String),
    #[error("metadata store error: {0}")]
    Other(String),
}

/// A stored blob as the metadata knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobRecord {
    pub size: u64,
    /// Where the blob store keeps it, when not at its content-addressed place.
    pub location: Option<String>,
}

/// A blob the garbage collector may remove.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collectable {
    pub digest: Digest,
    pub size: u64,
}

/// A manifest to record, with what it points at.
#[derive(Clone, Debug)]
pub struct NewManifest {
    pub repository: RepoName,
    pub digest: Digest,
    pub media_type: String,
    /// The bytes exactly as the client sent them.
    pub payload: Vec<u8>,
    /// The artifact type the referrers API reports for it.
    pub artifact_type: Option<String>,
    pub subject: Option<Digest>,
    /// The manifest's annotations as a JSON object, for the referrers API.
    pub annotations: Option<String>,
    /// Blobs it needs in the repository, with the sizes its descriptors give.
    pub blobs: Vec<(Digest, u64)>,
    /// Manifests it needs in the repository, with the sizes its descriptors give.
    pub manifests: Vec<(Digest, u64)>,
}

/// What became of [`MetadataStore::put_manifest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutManifest {
    Stored,
    /// Nothing was stored: these references are not in the repository.
    Missing(Vec<Digest>),
    /// Nothing was stored: these references are in the repository with another size.
    WrongSize(Vec<Digest>),
}

/// A stored manifest; `payload` is only loaded when asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub payload: Option<Vec<u8>>,
}

/// A manifest whose `subject` is the digest asked about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Referrer {
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    /// JSON object text.
    pub annotations: Option<String>,
}

/// One page of a sorted listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    pub items: Vec<String>,
    /// Whether more items follow the last one.
    pub more: bool,
}

/// Registry metadata.
///
/// Contract (checked by the suite):
/// - A repository exists once a blob has been linked or a manifest stored in it.
/// - Writes are atomic: `put_manifest` stores the manifest, its references and every tag,
///   or (when a reference is missing) nothing at all; a tag points at exactly one manifest.
/// - A blob is visible in a repository only while linked to it; `link_blob` is idempotent.
/// - Garbage collection: a blob no manifest references and no repository linked at or after
///   the cutoff is collectable; removing it unlinks it everywhere and marks it at once, so
///   that a manifest or mount racing the removal either finds it linked (and the removal
///   gives up) or finds it gone, never half-removed.
/// - Listings are in byte order ("ASCIIbetical"), start strictly after `last`, and hold at
///   most `limit` items.
#[async_trait]
pub trait MetadataStore: Send + Sync + 'static {
    fn kind(&self) -> &'static str;

    /// Records that the blob `digest` is stored (when it was not already: the first record
    /// of a digest stays) and belongs to `repository`. Returns the record that stays, which
    /// differs from `blob` when another upload of the same digest was recorded first, or
    /// [`MetadataError::BlobBeingRemoved`].
    async fn link_blob(
        &self,
        repository: &RepoName,
        digest: &Digest,
        blob: &BlobRecord,
    ) -> Result<BlobRecord, MetadataError>;

    /// Links the blob to the repository if it is stored with `size`, and returns its record:
    /// an upload of bytes the registry already holds ends here. `None` when no blob of that
    /// digest and size is stored; [`MetadataError::BlobBeingRemoved`] while the garbage
    /// collector deletes its bytes, when nothing may store the same digest either.
    async fn link_stored_blob(
        &self,
        repository: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<BlobRecord>, MetadataError>;

    /// Blobs the garbage collector may remove, in digest order after `after`: those that no
    /// manifest references and that no repository linked at or after `cutoff`, and those
    /// whose removal began and was cut short.
    async fn collectable_blobs(
        &self,
        cutoff: SystemTime,
        after: Option<&Digest>,
        limit: u32,
    ) -> Result<Vec<Collectable>, MetadataError>;

    /// Begins removing a blob if it is still collectable (or its removal was cut short):
    /// unlinks it from every repository and marks it in one transaction. Returns where its
    /// bytes are, for the caller to delete them before [`MetadataStore::finish_blob_removal`];
    /// `None` when it is no longer collectable.
    async fn begin_blob_removal(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<BlobRecord>, MetadataError>;

    /// Forgets a blob whose removal began, once its bytes are gone.
    async fn finish_blob_removal(&self, digest: &Digest) -> Result<(), MetadataError>;

    /// The blob, if it is stored (and not being removed), whichever repositories link it.
    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetadataError>;

    /// The blob, if it is linked to the repository.
    async fn blob_in_repository(
        &self,
        repository: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobRecord>, MetadataError>;

    /// Links a blob of `from` into `to` in one step; its size, or `None` if `from` lacks it.
    async fn mount_blob(&self, from: &RepoName, to: &RepoName, digest: &Digest) -> Result<Option<u64>, MetadataError>;

    /// Removes the blob's link to the repository; whether there was one.
    async fn unlink_blob(&self, repository: &RepoName, digest: &Digest) -> Result<bool, MetadataError>;

    /// Stores a manifest and points `tags` at it, if everything it references is there.
    async fn put_manifest(&self, manifest: &NewManifest, tags: &[Tag]) -> Result<PutManifest, MetadataError>;

    async fn get_manifest(
        &self,
        repository: &RepoName,
        reference: &Reference,
        with_payload: bool,
    ) -> Result<Option<StoredManifest>, MetadataError>;

    /// Removes a manifest and every tag pointing at it; whether it existed.
    async fn delete_manifest(&self, repository: &RepoName, digest: &Digest) -> Result<bool, MetadataError>;

    /// Removes one tag, leaving its manifest; whether it existed.
    async fn delete_tag(&self, repository: &RepoName, tag: &Tag) -> Result<bool, MetadataError>;

    /// Tags of a repository, or `None` if the repository does not exist.
    async fn list_tags(
        &self,
        repository: &RepoName,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Option<Page>, MetadataError>;

    async fn list_repositories(&self, last: Option<&str>, limit: u32) -> Result<Page, MetadataError>;

    /// Manifests in the repository whose subject is `subject`, by digest.
    async fn referrers(
        &self,
        repository: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, MetadataError>;

    async fn ping(&self) -> Result<(), MetadataError>;
}
