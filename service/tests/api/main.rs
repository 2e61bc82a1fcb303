//! Black-box tests: a real server on port 0, real SQLite and filesystem, driven over HTTP.
#![allow(clippy::unwrap_used)]

mod blobs;
mod errors;
mod helpers;
mod listing;
mod manifests;
mod uploads;
