//! Redis for tests: the server the test command started (`TEST_REDIS_URL`), with a key
//! prefix of its own per test.
#![allow(dead_code)]

pub fn url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!("Redis tests need a server: run ./scripts/test.sh, or set TEST_REDIS_URL=redis://127.0.0.1:PORT")
    })
}

pub fn fresh_prefix() -> String {
    format!("berth-test:{}:", uuid::Uuid::new_v4().simple())
}
