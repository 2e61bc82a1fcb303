//! Berth, an OCI container registry.
//!
//! Layers, top to bottom; dependencies point down only:
//!
//! | module | role |
//! |---|---|
//! | [`api`] | HTTP: routes, headers, status codes, the OCI error JSON |
//! | [`auth`] | who may do what |
//! | [`registry`] | the domain: push, pull, delete rules, digest checks, manifest validation |
//! | [`storage`], [`metadata`], [`sessions`] | the three ports, one trait each plus implementations; they never call each other |
//! | [`oci`] | pure types: names, digests, references, manifests |
//!
//! [`config`] and [`server`] wire it together from the settings.

pub mod api;
pub mod auth;
pub mod config;
pub mod metadata;
pub mod metrics;
pub mod oci;
pub mod registry;
pub mod server;
pub mod sessions;
pub mod storage;
pub mod telemetry;
pub mod ui;

/// Makes ring the TLS crypto provider of the process (Redis over TLS, JWKS fetches). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
