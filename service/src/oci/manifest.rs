//! Parsing and validating manifests and indexes (OCI image spec, Docker manifest v2 schema 2).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::digest::Digest;
use super::media_types as mt;

/// What a manifest is, which decides what it may reference.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ManifestKind {
    /// An image manifest (OCI or Docker schema 2): a config and layers, all blobs.
    Image,
    /// An image index or Docker manifest list: other manifests.
    Index,
}

/// Why a manifest was refused. The messages go to the client as they are.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error(
        "Docker image manifest schema 1 is deprecated and not supported: push the image as Docker schema 2 or OCI (for example with a current docker, podman or skopeo)"
    )]
    Schema1,
    #[error("unsupported manifest media type {0:?}")]
    UnsupportedMediaType(String),
    #[error("Content-Type {header:?} does not match the manifest's mediaType {body:?}")]
    MediaTypeMismatch { header: String, body: String },
    #[error("manifest is not valid: {0}")]
    Invalid(String),
}

/// A content descriptor: the `config`, `layers[]`, `manifests[]` and `subject` entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    /// Where a non-distributable layer can be fetched from instead of this registry.
    pub urls: Vec<String>,
}

/// A manifest that passed validation, with what the registry needs to record about it.
#[derive(Clone, Debug)]
pub struct ParsedManifest {
    /// The media type the manifest is stored and served with.
    pub media_type: String,
    pub kind: ManifestKind,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    /// The artifact type the referrers API reports: `artifactType`, or for an image manifest
    /// without one, the config's media type.
    pub artifact_type: Option<String>,
    pub annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<serde_json::Value>,
    media_type: Option<String>,
    config: Option<RawDescriptor>,
    layers: Option<Vec<RawDescriptor>>,
    manifests: Option<Vec<RawDescriptor>>,
    subject: Option<RawDescriptor>,
    artifact_type: Option<String>,
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawDescriptor {
    media_type: Option<String>,
    digest: Option<String>,
    size: Option<i64>,
    #[serde(default)]
    urls: Vec<String>,
}

impl ParsedManifest {
    /// Parses `bytes` pushed with the `Content-Type` header `content_type` (parameters allowed).
    pub fn parse(content_type: Option<&str>, bytes: &[u8]) -> Result<ParsedManifest, ManifestError> {
        let declared = content_type.map(essence).filter(|t| !is_generic(t));
        if let Some(t) = declared {
            check_media_type(t)?;
        }
        let raw: RawManifest =
            serde_json::from_slice(bytes).map_err(|e| ManifestError::Invalid(format!("not a JSON manifest: {e}")))?;
        match raw.schema_version.as_ref().and_then(serde_json::Value::as_i64) {
            Some(2) => {}
            Some(1) => return Err(ManifestError::Schema1),
            _ => return Err(ManifestError::Invalid("schemaVersion must be 2".into())),
        }
        let media_type = match (declared, raw.media_type.as_deref()) {
            (Some(header), Some(body)) if header != body => {
                return Err(ManifestError::MediaTypeMismatch { header: header.into(), body: body.into() });
            }
            (Some(t), _) | (None, Some(t)) => t.to_owned(),
            // The OCI image spec lets `mediaType` be left out: tell the two kinds apart by shape.
            (None, None) if raw.manifests.is_some() => mt::OCI_INDEX.to_owned(),
            (None, None) if raw.config.is_some() => mt::OCI_MANIFEST.to_owned(),
            (None, None) => {
                return Err(ManifestError::Invalid(
                    "no Content-Type or mediaType, and neither config nor manifests".into(),
                ));
            }
        };
        let kind = check_media_type(&media_type)?;
        build(media_type, kind, raw)
    }

    /// Blobs that must already be in the repository: the config and every layer that the
    /// registry is meant to hold (non-distributable layers with `urls` live elsewhere).
    pub fn required_blobs(&self) -> impl Iterator<Item = &Descriptor> {
        self.config.iter().chain(self.layers.iter().filter(|l| l.urls.is_empty()))
    }
}

fn build(media_type: String, kind: ManifestKind, raw: RawManifest) -> Result<ParsedManifest, ManifestError> {
    let artifact_type = raw.artifact_type.filter(|t| !t.is_empty());
    let subject = raw.subject.map(|d| descriptor("subject", d)).transpose()?;
    let annotations = raw.annotations;
    match kind {
        ManifestKind::Image => {
            let config = descriptor("config", raw.config.ok_or_else(|| missing("config"))?)?;
            let layers = raw
                .layers
                .ok_or_else(|| missing("layers"))?
                .into_iter()
                .enumerate()
                .map(|(i, d)| descriptor(&format!("layers[{i}]"), d))
                .collect::<Result<Vec<_>, _>>()?;
            let artifact_type = artifact_type.or_else(|| Some(config.media_type.clone()));
            Ok(ParsedManifest {
                media_type,
                kind,
                config: Some(config),
                layers,
                manifests: Vec::new(),
                subject,
                artifact_type,
                annotations,
            })
        }
        ManifestKind::Index => {
            let manifests = raw
                .manifests
                .ok_or_else(|| missing("manifests"))?
                .into_iter()
                .enumerate()
                .map(|(i, d)| descriptor(&format!("manifests[{i}]"), d))
                .collect::<Result<Vec<_>, _>>()?;
            Ok(ParsedManifest {
                media_type,
                kind,
                config: None,
                layers: Vec::new(),
                manifests,
                subject,
                artifact_type,
                annotations,
            })
        }
    }
}

fn missing(field: &str) -> ManifestError {
    ManifestError::Invalid(format!("the {field} field is missing"))
}

fn descriptor(field: &str, raw: RawDescriptor) -> Result<Descriptor, ManifestError> {
    let invalid = |why: String| ManifestError::Invalid(format!("{field}: {why}"));
    let media_type = raw.media_type.filter(|t| !t.is_empty()).ok_or_else(|| invalid("mediaType is missing".into()))?;
    let digest =
        raw.digest.ok_or_else(|| invalid("digest is missing".into()))?.parse().map_err(|e| invalid(format!("{e}")))?;
    let size = match raw.size {
        Some(size) if size >= 0 => size as u64,
        Some(_) => return Err(invalid("size is negative".into())),
        None => return Err(invalid("size is missing".into())),
    };
    Ok(Descriptor { media_type, digest, size, urls: raw.urls })
}

/// The media type without parameters, as the spec tells registries to read it.
fn essence(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// Content types that say nothing about which manifest this is.
fn is_generic(t: &str) -> bool {
    t.is_empty() || t == "application/json" || t == "application/octet-stream" || t == "*/*"
}

fn check_media_type(t: &str) -> Result<ManifestKind, ManifestError> {
    match t {
        mt::OCI_MANIFEST | mt::DOCKER_MANIFEST => Ok(ManifestKind::Image),
        mt::OCI_INDEX | mt::DOCKER_MANIFEST_LIST => Ok(ManifestKind::Index),
        mt::DOCKER_SCHEMA1 | mt::DOCKER_SCHEMA1_SIGNED => Err(ManifestError::Schema1),
        other => Err(ManifestError::UnsupportedMediaType(other.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", format!("{n:02x}").repeat(32))
    }

    fn image(extra: &str) -> String {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{}","size":3}}]{extra}}}"#,
            mt::OCI_MANIFEST,
            d(1),
            d(2)
        )
    }

    #[test]
    fn parses_an_image_manifest_with_a_subject() {
        let body = image(&format!(r#","subject":{{"mediaType":"{}","digest":"{}","size":9}}"#, mt::OCI_MANIFEST, d(3)));
        let m = ParsedManifest::parse(Some(mt::OCI_MANIFEST), body.as_bytes()).expect("valid");
        assert_eq!(m.kind, ManifestKind::Image);
        assert_eq!(m.required_blobs().count(), 2);
        assert_eq!(m.subject.expect("subject").digest.as_str(), d(3));
        assert_eq!(m.artifact_type.as_deref(), Some("application/vnd.oci.image.config.v1+json"));
    }

    #[test]
    fn refuses_schema1_mismatches_and_broken_descriptors() {
        let body = image("");
        assert_eq!(
            ParsedManifest::parse(Some(mt::DOCKER_SCHEMA1_SIGNED), body.as_bytes()).unwrap_err(),
            ManifestError::Schema1
        );
        assert!(matches!(
            ParsedManifest::parse(Some(mt::OCI_INDEX), body.as_bytes()),
            Err(ManifestError::MediaTypeMismatch { .. })
        ));
        assert!(matches!(ParsedManifest::parse(None, b"{"), Err(ManifestError::Invalid(_))));
        assert!(matches!(ParsedManifest::parse(None, br#"{"schemaVersion":1}"#), Err(ManifestError::Schema1)));
        let bad_digest = body.replace(&d(2), "sha256:nothex");
        assert!(matches!(ParsedManifest::parse(None, bad_digest.as_bytes()), Err(ManifestError::Invalid(_))));
        let negative = body.replace("\"size\":3", "\"size\":-3");
        assert!(matches!(ParsedManifest::parse(None, negative.as_bytes()), Err(ManifestError::Invalid(_))));
        assert!(matches!(
            ParsedManifest::parse(Some("application/vnd.example+json"), body.as_bytes()),
            Err(ManifestError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn tells_an_index_without_media_type_by_its_shape() {
        let body = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":5}}]}}"#,
            mt::OCI_MANIFEST,
            d(4)
        );
        let m = ParsedManifest::parse(Some("application/json; charset=utf-8"), body.as_bytes()).expect("valid");
        assert_eq!(m.kind, ManifestKind::Index);
        assert_eq!(m.media_type, mt::OCI_INDEX);
        assert_eq!(m.artifact_type, None);
    }

    #[test]
    fn foreign_layers_are_not_required() {
        let body = image("").replace(r#""size":3}"#, r#""size":3,"urls":["https://example.com/layer"]}"#);
        let m = ParsedManifest::parse(None, body.as_bytes()).expect("valid");
        assert_eq!(m.required_blobs().count(), 1);
    }
}
