//! The three backends the settings name, and what to do when one does not answer at start.
//!
//! One rule for all three network backends (PostgreSQL, Redis, S3): `berth serve` starts
//! anyway, logs once per backend which one does not answer and why, and answers the requests
//! that need it with 503 until it does; `/readyz` names it meanwhile, and migrations that could
//! not run are retried in the background. `BERTH_FAIL_FAST=true` makes the start fail instead,
//! as every one-shot command (`migrate`, `gc`, `check-config --connect`) does. A wrong
//! setting (a bucket that does not exist, refused credentials, a bad URL) always fails the
//! start: waiting would not mend it.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::config::{Settings, StorageKind};
use crate::metadata::sql::SqlMetadata;
use crate::metadata::{MetadataError, MetadataStore};
use crate::registry::Registry;
use crate::sessions::SessionStore;
use crate::sessions::memory::MemorySessions;
use crate::sessions::redis::RedisSessions;
use crate::storage::filesystem::FilesystemStore;
use crate::storage::s3::S3Store;
use crate::storage::{BlobStore, StorageError};

/// What a command does when a backend does not answer at start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unreachable {
    /// Serve anyway (503 for what needs it), and retry migrations in the background.
    Wait,
    /// Stop, naming the backend and the cause.
    Fail,
}

/// One backend's answer at start, for the log and `berth check-config --connect`.
#[derive(Clone, Debug)]
pub struct Backend {
    /// `metadata`, `sessions` or `storage`.
    pub component: &'static str,
    /// `postgres`, `sqlite`, `redis`, `memory`, `s3`, `filesystem`.
    pub kind: &'static str,
    /// Why it does not answer, if it does not.
    pub error: Option<String>,
}

/// How long a backend may take to answer at start.
const START_TIMEOUT: Duration = Duration::from_secs(5);

async fn within<T, E: std::fmt::Display>(work: impl std::future::Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(START_TIMEOUT, work).await {
        Ok(result) => result.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {}s", START_TIMEOUT.as_secs())),
    }
}

/// Applies the rule to a backend that did not answer.
fn unreachable(backend: &Backend, rule: Unreachable) -> anyhow::Result<()> {
    let Some(error) = &backend.error else { return Ok(()) };
    match rule {
        Unreachable::Fail => {
            anyhow::bail!("the {} backend ({}) does not answer: {error}", backend.component, backend.kind)
        }
        Unreachable::Wait => {
            tracing::warn!(
                component = backend.component,
                backend = backend.kind,
                error = %error,
                "a backend does not answer at start: requests that need it get 503 until it does, and /readyz says so",
            );
            Ok(())
        }
    }
}

/// The blob store, and whether it answered.
async fn storage(settings: &Settings) -> anyhow::Result<(Arc<dyn BlobStore>, Backend)> {
    match settings.storage {
        StorageKind::Filesystem => {
            let store = FilesystemStore::open(&settings.data_dir)
                .with_context(|| format!("cannot open blob directory under {}", settings.data_dir.display()))?;
            Ok((Arc::new(store), Backend { component: "storage", kind: "filesystem", error: None }))
        }
        StorageKind::S3 => {
            let (connection, options) = settings.s3();
            let bucket = options.bucket.clone();
            let store = S3Store::connect(&connection, options).await.map_err(anyhow::Error::msg)?;
            // A wrong bucket or credentials fail the start, naming the bucket.
            let error = match tokio::time::timeout(START_TIMEOUT, store.ping()).await {
                Ok(Ok(())) => None,
                Ok(Err(StorageError::Unavailable(e))) => Some(e),
                Ok(Err(e)) => return Err(e).with_context(|| format!("cannot use S3 bucket {bucket:?}")),
                Err(_) => Some(format!("no answer within {}s", START_TIMEOUT.as_secs())),
            };
            Ok((Arc::new(store), Backend { component: "storage", kind: "s3", error }))
        }
    }
}

/// The metadata store, opened (a SQLite file at once, a PostgreSQL pool lazily), and whether
/// it answered.
async fn metadata(settings: &Settings) -> anyhow::Result<(Arc<SqlMetadata>, Backend)> {
    let store = SqlMetadata::open(&settings.database_url())
        .await
        .with_context(|| format!("cannot open metadata database {}", settings.masked().database_url()))?;
    let kind = match store.dialect() {
        crate::metadata::sql::Dialect::Sqlite => "sqlite",
        crate::metadata::sql::Dialect::Postgres => "postgres",
    };
    let error = match store.probe().await {
        Ok(()) => None,
        Err(MetadataError::Unavailable(e)) => Some(e),
        Err(e) => return Err(e).context("cannot use the metadata database"),
    };
    Ok((Arc::new(store), Backend { component: "metadata", kind, error }))
}

/// The session store, and whether it answered.
async fn sessions(settings: &Settings) -> anyhow::Result<(Arc<dyn SessionStore>, Backend)> {
    let idle = settings.policy()?.upload_idle_timeout;
    let Some(url) = &settings.redis_url else {
        return Ok((
            Arc::new(MemorySessions::new(idle)),
            Backend { component: "sessions", kind: "memory", error: None },
        ));
    };
    let store = RedisSessions::connect(url.expose(), settings.redis_ca_file.as_deref(), &settings.redis_prefix, idle)
        .map_err(anyhow::Error::msg)
        .context("BERTH_REDIS_URL")?;
    let error = within(store.ping()).await.err();
    Ok((Arc::new(store), Backend { component: "sessions", kind: "redis", error }))
}

/// Applies the migrations now, or, when the database does not answer and the rule is to
/// wait, as soon as it does.
async fn migrate(store: Arc<SqlMetadata>, answered: bool, rule: Unreachable) -> anyhow::Result<()> {
    if answered {
        match store.migrate().await {
            Ok(()) => return Ok(()),
            Err(MetadataError::Unavailable(e)) if rule == Unreachable::Wait => {
                tracing::warn!(error = %e, "migrations could not run: the database went away; retrying");
            }
            Err(e) => return Err(e).context("cannot apply database migrations"),
        }
    }
    tokio::spawn(async move {
        let mut delay = Duration::from_secs(1);
        loop {
            tokio::time::sleep(delay).await;
            match store.migrate().await {
                Ok(()) => {
                    tracing::info!("the database answers: migrations applied");
                    return;
                }
                Err(MetadataError::Unavailable(_)) => delay = (delay * 2).min(Duration::from_secs(30)),
                Err(e) => {
                    tracing::error!(error = %e, "database migrations failed; requests that need the database fail until it is mended and Berth restarted");
                    return;
                }
            }
        }
    });
    Ok(())
}

/// Builds the registry on the backends the settings name, applying migrations if asked, and
/// treating a backend that does not answer as `rule` says.
pub async fn build_registry(settings: &Settings, rule: Unreachable) -> anyhow::Result<Registry> {
    std::fs::create_dir_all(&settings.data_dir)
        .with_context(|| format!("cannot create data directory {}", settings.data_dir.display()))?;
    let (blobs, storage) = storage(settings).await?;
    let (metadata, database) = metadata(settings).await?;
    let (sessions, session_store) = sessions(settings).await?;
    for backend in [&database, &session_store, &storage] {
        unreachable(backend, rule)?;
    }
    if settings.migrate {
        migrate(metadata.clone(), database.error.is_none(), rule).await?;
    }
    let blobs: Arc<dyn BlobStore> = Arc::new(crate::storage::instrumented::Instrumented(blobs));
    let metadata: Arc<dyn MetadataStore> = Arc::new(crate::metadata::instrumented::Instrumented(metadata));
    let sessions: Arc<dyn SessionStore> = Arc::new(crate::sessions::instrumented::Instrumented(sessions));
    Ok(Registry::new(blobs, metadata, sessions, settings.policy()?))
}

/// Opens each backend and asks it once, changing nothing (no migration): what
/// `berth check-config --connect` reports.
pub async fn check_backends(settings: &Settings) -> anyhow::Result<Vec<Backend>> {
    let (_, storage) = storage(settings).await?;
    let (_, database) = metadata(settings).await?;
    let (_, session_store) = sessions(settings).await?;
    Ok(vec![database, session_store, storage])
}
