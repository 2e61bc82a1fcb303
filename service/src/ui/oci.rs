//! The parts of manifests, indexes and image configs the UI shows. Lenient: a field that is
//! missing or of another shape is left out, never an error (the raw JSON is shown anyway).

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub artifact_type: Option<String>,
    pub platform: Option<Platform>,
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    /// `linux/arm64/v8`, as `docker pull --platform` takes it.
    pub fn show(&self) -> String {
        match &self.variant {
            Some(variant) => format!("{}/{}/{variant}", self.os, self.architecture),
            None => format!("{}/{}", self.os, self.architecture),
        }
    }
}

/// An image manifest or an index: which one the fields present say.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Manifest {
    pub media_type: Option<String>,
    pub artifact_type: Option<String>,
    pub config: Option<Descriptor>,
    pub layers: Vec<Descriptor>,
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

impl Manifest {
    pub fn parse(payload: &[u8]) -> Option<Manifest> {
        serde_json::from_slice(payload).ok()
    }

    pub fn is_index(&self, media_type: &str) -> bool {
        media_type.contains("index") || media_type.contains("manifest.list") || !self.manifests.is_empty()
    }

    /// The platforms an index lists, in its order.
    pub fn platforms(&self) -> Vec<String> {
        self.manifests.iter().filter_map(|m| m.platform.as_ref()).map(Platform::show).collect()
    }

    /// Bytes of the config and layers: what a pull of the image moves.
    pub fn image_size(&self) -> u64 {
        self.config.iter().chain(&self.layers).map(|d| d.size).sum()
    }
}

/// Whether a config of this media type is an image config (and not, say, a Helm chart's).
pub fn is_image_config(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.config.v1+json"
        || media_type == "application/vnd.docker.container.image.v1+json"
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ImageConfig {
    pub created: Option<String>,
    pub author: Option<String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub config: RunConfig,
    pub history: Vec<History>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct RunConfig {
    #[serde(rename = "User")]
    pub user: Option<String>,
    #[serde(rename = "Entrypoint")]
    pub entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd")]
    pub cmd: Option<Vec<String>>,
    #[serde(rename = "Env")]
    pub env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir")]
    pub working_dir: Option<String>,
    #[serde(rename = "Labels")]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "ExposedPorts")]
    pub exposed_ports: Option<BTreeMap<String, serde_json::Value>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct History {
    pub created: Option<String>,
    pub created_by: Option<String>,
    pub comment: Option<String>,
    pub empty_layer: bool,
}

impl ImageConfig {
    pub fn parse(bytes: &[u8]) -> Option<ImageConfig> {
        serde_json::from_slice(bytes).ok()
    }
}

/// What a referrer is, from its artifact type: signatures, SBOMs, attestations.
pub fn referrer_kind(artifact_type: &str) -> &'static str {
    let t = artifact_type.to_ascii_lowercase();
    if t.contains("cosign") && t.contains("sig") {
        "Signature (cosign)"
    } else if t.contains("notary") || t.contains("notation") {
        "Signature (Notation)"
    } else if t.contains("sigstore") {
        "Sigstore bundle"
    } else if t.contains("spdx") || t.contains("cyclonedx") || t.contains("syft") || t.contains("sbom") {
        "SBOM"
    } else if t.contains("in-toto") || t.contains("attestation") || t.contains("provenance") {
        "Attestation"
    } else {
        "Other artifact"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn referrers_are_told_apart_by_artifact_type() {
        assert_eq!(referrer_kind("application/vnd.dev.cosign.artifact.sig.v1+json"), "Signature (cosign)");
        assert_eq!(referrer_kind("application/vnd.cncf.notary.signature"), "Signature (Notation)");
        assert_eq!(referrer_kind("application/spdx+json"), "SBOM");
        assert_eq!(referrer_kind("application/vnd.cyclonedx+json"), "SBOM");
        assert_eq!(referrer_kind("application/vnd.in-toto+json"), "Attestation");
        assert_eq!(referrer_kind("application/x-something"), "Other artifact");
    }

    #[test]
    fn odd_shapes_parse_leniently() {
        let m = Manifest::parse(br#"{"schemaVersion":2,"layers":[{"size":3,"digest":"x"}],"annotations":{}}"#)
            .expect("parses");
        assert_eq!(m.image_size(), 3);
        assert!(Manifest::parse(b"[1,2]").is_none());
        let c = ImageConfig::parse(br#"{"config":{"Env":["A=1"],"Labels":null},"history":[{"created_by":"x"}]}"#)
            .expect("parses");
        assert_eq!(c.config.env.as_deref(), Some(&["A=1".to_owned()][..]));
        assert_eq!(c.history.len(), 1);
    }
}
