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
    /// The collector's lease was taken over (or released): the holder may change nothing more.
    #[error("the {0} lease is no longer held by this process")]
    Fenced(String),
    /// Linking the blob would take a namespace past its quota; nothing was linked.
    #[error("{0}")]
    QuotaExceeded(QuotaExceeded),
    #[error("metadata store error: {0}")]
    Other(String),
}

/// A refused link, with what the client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuotaExceeded {
    pub namespace: String,
    pub usage: u64,
    pub limit: u64,
    /// The size of the blob that did not fit.
    pub size: u64,
}

impl std::fmt::Display for QuotaExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "quota of namespace {} exceeded: {} bytes used of {} bytes, and this blob has {} bytes",
            self.namespace, self.usage, self.limit, self.size
        )
    }
}

/// A held lease: `token` fences every change made under it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub holder: String,
    pub token: i64,
    pub ttl: std::time::Duration,
}

/// A tag as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagInfo {
    pub name: String,
    pub digest: Digest,
    /// When the tag was last pushed (pointed at its manifest), in milliseconds since the epoch.
    pub pushed_at: i64,
    /// When the tag, or its manifest by digest, was last pulled, as far as flushed.
    pub pulled_at: Option<i64>,
}

/// A quota namespace's counted usage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Usage {
    pub namespace: String,
    pub bytes: u64,
    pub limit: u64,
}

/// Deletes the bytes of blobs whose removal began, for [`MetadataStore::finish_blob_removals`].
pub type DeleteBytes<'a> = dyn Fn(Vec<(Digest, BlobRecord)>) -> futures_util::future::BoxFuture<'static, Result<(), String>>
    + Send
    + Sync
    + 'a;

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

/// What holds a stored blob, for a dry run of the collector to tell whether removing some
/// manifests would free it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobHolders {
    pub size: u64,
    /// The manifests that reference it, by repository.
    pub referenced_by: Vec<(RepoName, Digest)>,
    /// Whether it was stored, or linked to a repository, at or after the cutoff asked about.
    pub recent: bool,
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
    /// Stored without what it needs being there yet: a manifest fetched from an upstream
    /// registry, whose blobs and platform manifests are fetched when a client asks for them.
    pub lazy: bool,
}

/// What became of [`MetadataStore::put_manifest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PutManifest {
    Stored,
    /// Nothing was stored: these references are not in the repository.
    Missing(Vec<Digest>),
    /// Nothing was stored: these references are in the repository with another size.
    WrongSize(Vec<Digest>),
    /// Nothing was stored: this fixed (immutable) tag points at that other manifest.
    TagFixed(Tag, Digest),
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

/// What the web UI's catalog shows of a repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RepositorySummary {
    pub name: String,
    pub tags: u64,
    /// Bytes of the distinct blobs linked to it (what a quota counts).
    pub bytes: u64,
    /// The newest manifest stored or tag pushed, in milliseconds since the epoch.
    pub last_push: Option<i64>,
}

/// How a repository's catalog search matches names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameMatch<'a> {
    All,
    Prefix(&'a str),
    Contains(&'a str),
}

/// A tag as the web UI lists it, with its manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TagRow {
    pub name: String,
    pub digest: Digest,
    pub media_type: String,
    pub size: u64,
    /// When the tag was last pushed, in milliseconds since the epoch.
    pub pushed_at: i64,
    pub payload: Vec<u8>,
}

/// The order of a repository's tag page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TagOrder {
    /// Newest push first; ties by name.
    Pushed,
    Name,
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
/// - With `unkept_manifests`/`remove_unkept_manifest`, an untagged manifest nothing keeps is
///   removed only while it stays so: a tag, a listing index or a push of it that commits
///   first keeps it; a push that comes after finds it gone.
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

    /// Manifests of `repository` that nothing keeps: kept are the tagged ones, those stored
    /// (or stored again) at or after `cutoff` (every untagged one when `cutoff` is `None`),
    /// the manifests a kept index lists and the referrers of a kept manifest. `released`
    /// (manifests whose last tag retention removed) are not kept for their age, and neither is
    /// what they list or what refers to them. In the order
    /// [`MetadataStore::remove_unkept_manifest`] must take them: an index before the manifests
    /// it lists, a subject before its referrers.
    async fn unkept_manifests(
        &self,
        repository: &RepoName,
        cutoff: Option<SystemTime>,
        released: &[Digest],
    ) -> Result<Vec<Digest>, MetadataError>;

    /// Removes the manifest if, checked again in the removal's transaction (fenced by
    /// `lease`), it is still not tagged, was stored before `cutoff`, is listed by no index,
    /// and its subject (if it has one) is gone; whether it did.
    async fn remove_unkept_manifest(
        &self,
        lease: &Lease,
        repository: &RepoName,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool, MetadataError>;

    /// Takes the lease `name` for `holder` if nobody holds it (or it expired), and, with
    /// `due`, only once its schedule says a run is due. Each acquisition gets a new token.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
        due: bool,
    ) -> Result<Option<Lease>, MetadataError>;

    /// Extends the lease by its ttl; [`MetadataError::Fenced`] when it is no longer held.
    async fn renew_lease(&self, lease: &Lease) -> Result<(), MetadataError>;

    /// Gives the lease up; the next run is due at `next_run` (as it was when `None`).
    async fn release_lease(&self, lease: &Lease, next_run: Option<SystemTime>) -> Result<(), MetadataError>;

    /// [`MetadataStore::begin_blob_removal`] for a batch, in one transaction fenced by
    /// `lease`: the blobs (of `digests`) whose removal began or had begun, with their records.
    async fn begin_blob_removals(
        &self,
        lease: &Lease,
        digests: &[Digest],
        cutoff: SystemTime,
    ) -> Result<Vec<(Digest, BlobRecord)>, MetadataError>;

    /// Finishes the removal of those of `digests` that are being removed: in one transaction
    /// fenced by `lease`, held while `delete` deletes their bytes, so that no other holder of
    /// the lease can finish them meanwhile and no upload can store them again before their
    /// rows are gone. Returns the blobs it removed.
    async fn finish_blob_removals(
        &self,
        lease: &Lease,
        digests: &[Digest],
        delete: &DeleteBytes<'_>,
    ) -> Result<Vec<(Digest, BlobRecord)>, MetadataError>;

    /// The tags of a repository, for retention.
    async fn tag_infos(&self, repository: &RepoName) -> Result<Vec<TagInfo>, MetadataError>;

    /// Removes the tag if it still points at `digest` and was not pushed since `pushed_at`,
    /// fenced by `lease`; whether it did.
    async fn remove_tag(&self, lease: &Lease, repository: &RepoName, tag: &TagInfo) -> Result<bool, MetadataError>;

    /// The tags pointing at a manifest.
    async fn tags_of(&self, repository: &RepoName, digest: &Digest) -> Result<Vec<Tag>, MetadataError>;

    /// When a cached tag was last checked against its upstream (milliseconds since the epoch).
    async fn tag_checked_at(&self, repository: &RepoName, tag: &Tag) -> Result<Option<i64>, MetadataError>;

    /// Records that a cached tag was checked against its upstream at `at`.
    async fn mark_tag_checked(&self, repository: &RepoName, tag: &Tag, at: i64) -> Result<(), MetadataError>;

    /// Records pulls (latest time per tag or digest), never moving a time backwards.
    async fn record_pulls(&self, pulls: &[(RepoName, Reference, SystemTime)]) -> Result<(), MetadataError>;

    /// Makes `quotas` (namespace, limit in bytes) the namespaces counted, recounting each from
    /// scratch under its lock, and forgets the others.
    async fn sync_quotas(&self, quotas: &[(String, u64)]) -> Result<(), MetadataError>;

    /// The counted namespaces, as their counters say.
    async fn usage(&self) -> Result<Vec<Usage>, MetadataError>;

    /// A namespace's usage counted from scratch from the links (what the counter must equal).
    async fn recount_usage(&self, namespace: &str) -> Result<u64, MetadataError>;

    /// The digests a manifest references: its config and layers, or the manifests an index
    /// lists (and its subject's, never).
    async fn manifest_references(&self, repository: &RepoName, digest: &Digest) -> Result<Vec<Digest>, MetadataError>;

    /// What holds the blob (see [`BlobHolders`]); `None` when it is not stored or is being
    /// removed.
    async fn blob_holders(&self, digest: &Digest, cutoff: SystemTime) -> Result<Option<BlobHolders>, MetadataError>;

    /// The blob, if it is stored (and not being removed), whichever repositories link it.
    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetadataError>;

    /// The blob, if it is linked to the repository.
    async fn blob_in_repository(
        &self,
        repository: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobRecord>, MetadataError>;

    /// Links a blob of `from` into `to` in one step; its record, or `None` if `from` lacks it.
    async fn mount_blob(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobRecord>, MetadataError>;

    /// Removes the blob's link to the repository; whether there was one.
    async fn unlink_blob(&self, repository: &RepoName, digest: &Digest) -> Result<bool, MetadataError>;

    /// Stores a manifest and points `tags` at it, if everything it references is there and
    /// none of `tags` that is also in `fixed` points at another manifest already.
    async fn put_manifest(
        &self,
        manifest: &NewManifest,
        tags: &[Tag],
        fixed: &[Tag],
    ) -> Result<PutManifest, MetadataError>;

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

    /// Repository names matching `filter`, sorted, after `last`, at most `limit`.
    async fn search_repositories(
        &self,
        filter: NameMatch<'_>,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Page, MetadataError>;

    /// Tag count, size and last push of each named repository that exists, in name order.
    async fn repository_summaries(&self, names: &[String]) -> Result<Vec<RepositorySummary>, MetadataError>;

    /// Bytes of the distinct blobs linked to the repositories in the namespace (the namespace
    /// itself and those under `namespace/`), and how many repositories those are.
    async fn namespace_size(&self, namespace: &str) -> Result<(u64, u64), MetadataError>;

    /// A page of a repository's tags with their manifests (the summary counts them); `None` if
    /// the repository does not exist.
    async fn tag_page(
        &self,
        repository: &RepoName,
        order: TagOrder,
        offset: u64,
        limit: u32,
    ) -> Result<Option<Vec<TagRow>>, MetadataError>;

    async fn ping(&self) -> Result<(), MetadataError>;
}

/// The manifests of one repository that nothing keeps, in the order they may be removed (see
/// [`MetadataStore::unkept_manifests`]). `manifests`: each digest, its subject, whether it is
/// tagged, and whether it is recent (stored since the cutoff); `lists`: each index and a
/// manifest it lists; `released`: manifests kept neither by their tags nor for being recent,
/// nor is anything they keep (what they list, their referrers) kept for being recent.
pub(crate) fn unkept(
    manifests: &[(Digest, Option<Digest>, bool, bool)],
    lists: &[(Digest, Digest)],
    released: &[Digest],
) -> Vec<Digest> {
    use std::collections::{HashMap, HashSet};
    // What keeping a manifest keeps too: what it lists, and its referrers.
    let mut keeps: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for (index, listed) in lists {
        keeps.entry(index).or_default().push(listed);
    }
    for (digest, subject, _, _) in manifests {
        if let Some(subject) = subject {
            keeps.entry(subject).or_default().push(digest);
        }
    }
    fn closure<'a>(keeps: &HashMap<&'a Digest, Vec<&'a Digest>>, roots: Vec<&'a Digest>) -> HashSet<&'a Digest> {
        let mut seen: HashSet<&Digest> = HashSet::new();
        let mut pending = roots;
        while let Some(digest) = pending.pop() {
            if seen.insert(digest) {
                pending.extend(keeps.get(digest).into_iter().flatten().filter(|d| !seen.contains(*d)));
            }
        }
        seen
    }
    // A released manifest is kept neither by its tags (retention removed them; one pushed
    // since is found when its removal checks again) nor by its age, and what it keeps is not
    // kept by its age either.
    let direct: HashSet<&Digest> = released.iter().collect();
    let released = closure(&keeps, released.iter().collect());
    let roots = manifests
        .iter()
        .filter(|m| (m.2 && !direct.contains(&m.0)) || (m.3 && !released.contains(&m.0)))
        .map(|m| &m.0)
        .collect();
    let kept = closure(&keeps, roots);
    // Removal order (Kahn's): an index before what it lists, so that a removal refused
    // because the index was tagged meanwhile leaves the index whole; a subject before its
    // referrers, which are only removed once their subject is gone.
    let unkept: HashSet<&Digest> = manifests.iter().map(|m| &m.0).filter(|d| !kept.contains(d)).collect();
    let mut waiting: HashMap<&Digest, usize> = unkept.iter().map(|d| (*d, 0)).collect();
    let mut then: HashMap<&Digest, Vec<&Digest>> = HashMap::new();
    for (first, second) in keeps.iter().flat_map(|(first, seconds)| seconds.iter().map(move |s| (*first, *s))) {
        if unkept.contains(first) && unkept.contains(second) {
            then.entry(first).or_default().push(second);
            if let Some(n) = waiting.get_mut(second) {
                *n += 1;
            }
        }
    }
    let mut ready: Vec<&Digest> = waiting.iter().filter(|(_, n)| **n == 0).map(|(d, _)| *d).collect();
    ready.sort_unstable_by(|a, b| b.cmp(a));
    let mut order = Vec::with_capacity(unkept.len());
    while let Some(digest) = ready.pop() {
        order.push(digest.clone());
        for next in then.get(digest).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(next) {
                *n -= 1;
                if *n == 0 {
                    ready.push(next);
                }
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::Algorithm;

    fn d(seed: &str) -> Digest {
        Digest::compute(Algorithm::Sha256, seed.as_bytes())
    }

    #[test]
    fn what_keeps_a_manifest_and_the_order_of_removal() {
        let manifests = vec![
            (d("tagged index"), None, true),
            (d("child of tagged"), None, false),
            (d("signature of child"), Some(d("child of tagged")), false),
            (d("old index"), None, false),
            (d("child of old"), None, false),
            (d("signature of old"), Some(d("old index")), false),
            (d("recent"), None, true),
            (d("orphan signature"), Some(d("never pushed")), false),
        ];
        let manifests: Vec<_> =
            manifests.into_iter().map(|(d, s, kept)| (d.clone(), s, kept && d != self::d("recent"), kept)).collect();
        let lists = vec![
            (d("tagged index"), d("child of tagged")),
            (d("old index"), d("child of old")),
            (d("old index"), d("child of tagged")),
        ];
        let order = unkept(&manifests, &lists, &[]);
        let at = |seed: &str| order.iter().position(|x| *x == d(seed));
        for kept in ["tagged index", "child of tagged", "signature of child", "recent"] {
            assert_eq!(at(kept), None, "{kept} is kept");
        }
        assert_eq!(order.len(), 4, "{order:?}");
        assert!(at("old index") < at("child of old"));
        assert!(at("old index") < at("signature of old"));
        assert!(at("orphan signature").is_some());

        // Released, a recent manifest goes, and so do a recent index's children and
        // signature; what a tagged index lists stays, whatever else released it.
        let mut manifests = manifests;
        manifests.push((d("recent index"), None, false, true));
        manifests.push((d("child of recent"), None, false, true));
        manifests.push((d("signature of recent"), Some(d("recent index")), false, true));
        let mut lists = lists;
        lists.push((d("recent index"), d("child of recent")));
        lists.push((d("recent index"), d("child of tagged")));
        let order = unkept(&manifests, &lists, &[d("recent"), d("recent index")]);
        let at = |seed: &str| order.iter().position(|x| *x == d(seed));
        for gone in ["recent", "recent index", "child of recent", "signature of recent"] {
            assert!(at(gone).is_some(), "{gone} is released: {order:?}");
        }
        assert!(at("recent index") < at("child of recent"));
        assert_eq!(at("child of tagged"), None);
        assert_eq!(unkept(&manifests, &lists, &[]).len(), 4, "nothing released, the recent ones stay");
    }
}
