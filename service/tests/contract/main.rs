//! Contract suites for the three ports. Each suite is a set of functions that take any
//! implementation; the macros at the bottom of each module instantiate them per backend, so
//! every backend answers to the same contract.
#![allow(clippy::unwrap_used)]

mod blob_store;
mod metadata_store;
mod session_store;
