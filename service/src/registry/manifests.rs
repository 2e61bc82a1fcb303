//! Manifest pushes, pulls and deletes.

use bytes::Bytes;
use tracing::instrument;

use super::{Error, Registry};
use crate::metadata::{NewManifest, PutManifest, StoredManifest};
use crate::oci::{Algorithm, Digest, ManifestError, ParsedManifest, Reference, RepoName, Tag};

/// Tags accepted in one manifest push (`?tag=` parameters plus the tag in the URL).
pub const MAX_TAGS_PER_PUSH: usize = 100;

/// A stored manifest push, for the response headers.
#[derive(Clone, Debug)]
pub struct PushedManifest {
    pub digest: Digest,
    /// The subject the registry recorded, reported back as `OCI-Subject`.
    pub subject: Option<Digest>,
    pub tags: Vec<Tag>,
}

impl Registry {
    /// Stores a manifest (`PUT /v2/<name>/manifests/<reference>[?tag=…]`).
    #[instrument(skip(self, body, extra_tags), fields(repository = %repository, reference = %reference))]
    pub async fn push_manifest(
        &self,
        repository: &RepoName,
        reference: &Reference,
        extra_tags: Vec<Tag>,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PushedManifest, Error> {
        if body.len() > self.policy.max_manifest_size {
            return Err(Error::ManifestTooLarge { limit: self.policy.max_manifest_size });
        }
        let mut tags = extra_tags;
        let digest = match reference {
            Reference::Digest(claimed) => {
                let computed = Digest::compute(claimed.algorithm(), &body);
                if computed != *claimed {
                    return Err(Error::DigestInvalid(format!(
                        "manifest digest {computed} does not match the digest {claimed} in the URL"
                    )));
                }
                computed
            }
            Reference::Tag(tag) => {
                tags.insert(0, tag.clone());
                Digest::compute(Algorithm::Sha256, &body)
            }
        };
        let mut seen = std::collections::HashSet::new();
        tags.retain(|t| seen.insert(t.clone()));
        if tags.len() > MAX_TAGS_PER_PUSH {
            return Err(Error::TooManyTags { limit: MAX_TAGS_PER_PUSH });
        }
        let record = self.manifest_record(repository, &digest, content_type, body, false)?;
        let subject = record.subject.clone();
        let rules = self.lifecycle();
        let fixed: Vec<Tag> =
            tags.iter().filter(|t| rules.fixing(repository.as_str(), t.as_str()).next().is_some()).cloned().collect();
        match self.metadata.put_manifest(&record, &tags, &fixed).await? {
            PutManifest::Stored => Ok(PushedManifest { digest, subject, tags }),
            PutManifest::TagFixed(tag, current) => {
                crate::metrics::Metrics::get().refusals.with_label_values(&["immutable"]).inc();
                let rule = rules.fixing(repository.as_str(), tag.as_str()).next().map(|r| r.describe());
                Err(Error::Denied(format!(
                    "tag {tag} is immutable under {}: it already points at {current}; push under a new tag",
                    rule.unwrap_or_else(|| "an immutable rule".into())
                )))
            }
            PutManifest::Missing(missing) => Err(Error::ManifestBlobUnknown(missing)),
            PutManifest::WrongSize(digests) => Err(Error::ManifestInvalid(format!(
                "descriptor size does not match the stored content for {}",
                digests.iter().map(Digest::as_str).collect::<Vec<_>>().join(", ")
            ))),
        }
    }

    /// The record of a manifest about to be stored: parsed, with what it needs. `lazy` for a
    /// manifest fetched from upstream, stored before what it lists.
    pub(crate) fn manifest_record(
        &self,
        repository: &RepoName,
        digest: &Digest,
        content_type: Option<&str>,
        body: Bytes,
        lazy: bool,
    ) -> Result<NewManifest, Error> {
        let parsed = ParsedManifest::parse(content_type, &body).map_err(|e| match e {
            ManifestError::Invalid(_)
            | ManifestError::Schema1
            | ManifestError::UnsupportedMediaType(_)
            | ManifestError::MediaTypeMismatch { .. } => Error::ManifestInvalid(e.to_string()),
        })?;
        let annotations = match &parsed.annotations {
            Some(a) => Some(serde_json::to_string(a).map_err(|e| Error::Internal(e.to_string()))?),
            None => None,
        };
        Ok(NewManifest {
            repository: repository.clone(),
            digest: digest.clone(),
            media_type: parsed.media_type.clone(),
            artifact_type: parsed.artifact_type.clone(),
            subject: parsed.subject.as_ref().map(|s| s.digest.clone()),
            annotations,
            blobs: parsed.required_blobs().map(|d| (d.digest.clone(), d.size)).collect(),
            manifests: parsed.manifests.iter().map(|d| (d.digest.clone(), d.size)).collect(),
            payload: body.to_vec(),
            lazy,
        })
    }

    /// A manifest by tag or digest (`GET`/`HEAD`); the payload only when `with_payload`.
    pub async fn manifest(
        &self,
        repository: &RepoName,
        reference: &Reference,
        with_payload: bool,
    ) -> Result<StoredManifest, Error> {
        let manifest =
            self.metadata.get_manifest(repository, reference, with_payload).await?.ok_or(Error::ManifestUnknown)?;
        self.pulls.record(repository, reference);
        Ok(manifest)
    }

    /// Deletes a manifest and its tags (by digest) or a single tag (by tag).
    #[instrument(skip(self), fields(repository = %repository, reference = %reference))]
    pub async fn delete_manifest(&self, repository: &RepoName, reference: &Reference) -> Result<(), Error> {
        self.check_delete_enabled()?;
        let rules = self.lifecycle();
        if !rules.immutable.is_empty() {
            let tags = match reference {
                Reference::Digest(digest) => self.metadata.tags_of(repository, digest).await?,
                Reference::Tag(tag) => vec![tag.clone()],
            };
            for tag in tags {
                if let Some(rule) = rules.forbids_delete(repository.as_str(), tag.as_str()) {
                    crate::metrics::Metrics::get().refusals.with_label_values(&["immutable"]).inc();
                    return Err(Error::Denied(format!(
                        "tag {tag} is immutable and may not be deleted: {} says allow_delete = false",
                        rule.describe()
                    )));
                }
            }
        }
        let deleted = match reference {
            Reference::Digest(digest) => self.metadata.delete_manifest(repository, digest).await?,
            Reference::Tag(tag) => self.metadata.delete_tag(repository, tag).await?,
        };
        if deleted { Ok(()) } else { Err(Error::ManifestUnknown) }
    }
}
