//! S3 for tests: the server the test command started (`TEST_S3_ENDPOINT`, moto on
//! 127.0.0.1), with a fresh bucket per test.
#![allow(dead_code)]

use aws_sdk_s3::Client;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use berth::config::{Secret, Settings, StorageKind};
use berth::storage::s3::{S3Connection, S3Options, S3Store};

/// Part size in tests: the smallest S3 allows, so that a few MiB make a multipart upload.
pub const PART: usize = 5 << 20;

pub fn endpoint() -> String {
    std::env::var("TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "S3 tests need an S3 server: run ./scripts/test.sh, or start one with \
             `moto_server -H 127.0.0.1 -p 5300` and set TEST_S3_ENDPOINT=http://127.0.0.1:5300"
        )
    })
}

pub fn client() -> Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .http_client(berth::storage::s3::http_client(None).expect("HTTP client"))
        .endpoint_url(endpoint())
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .force_path_style(true)
        .build();
    Client::from_conf(config)
}

/// Creates a bucket of its own for one test.
pub async fn fresh_bucket() -> String {
    let name = format!("berth-{}", &uuid::Uuid::new_v4().simple().to_string()[..20]);
    client().create_bucket().bucket(&name).send().await.expect("create bucket");
    name
}

pub fn connection() -> S3Connection {
    S3Connection {
        endpoint: Some(endpoint()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        credentials: Some(("test".into(), "test".into())),
        ..S3Connection::default()
    }
}

pub fn options(bucket: &str) -> S3Options {
    S3Options {
        bucket: bucket.into(),
        prefix: "registry/".into(),
        part_size: PART,
        concurrency: 4,
        redirect: false,
        presign_expiry: std::time::Duration::from_secs(1200),
        unsigned_payload: false,
        uniform_parts: false,
        read_concurrency: 4,
    }
}

pub async fn store(bucket: &str) -> S3Store {
    S3Store::connect(&connection(), options(bucket)).await.expect("S3 store")
}

/// Points the settings of a test server at `bucket`.
pub fn configure(settings: &mut Settings, bucket: &str) {
    settings.storage = StorageKind::S3;
    settings.s3_bucket = Some(bucket.into());
    settings.s3_endpoint = Some(endpoint());
    settings.s3_region = Some("us-east-1".into());
    settings.s3_force_path_style = true;
    settings.s3_prefix = "registry".into();
    settings.s3_access_key_id = Some("test".into());
    settings.s3_secret_access_key = Some(Secret::new("test"));
    settings.s3_part_size = PART;
}

/// Every key in the bucket.
pub async fn keys(bucket: &str) -> Vec<String> {
    let listed = client().list_objects_v2().bucket(bucket).send().await.expect("list");
    listed.contents().iter().filter_map(|o| o.key().map(str::to_owned)).collect()
}

/// Multipart uploads in progress in the bucket.
pub async fn multipart_uploads(bucket: &str) -> usize {
    let listed = client().list_multipart_uploads().bucket(bucket).send().await.expect("list uploads");
    listed.uploads().len()
}

/// The sizes of the parts of the one multipart upload in progress in the bucket.
pub async fn part_sizes(bucket: &str) -> Vec<i64> {
    let listed = client().list_multipart_uploads().bucket(bucket).send().await.expect("list uploads");
    let upload = listed.uploads().first().expect("a multipart upload in progress");
    let parts = client()
        .list_parts()
        .bucket(bucket)
        .key(upload.key().expect("key"))
        .upload_id(upload.upload_id().expect("upload id"))
        .send()
        .await
        .expect("list parts");
    parts.parts().iter().map(|p| p.size().unwrap_or(0)).collect()
}
