//! PostgreSQL for tests: the server the test command started (`TEST_DATABASE_URL`, a URL of
//! a database the tests may create databases from), with a fresh database per test.
#![allow(dead_code)]

use sqlx::{Connection, Executor};

pub fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "PostgreSQL tests need a server: run ./scripts/test.sh, or set \
             TEST_DATABASE_URL=postgres://USER@127.0.0.1:PORT/postgres for a user who may create databases"
        )
    })
}

/// Creates an empty database for one test and returns its URL.
pub async fn fresh_database() -> String {
    let admin = admin_url();
    let name = format!("berth_{}", uuid::Uuid::new_v4().simple());
    let mut connection = sqlx::PgConnection::connect(&admin).await.expect("connect to PostgreSQL");
    connection.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("database URL ends in /<database>");
    format!("{base}/{name}")
}
