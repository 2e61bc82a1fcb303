//! Configuration: one typed [`Settings`], layered as defaults < TOML file (`--config` or
//! `BERTH_CONFIG`) < `BERTH_*` environment variables < command-line flags.
//!
//! Every setting has the same name everywhere: the TOML key `data_dir` is the variable
//! `BERTH_DATA_DIR`. The variables are a public interface (the Helm chart and the Terraform
//! module set them): never rename one.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::registry::Policy;
pub use crate::registry::lifecycle::rules::{ByteSize, ImmutableEntry, QuotaEntry, RetentionEntry};

mod load;
pub use load::{ConfigError, TABLES, keys, variable};

/// Where blob bytes are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Filesystem,
    S3,
}

/// A setting that must never be printed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// How clients prove who they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Everyone may do everything: for the embedded default on 127.0.0.1.
    None,
    /// HTTP Basic against the htpasswd file, on every request.
    Basic,
    /// Docker token auth: Berth issues JWTs at `/token` and checks them.
    Token,
}

/// Which forwarded headers a proxy in front of Berth sets, and so may be believed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum TrustForwarded {
    /// None: the client address is the connection's, the origin the `Host` header's.
    #[default]
    None,
    /// `X-Forwarded-For`, `-Host` and `-Proto` (nginx, HAProxy, Traefik, AWS ALB, ingress-nginx).
    XForwarded,
    /// RFC 7239 `Forwarded`.
    Forwarded,
}

impl TrustForwarded {
    const FORMS: &'static str = "false, true (the same as x-forwarded), x-forwarded or forwarded";
}

impl Serialize for TrustForwarded {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            TrustForwarded::None => serializer.serialize_bool(false),
            TrustForwarded::XForwarded => serializer.serialize_str("x-forwarded"),
            TrustForwarded::Forwarded => serializer.serialize_str("forwarded"),
        }
    }
}

impl<'de> Deserialize<'de> for TrustForwarded {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TrustForwarded;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(TrustForwarded::FORMS)
            }

            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<TrustForwarded, E> {
                Ok(if v { TrustForwarded::XForwarded } else { TrustForwarded::None })
            }

            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TrustForwarded, E> {
                match v {
                    "false" => Ok(TrustForwarded::None),
                    "true" | "x-forwarded" => Ok(TrustForwarded::XForwarded),
                    "forwarded" => Ok(TrustForwarded::Forwarded),
                    _ => Err(E::invalid_value(serde::de::Unexpected::Str(v), &self)),
                }
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

/// Log line format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything Berth can be told. Each field is documented in the README's configuration
/// reference under its environment variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Address the API listens on (`BERTH_LISTEN`).
    pub listen: String,
    /// Directory for the embedded backends: filesystem blobs and the SQLite file
    /// (`BERTH_DATA_DIR`).
    pub data_dir: PathBuf,
    /// Blob store backend (`BERTH_STORAGE`).
    pub storage: StorageKind,
    /// S3 bucket holding the blobs (`BERTH_S3_BUCKET`).
    pub s3_bucket: Option<String>,
    /// Endpoint of an S3-compatible store such as MinIO or Garage; AWS when unset
    /// (`BERTH_S3_ENDPOINT`).
    pub s3_endpoint: Option<String>,
    /// Region; the AWS chain's, or `us-east-1`, when unset (`BERTH_S3_REGION`).
    pub s3_region: Option<String>,
    /// Address buckets as `endpoint/bucket` rather than `bucket.endpoint`; MinIO and Garage
    /// want this (`BERTH_S3_FORCE_PATH_STYLE`).
    pub s3_force_path_style: bool,
    /// Prefix for every key Berth writes, to share a bucket (`BERTH_S3_PREFIX`).
    pub s3_prefix: String,
    /// PEM file of extra CA certificates for the store's TLS (`BERTH_S3_CA_FILE`).
    pub s3_ca_file: Option<PathBuf>,
    /// Access key; the standard AWS chain (environment, profile, instance role, web identity)
    /// when unset (`BERTH_S3_ACCESS_KEY_ID`).
    pub s3_access_key_id: Option<String>,
    /// Secret key going with `s3_access_key_id` (`BERTH_S3_SECRET_ACCESS_KEY`).
    pub s3_secret_access_key: Option<Secret>,
    /// Bytes per multipart part, at least 5 MiB (`BERTH_S3_PART_SIZE`).
    pub s3_part_size: usize,
    /// Parts of one upload sent at once (`BERTH_S3_UPLOAD_CONCURRENCY`).
    pub s3_upload_concurrency: usize,
    /// Redirect blob GETs to presigned URLs of the store (`BERTH_S3_REDIRECT`).
    pub s3_redirect: bool,
    /// Store address clients can reach, for redirects, when it differs from
    /// `s3_endpoint` (`BERTH_S3_PUBLIC_ENDPOINT`).
    pub s3_public_endpoint: Option<String>,
    /// Seconds a presigned URL stays valid (`BERTH_S3_PRESIGN_EXPIRY`).
    pub s3_presign_expiry: u64,
    /// Send `UNSIGNED-PAYLOAD` rather than hashing each part again for the signature, which
    /// the store then hashes a third time to check; on unless set (`BERTH_S3_UNSIGNED_PAYLOAD`).
    pub s3_unsigned_payload: Option<bool>,
    /// Send the SDK's optional CRC checksums (`BERTH_S3_CHECKSUMS`).
    pub s3_checksums: bool,
    /// Ranged GETs one proxied read of a large blob (32 MiB or more) keeps in flight, in
    /// pieces of 8 MiB; 1 reads it in one stream (`BERTH_S3_READ_CONCURRENCY`).
    pub s3_read_concurrency: usize,
    /// Every multipart part but the last the same size, as Cloudflare R2 requires; otherwise
    /// each chunk of 5 MiB or more goes up as parts of its own (`BERTH_S3_UNIFORM_PARTS`).
    pub s3_uniform_parts: bool,
    /// Metadata database; SQLite in the data directory when unset (`BERTH_DATABASE_URL`).
    pub database_url: Option<String>,
    /// Redis for upload sessions, `redis://` or `rediss://` (TLS); sessions stay in this
    /// process, for one replica only, when unset (`BERTH_REDIS_URL`).
    pub redis_url: Option<Secret>,
    /// Prefix of every Redis key Berth writes, to share a Redis (`BERTH_REDIS_PREFIX`).
    pub redis_prefix: String,
    /// PEM file of the CA certificates to trust for `rediss://`, instead of the system roots
    /// (`BERTH_REDIS_CA_FILE`).
    pub redis_ca_file: Option<PathBuf>,
    /// `none`, `basic` or `token` (`BERTH_AUTH`).
    pub auth: AuthMode,
    /// htpasswd file of bcrypt hashes; re-read when it changes (`BERTH_HTPASSWD`).
    pub htpasswd: Option<PathBuf>,
    /// Access rules file (`BERTH_ACCESS`); without one, anyone logged in may do everything
    /// and anonymous users nothing.
    pub access: Option<PathBuf>,
    /// The URL clients reach Berth at, for the token realm; taken from each request when
    /// unset (`BERTH_EXTERNAL_URL`).
    pub external_url: Option<String>,
    /// Name of this registry in tokens: their `aud`, the challenge's `service`
    /// (`BERTH_SERVICE`).
    pub service: String,
    /// Token signing keys, comma-separated PEM files: the first signs, the others are still
    /// accepted (key rotation). A P-256 key is generated into the data directory when unset
    /// (`BERTH_TOKEN_KEY`).
    pub token_key: Option<String>,
    /// Seconds an access token is valid (`BERTH_TOKEN_TTL`).
    pub token_ttl: u64,
    /// `iss` of the tokens Berth issues (`BERTH_TOKEN_ISSUER`).
    pub token_issuer: String,
    /// Issuer of tokens from an external authorization service to accept as well
    /// (`BERTH_TOKEN_TRUSTED_ISSUER`).
    pub token_trusted_issuer: Option<String>,
    /// Audience those tokens carry; `BERTH_SERVICE` when unset (`BERTH_TOKEN_TRUSTED_AUDIENCE`).
    pub token_trusted_audience: Option<String>,
    /// Their public keys: a JWKS file, a PEM public key file, or an `https://` JWKS URL
    /// (`BERTH_TOKEN_TRUSTED_KEYS`).
    pub token_trusted_keys: Option<String>,
    /// Failed logins per user or client address before further ones are refused
    /// (`BERTH_LOGIN_MAX_FAILURES`).
    pub login_max_failures: u32,
    /// Seconds failed logins are counted over, and refused for (`BERTH_LOGIN_FAILURE_WINDOW`).
    pub login_failure_window: u64,
    /// Which forwarded headers the proxy in front sets: the client address, scheme and host
    /// are then taken from them (`BERTH_TRUST_FORWARDED`). Only behind such a proxy: clients
    /// can send these headers too.
    pub trust_forwarded: TrustForwarded,
    /// Proxies in front of Berth that append to the forwarded headers; the client's entry is
    /// this many from the right (`BERTH_TRUSTED_PROXIES`).
    pub trusted_proxies: usize,
    /// Apply database migrations at start (`BERTH_MIGRATE`).
    pub migrate: bool,
    /// Stop at start when PostgreSQL, Redis or S3 does not answer, instead of serving 503 for
    /// what needs it until it does (`BERTH_FAIL_FAST`).
    pub fail_fast: bool,
    /// Allow deleting manifests, tags and blobs (`BERTH_DELETE`).
    pub delete: bool,
    /// Serve the web UI under `/ui/` (`BERTH_UI`).
    pub ui: bool,
    /// Secret the web UI signs sign-in cookies and CSRF tokens with, at least 32 characters;
    /// replicas that share it accept each other's sessions. Token mode derives one from the
    /// token signing key when unset; otherwise a key of the process is made at start
    /// (`BERTH_UI_SESSION_KEY`).
    pub ui_session_key: Option<Secret>,
    /// Seconds a web UI sign-in lasts (`BERTH_UI_SESSION_TTL`).
    pub ui_session_ttl: u64,
    /// Largest manifest accepted, in bytes (`BERTH_MAX_MANIFEST_SIZE`).
    pub max_manifest_size: usize,
    /// Seconds an upload may receive nothing before it is dropped
    /// (`BERTH_UPLOAD_IDLE_TIMEOUT`).
    pub upload_idle_timeout: u64,
    /// Seconds a replica that died while receiving a chunk keeps its upload locked; a live
    /// replica renews the lock as bytes arrive (`BERTH_UPLOAD_LOCK_TTL`).
    pub upload_lock_ttl: u64,
    /// Seconds a request body may send nothing before the request is given up
    /// (`BERTH_BODY_IDLE_TIMEOUT`).
    pub body_idle_timeout: u64,
    /// Seconds requests in flight get to finish on shutdown (`BERTH_SHUTDOWN_TIMEOUT`).
    pub shutdown_timeout: u64,
    /// HTTP worker threads; one per CPU when unset (`BERTH_WORKERS`).
    pub workers: Option<usize>,
    /// Separate address for `/metrics`; on the API address when unset, and there only while
    /// authentication is off or with `metrics_token` (`BERTH_METRICS_LISTEN`).
    pub metrics_listen: Option<String>,
    /// Bearer token `/metrics` requires, wherever it is served (`BERTH_METRICS_TOKEN`).
    pub metrics_token: Option<Secret>,
    /// Log filter, `tracing` directive syntax such as `info,berth=debug` (`BERTH_LOG`).
    pub log: String,
    /// `text` or `json` (`BERTH_LOG_FORMAT`).
    pub log_format: LogFormat,
    /// Seconds between collection runs in `serve` (retention, untagged manifests, blobs), one
    /// replica at a time; 0 turns the collector off (`BERTH_GC_INTERVAL`).
    pub gc_interval: u64,
    /// Seconds a blob or manifest is safe from the collector after it was pushed or linked:
    /// longer than any push takes (`BERTH_GC_GRACE`).
    pub gc_grace: u64,
    /// Seconds the collector's lease lasts unless renewed; a replica that died holding it
    /// is taken over after this long (`BERTH_GC_LEASE_TTL`).
    pub gc_lease_ttl: u64,
    /// Rows the collector handles per transaction (`BERTH_GC_BATCH`).
    pub gc_batch: usize,
    /// Seconds between writes of the pull times each replica gathers for retention's
    /// `keep_pulled_within`; a crash loses at most this much (`BERTH_PULL_FLUSH_INTERVAL`).
    pub pull_flush_interval: u64,
    /// Retention rules, `[[retention]]` tables of the config file only.
    pub retention: Vec<RetentionEntry>,
    /// Immutable tags, `[[immutable]]` tables of the config file only.
    pub immutable: Vec<ImmutableEntry>,
    /// Quotas per namespace, `[[quota]]` tables of the config file only.
    pub quota: Vec<QuotaEntry>,
    /// Upstream registries to cache, `[[upstream]]` tables of the config file only.
    pub upstream: Vec<crate::registry::upstream::UpstreamEntry>,
}

impl Default for Settings {
    fn default() -> Self {
        let policy = Policy::default();
        let collector = crate::registry::lifecycle::Collector::default();
        Settings {
            listen: "127.0.0.1:5000".into(),
            data_dir: PathBuf::from("./data"),
            storage: StorageKind::Filesystem,
            s3_bucket: None,
            s3_endpoint: None,
            s3_region: None,
            s3_force_path_style: false,
            s3_prefix: String::new(),
            s3_ca_file: None,
            s3_access_key_id: None,
            s3_secret_access_key: None,
            // Measured on Garage: as fast as 16 MiB parts for one push, and half the memory.
            s3_part_size: 8 << 20,
            s3_upload_concurrency: 4,
            s3_redirect: true,
            s3_public_endpoint: None,
            s3_presign_expiry: 1200,
            s3_unsigned_payload: None,
            s3_checksums: false,
            s3_read_concurrency: 4,
            s3_uniform_parts: false,
            database_url: None,
            redis_url: None,
            redis_prefix: "berth:".into(),
            redis_ca_file: None,
            auth: AuthMode::None,
            htpasswd: None,
            access: None,
            external_url: None,
            service: "berth".into(),
            token_key: None,
            token_ttl: 300,
            token_issuer: "berth".into(),
            token_trusted_issuer: None,
            token_trusted_audience: None,
            token_trusted_keys: None,
            login_max_failures: 10,
            login_failure_window: 300,
            trust_forwarded: TrustForwarded::None,
            trusted_proxies: 1,
            migrate: true,
            fail_fast: false,
            ui: true,
            ui_session_key: None,
            ui_session_ttl: 12 * 3600,
            delete: policy.delete_enabled,
            max_manifest_size: policy.max_manifest_size,
            upload_idle_timeout: policy.upload_idle_timeout.as_secs(),
            upload_lock_ttl: policy.lock_ttl.as_secs(),
            body_idle_timeout: policy.body_idle_timeout.as_secs(),
            shutdown_timeout: 30,
            workers: None,
            metrics_listen: None,
            metrics_token: None,
            // A TLS handshake sent to the plain-HTTP port (skopeo and podman try HTTPS first)
            // is logged by actix as an error; it is the client's business, not the operator's.
            log: "info,actix_http::h1::dispatcher=off".into(),
            log_format: LogFormat::Text,
            gc_interval: collector.interval.map_or(0, |i| i.as_secs()),
            gc_grace: collector.grace.as_secs(),
            gc_lease_ttl: collector.lease_ttl.as_secs(),
            gc_batch: collector.batch,
            pull_flush_interval: collector.pull_flush.as_secs(),
            retention: Vec::new(),
            immutable: Vec::new(),
            quota: Vec::new(),
            upstream: Vec::new(),
        }
    }
}

/// Settings given as command-line flags; `None` leaves the layer below in place.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl Settings {
    /// Loads the layers from this process's environment. `config_file` comes from `--config`;
    /// `BERTH_CONFIG` is read when it is `None`.
    pub fn load(config_file: Option<&Path>, overrides: &Overrides) -> Result<Settings, ConfigError> {
        let env = std::env::vars_os().filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)));
        load::load(config_file, env, overrides)
    }

    /// Loads the layers from the environment `env` (name, value pairs) instead of the process's.
    pub fn load_from(
        config_file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
        overrides: &Overrides,
    ) -> Result<Settings, ConfigError> {
        load::load(config_file, env, overrides)
    }

    /// The metadata database URL, SQLite in the data directory by default. SQLite files are
    /// created when missing.
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) if url.starts_with("sqlite:") && !url.contains("mode=") => {
                let separator = if url.contains('?') { '&' } else { '?' };
                format!("{url}{separator}mode=rwc")
            }
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("berth.db").display()),
        }
    }

    pub fn policy(&self) -> Result<Policy, ConfigError> {
        Ok(Policy {
            delete_enabled: self.delete,
            max_manifest_size: self.max_manifest_size,
            upload_idle_timeout: Duration::from_secs(self.upload_idle_timeout),
            body_idle_timeout: Duration::from_secs(self.body_idle_timeout),
            lock_ttl: Duration::from_secs(self.upload_lock_ttl),
            lifecycle: self.lifecycle()?,
            collector: crate::registry::lifecycle::Collector {
                interval: (self.gc_interval > 0).then(|| Duration::from_secs(self.gc_interval)),
                grace: Duration::from_secs(self.gc_grace),
                lease_ttl: Duration::from_secs(self.gc_lease_ttl),
                batch: self.gc_batch,
                pull_flush: Duration::from_secs(self.pull_flush_interval),
            },
            upstreams: std::sync::Arc::new(self.upstreams()?),
        })
    }

    /// The `[[upstream]]` entries, compiled (their HTTP clients made, password files read).
    pub fn upstreams(&self) -> Result<crate::registry::upstream::Upstreams, ConfigError> {
        crate::registry::upstream::Upstreams::compile(&self.upstream, self.max_manifest_size).map_err(ConfigError)
    }

    /// The retention, immutable and quota rules, compiled.
    pub fn lifecycle(&self) -> Result<crate::registry::lifecycle::Lifecycle, ConfigError> {
        crate::registry::lifecycle::Lifecycle::compile(&self.retention, &self.immutable, &self.quota)
            .map_err(ConfigError)
    }

    /// Which forwarded headers to believe.
    pub fn proxies(&self) -> crate::api::forwarded::Proxies {
        crate::api::forwarded::Proxies { trust: self.trust_forwarded, hops: self.trusted_proxies }
    }

    /// The settings as `berth check-config` prints them: secrets masked.
    pub fn masked(&self) -> Settings {
        let mut shown = self.clone();
        shown.database_url = shown.database_url.as_deref().map(mask_url_password);
        shown.s3_secret_access_key = shown.s3_secret_access_key.map(|_| Secret::new("***"));
        shown.redis_url = shown.redis_url.map(|url| Secret::new(mask_url_password(url.expose())));
        shown.metrics_token = shown.metrics_token.map(|_| Secret::new("***"));
        shown.ui_session_key = shown.ui_session_key.map(|_| Secret::new("***"));
        for upstream in &mut shown.upstream {
            upstream.password = upstream.password.as_ref().map(|_| "***".to_owned());
        }
        shown
    }

    /// Checks what the types cannot: ranges, and settings that only make sense together.
    pub fn validate(&self) -> Result<(), String> {
        self.lifecycle().map_err(|e| e.0)?;
        self.upstreams().map_err(|e| e.0)?;
        if self.gc_lease_ttl < 2 {
            return Err(format!("BERTH_GC_LEASE_TTL is {} but the lease needs at least 2 seconds", self.gc_lease_ttl));
        }
        if !(1..=1000).contains(&self.gc_batch) {
            return Err(format!("BERTH_GC_BATCH is {}: expected 1 to 1000", self.gc_batch));
        }
        if self.pull_flush_interval == 0 {
            return Err("BERTH_PULL_FLUSH_INTERVAL is 0: expected at least 1 second".into());
        }
        for (name, address) in
            [("BERTH_LISTEN", Some(&self.listen)), ("BERTH_METRICS_LISTEN", self.metrics_listen.as_ref())]
        {
            if let Some(address) = address
                && !is_host_port(address)
            {
                return Err(format!("{name}={address}: expected HOST:PORT, e.g. 0.0.0.0:5002"));
            }
        }
        if self.storage == StorageKind::S3 && self.s3_bucket.as_deref().is_none_or(str::is_empty) {
            return Err("BERTH_STORAGE=s3 needs BERTH_S3_BUCKET".into());
        }
        if self.s3_part_size < crate::storage::s3::MIN_PART_SIZE {
            return Err(format!(
                "BERTH_S3_PART_SIZE is {} but S3 parts are at least 5 MiB (5242880)",
                self.s3_part_size
            ));
        }
        if self.s3_access_key_id.is_some() != self.s3_secret_access_key.is_some() {
            return Err("BERTH_S3_ACCESS_KEY_ID and BERTH_S3_SECRET_ACCESS_KEY go together".into());
        }
        // Durations in seconds: zero would expire everything at once, and beyond a year they
        // overflow the clock arithmetic of the stores. Presigned URLs live a week at most (SigV4).
        let durations = [
            ("BERTH_UPLOAD_IDLE_TIMEOUT", self.upload_idle_timeout, YEAR),
            ("BERTH_UPLOAD_LOCK_TTL", self.upload_lock_ttl, YEAR),
            ("BERTH_BODY_IDLE_TIMEOUT", self.body_idle_timeout, YEAR),
            ("BERTH_SHUTDOWN_TIMEOUT", self.shutdown_timeout, YEAR),
            ("BERTH_TOKEN_TTL", self.token_ttl, YEAR),
            ("BERTH_LOGIN_FAILURE_WINDOW", self.login_failure_window, YEAR),
            ("BERTH_S3_PRESIGN_EXPIRY", self.s3_presign_expiry, 7 * 24 * 3600),
            ("BERTH_UI_SESSION_TTL", self.ui_session_ttl, YEAR),
        ];
        for (name, value, max) in durations {
            if !(1..=max).contains(&value) {
                return Err(format!("{name} is {value} but must be between 1 and {max} seconds"));
            }
        }
        // The lock is renewed every third of its TTL while bytes flow; a body that stalls for
        // the body timeout right after a renewal must fail before the lock runs out.
        if self.upload_lock_ttl < 2 * self.body_idle_timeout {
            return Err(format!(
                "BERTH_UPLOAD_LOCK_TTL ({}) must be at least twice BERTH_BODY_IDLE_TIMEOUT ({}): a chunk that stalls \
                 must fail before its lock expires",
                self.upload_lock_ttl, self.body_idle_timeout
            ));
        }
        if self.auth == AuthMode::Basic && self.htpasswd.is_none() {
            return Err("BERTH_AUTH=basic needs BERTH_HTPASSWD".into());
        }
        if self.token_trusted_keys.is_some() != self.token_trusted_issuer.is_some() {
            return Err("BERTH_TOKEN_TRUSTED_KEYS and BERTH_TOKEN_TRUSTED_ISSUER go together".into());
        }
        if self.token_ttl < 60 {
            return Err("BERTH_TOKEN_TTL must be at least 60 seconds (Docker clients expect that much)".into());
        }
        if self.trusted_proxies == 0 {
            return Err("BERTH_TRUSTED_PROXIES must be at least 1: the proxy that sets the forwarded headers".into());
        }
        if self.ui_session_key.as_ref().is_some_and(|k| k.expose().chars().count() < 32) {
            return Err("BERTH_UI_SESSION_KEY must be at least 32 characters (e.g. `openssl rand -hex 32`)".into());
        }
        if self.s3_read_concurrency == 0 {
            return Err("BERTH_S3_READ_CONCURRENCY must be at least 1".into());
        }
        if self.s3_upload_concurrency == 0 {
            return Err("BERTH_S3_UPLOAD_CONCURRENCY must be at least 1".into());
        }
        Ok(())
    }

    /// The S3 store's connection and options.
    pub fn s3(&self) -> (crate::storage::s3::S3Connection, crate::storage::s3::S3Options) {
        use crate::storage::s3::{S3Connection, S3Options};
        let connection = S3Connection {
            endpoint: self.s3_endpoint.clone(),
            public_endpoint: self.s3_public_endpoint.clone(),
            region: self.s3_region.clone(),
            force_path_style: self.s3_force_path_style,
            ca_file: self.s3_ca_file.clone(),
            credentials: self
                .s3_access_key_id
                .clone()
                .zip(self.s3_secret_access_key.as_ref().map(|s| s.expose().to_owned())),
            checksums: self.s3_checksums,
        };
        let options = S3Options {
            bucket: self.s3_bucket.clone().unwrap_or_default(),
            prefix: self.s3_prefix.clone(),
            part_size: self.s3_part_size,
            concurrency: self.s3_upload_concurrency,
            redirect: self.s3_redirect,
            presign_expiry: Duration::from_secs(self.s3_presign_expiry),
            unsigned_payload: self.s3_unsigned_payload.unwrap_or(true),
            uniform_parts: self.s3_uniform_parts,
            read_concurrency: self.s3_read_concurrency,
        };
        (connection, options)
    }
}

/// `host:port`, `[v6]:port` or `:port`-less forms refused: what a listener can bind.
fn is_host_port(address: &str) -> bool {
    let Some((host, port)) = address.rsplit_once(':') else { return false };
    let host_ok = match host.strip_prefix('[') {
        Some(v6) => v6.strip_suffix(']').is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok()),
        None => !host.is_empty() && !host.contains(':'),
    };
    host_ok && port.parse::<u16>().is_ok()
}

/// A year in seconds: the longest duration setting accepted.
const YEAR: u64 = 365 * 24 * 3600;

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…` (also `scheme://:secret@…`).
fn mask_url_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let Some((credentials, host)) = rest.rsplit_once('@') else { return url.to_owned() };
    match credentials.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn load(file: Option<&Path>, pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load_from(file, env(pairs), &Overrides::default())
    }

    fn error(file: Option<&Path>, pairs: &[(&str, &str)]) -> String {
        load(file, pairs).expect_err("refused").to_string()
    }

    #[test]
    fn defaults_are_the_embedded_registry_on_localhost() {
        let s = load(None, &[("PATH", "/bin"), ("HOME", "/root")]).expect("defaults load");
        assert_eq!(s, Settings::default());
        assert_eq!(s.listen, "127.0.0.1:5000");
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert_eq!(s.storage, StorageKind::Filesystem);
        assert!(s.delete && s.migrate);
    }

    #[test]
    fn file_then_environment_then_flags() {
        let dir = tempfile::tempdir().expect("dir");
        let file = dir.path().join("berth.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:1\"\ndata_dir = \"/from/file\"\ndelete = false\nmax_manifest_size = 10\n",
        )
        .expect("write");
        let pairs = [("BERTH_DATA_DIR", "/from/env"), ("BERTH_DATABASE_URL", "sqlite:///tmp/x.db")];
        let s = load(Some(&file), &pairs).expect("loads");
        assert_eq!(s.listen, "0.0.0.0:1");
        assert_eq!(s.data_dir, PathBuf::from("/from/env"));
        assert!(!s.delete);
        assert_eq!(s.max_manifest_size, 10);
        assert_eq!(s.database_url(), "sqlite:///tmp/x.db?mode=rwc");
        let flags = Overrides { listen: Some("127.0.0.1:9".into()), data_dir: Some("/from/flag".into()) };
        let s = Settings::load_from(Some(&file), env(&pairs), &flags).expect("loads");
        assert_eq!((s.listen.as_str(), s.data_dir.as_path()), ("127.0.0.1:9", Path::new("/from/flag")));
        // BERTH_CONFIG names the file when --config does not.
        let named = file.display().to_string();
        assert!(!load(None, &[("BERTH_CONFIG", &named)]).expect("loads").delete);
    }

    #[test]
    fn environment_values_take_the_type_of_their_setting() {
        let s = load(
            None,
            &[
                ("BERTH_S3_BUCKET", "12345"),
                ("BERTH_S3_PREFIX", "2024"),
                ("BERTH_SERVICE", "true"),
                ("BERTH_S3_PART_SIZE", "6291456"),
                ("BERTH_WORKERS", "3"),
                ("BERTH_DELETE", "false"),
                ("BERTH_S3_UNSIGNED_PAYLOAD", "true"),
                ("BERTH_TRUST_FORWARDED", "true"),
                ("BERTH_EXTERNAL_URL", ""),
            ],
        )
        .expect("loads");
        assert_eq!(s.s3_bucket.as_deref(), Some("12345"));
        assert_eq!((s.s3_prefix.as_str(), s.service.as_str()), ("2024", "true"));
        assert_eq!((s.s3_part_size, s.workers, s.delete), (6 << 20, Some(3), false));
        assert_eq!(s.s3_unsigned_payload, Some(true));
        assert_eq!(s.trust_forwarded, TrustForwarded::XForwarded);
        assert_eq!(s.external_url, None, "an empty variable is an unset one");
    }

    #[test]
    fn mistakes_name_the_setting_where_it_was_written() {
        let dir = tempfile::tempdir().expect("dir");
        let typo = dir.path().join("typo.toml");
        std::fs::write(&typo, "# a comment\ndelete = true\nlisen = \"x\"\n").expect("write");
        let e = error(Some(&typo), &[]);
        assert_eq!(e, format!("unknown setting lisen in {}, line 3 (did you mean listen?)", typo.display()));
        let e = error(None, &[("BERTH_LISTN", "0.0.0.0:5000")]);
        assert_eq!(e, "unknown setting BERTH_LISTN in the environment (did you mean BERTH_LISTEN?)");
        let e = error(Some(&dir.path().join("missing.toml")), &[]);
        assert!(e.contains("missing.toml"), "{e}");
        assert_eq!(error(None, &[("BERTH_DELETE", "perhaps")]), "BERTH_DELETE=perhaps: expected true or false");
        assert_eq!(error(None, &[("BERTH_STORAGE", "s4")]), "BERTH_STORAGE=s4: expected filesystem or s3");
        assert_eq!(error(None, &[("BERTH_S3_PART_SIZE", "big")]), "BERTH_S3_PART_SIZE=big: expected a whole number");
        assert_eq!(
            error(None, &[("BERTH_LISTEN", "5002")]),
            "BERTH_LISTEN=5002: expected HOST:PORT, e.g. 0.0.0.0:5002"
        );
        let bad_value = dir.path().join("bad.toml");
        std::fs::write(&bad_value, "listen = \"0.0.0.0:5000\"\ndelete = \"perhaps\"\n").expect("write");
        assert_eq!(
            error(Some(&bad_value), &[]),
            format!("{}, line 2: delete = \"perhaps\": expected true or false", bad_value.display())
        );
        for (name, value) in [
            ("BERTH_UPLOAD_IDLE_TIMEOUT", "0"),
            ("BERTH_UPLOAD_IDLE_TIMEOUT", "99999999999"),
            ("BERTH_S3_PRESIGN_EXPIRY", "604801"),
        ] {
            let e = error(None, &[(name, value)]);
            assert!(e.contains(name), "{name}={value}: {e}");
        }
        load(None, &[("BERTH_UPLOAD_IDLE_TIMEOUT", "600")]).expect("in range");
    }

    /// The configuration reference names every setting, and only settings.
    #[test]
    fn the_configuration_reference_lists_every_setting() {
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reference/configuration.md"));
        for key in keys() {
            if TABLES.contains(key) {
                assert!(doc.contains(&format!("[[{key}]]")), "docs/reference/configuration.md lacks [[{key}]]");
                continue;
            }
            assert!(
                doc.contains(&format!("`{}`", variable(key))),
                "docs/reference/configuration.md lacks {}",
                variable(key)
            );
        }
        // Outside the examples (error messages show misspelt names on purpose).
        let prose: String = doc.split("```").step_by(2).collect();
        let named = prose.split(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'));
        for name in named.filter(|w| w.starts_with("BERTH_") && w.len() > "BERTH_".len() && *w != "BERTH_CONFIG") {
            let key = name.trim_start_matches("BERTH_").to_ascii_lowercase();
            assert!(
                keys().contains(&key.as_str()),
                "docs/reference/configuration.md names {name}, which is no setting"
            );
        }
    }

    /// The lifecycle examples of the README and the configuration reference load as they are.
    #[test]
    fn the_lifecycle_examples_are_valid() {
        let readme = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let reference = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/reference/configuration.md"));
        for (doc, heading) in [(readme, "## Storage lifecycle"), (reference, "## Retention, immutable tags and quotas")]
        {
            let section = doc.split_once(heading).expect("the section").1;
            let example = section.split("```toml").nth(1).and_then(|b| b.split("```").next()).expect("an example");
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("berth.toml");
            std::fs::write(&path, example).unwrap();
            let settings = Settings::load_from(Some(&path), Vec::new(), &Overrides::default())
                .unwrap_or_else(|e| panic!("{heading}: {e}"));
            let rules = settings.lifecycle().unwrap();
            assert_eq!((rules.retention.len(), rules.immutable.len(), rules.quotas.len()), (1, 1, 1), "{heading}");
            assert!(rules.retention[0].keep_tags.as_ref().unwrap().matches("v1.2.3"), "{heading}");
        }
    }

    #[test]
    fn masks_passwords_in_urls() {
        assert_eq!(mask_url_password("postgres://u:p4ss@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(mask_url_password("sqlite://./data/berth.db"), "sqlite://./data/berth.db");
        assert_eq!(mask_url_password("redis://:s3cret@cache:6379/0"), "redis://:***@cache:6379/0");
    }

    #[test]
    fn check_config_shows_no_secret() {
        let s = Settings {
            ui_session_key: Some(Secret::new("k".repeat(40))),
            upstream: vec![crate::registry::upstream::UpstreamEntry {
                name: "hub".into(),
                url: "https://registry-1.docker.io".into(),
                username: Some("me".into()),
                password: Some("hub-password".into()),
                ..Default::default()
            }],
            ..Settings::default()
        };
        let shown = toml::to_string(&s.masked()).unwrap();
        assert!(!shown.contains("hub-password") && !shown.contains(&"k".repeat(40)), "{shown}");
        assert!(shown.contains("username = \"me\""));
    }

    #[test]
    fn sqlite_urls_create_their_file() {
        let mut s = Settings::default();
        assert_eq!(s.database_url(), "sqlite://./data/berth.db?mode=rwc");
        s.database_url = Some("sqlite://x.db".into());
        assert_eq!(s.database_url(), "sqlite://x.db?mode=rwc");
        s.database_url = Some("sqlite://x.db?mode=ro".into());
        assert_eq!(s.database_url(), "sqlite://x.db?mode=ro");
    }
}
