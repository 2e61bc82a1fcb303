//! What the web UI reads: catalog pages with summaries, tag pages, manifests and small blobs,
//! without counting any of it as a pull.

use super::{Error, Registry};
use crate::metadata::{NameMatch, RepositorySummary, StoredManifest, TagOrder, TagRow};
use crate::oci::{Digest, Reference, RepoName};

/// A page of the catalog: the repositories shown, and where the next page starts.
pub struct CatalogPage {
    pub repositories: Vec<RepositorySummary>,
    pub next: Option<String>,
}

/// Names read from the store per query while filling a page of visible repositories.
const SCAN: u32 = 500;
/// Queries per page at most: a user who may see few of many repositories gets a shorter page
/// and a link to go on.
const SCANS: usize = 20;

impl Registry {
    /// Up to `limit` repositories that match `filter` and that `visible` lets through, after
    /// `after`, with their summaries.
    pub async fn browse_repositories(
        &self,
        filter: NameMatch<'_>,
        after: Option<&str>,
        limit: u32,
        visible: impl Fn(&str) -> bool,
    ) -> Result<CatalogPage, Error> {
        let mut names = Vec::new();
        let mut last = after.map(str::to_owned);
        for _ in 0..SCANS {
            let page = self.metadata.search_repositories(filter, last.as_deref(), SCAN.max(limit)).await?;
            for name in page.items {
                if names.len() == limit as usize {
                    // More follow: the next page starts after the last name shown.
                    let next = names.last().cloned();
                    return self.catalog_page(names, next).await;
                }
                if visible(&name) {
                    names.push(name.clone());
                }
                last = Some(name);
            }
            if !page.more {
                return self.catalog_page(names, None).await;
            }
        }
        // The scan budget ends here: the next page starts after the last name read.
        self.catalog_page(names, last).await
    }

    async fn catalog_page(&self, names: Vec<String>, next: Option<String>) -> Result<CatalogPage, Error> {
        let repositories = self.metadata.repository_summaries(&names).await?;
        Ok(CatalogPage { repositories, next })
    }

    /// A repository's summary, `NameUnknown` if it does not exist.
    pub async fn repository_summary(&self, repository: &RepoName) -> Result<RepositorySummary, Error> {
        let names = [repository.as_str().to_owned()];
        self.metadata.repository_summaries(&names).await?.into_iter().next().ok_or(Error::NameUnknown)
    }

    /// A page of tags with their manifests.
    pub async fn tag_page(
        &self,
        repository: &RepoName,
        order: TagOrder,
        offset: u64,
        limit: u32,
    ) -> Result<Vec<TagRow>, Error> {
        self.metadata.tag_page(repository, order, offset, limit).await?.ok_or(Error::NameUnknown)
    }

    /// A manifest with its payload, not counted as a pull (retention's `keep_pulled_within`
    /// is about clients, not people browsing).
    pub async fn inspect_manifest(
        &self,
        repository: &RepoName,
        reference: &Reference,
    ) -> Result<StoredManifest, Error> {
        self.metadata.get_manifest(repository, reference, true).await?.ok_or(Error::ManifestUnknown)
    }

    /// The tags pointing at a manifest.
    pub async fn tags_of(&self, repository: &RepoName, digest: &Digest) -> Result<Vec<crate::oci::Tag>, Error> {
        Ok(self.metadata.tags_of(repository, digest).await?)
    }

    /// A blob's bytes when it is at most `max` bytes long (an image config); `None` if larger.
    pub async fn small_blob(&self, repository: &RepoName, digest: &Digest, max: u64) -> Result<Option<Vec<u8>>, Error> {
        use futures_util::StreamExt;
        let blob = self.metadata.blob_in_repository(repository, digest).await?.ok_or(Error::BlobUnknown)?;
        if blob.size > max {
            return Ok(None);
        }
        if blob.size == 0 {
            return Ok(Some(Vec::new()));
        }
        let whole = crate::storage::ByteRange { start: 0, end: blob.size - 1 };
        let mut body = self.blobs.get(digest, blob.location.as_deref(), Some(whole)).await?;
        let mut bytes = Vec::with_capacity(blob.size as usize);
        while let Some(piece) = body.next().await {
            bytes.extend_from_slice(&piece.map_err(|e| Error::Internal(e.to_string()))?);
            if bytes.len() as u64 > max {
                return Ok(None);
            }
        }
        Ok(Some(bytes))
    }

    /// Whether `visible` lets through every repository in `namespace` and under it; `false`
    /// too when there are more than the scan budget can read (a total of what one may not see
    /// all of says something about what one may not see).
    pub async fn namespace_visible(&self, namespace: &str, visible: impl Fn(&str) -> bool) -> Result<bool, Error> {
        let under = format!("{namespace}/");
        let mut last: Option<String> = None;
        for _ in 0..SCANS {
            let page = self.metadata.search_repositories(NameMatch::Prefix(namespace), last.as_deref(), SCAN).await?;
            if page.items.iter().any(|n| (n == namespace || n.starts_with(&under)) && !visible(n)) {
                return Ok(false);
            }
            if !page.more {
                return Ok(true);
            }
            last = page.items.last().cloned();
        }
        Ok(false)
    }

    /// Bytes of distinct blobs, and repositories, in `namespace` and under it.
    pub async fn namespace_size(&self, namespace: &str) -> Result<(u64, u64), Error> {
        Ok(self.metadata.namespace_size(namespace).await?)
    }

    /// The tags of `repository` its `[[retention]]` rule would remove now, each with the
    /// reason, as `berth retention --dry-run` gives them (pulls not yet flushed aside).
    pub async fn retention_marks(
        &self,
        repository: &RepoName,
    ) -> Result<std::collections::HashMap<String, String>, Error> {
        let rules = self.lifecycle();
        let Some(rule) = rules.retention_for(repository.as_str()) else { return Ok(Default::default()) };
        let tags = self.metadata.tag_infos(repository).await?;
        let now = super::uploads::now_ms();
        let protected = |tag: &str| rules.forbids_delete(repository.as_str(), tag).is_some();
        Ok(super::lifecycle::rules::tags_to_remove(rule, &tags, now, protected)
            .into_iter()
            .map(|r| (r.tag.name, r.reason))
            .collect())
    }
}
