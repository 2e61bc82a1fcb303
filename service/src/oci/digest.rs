//! Content digests (`algorithm:encoded`) and the running hash that produces them.

use std::fmt;
use std::str::FromStr;

use digest::Digest as _;
use digest::common::hazmat::SerializableState;
use serde::{Deserialize, Serialize};

/// A digest algorithm Berth can verify. The image spec registers `sha256` and `sha512`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }

    /// Length of the hex-encoded part of a digest of this algorithm.
    fn encoded_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Sha512 => 128,
        }
    }
}

impl FromStr for Algorithm {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "sha256" => Ok(Algorithm::Sha256),
            "sha512" => Ok(Algorithm::Sha512),
            other if is_algorithm_syntax(other) => Err(DigestError::Unsupported(other.to_owned())),
            other => Err(DigestError::Malformed(format!("invalid digest algorithm {other:?}"))),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string is not a digest Berth accepts.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    #[error("{0}")]
    Malformed(String),
    #[error("unsupported digest algorithm {0:?} (supported: sha256, sha512)")]
    Unsupported(String),
}

/// A validated digest of a supported algorithm, such as `sha256:e3b0c442…`.
///
/// The whole string is kept so that rendering it (which happens on every response) costs nothing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest {
    text: String,
    algorithm: Algorithm,
}

impl Digest {
    /// The digest of `bytes` under `algorithm`.
    pub fn compute(algorithm: Algorithm, bytes: &[u8]) -> Digest {
        let mut hasher = Hasher::new(algorithm);
        hasher.update(bytes);
        hasher.finish()
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The hex-encoded part after the colon.
    pub fn encoded(&self) -> &str {
        &self.text[self.algorithm.as_str().len() + 1..]
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl FromStr for Digest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (algorithm, encoded) = s
            .split_once(':')
            .ok_or_else(|| DigestError::Malformed(format!("{s:?} is not of the form algorithm:hex")))?;
        let algorithm: Algorithm = algorithm.parse()?;
        let is_lower_hex = encoded.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if encoded.len() != algorithm.encoded_len() || !is_lower_hex {
            return Err(DigestError::Malformed(format!(
                "a {algorithm} digest is {} lowercase hex characters",
                algorithm.encoded_len()
            )));
        }
        Ok(Digest { text: s.to_owned(), algorithm })
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.text)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `[a-z0-9]+([+._-][a-z0-9]+)*`, the image spec's grammar for any algorithm name.
fn is_algorithm_syntax(s: &str) -> bool {
    !s.is_empty()
        && s.split(['+', '.', '_', '-'])
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()))
}

/// A running hash whose state can be saved between chunks of an upload and restored on
/// another replica (the bytes go into the upload session).
#[derive(Clone)]
pub enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(sha2::Sha256::new()),
            Algorithm::Sha512 => Hasher::Sha512(sha2::Sha512::new()),
        }
    }

    pub fn algorithm(&self) -> Algorithm {
        match self {
            Hasher::Sha256(_) => Algorithm::Sha256,
            Hasher::Sha512(_) => Algorithm::Sha512,
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Sha512(h) => h.update(bytes),
        }
    }

    pub fn finish(self) -> Digest {
        let algorithm = self.algorithm();
        let encoded = match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        };
        Digest { text: format!("{algorithm}:{encoded}"), algorithm }
    }

    /// The hash state as bytes, to be stored with the upload session.
    pub fn save(&self) -> Vec<u8> {
        match self {
            Hasher::Sha256(h) => h.serialize().to_vec(),
            Hasher::Sha512(h) => h.serialize().to_vec(),
        }
    }

    /// Restores a state written by [`Hasher::save`]; `None` if the bytes are not one.
    pub fn restore(algorithm: Algorithm, state: &[u8]) -> Option<Hasher> {
        match algorithm {
            Algorithm::Sha256 => {
                let state = state.try_into().ok()?;
                sha2::Sha256::deserialize(state).ok().map(Hasher::Sha256)
            }
            Algorithm::Sha512 => {
                let state = state.try_into().ok()?;
                sha2::Sha512::deserialize(state).ok().map(Hasher::Sha512)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY_SHA256: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_supported_digests_and_rejects_the_rest() {
        let d: Digest = EMPTY_SHA256.parse().expect("valid");
        assert_eq!(d.algorithm(), Algorithm::Sha256);
        assert_eq!(d.encoded().len(), 64);
        assert!(matches!("sha384:abcd".parse::<Digest>(), Err(DigestError::Unsupported(_))));
        assert!(matches!("sha256:ABCD".parse::<Digest>(), Err(DigestError::Malformed(_))));
        assert!(matches!("sha256".parse::<Digest>(), Err(DigestError::Malformed(_))));
        assert!(matches!("Sha256:00".parse::<Digest>(), Err(DigestError::Malformed(_))));
        let upper = EMPTY_SHA256.to_uppercase().replace("SHA256", "sha256");
        assert!(upper.parse::<Digest>().is_err());
    }

    #[test]
    fn hash_state_survives_a_round_trip_mid_stream() {
        for algorithm in [Algorithm::Sha256, Algorithm::Sha512] {
            let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
            let mut first = Hasher::new(algorithm);
            first.update(&data[..4_321]);
            let mut resumed = Hasher::restore(algorithm, &first.save()).expect("restorable");
            resumed.update(&data[4_321..]);
            assert_eq!(resumed.finish(), Digest::compute(algorithm, &data));
        }
        assert!(Hasher::restore(Algorithm::Sha256, b"garbage").is_none());
    }

    #[test]
    fn computes_known_digests() {
        assert_eq!(Digest::compute(Algorithm::Sha256, b"").as_str(), EMPTY_SHA256);
        assert!(Digest::compute(Algorithm::Sha512, b"").as_str().starts_with("sha512:cf83e135"));
    }
}
