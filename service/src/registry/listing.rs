//! Tag, repository and referrer listings.

use super::{Error, Registry};
use crate::metadata::{Page, Referrer};
use crate::oci::{Digest, RepoName};

/// Most items in one page of a listing; a client asking for more gets this many and a
/// `Link` to the rest.
pub const MAX_PAGE: u32 = 10_000;

impl Registry {
    /// Tags of a repository, sorted (`GET /v2/<name>/tags/list`).
    pub async fn list_tags(&self, repository: &RepoName, last: Option<&str>, n: Option<u32>) -> Result<Page, Error> {
        let limit = n.map_or(u32::MAX - 1, |n| n.min(MAX_PAGE));
        self.metadata.list_tags(repository, last, limit).await?.ok_or(Error::NameUnknown)
    }

    /// Repository names, sorted (`GET /v2/_catalog`).
    pub async fn list_repositories(&self, last: Option<&str>, n: Option<u32>) -> Result<Page, Error> {
        let limit = n.map_or(MAX_PAGE, |n| n.min(MAX_PAGE));
        Ok(self.metadata.list_repositories(last, limit).await?)
    }

    /// Manifests whose subject is `subject` (`GET /v2/<name>/referrers/<digest>`). A
    /// repository that does not exist simply has none.
    pub async fn referrers(
        &self,
        repository: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, Error> {
        Ok(self.metadata.referrers(repository, subject, artifact_type).await?)
    }
}
