//! Pure OCI types: digests, repository names, tags, references, media types and manifests.
//!
//! Nothing in here does I/O or knows about HTTP; every other layer builds on these types, and
//! every value of them has already been validated, so code that holds a [`RepoName`] or a
//! [`Digest`] never checks it again.

mod digest;
mod manifest;
pub mod media_types;
mod name;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use manifest::{Descriptor, ManifestError, ManifestKind, ParsedManifest};
pub use name::{NameError, Reference, RepoName, Tag};
