//! Three `berth serve` processes sharing PostgreSQL, Redis and S3, driven by a client that
//! sends each request of every upload to the next replica in turn. One replica is killed
//! with SIGKILL in the middle of an upload, which is finished through the others; at the end
//! every blob and manifest is pulled back through every replica and its digest checked.
#![allow(clippy::unwrap_used)]

#[path = "support/postgres.rs"]
mod pgsupport;
#[path = "support/redis.rs"]
mod redissupport;
#[path = "support/s3.rs"]
mod s3support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth::oci::{Algorithm, Digest};
use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::{Client, Method, StatusCode};
use serde_json::json;

const REPLICAS: usize = 3;
const IMAGES: usize = 12;
const VICTIM: usize = 1;

struct Replica {
    port: u16,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_berth"));
        command.arg("serve").envs(self.env.iter().cloned()).stdout(Stdio::null()).stderr(log);
        self.child = Some(command.spawn().unwrap());
    }

    /// SIGKILL: no cleanup, no graceful anything.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Cluster {
    client: Client,
    ports: Vec<u16>,
    alive: Vec<AtomicBool>,
    next: AtomicUsize,
    requests: AtomicU64,
    crossed: AtomicU64,
    retried: AtomicU64,
}

/// What one upload has seen: the replica of its last request.
struct Trail(Option<usize>);

impl Cluster {
    /// The live replica after the one this upload used last; for its first request, the
    /// next one in the cluster's own rotation.
    fn pick(&self, trail: &Trail) -> usize {
        let mut i = match trail.0 {
            Some(last) => last + 1,
            None => self.next.fetch_add(1, Ordering::SeqCst),
        };
        loop {
            i %= self.ports.len();
            if self.alive[i].load(Ordering::SeqCst) {
                return i;
            }
            i += 1;
        }
    }

    /// Sends a request to the next replica; on a connection failure or a 503, to the one after.
    async fn send(
        &self,
        trail: &mut Trail,
        build: impl Fn(&Client, String) -> reqwest::RequestBuilder,
    ) -> reqwest::Response {
        for attempt in 0..200 {
            let replica = self.pick(trail);
            let base = format!("http://127.0.0.1:{}", self.ports[replica]);
            self.requests.fetch_add(1, Ordering::Relaxed);
            if trail.0.is_some_and(|last| last != replica) {
                self.crossed.fetch_add(1, Ordering::Relaxed);
            }
            trail.0 = Some(replica);
            match build(&self.client, base).send().await {
                Ok(r) if r.status() != StatusCode::SERVICE_UNAVAILABLE => return r,
                _ => {
                    self.retried.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50 * (attempt % 10 + 1))).await;
                }
            }
        }
        panic!("no replica answered");
    }

    /// Pushes a blob: POST, PATCHes of `chunk` bytes with Content-Range, PUT, each to the next
    /// replica. A chunk that fails (its replica died, or a dead replica still holds the lock)
    /// is resent from wherever the upload stands, as `GET <location>` says.
    async fn push_blob(
        &self,
        repo: &str,
        blob: &[u8],
        chunk: usize,
        pause_after: Option<Arc<tokio::sync::Notify>>,
    ) -> Digest {
        let digest = Digest::compute(Algorithm::Sha256, blob);
        let mut trail = Trail(None);
        let r = self.send(&mut trail, |c, base| c.post(format!("{base}/v2/{repo}/blobs/uploads/"))).await;
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let mut offset = 0usize;
        let mut pause = pause_after;
        while offset < blob.len() {
            let end = (offset + chunk).min(blob.len());
            let body = Bytes::copy_from_slice(&blob[offset..end]);
            let range = format!("{offset}-{}", end - 1);
            let notify = pause.take();
            let result = self
                .send(&mut trail, |c, base| {
                    let request = c.patch(format!("{base}{location}")).header("Content-Range", &range);
                    match &notify {
                        // The victim's chunk: sent slowly, in pieces, so that its replica can be
                        // killed while it is half-way through.
                        Some(notify) => {
                            let length = body.len();
                            let (body, notify) = (body.clone(), notify.clone());
                            let pieces = futures_util::stream::unfold(0usize, move |at| {
                                let (body, notify) = (body.clone(), notify.clone());
                                async move {
                                    if at >= body.len() {
                                        return None;
                                    }
                                    if at == body.len() / 2 {
                                        notify.notify_one();
                                        tokio::time::sleep(Duration::from_millis(500)).await;
                                    }
                                    let next = (at + (1 << 20)).min(body.len());
                                    Some((Ok::<_, std::io::Error>(body.slice(at..next)), next))
                                }
                            });
                            request.header("Content-Length", length).body(reqwest::Body::wrap_stream(pieces))
                        }
                        None => request.body(body.clone()),
                    }
                })
                .await;
            if result.status() == StatusCode::ACCEPTED {
                offset = end;
                continue;
            }
            // Where does the upload stand? Ask another replica, and go on from there.
            assert!(
                matches!(result.status(), StatusCode::RANGE_NOT_SATISFIABLE | StatusCode::BAD_REQUEST),
                "PATCH {range}: {}",
                result.status()
            );
            self.retried.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(300)).await;
            let status = self.send(&mut trail, |c, base| c.get(format!("{base}{location}"))).await;
            assert_eq!(status.status(), StatusCode::NO_CONTENT);
            let stands =
                status.headers()["range"].to_str().unwrap().split('-').nth(1).unwrap().parse::<usize>().unwrap();
            offset = if stands == 0 && offset == 0 { 0 } else { stands + 1 };
        }
        let put = self.send(&mut trail, |c, base| c.put(format!("{base}{location}?digest={digest}"))).await;
        assert_eq!(put.status(), StatusCode::CREATED, "{}", put.text().await.unwrap());
        digest
    }
}

struct Pushed {
    repo: String,
    tag: String,
    manifest: Vec<u8>,
    blobs: Vec<Digest>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_everything_and_survive_a_kill() {
    let database = pgsupport::fresh_database().await;
    let bucket = s3support::fresh_bucket().await;
    let prefix = redissupport::fresh_prefix();
    let dir = tempfile::tempdir().unwrap();
    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|i| {
            let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
            let env = [
                ("BERTH_LISTEN", format!("127.0.0.1:{port}")),
                ("BERTH_DATA_DIR", dir.path().join(format!("replica{i}")).display().to_string()),
                ("BERTH_DATABASE_URL", database.clone()),
                ("BERTH_REDIS_URL", redissupport::url()),
                ("BERTH_REDIS_PREFIX", prefix.clone()),
                ("BERTH_STORAGE", "s3".into()),
                ("BERTH_S3_BUCKET", bucket.clone()),
                ("BERTH_S3_ENDPOINT", s3support::endpoint()),
                ("BERTH_S3_FORCE_PATH_STYLE", "true".into()),
                ("BERTH_S3_ACCESS_KEY_ID", "test".into()),
                ("BERTH_S3_SECRET_ACCESS_KEY", "test".into()),
                ("BERTH_S3_PART_SIZE", s3support::PART.to_string()),
                ("BERTH_S3_REDIRECT", "false".into()),
                ("BERTH_UPLOAD_LOCK_TTL", "4".into()),
                ("BERTH_BODY_IDLE_TIMEOUT", "2".into()),
                ("BERTH_LOG", "warn".into()),
            ];
            let env = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
            Replica { port, env, log: dir.path().join(format!("replica{i}.log")), child: None }
        })
        .collect();
    for replica in &mut replicas {
        replica.start();
    }
    berth::install_crypto_provider();
    let client = Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
    for replica in &replicas {
        let url = format!("http://127.0.0.1:{}/readyz", replica.port);
        for _ in 0..100 {
            if client.get(&url).send().await.is_ok_and(|r| r.status() == StatusCode::OK) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let cluster = Arc::new(Cluster {
        client,
        ports: replicas.iter().map(|r| r.port).collect(),
        alive: (0..REPLICAS).map(|_| AtomicBool::new(true)).collect(),
        next: AtomicUsize::new(0),
        requests: AtomicU64::new(0),
        crossed: AtomicU64::new(0),
        retried: AtomicU64::new(0),
    });
    let pushed_bytes = Arc::new(AtomicU64::new(0));
    let pushed: Arc<Mutex<Vec<Pushed>>> = Arc::default();

    // The victim: a 24 MiB blob in one slow PATCH; its replica dies half-way through.
    let half_way = Arc::new(tokio::sync::Notify::new());
    let victim_blob: Vec<u8> = {
        let mut rng = StdRng::seed_from_u64(99);
        (0..24 << 20).map(|_| rng.random::<u8>()).collect()
    };
    let victim = {
        let (cluster, half_way, blob) = (cluster.clone(), half_way.clone(), victim_blob.clone());
        tokio::spawn(async move {
            // Send the PATCH to the victim replica: the POST goes to the one before it.
            cluster.next.store(VICTIM + REPLICAS - 1, Ordering::SeqCst);
            cluster.push_blob("victim/app", &blob, blob.len(), Some(half_way)).await
        })
    };
    half_way.notified().await;
    cluster.alive[VICTIM].store(false, Ordering::SeqCst);
    replicas[VICTIM].kill();

    // Meanwhile, many images at once, every request of every upload on the next replica.
    let gate = Arc::new(tokio::sync::Semaphore::new(4));
    let mut tasks = Vec::new();
    for i in 0..IMAGES {
        let (cluster, gate, pushed, pushed_bytes) =
            (cluster.clone(), gate.clone(), pushed.clone(), pushed_bytes.clone());
        tasks.push(tokio::spawn(async move {
            let _slot = gate.acquire().await.unwrap();
            let mut rng = StdRng::seed_from_u64(i as u64);
            let repo = format!("team{}/image{i}", i % 3);
            let config = format!(r#"{{"architecture":"amd64","os":"linux","image":{i}}}"#).into_bytes();
            let mut layers = Vec::new();
            for _ in 0..2 {
                let size = rng.random_range(100_000..12 << 20);
                let layer: Vec<u8> = (0..size).map(|_| rng.random::<u8>()).collect();
                let chunk = [1 << 20, 3 << 20, 7 << 20][rng.random_range(0..3)];
                let digest = cluster.push_blob(&repo, &layer, chunk, None).await;
                pushed_bytes.fetch_add(layer.len() as u64, Ordering::Relaxed);
                layers.push(json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": digest.as_str(), "size": layer.len()}));
            }
            let config_digest = cluster.push_blob(&repo, &config, 1 << 20, None).await;
            let manifest = serde_json::to_vec(&json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest.as_str(), "size": config.len()},
                "layers": layers,
            }))
            .unwrap();
            let tag = format!("v{i}");
            let mut trail = Trail(None);
            let r = cluster
                .send(&mut trail, |c, base| {
                    c.request(Method::PUT, format!("{base}/v2/{repo}/manifests/{tag}"))
                        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
                        .body(manifest.clone())
                })
                .await;
            assert_eq!(r.status(), StatusCode::CREATED, "{}", r.text().await.unwrap());
            let blobs = layers.iter().map(|l| l["digest"].as_str().unwrap().parse().unwrap()).chain([config_digest]).collect();
            pushed.lock().unwrap().push(Pushed { repo, tag, manifest, blobs });
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let victim_digest = victim.await.unwrap();
    pushed_bytes.fetch_add(victim_blob.len() as u64, Ordering::Relaxed);

    // The killed replica comes back; everything is pulled through every replica.
    replicas[VICTIM].start();
    cluster.alive[VICTIM].store(true, Ordering::SeqCst);
    let mut pulls = 0u64;
    let mut mismatches = Vec::new();
    let pushed = std::mem::take(&mut *pushed.lock().unwrap());
    for replica in &replicas {
        let base = format!("http://127.0.0.1:{}", replica.port);
        for _ in 0..100 {
            if cluster.client.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status().is_success()) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let victim = cluster.client.get(format!("{base}/v2/victim/app/blobs/{victim_digest}")).send().await.unwrap();
        if Digest::compute(Algorithm::Sha256, &victim.bytes().await.unwrap()) != victim_digest {
            mismatches.push(format!("{base} victim blob"));
        }
        for image in &pushed {
            let r =
                cluster.client.get(format!("{base}/v2/{}/manifests/{}", image.repo, image.tag)).send().await.unwrap();
            pulls += 1;
            if r.bytes().await.unwrap() != image.manifest {
                mismatches.push(format!("{base} {}:{}", image.repo, image.tag));
            }
            for digest in &image.blobs {
                let r = cluster.client.get(format!("{base}/v2/{}/blobs/{digest}", image.repo)).send().await.unwrap();
                pulls += 1;
                if Digest::compute(Algorithm::Sha256, &r.bytes().await.unwrap()) != *digest {
                    mismatches.push(format!("{base} {}@{digest}", image.repo));
                }
            }
        }
    }
    println!(
        "replicas: {} images and a {} MiB blob cut short by a SIGKILL, {} MiB pushed in {} requests, {} of them \
         on another replica than the upload's request before, {} retried; {} pulls through {REPLICAS} replicas, {} \
         mismatches",
        pushed.len(),
        victim_blob.len() >> 20,
        pushed_bytes.load(Ordering::Relaxed) >> 20,
        cluster.requests.load(Ordering::Relaxed),
        cluster.crossed.load(Ordering::Relaxed),
        cluster.retried.load(Ordering::Relaxed),
        pulls + REPLICAS as u64,
        mismatches.len()
    );
    assert_eq!(pushed.len(), IMAGES);
    assert!(mismatches.is_empty(), "{mismatches:?}");
    assert!(cluster.crossed.load(Ordering::Relaxed) * 3 > cluster.requests.load(Ordering::Relaxed) * 2);
    assert_eq!(s3support::multipart_uploads(&bucket).await, 0, "the killed replica's upload was finished or cleaned");
}
