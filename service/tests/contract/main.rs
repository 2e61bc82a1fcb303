//! Contract suites for the three ports. Each suite is a set of functions that take any
//! implementation; the macros at the bottom of each module instantiate them per backend, so
//! every backend answers to the same contract.
#![allow(clippy::unwrap_used)]

/// `contract!(backend, factory, [case, …])`: a module `backend` with one test per case, each
/// calling `case(store)` on a store the async `factory` makes (it also returns whatever must
/// live as long as the store, such as a temporary directory).
macro_rules! contract {
    ($backend:ident, $make:ident, [$($case:ident),* $(,)?]) => {
        mod $backend {
            $(
                #[tokio::test]
                async fn $case() {
                    let (store, _keep) = super::$make().await;
                    super::$case(store).await;
                }
            )*
        }
    };
}

#[path = "../support/postgres.rs"]
mod pgsupport;
#[path = "../support/redis.rs"]
mod redissupport;
#[path = "../support/s3.rs"]
mod s3support;
#[path = "../support/tls.rs"]
mod tlssupport;
#[path = "../support/url.rs"]
mod urlsupport;

mod blob_store;
mod metadata_store;
mod s3_store;
mod session_store;
