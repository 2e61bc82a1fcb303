//! A `MetadataStore` that times every operation into the metrics and wraps it in a trace
//! span, around whichever store it is given.

use std::future::Future;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;

use super::{
    BlobHolders, BlobRecord, Collectable, DeleteBytes, Lease, MetadataError, MetadataStore, NameMatch, NewManifest,
    Page, PutManifest, Referrer, RepositorySummary, StoredManifest, TagInfo, TagOrder, TagRow, Usage,
};
use crate::metrics::{self, Metrics};
use crate::oci::{Digest, Reference, RepoName, Tag};

pub struct Instrumented(pub Arc<dyn MetadataStore>);

async fn timed<T>(
    backend: &'static str,
    operation: &'static str,
    work: impl Future<Output = Result<T, MetadataError>>,
) -> Result<T, MetadataError> {
    let m = Metrics::get();
    let span =
        tracing::info_span!("metadata", otel.name = %format_args!("db.{operation}"), db.system = backend, operation);
    metrics::timed(span, (&m.metadata_seconds, &m.metadata_errors), backend, operation, work).await
}

#[async_trait]
impl MetadataStore for Instrumented {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }

    async fn link_blob(
        &self,
        repository: &RepoName,
        digest: &Digest,
        blob: &BlobRecord,
    ) -> Result<BlobRecord, MetadataError> {
        timed(self.kind(), "link_blob", self.0.link_blob(repository, digest, blob)).await
    }

    async fn link_stored_blob(
        &self,
        repository: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<BlobRecord>, MetadataError> {
        timed(self.kind(), "link_stored_blob", self.0.link_stored_blob(repository, digest, size)).await
    }

    async fn collectable_blobs(
        &self,
        cutoff: SystemTime,
        after: Option<&Digest>,
        limit: u32,
    ) -> Result<Vec<Collectable>, MetadataError> {
        timed(self.kind(), "collectable_blobs", self.0.collectable_blobs(cutoff, after, limit)).await
    }

    async fn begin_blob_removal(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<BlobRecord>, MetadataError> {
        timed(self.kind(), "begin_blob_removal", self.0.begin_blob_removal(digest, cutoff)).await
    }

    async fn finish_blob_removal(&self, digest: &Digest) -> Result<(), MetadataError> {
        timed(self.kind(), "finish_blob_removal", self.0.finish_blob_removal(digest)).await
    }

    async fn unkept_manifests(
        &self,
        repository: &RepoName,
        cutoff: Option<SystemTime>,
        released: &[Digest],
    ) -> Result<Vec<Digest>, MetadataError> {
        timed(self.kind(), "unkept_manifests", self.0.unkept_manifests(repository, cutoff, released)).await
    }

    async fn remove_unkept_manifest(
        &self,
        lease: &Lease,
        repository: &RepoName,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool, MetadataError> {
        let work = self.0.remove_unkept_manifest(lease, repository, digest, cutoff);
        timed(self.kind(), "remove_unkept_manifest", work).await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
        due: bool,
    ) -> Result<Option<Lease>, MetadataError> {
        timed(self.kind(), "acquire_lease", self.0.acquire_lease(name, holder, ttl, due)).await
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<(), MetadataError> {
        timed(self.kind(), "renew_lease", self.0.renew_lease(lease)).await
    }

    async fn release_lease(&self, lease: &Lease, next_run: Option<SystemTime>) -> Result<(), MetadataError> {
        timed(self.kind(), "release_lease", self.0.release_lease(lease, next_run)).await
    }

    async fn begin_blob_removals(
        &self,
        lease: &Lease,
        digests: &[Digest],
        cutoff: SystemTime,
    ) -> Result<Vec<(Digest, BlobRecord)>, MetadataError> {
        timed(self.kind(), "begin_blob_removals", self.0.begin_blob_removals(lease, digests, cutoff)).await
    }

    async fn finish_blob_removals(
        &self,
        lease: &Lease,
        digests: &[Digest],
        delete: &DeleteBytes<'_>,
    ) -> Result<Vec<(Digest, BlobRecord)>, MetadataError> {
        timed(self.kind(), "finish_blob_removals", self.0.finish_blob_removals(lease, digests, delete)).await
    }

    async fn search_repositories(
        &self,
        filter: NameMatch<'_>,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Page, MetadataError> {
        timed(self.kind(), "search_repositories", self.0.search_repositories(filter, last, limit)).await
    }

    async fn repository_summaries(&self, names: &[String]) -> Result<Vec<RepositorySummary>, MetadataError> {
        timed(self.kind(), "repository_summaries", self.0.repository_summaries(names)).await
    }

    async fn namespace_size(&self, namespace: &str) -> Result<(u64, u64), MetadataError> {
        timed(self.kind(), "namespace_size", self.0.namespace_size(namespace)).await
    }

    async fn tag_page(
        &self,
        repository: &RepoName,
        order: TagOrder,
        offset: u64,
        limit: u32,
    ) -> Result<Option<Vec<TagRow>>, MetadataError> {
        timed(self.kind(), "tag_page", self.0.tag_page(repository, order, offset, limit)).await
    }

    async fn tag_infos(&self, repository: &RepoName) -> Result<Vec<TagInfo>, MetadataError> {
        timed(self.kind(), "tag_infos", self.0.tag_infos(repository)).await
    }

    async fn remove_tag(&self, lease: &Lease, repository: &RepoName, tag: &TagInfo) -> Result<bool, MetadataError> {
        timed(self.kind(), "remove_tag", self.0.remove_tag(lease, repository, tag)).await
    }

    async fn tags_of(&self, repository: &RepoName, digest: &Digest) -> Result<Vec<Tag>, MetadataError> {
        timed(self.kind(), "tags_of", self.0.tags_of(repository, digest)).await
    }

    async fn tag_checked_at(&self, repository: &RepoName, tag: &Tag) -> Result<Option<i64>, MetadataError> {
        timed(self.kind(), "tag_checked_at", self.0.tag_checked_at(repository, tag)).await
    }

    async fn mark_tag_checked(&self, repository: &RepoName, tag: &Tag, at: i64) -> Result<(), MetadataError> {
        timed(self.kind(), "mark_tag_checked", self.0.mark_tag_checked(repository, tag, at)).await
    }

    async fn record_pulls(&self, pulls: &[(RepoName, Reference, SystemTime)]) -> Result<(), MetadataError> {
        timed(self.kind(), "record_pulls", self.0.record_pulls(pulls)).await
    }

    async fn sync_quotas(&self, quotas: &[(String, u64)]) -> Result<(), MetadataError> {
        timed(self.kind(), "sync_quotas", self.0.sync_quotas(quotas)).await
    }

    async fn usage(&self) -> Result<Vec<Usage>, MetadataError> {
        timed(self.kind(), "usage", self.0.usage()).await
    }

    async fn recount_usage(&self, namespace: &str) -> Result<u64, MetadataError> {
        timed(self.kind(), "recount_usage", self.0.recount_usage(namespace)).await
    }

    async fn manifest_references(&self, repository: &RepoName, digest: &Digest) -> Result<Vec<Digest>, MetadataError> {
        timed(self.kind(), "manifest_references", self.0.manifest_references(repository, digest)).await
    }

    async fn blob_holders(&self, digest: &Digest, cutoff: SystemTime) -> Result<Option<BlobHolders>, MetadataError> {
        timed(self.kind(), "blob_holders", self.0.blob_holders(digest, cutoff)).await
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetadataError> {
        timed(self.kind(), "blob", self.0.blob(digest)).await
    }

    async fn blob_in_repository(
        &self,
        repository: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobRecord>, MetadataError> {
        timed(self.kind(), "blob_in_repository", self.0.blob_in_repository(repository, digest)).await
    }

    async fn mount_blob(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobRecord>, MetadataError> {
        timed(self.kind(), "mount_blob", self.0.mount_blob(from, to, digest)).await
    }

    async fn unlink_blob(&self, repository: &RepoName, digest: &Digest) -> Result<bool, MetadataError> {
        timed(self.kind(), "unlink_blob", self.0.unlink_blob(repository, digest)).await
    }

    async fn put_manifest(
        &self,
        manifest: &NewManifest,
        tags: &[Tag],
        fixed: &[Tag],
    ) -> Result<PutManifest, MetadataError> {
        timed(self.kind(), "put_manifest", self.0.put_manifest(manifest, tags, fixed)).await
    }

    async fn get_manifest(
        &self,
        repository: &RepoName,
        reference: &Reference,
        with_payload: bool,
    ) -> Result<Option<StoredManifest>, MetadataError> {
        timed(self.kind(), "get_manifest", self.0.get_manifest(repository, reference, with_payload)).await
    }

    async fn delete_manifest(&self, repository: &RepoName, digest: &Digest) -> Result<bool, MetadataError> {
        timed(self.kind(), "delete_manifest", self.0.delete_manifest(repository, digest)).await
    }

    async fn delete_tag(&self, repository: &RepoName, tag: &Tag) -> Result<bool, MetadataError> {
        timed(self.kind(), "delete_tag", self.0.delete_tag(repository, tag)).await
    }

    async fn list_tags(
        &self,
        repository: &RepoName,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Option<Page>, MetadataError> {
        timed(self.kind(), "list_tags", self.0.list_tags(repository, last, limit)).await
    }

    async fn list_repositories(&self, last: Option<&str>, limit: u32) -> Result<Page, MetadataError> {
        timed(self.kind(), "list_repositories", self.0.list_repositories(last, limit)).await
    }

    async fn referrers(
        &self,
        repository: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, MetadataError> {
        timed(self.kind(), "referrers", self.0.referrers(repository, subject, artifact_type)).await
    }

    async fn ping(&self) -> Result<(), MetadataError> {
        timed(self.kind(), "ping", self.0.ping()).await
    }
}
