//! Black-box tests: a real server on port 0, real SQLite and filesystem, driven over HTTP.
#![allow(clippy::unwrap_used)]

#[path = "../support/postgres.rs"]
mod pgsupport;
#[path = "../support/proxy.rs"]
mod proxy;
#[path = "../support/redis.rs"]
mod redissupport;
#[path = "../support/s3.rs"]
mod s3support;
#[path = "../support/url.rs"]
mod urlsupport;

mod auth;
mod blobs;
mod browser;
mod conformance;
mod errors;
mod gc;
mod hardening;
mod helpers;
mod lifecycle;
mod listing;
mod manifests;
mod observability;
mod s3;
mod shared;
mod storage_full;
mod ui;
mod uploads;
mod upstream;
