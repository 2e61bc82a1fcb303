//! The same blob pushed and pulled straight to and from the object store, with the part size
//! and concurrency Berth uses: the yardstick for Berth's S3 throughput.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::BytesMut;
use sha2::{Digest as _, Sha256};
use tokio::task::JoinSet;

use crate::BlobSource;

pub struct Direct {
    client: Client,
    bucket: String,
    part_size: usize,
    concurrency: usize,
    unsigned: bool,
}

impl Direct {
    /// The store named by the `--s3-*` options.
    pub async fn connect(args: &crate::Args, endpoint: &str) -> Result<Direct> {
        let (key, secret) = (args.s3_access_key.as_str(), args.s3_secret.as_str());
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .http_client(berth::storage::s3::http_client(None).map_err(anyhow::Error::msg)?)
            .endpoint_url(endpoint)
            .region(aws_sdk_s3::config::Region::new(args.s3_region.clone()))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(key, secret, None, None, "loadtest"))
            .force_path_style(true)
            .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
            .build();
        Ok(Direct {
            client: Client::from_conf(config),
            bucket: args.s3_bucket.clone(),
            part_size: args.s3_part_mib << 20,
            concurrency: args.s3_concurrency,
            unsigned: args.s3_unsigned,
        })
    }

    /// A multipart upload of the blob, `concurrency` parts at once.
    pub async fn push(&self, key: &str, blob: &BlobSource) -> Result<Duration> {
        let started = Instant::now();
        let created = self.client.create_multipart_upload().bucket(&self.bucket).key(key).send().await?;
        let upload_id = created.upload_id().context("no upload id")?.to_owned();
        let mut tasks: JoinSet<Result<(i32, String)>> = JoinSet::new();
        let mut parts = Vec::new();
        let mut buffer = BytesMut::new();
        let mut number = 0;
        for i in 0..=blob.mib {
            if i < blob.mib {
                buffer.extend_from_slice(&blob.piece(i));
            }
            while buffer.len() >= self.part_size || (i == blob.mib && !buffer.is_empty()) {
                let take = buffer.len().min(self.part_size);
                let part = buffer.split_to(take).freeze();
                number += 1;
                while tasks.len() >= self.concurrency {
                    parts.push(tasks.join_next().await.context("task")???);
                }
                let (client, bucket, key, upload_id, unsigned) =
                    (self.client.clone(), self.bucket.clone(), key.to_owned(), upload_id.clone(), self.unsigned);
                let n = number;
                tasks.spawn(async move {
                    let request = client
                        .upload_part()
                        .bucket(bucket)
                        .key(key)
                        .upload_id(upload_id)
                        .part_number(n)
                        .content_length(part.len() as i64)
                        .body(ByteStream::from(part))
                        .customize();
                    let request = if unsigned { request.disable_payload_signing() } else { request };
                    let done = request.send().await?;
                    Ok((n, done.e_tag().unwrap_or_default().to_owned()))
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            parts.push(done??);
        }
        parts.sort();
        let completed = parts.into_iter().map(|(n, etag)| CompletedPart::builder().part_number(n).e_tag(etag).build());
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(completed.collect())).build())
            .send()
            .await?;
        Ok(started.elapsed())
    }

    /// A GetObject of the blob, verifying its digest as the Berth pull does.
    pub async fn pull(&self, key: &str, digest: &str, len: u64) -> Result<Duration> {
        let started = Instant::now();
        let mut body = self.client.get_object().bucket(&self.bucket).key(key).send().await?.body;
        let (mut h, mut got) = (Sha256::new(), 0u64);
        while let Some(chunk) = body.try_next().await? {
            got += chunk.len() as u64;
            h.update(&chunk);
        }
        let elapsed = started.elapsed();
        let pulled = format!("sha256:{}", hex::encode(h.finalize()));
        if pulled != digest || got != len {
            bail!("direct GET gave {got} bytes, {pulled}");
        }
        Ok(elapsed)
    }
}
