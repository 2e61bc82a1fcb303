//! Metadata in SQL through sqlx's `Any` driver, so that SQLite (embedded) and PostgreSQL
//! run the very same statements. The statements stick to what both understand: `$n`
//! parameters, `ON CONFLICT`, no vendor functions. Byte-order sorting comes from the
//! schema (`COLLATE "C"` on PostgreSQL; SQLite compares bytes by default).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Connection, Executor, Row, Transaction};

use super::{
    BlobHolders, BlobRecord, Collectable, DeleteBytes, Lease, MetadataError, MetadataStore, NameMatch, NewManifest,
    Page, PutManifest, QuotaExceeded, Referrer, RepositorySummary, StoredManifest, TagInfo, TagOrder, TagRow, Usage,
};
use crate::oci::{Digest, Reference, RepoName, Tag};

/// Which database is behind the `Any` driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

pub struct SqlMetadata {
    dialect: Dialect,
    /// How to connect, for [`SqlMetadata::probe`].
    options: AnyConnectOptions,
    /// Pool for reads.
    reads: AnyPool,
    /// Pool for writes. On SQLite it holds one connection: SQLite allows one writer at a
    /// time anyway, and queueing writers here avoids `SQLITE_BUSY` on transactions that
    /// read before they write.
    writes: AnyPool,
}

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
/// The migrator takes a PostgreSQL advisory lock, so that replicas starting together apply
/// each migration once.
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

impl SqlMetadata {
    /// Connects to `url` (`sqlite://…` or `postgres://…`); `migrate` applies pending migrations.
    pub async fn connect(url: &str, migrate: bool) -> Result<SqlMetadata, MetadataError> {
        let store = SqlMetadata::open(url).await?;
        if migrate {
            store.probe().await?;
            store.migrate().await?;
        }
        Ok(store)
    }

    /// Opens the store without waiting for a server: a SQLite file is opened (and created) at
    /// once, a PostgreSQL pool connects when it is first used, so that a database that is down
    /// at start makes requests fail with 503 until it is back rather than stop the start.
    pub async fn open(url: &str) -> Result<SqlMetadata, MetadataError> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Dialect::Postgres
        } else {
            return Err(MetadataError::Other(format!("unsupported database URL scheme in {url:?}")));
        };
        let options: AnyConnectOptions = url.parse().map_err(unavailable)?;
        let store = match dialect {
            Dialect::Sqlite => {
                let pool = |max| {
                    AnyPoolOptions::new()
                        .max_connections(max)
                        .acquire_timeout(Duration::from_secs(30))
                        .after_connect(|conn, _| {
                            Box::pin(async move {
                                conn.execute(
                                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                                     PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
                                )
                                .await
                                .map(|_| ())
                            })
                        })
                        // After some errors (a full disk: SQLITE_FULL) SQLite rolls the
                        // transaction back by itself; sqlx's own ROLLBACK then fails and leaves
                        // the connection believing it is still in a transaction, so that every
                        // later BEGIN on it fails. Such a connection is closed, not reused.
                        .before_acquire(|conn, _| Box::pin(async move { Ok(!conn.is_in_transaction()) }))
                };
                let writes = pool(1).connect_with(options.clone()).await.map_err(unavailable)?;
                let reads = pool(8).connect_with(options.clone()).await.map_err(unavailable)?;
                SqlMetadata { dialect, options, reads, writes }
            }
            Dialect::Postgres => {
                // A database that went away fails requests after a few seconds (503), and the
                // pool reconnects by itself when it is back.
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(3))
                    .connect_lazy_with(options.clone());
                SqlMetadata { dialect, options, reads: pool.clone(), writes: pool }
            }
        };
        Ok(store)
    }

    /// Connects once, outside the pool, to learn whether the database answers and, if not, the
    /// real cause (a pool only says that it timed out).
    pub async fn probe(&self) -> Result<(), MetadataError> {
        let connect = sqlx::AnyConnection::connect_with(&self.options);
        let mut connection = match tokio::time::timeout(Duration::from_secs(5), connect).await {
            Ok(connected) => connected.map_err(db_error)?,
            Err(_) => return Err(MetadataError::Unavailable("no answer within 5s".into())),
        };
        connection.execute("SELECT 1").await.map_err(db_error)?;
        let _ = connection.close().await;
        Ok(())
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), MetadataError> {
        let migrator = match self.dialect {
            Dialect::Sqlite => &SQLITE_MIGRATIONS,
            Dialect::Postgres => &POSTGRES_MIGRATIONS,
        };
        migrator.run(&self.writes).await.map_err(|e| match e {
            // The database went away (or never came): the migrations can run once it is back.
            sqlx::migrate::MigrateError::Execute(inner) | sqlx::migrate::MigrateError::ExecuteMigration(inner, _)
                if is_unreachable(&inner) =>
            {
                MetadataError::Unavailable(format!("migrations could not run: {inner}"))
            }
            other => MetadataError::Other(format!("migration failed: {other}")),
        })
    }

    /// A write transaction. On SQLite it takes the write lock up front (`IMMEDIATE`): a
    /// transaction that read first could not write once another process (`berth gc`)
    /// had written in between.
    async fn begin(&self) -> Result<Transaction<'static, Any>, MetadataError> {
        match self.dialect {
            Dialect::Sqlite => self.writes.begin_with("BEGIN IMMEDIATE").await,
            Dialect::Postgres => self.writes.begin().await,
        }
        .map_err(db_error)
    }

    /// A statement made by [`with_lock`]: as is on SQLite, whose write transactions exclude
    /// each other anyway, or with its row-locking clause on PostgreSQL. Rows are locked where
    /// a blob's removal and a transaction that links or references it must not interleave:
    /// the removal locks the blob's row `FOR UPDATE`, the others `FOR SHARE`.
    fn locking(&self, (sqlite, postgres): (&'static str, &'static str)) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => sqlite,
            Dialect::Postgres => postgres,
        }
    }
}

/// The same statement without and with a PostgreSQL row-locking clause, for
/// [`SqlMetadata::locking`].
macro_rules! with_lock {
    ($sql:expr, $clause:literal) => {
        ($sql, concat!($sql, " ", $clause))
    };
}

macro_rules! blob_row_sql {
    () => {
        "SELECT size, location, deleting FROM blobs WHERE digest = $1"
    };
}

macro_rules! blob_in_repository_sql {
    () => {
        "SELECT b.size, b.location FROM repository_blobs rb \
         JOIN repositories r ON r.id = rb.repository_id JOIN blobs b ON b.digest = rb.digest \
         WHERE r.name = $1 AND rb.digest = $2 AND b.deleting IS NULL"
    };
}

const BLOB_ROW_SHARED: (&str, &str) = with_lock!(blob_row_sql!(), "FOR SHARE");
// Only the blob's row is locked: the removal locks it first and then deletes the links, so
// locking a link here as well could deadlock with it.
const BLOB_IN_REPOSITORY_SHARED: (&str, &str) = with_lock!(blob_in_repository_sql!(), "FOR SHARE OF b");
const LINKED_BLOB_SIZE_SHARED: (&str, &str) = with_lock!(
    "SELECT b.size FROM repository_blobs rb JOIN blobs b ON b.digest = rb.digest \
     WHERE rb.repository_id = $1 AND rb.digest = $2 AND b.deleting IS NULL",
    "FOR SHARE OF b"
);
// A manifest an index lists, locked against its removal by `remove_unkept_manifest` (which
// takes the row `FOR UPDATE`) until the index is stored.
const MANIFEST_SIZE_SHARED: (&str, &str) =
    with_lock!("SELECT size FROM manifests WHERE repository_id = $1 AND digest = $2", "FOR SHARE");
const MANIFEST_CREATED_EXCLUSIVE: (&str, &str) =
    with_lock!("SELECT created_at, subject FROM manifests WHERE repository_id = $1 AND digest = $2", "FOR UPDATE");

/// The blob's row read with `sql`, one of [`BLOB_ROW_SHARED`] or [`BLOB_ROW_EXCLUSIVE`] for the
/// dialect: its record, and whether its removal began.
async fn blob_row(
    tx: &mut Transaction<'static, Any>,
    sql: &'static str,
    digest: &Digest,
) -> Result<Option<(BlobRecord, bool)>, MetadataError> {
    let row = sqlx::query(sql).bind(digest.as_str()).fetch_optional(&mut **tx).await.map_err(db_error)?;
    let Some(row) = row else { return Ok(None) };
    let deleting: Option<i64> = column(&row, 2)?;
    Ok(Some((blob_columns(&row)?, deleting.is_some())))
}

fn millis(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

fn now_ms() -> i64 {
    millis(SystemTime::now())
}

fn unavailable(e: impl std::fmt::Display) -> MetadataError {
    MetadataError::Unavailable(e.to_string())
}

/// Whether an error says that the database cannot be reached.
fn is_unreachable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
}

fn db_error(e: sqlx::Error) -> MetadataError {
    match e {
        ref unreachable if is_unreachable(unreachable) => MetadataError::Unavailable(e.to_string()),
        // SQLITE_FULL (13; it has no extended codes) and PostgreSQL's disk_full (53100).
        sqlx::Error::Database(ref d) if d.code().is_some_and(|c| c == "13" || c == "53100") => {
            MetadataError::Full(e.to_string())
        }
        // undefined_table: a database that came up after the start, before the migrations that
        // are being retried have run.
        sqlx::Error::Database(ref d) if d.code().is_some_and(|c| c == "42P01") => {
            MetadataError::Unavailable(format!("the database has no schema yet (migrations pending): {e}"))
        }
        // cannot_connect_now, too_many_connections, and the like: the server is there but
        // refuses for now.
        sqlx::Error::Database(ref d) if d.code().is_some_and(|c| c.starts_with("57P") || c == "53300") => {
            MetadataError::Unavailable(e.to_string())
        }
        other => MetadataError::Other(other.to_string()),
    }
}

fn column<T>(row: &AnyRow, index: usize) -> Result<T, MetadataError>
where
    T: for<'r> sqlx::Decode<'r, Any> + sqlx::Type<Any>,
{
    row.try_get(index).map_err(db_error)
}

fn digest_column(row: &AnyRow, index: usize) -> Result<Digest, MetadataError> {
    let text: String = column(row, index)?;
    text.parse().map_err(|e| MetadataError::Other(format!("stored digest {text:?} is invalid: {e}")))
}

fn blob_columns(row: &AnyRow) -> Result<BlobRecord, MetadataError> {
    Ok(BlobRecord { size: size_column(row, 0)?, location: column(row, 1)? })
}

fn size_column(row: &AnyRow, index: usize) -> Result<u64, MetadataError> {
    let size: i64 = column(row, index)?;
    Ok(size.max(0) as u64)
}

fn limit_arg(limit: u32) -> i64 {
    // One more than asked for tells whether another page follows.
    i64::from(limit) + 1
}

fn page(rows: Vec<AnyRow>, limit: u32) -> Result<Page, MetadataError> {
    let mut items = rows.iter().map(|r| column::<String>(r, 0)).collect::<Result<Vec<_>, _>>()?;
    let more = items.len() > limit as usize;
    items.truncate(limit as usize);
    Ok(Page { items, more })
}

/// Creates the repository if needed and returns its id.
async fn repository_id(tx: &mut Transaction<'static, Any>, name: &RepoName) -> Result<i64, MetadataError> {
    sqlx::query("INSERT INTO repositories (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING")
        .bind(name.as_str())
        .bind(now_ms())
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    existing_repository_id(&mut **tx, name)
        .await?
        .ok_or_else(|| MetadataError::Other(format!("repository {name} vanished as it was created")))
}

/// The repository's id, if it exists.
async fn existing_repository_id<'e>(
    executor: impl Executor<'e, Database = Any>,
    name: &RepoName,
) -> Result<Option<i64>, MetadataError> {
    let row = sqlx::query("SELECT id FROM repositories WHERE name = $1")
        .bind(name.as_str())
        .fetch_optional(executor)
        .await
        .map_err(db_error)?;
    row.map(|r| column(&r, 0)).transpose()
}

/// Deletes a manifest with its references and any tag on it; whether it existed.
async fn remove_manifest(
    tx: &mut Transaction<'static, Any>,
    repository: i64,
    digest: &Digest,
) -> Result<bool, MetadataError> {
    for sql in [
        "DELETE FROM tags WHERE repository_id = $1 AND manifest_digest = $2",
        "DELETE FROM manifest_references WHERE repository_id = $1 AND manifest_digest = $2",
    ] {
        sqlx::query(sql).bind(repository).bind(digest.as_str()).execute(&mut **tx).await.map_err(db_error)?;
    }
    let done = sqlx::query("DELETE FROM manifests WHERE repository_id = $1 AND digest = $2")
        .bind(repository)
        .bind(digest.as_str())
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(done.rows_affected() > 0)
}

/// Links a blob to the repository, or renews the link's time (which the garbage collector's
/// grace time counts from). The caller holds the blob's row, found not being removed.
async fn add_link(tx: &mut Transaction<'static, Any>, repository: i64, digest: &Digest) -> Result<(), MetadataError> {
    sqlx::query(
        "INSERT INTO repository_blobs (repository_id, digest, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at",
    )
    .bind(repository)
    .bind(digest.as_str())
    .bind(now_ms())
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    Ok(())
}

/// Records the blob if it is new and links it to the repository; the record that stays.
/// `lock_row` is [`BLOB_ROW_SHARED`] for the dialect: between finding the row (or adding it)
/// and linking it, the garbage collector must not delete it.
async fn link(
    tx: &mut Transaction<'static, Any>,
    lock_row: &'static str,
    digest: &Digest,
    blob: &BlobRecord,
) -> Result<BlobRecord, MetadataError> {
    sqlx::query(
        "INSERT INTO blobs (digest, size, location, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (digest) DO NOTHING",
    )
    .bind(digest.as_str())
    .bind(blob.size as i64)
    .bind(blob.location.as_deref())
    .bind(now_ms())
    .execute(&mut **tx)
    .await
    .map_err(db_error)?;
    // No row: the one the insert found was being removed, and is gone now; asked again, the
    // insert adds a new one.
    match blob_row(tx, lock_row, digest).await? {
        None | Some((_, true)) => Err(MetadataError::BlobBeingRemoved(digest.clone())),
        Some((record, false)) => Ok(record),
    }
}

/// The quota namespaces counted for a repository, locked (`FOR UPDATE` on PostgreSQL, in name
/// order) until the transaction ends: every link and unlink under a namespace takes its row,
/// so that its count stays exact. Each with its limit and usage.
async fn namespaces_of(
    tx: &mut Transaction<'static, Any>,
    dialect: Dialect,
    repository: &str,
) -> Result<Vec<(String, u64, u64)>, MetadataError> {
    const SQL: (&str, &str) = with_lock!(
        "SELECT namespace, limit_bytes, bytes FROM namespace_usage \
         WHERE namespace = $1 OR substr($1, 1, length(namespace) + 1) = namespace || '/' ORDER BY namespace",
        "FOR UPDATE"
    );
    let sql = if dialect == Dialect::Postgres { SQL.1 } else { SQL.0 };
    let rows = sqlx::query(sql).bind(repository).fetch_all(&mut **tx).await.map_err(db_error)?;
    rows.iter().map(|r| Ok((column(r, 0)?, size_column(r, 1)?, size_column(r, 2)?))).collect()
}

/// Counts a link of `digest` in `repository` in the namespaces that count it, unless one of them
/// would then exceed its limit: that one is returned, and nothing is written.
async fn count_link(
    tx: &mut Transaction<'static, Any>,
    dialect: Dialect,
    repository: &RepoName,
    digest: &Digest,
    size: u64,
) -> Result<Result<(), QuotaExceeded>, MetadataError> {
    let mut new = Vec::new();
    for (namespace, limit, bytes) in namespaces_of(tx, dialect, repository.as_str()).await? {
        let counted = sqlx::query("SELECT 1 FROM namespace_blobs WHERE namespace = $1 AND digest = $2")
            .bind(&namespace)
            .bind(digest.as_str())
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?;
        if counted.is_some() {
            continue;
        }
        if bytes.saturating_add(size) > limit {
            return Ok(Err(QuotaExceeded { namespace, usage: bytes, limit, size }));
        }
        new.push(namespace);
    }
    for namespace in new {
        sqlx::query("INSERT INTO namespace_blobs (namespace, digest, size) VALUES ($1, $2, $3)")
            .bind(&namespace)
            .bind(digest.as_str())
            .bind(size as i64)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        sqlx::query("UPDATE namespace_usage SET bytes = bytes + $2 WHERE namespace = $1")
            .bind(&namespace)
            .bind(size as i64)
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
    }
    Ok(Ok(()))
}

/// After the links of `digests` were removed from `repository` (or from every repository, when
/// `None`), stops counting them in the namespaces no other link under them keeps them in.
async fn uncount_links(
    tx: &mut Transaction<'static, Any>,
    dialect: Dialect,
    repository: Option<&RepoName>,
    digests: &[&str],
) -> Result<(), MetadataError> {
    if digests.is_empty() {
        return Ok(());
    }
    let namespaces: Vec<String> = match repository {
        Some(repository) => {
            namespaces_of(tx, dialect, repository.as_str()).await?.into_iter().map(|(n, _, _)| n).collect()
        }
        None => {
            let sql = format!(
                "SELECT DISTINCT namespace FROM namespace_blobs WHERE digest IN ({}) ORDER BY namespace",
                placeholders(1, digests.len())
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for d in digests {
                query = query.bind(*d);
            }
            let rows = query.fetch_all(&mut **tx).await.map_err(db_error)?;
            let names = rows.iter().map(|r| column::<String>(r, 0)).collect::<Result<Vec<_>, _>>()?;
            if dialect == Dialect::Postgres {
                for name in &names {
                    sqlx::query("SELECT 1 FROM namespace_usage WHERE namespace = $1 FOR UPDATE")
                        .bind(name)
                        .execute(&mut **tx)
                        .await
                        .map_err(db_error)?;
                }
            }
            names
        }
    };
    for namespace in namespaces {
        for digest in digests {
            let still = sqlx::query(
                "SELECT 1 FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
                 WHERE rb.digest = $2 AND (r.name = $1 OR substr(r.name, 1, length($1) + 1) = $1 || '/')",
            )
            .bind(&namespace)
            .bind(*digest)
            .fetch_optional(&mut **tx)
            .await
            .map_err(db_error)?;
            if still.is_some() {
                continue;
            }
            let row = sqlx::query("DELETE FROM namespace_blobs WHERE namespace = $1 AND digest = $2 RETURNING size")
                .bind(&namespace)
                .bind(*digest)
                .fetch_optional(&mut **tx)
                .await
                .map_err(db_error)?;
            if let Some(row) = row {
                sqlx::query("UPDATE namespace_usage SET bytes = bytes - $2 WHERE namespace = $1")
                    .bind(&namespace)
                    .bind(size_column(&row, 0)? as i64)
                    .execute(&mut **tx)
                    .await
                    .map_err(db_error)?;
            }
        }
    }
    Ok(())
}

/// `$first, $first+1, …`: `count` parameters for an `IN (…)` list.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// Checks, in the transaction, that `lease` is still held, and extends it: on PostgreSQL the
/// lease's row stays locked until the transaction ends, so that nobody takes the lease over
/// while it commits.
async fn fence(tx: &mut Transaction<'static, Any>, lease: &Lease) -> Result<(), MetadataError> {
    let done = sqlx::query("UPDATE leases SET expires_at = $3 WHERE name = $1 AND token = $2 AND holder = $4")
        .bind(&lease.name)
        .bind(lease.token)
        .bind(now_ms() + lease.ttl.as_millis() as i64)
        .bind(&lease.holder)
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    if done.rows_affected() == 0 {
        return Err(MetadataError::Fenced(lease.name.clone()));
    }
    Ok(())
}

/// Begins the removal of those of `digests` that are still collectable (see
/// [`MetadataStore::begin_blob_removal`]); the ones whose removal began, with their records.
async fn mark_removals(
    tx: &mut Transaction<'static, Any>,
    dialect: Dialect,
    digests: &[Digest],
    cutoff: SystemTime,
) -> Result<Vec<(Digest, BlobRecord)>, MetadataError> {
    if digests.is_empty() {
        return Ok(Vec::new());
    }
    let list = placeholders(1, digests.len());
    let lock = if dialect == Dialect::Postgres { " FOR UPDATE" } else { "" };
    let sql =
        format!("SELECT digest, size, location, deleting FROM blobs WHERE digest IN ({list}) ORDER BY digest{lock}");
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
    for d in digests {
        query = query.bind(d.as_str());
    }
    let rows = query.fetch_all(&mut **tx).await.map_err(db_error)?;
    // Asked again under the row locks: whatever linked or referenced a blob since it was listed
    // has committed by now, and shows.
    let n = digests.len();
    let sql = format!(
        "SELECT b.digest FROM blobs b WHERE b.digest IN ({list}) AND b.deleting IS NULL AND (b.created_at >= ${c} \
         OR EXISTS (SELECT 1 FROM manifest_references mr WHERE mr.target_digest = b.digest) \
         OR EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest AND rb.created_at >= ${c}))",
        c = n + 1
    );
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
    for d in digests {
        query = query.bind(d.as_str());
    }
    let used = query.bind(millis(cutoff)).fetch_all(&mut **tx).await.map_err(db_error)?;
    let used: std::collections::HashSet<String> =
        used.iter().map(|r| column::<String>(r, 0)).collect::<Result<_, _>>()?;
    let mut removed = Vec::new();
    let mut starting = Vec::new();
    for row in &rows {
        let digest: String = column(row, 0)?;
        if used.contains(&digest) {
            continue;
        }
        let deleting: Option<i64> = column(row, 3)?;
        let record = BlobRecord { size: size_column(row, 1)?, location: column(row, 2)? };
        if deleting.is_none() {
            starting.push(digest.clone());
        }
        removed.push((digest_column(row, 0)?, record));
    }
    if !starting.is_empty() {
        let list = placeholders(1, starting.len());
        for sql in [
            format!("DELETE FROM repository_blobs WHERE digest IN ({list})"),
            format!("UPDATE blobs SET deleting = ${} WHERE digest IN ({list})", starting.len() + 1),
        ] {
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
            for d in &starting {
                query = query.bind(d.as_str());
            }
            if sql.starts_with("UPDATE") {
                query = query.bind(now_ms());
            }
            query.execute(&mut **tx).await.map_err(db_error)?;
        }
        let starting: Vec<&str> = starting.iter().map(String::as_str).collect();
        uncount_links(tx, dialect, None, &starting).await?;
    }
    Ok(removed)
}

// A page of a repository's tags with their manifests, for the web UI.
const TAG_PAGE_BY_PUSH: &str = "SELECT t.name, t.manifest_digest, m.media_type, m.size, t.updated_at, m.payload \
     FROM tags t JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
     WHERE t.repository_id = $1 ORDER BY t.updated_at DESC, t.name LIMIT $2 OFFSET $3";
const TAG_PAGE_BY_NAME: &str = "SELECT t.name, t.manifest_digest, m.media_type, m.size, t.updated_at, m.payload \
     FROM tags t JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
     WHERE t.repository_id = $1 ORDER BY t.name LIMIT $2 OFFSET $3";

// Manifest lookups, with and without the payload: HEAD never loads the bytes.
const MANIFEST_BY_DIGEST: &str = "SELECT m.digest, m.media_type, m.size, m.payload FROM manifests m \
     JOIN repositories r ON r.id = m.repository_id WHERE r.name = $1 AND m.digest = $2";
const MANIFEST_HEAD_BY_DIGEST: &str = "SELECT m.digest, m.media_type, m.size FROM manifests m \
     JOIN repositories r ON r.id = m.repository_id WHERE r.name = $1 AND m.digest = $2";
const MANIFEST_BY_TAG: &str = "SELECT m.digest, m.media_type, m.size, m.payload FROM tags t \
     JOIN repositories r ON r.id = t.repository_id \
     JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
     WHERE r.name = $1 AND t.name = $2";
const MANIFEST_HEAD_BY_TAG: &str = "SELECT m.digest, m.media_type, m.size FROM tags t \
     JOIN repositories r ON r.id = t.repository_id \
     JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
     WHERE r.name = $1 AND t.name = $2";

#[async_trait]
impl MetadataStore for SqlMetadata {
    fn kind(&self) -> &'static str {
        match self.dialect {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    async fn link_blob(
        &self,
        repository: &RepoName,
        digest: &Digest,
        blob: &BlobRecord,
    ) -> Result<BlobRecord, MetadataError> {
        let mut tx = self.begin().await?;
        let stored = link(&mut tx, self.locking(BLOB_ROW_SHARED), digest, blob).await?;
        if let Err(refused) = count_link(&mut tx, self.dialect, repository, digest, stored.size).await? {
            // The blob's record stays, linked nowhere: the collector removes its bytes once
            // the grace time is over.
            tx.commit().await.map_err(db_error)?;
            return Err(MetadataError::QuotaExceeded(refused));
        }
        let id = repository_id(&mut tx, repository).await?;
        add_link(&mut tx, id, digest).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(stored)
    }

    async fn link_stored_blob(
        &self,
        repository: &RepoName,
        digest: &Digest,
        size: u64,
    ) -> Result<Option<BlobRecord>, MetadataError> {
        let mut tx = self.begin().await?;
        let record = match blob_row(&mut tx, self.locking(BLOB_ROW_SHARED), digest).await? {
            None => return Ok(None),
            Some((_, true)) => return Err(MetadataError::BlobBeingRemoved(digest.clone())),
            Some((record, false)) if record.size != size => return Ok(None),
            Some((record, false)) => record,
        };
        if let Err(refused) = count_link(&mut tx, self.dialect, repository, digest, size).await? {
            return Err(MetadataError::QuotaExceeded(refused));
        }
        let id = repository_id(&mut tx, repository).await?;
        add_link(&mut tx, id, digest).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(record))
    }

    async fn collectable_blobs(
        &self,
        cutoff: SystemTime,
        after: Option<&Digest>,
        limit: u32,
    ) -> Result<Vec<Collectable>, MetadataError> {
        let rows = sqlx::query(
            "SELECT b.digest, b.size FROM blobs b WHERE b.digest > $2 AND (b.deleting IS NOT NULL \
             OR (b.created_at < $1 \
                 AND NOT EXISTS (SELECT 1 FROM manifest_references mr WHERE mr.target_digest = b.digest) \
                 AND NOT EXISTS (SELECT 1 FROM repository_blobs rb \
                                 WHERE rb.digest = b.digest AND rb.created_at >= $1))) \
             ORDER BY b.digest LIMIT $3",
        )
        .bind(millis(cutoff))
        .bind(after.map_or("", Digest::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        rows.iter().map(|r| Ok(Collectable { digest: digest_column(r, 0)?, size: size_column(r, 1)? })).collect()
    }

    async fn begin_blob_removal(
        &self,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<Option<BlobRecord>, MetadataError> {
        let mut tx = self.begin().await?;
        let removed = mark_removals(&mut tx, self.dialect, std::slice::from_ref(digest), cutoff).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(removed.into_iter().next().map(|(_, record)| record))
    }

    async fn finish_blob_removal(&self, digest: &Digest) -> Result<(), MetadataError> {
        sqlx::query("DELETE FROM blobs WHERE digest = $1 AND deleting IS NOT NULL")
            .bind(digest.as_str())
            .execute(&self.writes)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn unkept_manifests(
        &self,
        repository: &RepoName,
        cutoff: Option<SystemTime>,
        released: &[Digest],
    ) -> Result<Vec<Digest>, MetadataError> {
        let Some(id) = existing_repository_id(&self.reads, repository).await? else { return Ok(Vec::new()) };
        let rows = sqlx::query(
            "SELECT m.digest, m.subject, CAST(CASE WHEN EXISTS (SELECT 1 FROM tags t \
                 WHERE t.repository_id = m.repository_id AND t.manifest_digest = m.digest) THEN 1 ELSE 0 END AS BIGINT), \
             m.created_at FROM manifests m WHERE m.repository_id = $1",
        )
        .bind(id)
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        let cutoff = cutoff.map(millis);
        let mut manifests = Vec::with_capacity(rows.len());
        for row in &rows {
            let subject: Option<String> = column(row, 1)?;
            let tagged: i64 = column(row, 2)?;
            let created_at: i64 = column(row, 3)?;
            let recent = cutoff.is_none_or(|c| created_at >= c);
            manifests.push((digest_column(row, 0)?, subject.and_then(|s| s.parse().ok()), tagged == 1, recent));
        }
        let rows = sqlx::query(
            "SELECT manifest_digest, target_digest FROM manifest_references \
             WHERE repository_id = $1 AND kind = 'manifest'",
        )
        .bind(id)
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        let lists =
            rows.iter().map(|r| Ok((digest_column(r, 0)?, digest_column(r, 1)?))).collect::<Result<Vec<_>, _>>()?;
        Ok(super::unkept(&manifests, &lists, released))
    }

    async fn remove_unkept_manifest(
        &self,
        lease: &Lease,
        repository: &RepoName,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool, MetadataError> {
        let mut tx = self.begin().await?;
        fence(&mut tx, lease).await?;
        let Some(id) = existing_repository_id(&mut *tx, repository).await? else { return Ok(false) };
        let row = sqlx::query(self.locking(MANIFEST_CREATED_EXCLUSIVE))
            .bind(id)
            .bind(digest.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let Some(row) = row else { return Ok(false) };
        let created_at: i64 = column(&row, 0)?;
        let subject: Option<String> = column(&row, 1)?;
        if created_at >= millis(cutoff) {
            return Ok(false);
        }
        // Asked under the row lock: a tag, an index or a referrer's subject that committed
        // since the listing shows now.
        let kept = sqlx::query(
            "SELECT 1 WHERE EXISTS (SELECT 1 FROM tags WHERE repository_id = $1 AND manifest_digest = $2) \
             OR EXISTS (SELECT 1 FROM manifest_references WHERE repository_id = $1 AND target_digest = $2 \
                        AND kind = 'manifest') \
             OR EXISTS (SELECT 1 FROM manifests WHERE repository_id = $1 AND digest = $3)",
        )
        .bind(id)
        .bind(digest.as_str())
        .bind(subject.as_deref().unwrap_or(""))
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if kept.is_some() {
            return Ok(false);
        }
        let removed = remove_manifest(&mut tx, id, digest).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(removed)
    }

    async fn manifest_references(&self, repository: &RepoName, digest: &Digest) -> Result<Vec<Digest>, MetadataError> {
        let rows = sqlx::query(
            "SELECT mr.target_digest FROM manifest_references mr JOIN repositories r ON r.id = mr.repository_id \
             WHERE r.name = $1 AND mr.manifest_digest = $2 ORDER BY mr.target_digest",
        )
        .bind(repository.as_str())
        .bind(digest.as_str())
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        rows.iter().map(|r| digest_column(r, 0)).collect()
    }

    async fn blob_holders(&self, digest: &Digest, cutoff: SystemTime) -> Result<Option<BlobHolders>, MetadataError> {
        let Some(row) = sqlx::query("SELECT size, created_at FROM blobs WHERE digest = $1 AND deleting IS NULL")
            .bind(digest.as_str())
            .fetch_optional(&self.reads)
            .await
            .map_err(db_error)?
        else {
            return Ok(None);
        };
        let (size, created_at): (u64, i64) = (size_column(&row, 0)?, column(&row, 1)?);
        let recent_links: i64 =
            sqlx::query("SELECT COUNT(*) FROM repository_blobs WHERE digest = $1 AND created_at >= $2")
                .bind(digest.as_str())
                .bind(millis(cutoff))
                .fetch_one(&self.reads)
                .await
                .and_then(|r| r.try_get(0))
                .map_err(db_error)?;
        let rows = sqlx::query(
            "SELECT r.name, mr.manifest_digest FROM manifest_references mr \
             JOIN repositories r ON r.id = mr.repository_id WHERE mr.target_digest = $1",
        )
        .bind(digest.as_str())
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        let referenced_by = rows
            .iter()
            .map(|r| {
                let name: String = column(r, 0)?;
                let name = name.parse().map_err(|e| MetadataError::Other(format!("stored name {name:?}: {e}")))?;
                Ok((name, digest_column(r, 1)?))
            })
            .collect::<Result<Vec<_>, MetadataError>>()?;
        Ok(Some(BlobHolders { size, referenced_by, recent: created_at >= millis(cutoff) || recent_links > 0 }))
    }

    async fn blob(&self, digest: &Digest) -> Result<Option<BlobRecord>, MetadataError> {
        let row = sqlx::query("SELECT size, location FROM blobs WHERE digest = $1 AND deleting IS NULL")
            .bind(digest.as_str())
            .fetch_optional(&self.reads)
            .await
            .map_err(db_error)?;
        row.as_ref().map(blob_columns).transpose()
    }

    async fn blob_in_repository(
        &self,
        repository: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobRecord>, MetadataError> {
        let row = sqlx::query(blob_in_repository_sql!())
            .bind(repository.as_str())
            .bind(digest.as_str())
            .fetch_optional(&self.reads)
            .await
            .map_err(db_error)?;
        row.as_ref().map(blob_columns).transpose()
    }

    async fn mount_blob(
        &self,
        from: &RepoName,
        to: &RepoName,
        digest: &Digest,
    ) -> Result<Option<BlobRecord>, MetadataError> {
        let mut tx = self.begin().await?;
        // Locks the blob's row, found not being removed: it can be linked as it is.
        let row = sqlx::query(self.locking(BLOB_IN_REPOSITORY_SHARED))
            .bind(from.as_str())
            .bind(digest.as_str())
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_error)?;
        let Some(row) = row else { return Ok(None) };
        let blob = blob_columns(&row)?;
        if let Err(refused) = count_link(&mut tx, self.dialect, to, digest, blob.size).await? {
            return Err(MetadataError::QuotaExceeded(refused));
        }
        let id = repository_id(&mut tx, to).await?;
        add_link(&mut tx, id, digest).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(blob))
    }

    async fn unlink_blob(&self, repository: &RepoName, digest: &Digest) -> Result<bool, MetadataError> {
        let mut tx = self.begin().await?;
        // The blob's row first, as every transaction that links or removes it takes it.
        blob_row(&mut tx, self.locking(BLOB_ROW_SHARED), digest).await?;
        let done = sqlx::query(
            "DELETE FROM repository_blobs WHERE digest = $2 \
             AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository.as_str())
        .bind(digest.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        if done.rows_affected() > 0 {
            uncount_links(&mut tx, self.dialect, Some(repository), &[digest.as_str()]).await?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_manifest(&self, m: &NewManifest, tags: &[Tag], fixed: &[Tag]) -> Result<PutManifest, MetadataError> {
        let mut tx = self.begin().await?;
        let id = repository_id(&mut tx, &m.repository).await?;
        let (mut missing, mut wrong_size) = (Vec::new(), Vec::new());
        let blob_size = self.locking(LINKED_BLOB_SIZE_SHARED);
        let manifest_size = self.locking(MANIFEST_SIZE_SHARED);
        let wanted = m.blobs.iter().map(|r| (r, blob_size)).chain(m.manifests.iter().map(|r| (r, manifest_size)));
        for ((digest, size), query) in wanted {
            let row =
                sqlx::query(query).bind(id).bind(digest.as_str()).fetch_optional(&mut *tx).await.map_err(db_error)?;
            match row.map(|r| size_column(&r, 0)).transpose()? {
                None => missing.push(digest.clone()),
                Some(stored) if stored != *size => wrong_size.push(digest.clone()),
                Some(_) => {}
            }
        }
        if !missing.is_empty() && !m.lazy {
            return Ok(PutManifest::Missing(missing));
        }
        if !wrong_size.is_empty() {
            return Ok(PutManifest::WrongSize(wrong_size));
        }
        let now = now_ms();
        sqlx::query(
            "INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, annotations, \
             size, payload, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
             ON CONFLICT (repository_id, digest) DO UPDATE SET created_at = excluded.created_at",
        )
        .bind(id)
        .bind(m.digest.as_str())
        .bind(m.media_type.as_str())
        .bind(m.artifact_type.as_deref())
        .bind(m.subject.as_ref().map(Digest::as_str))
        .bind(m.annotations.as_deref())
        .bind(m.payload.len() as i64)
        .bind(m.payload.as_slice())
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let references =
            m.blobs.iter().map(|(d, _)| (d, "blob")).chain(m.manifests.iter().map(|(d, _)| (d, "manifest")));
        for (target, kind) in references {
            sqlx::query(
                "INSERT INTO manifest_references (repository_id, manifest_digest, target_digest, kind) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(id)
            .bind(m.digest.as_str())
            .bind(target.as_str())
            .bind(kind)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        for tag in tags.iter().filter(|t| fixed.contains(t)) {
            // A fixed tag is only ever created: the insert waits for a concurrent push of the
            // same tag to commit, and then finds it there.
            sqlx::query(
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository_id, name) DO NOTHING",
            )
            .bind(id)
            .bind(tag.as_str())
            .bind(m.digest.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            let row = sqlx::query("SELECT manifest_digest FROM tags WHERE repository_id = $1 AND name = $2")
                .bind(id)
                .bind(tag.as_str())
                .fetch_one(&mut *tx)
                .await
                .map_err(db_error)?;
            let current = digest_column(&row, 0)?;
            if current != m.digest {
                return Ok(PutManifest::TagFixed(tag.clone(), current));
            }
        }
        for tag in tags {
            // A push makes the tag this registry's own: no longer a cached copy of an upstream's
            // (a fetch marks it checked afterwards).
            sqlx::query(
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository_id, name) DO UPDATE \
                 SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at, checked_at = NULL",
            )
            .bind(id)
            .bind(tag.as_str())
            .bind(m.digest.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }
        tx.commit().await.map_err(db_error)?;
        Ok(PutManifest::Stored)
    }

    async fn get_manifest(
        &self,
        repository: &RepoName,
        reference: &Reference,
        with_payload: bool,
    ) -> Result<Option<StoredManifest>, MetadataError> {
        let (sql, key) = match (reference, with_payload) {
            (Reference::Digest(d), true) => (MANIFEST_BY_DIGEST, d.as_str()),
            (Reference::Digest(d), false) => (MANIFEST_HEAD_BY_DIGEST, d.as_str()),
            (Reference::Tag(t), true) => (MANIFEST_BY_TAG, t.as_str()),
            (Reference::Tag(t), false) => (MANIFEST_HEAD_BY_TAG, t.as_str()),
        };
        let row =
            sqlx::query(sql).bind(repository.as_str()).bind(key).fetch_optional(&self.reads).await.map_err(db_error)?;
        let Some(row) = row else { return Ok(None) };
        Ok(Some(StoredManifest {
            digest: digest_column(&row, 0)?,
            media_type: column(&row, 1)?,
            size: size_column(&row, 2)?,
            payload: if with_payload { Some(column(&row, 3)?) } else { None },
        }))
    }

    async fn delete_manifest(&self, repository: &RepoName, digest: &Digest) -> Result<bool, MetadataError> {
        let mut tx = self.begin().await?;
        let Some(id) = existing_repository_id(&mut *tx, repository).await? else { return Ok(false) };
        let removed = remove_manifest(&mut tx, id, digest).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(removed)
    }

    async fn delete_tag(&self, repository: &RepoName, tag: &Tag) -> Result<bool, MetadataError> {
        let done = sqlx::query(
            "DELETE FROM tags WHERE name = $2 AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository.as_str())
        .bind(tag.as_str())
        .execute(&self.writes)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn list_tags(
        &self,
        repository: &RepoName,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Option<Page>, MetadataError> {
        let Some(id) = existing_repository_id(&self.reads, repository).await? else { return Ok(None) };
        let rows = sqlx::query("SELECT name FROM tags WHERE repository_id = $1 AND name > $2 ORDER BY name LIMIT $3")
            .bind(id)
            .bind(last.unwrap_or(""))
            .bind(limit_arg(limit))
            .fetch_all(&self.reads)
            .await
            .map_err(db_error)?;
        page(rows, limit).map(Some)
    }

    async fn list_repositories(&self, last: Option<&str>, limit: u32) -> Result<Page, MetadataError> {
        let rows = sqlx::query("SELECT name FROM repositories WHERE name > $1 ORDER BY name LIMIT $2")
            .bind(last.unwrap_or(""))
            .bind(limit_arg(limit))
            .fetch_all(&self.reads)
            .await
            .map_err(db_error)?;
        page(rows, limit)
    }

    async fn referrers(
        &self,
        repository: &RepoName,
        subject: &Digest,
        artifact_type: Option<&str>,
    ) -> Result<Vec<Referrer>, MetadataError> {
        let rows = sqlx::query(
            "SELECT m.digest, m.media_type, m.size, m.artifact_type, m.annotations FROM manifests m \
             JOIN repositories r ON r.id = m.repository_id \
             WHERE r.name = $1 AND m.subject = $2 AND ($3 IS NULL OR m.artifact_type = $3) ORDER BY m.digest",
        )
        .bind(repository.as_str())
        .bind(subject.as_str())
        .bind(artifact_type)
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                Ok(Referrer {
                    digest: digest_column(r, 0)?,
                    media_type: column(r, 1)?,
                    size: size_column(r, 2)?,
                    artifact_type: column(r, 3)?,
                    annotations: column(r, 4)?,
                })
            })
            .collect()
    }

    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
        due: bool,
    ) -> Result<Option<Lease>, MetadataError> {
        let mut tx = self.begin().await?;
        if self.dialect == Dialect::Postgres {
            // A holder's transaction keeps the row locked while it commits (see `fence`): wait
            // for it a little, not for as long as it takes.
            sqlx::query("SET LOCAL lock_timeout = '2s'").execute(&mut *tx).await.map_err(db_error)?;
        }
        sqlx::query(
            "INSERT INTO leases (name, holder, token, expires_at, next_run_at) VALUES ($1, '', 0, 0, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        let now = now_ms();
        let taken = sqlx::query(
            "UPDATE leases SET holder = $2, token = token + 1, expires_at = $3 \
             WHERE name = $1 AND expires_at < $4 AND ($5 = 0 OR next_run_at <= $4)",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl.as_millis() as i64)
        .bind(now)
        .bind(i64::from(due))
        .execute(&mut *tx)
        .await;
        let taken = match taken {
            Ok(done) => done.rows_affected() > 0,
            // lock_not_available: the holder is committing; it still holds the lease.
            Err(sqlx::Error::Database(ref d)) if d.code().is_some_and(|c| c == "55P03") => false,
            Err(e) => return Err(db_error(e)),
        };
        if !taken {
            return Ok(None);
        }
        let row = sqlx::query("SELECT token FROM leases WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await
            .map_err(db_error)?;
        let token: i64 = column(&row, 0)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(Lease { name: name.to_owned(), holder: holder.to_owned(), token, ttl }))
    }

    async fn renew_lease(&self, lease: &Lease) -> Result<(), MetadataError> {
        let mut tx = self.begin().await?;
        fence(&mut tx, lease).await?;
        tx.commit().await.map_err(db_error)
    }

    async fn release_lease(&self, lease: &Lease, next_run: Option<SystemTime>) -> Result<(), MetadataError> {
        sqlx::query(
            "UPDATE leases SET expires_at = 0, next_run_at = COALESCE($4, next_run_at) \
             WHERE name = $1 AND token = $2 AND holder = $3",
        )
        .bind(&lease.name)
        .bind(lease.token)
        .bind(&lease.holder)
        .bind(next_run.map(millis))
        .execute(&self.writes)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn begin_blob_removals(
        &self,
        lease: &Lease,
        digests: &[Digest],
        cutoff: SystemTime,
    ) -> Result<Vec<(Digest, BlobRecord)>, MetadataError> {
        let mut tx = self.begin().await?;
        fence(&mut tx, lease).await?;
        let removed = mark_removals(&mut tx, self.dialect, digests, cutoff).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(removed)
    }

    async fn finish_blob_removals(
        &self,
        lease: &Lease,
        digests: &[Digest],
        delete: &DeleteBytes<'_>,
    ) -> Result<Vec<(Digest, BlobRecord)>, MetadataError> {
        if digests.is_empty() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin().await?;
        fence(&mut tx, lease).await?;
        let list = placeholders(1, digests.len());
        let lock = if self.dialect == Dialect::Postgres { " FOR UPDATE" } else { "" };
        let sql = format!(
            "SELECT digest, size, location FROM blobs WHERE digest IN ({list}) AND deleting IS NOT NULL \
             ORDER BY digest{lock}"
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for d in digests {
            query = query.bind(d.as_str());
        }
        let rows = query.fetch_all(&mut *tx).await.map_err(db_error)?;
        let records = rows
            .iter()
            .map(|r| Ok((digest_column(r, 0)?, BlobRecord { size: size_column(r, 1)?, location: column(r, 2)? })))
            .collect::<Result<Vec<_>, MetadataError>>()?;
        if records.is_empty() {
            return Ok(records);
        }
        delete(records.clone()).await.map_err(MetadataError::Other)?;
        let list = placeholders(1, records.len());
        let sql = format!("DELETE FROM blobs WHERE digest IN ({list}) AND deleting IS NOT NULL");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for (d, _) in &records {
            query = query.bind(d.as_str());
        }
        query.execute(&mut *tx).await.map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(records)
    }

    async fn tag_infos(&self, repository: &RepoName) -> Result<Vec<TagInfo>, MetadataError> {
        let Some(id) = existing_repository_id(&self.reads, repository).await? else { return Ok(Vec::new()) };
        let rows = sqlx::query(
            "SELECT t.name, t.manifest_digest, t.updated_at, t.pulled_at, m.pulled_at FROM tags t \
             JOIN manifests m ON m.repository_id = t.repository_id AND m.digest = t.manifest_digest \
             WHERE t.repository_id = $1 ORDER BY t.name",
        )
        .bind(id)
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let (tag, manifest): (Option<i64>, Option<i64>) = (column(r, 3)?, column(r, 4)?);
                Ok(TagInfo {
                    name: column(r, 0)?,
                    digest: digest_column(r, 1)?,
                    pushed_at: column(r, 2)?,
                    pulled_at: tag.max(manifest),
                })
            })
            .collect()
    }

    async fn remove_tag(&self, lease: &Lease, repository: &RepoName, tag: &TagInfo) -> Result<bool, MetadataError> {
        let mut tx = self.begin().await?;
        fence(&mut tx, lease).await?;
        let done = sqlx::query(
            "DELETE FROM tags WHERE name = $2 AND manifest_digest = $3 AND updated_at = $4 \
             AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository.as_str())
        .bind(&tag.name)
        .bind(tag.digest.as_str())
        .bind(tag.pushed_at)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn tags_of(&self, repository: &RepoName, digest: &Digest) -> Result<Vec<Tag>, MetadataError> {
        let rows = sqlx::query(
            "SELECT t.name FROM tags t JOIN repositories r ON r.id = t.repository_id \
             WHERE r.name = $1 AND t.manifest_digest = $2 ORDER BY t.name",
        )
        .bind(repository.as_str())
        .bind(digest.as_str())
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let name: String = column(r, 0)?;
                name.parse().map_err(|e| MetadataError::Other(format!("stored tag {name:?}: {e}")))
            })
            .collect()
    }

    async fn tag_checked_at(&self, repository: &RepoName, tag: &Tag) -> Result<Option<i64>, MetadataError> {
        let row = sqlx::query(
            "SELECT t.checked_at FROM tags t JOIN repositories r ON r.id = t.repository_id \
             WHERE r.name = $1 AND t.name = $2",
        )
        .bind(repository.as_str())
        .bind(tag.as_str())
        .fetch_optional(&self.reads)
        .await
        .map_err(db_error)?;
        match row {
            Some(r) => column::<Option<i64>>(&r, 0),
            None => Ok(None),
        }
    }

    async fn mark_tag_checked(&self, repository: &RepoName, tag: &Tag, at: i64) -> Result<(), MetadataError> {
        sqlx::query(
            "UPDATE tags SET checked_at = $3 WHERE name = $2 \
             AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository.as_str())
        .bind(tag.as_str())
        .bind(at)
        .execute(&self.writes)
        .await
        .map_err(db_error)?;
        Ok(())
    }

    async fn record_pulls(&self, pulls: &[(RepoName, Reference, SystemTime)]) -> Result<(), MetadataError> {
        for batch in pulls.chunks(200) {
            let mut tx = self.begin().await?;
            for (repository, reference, at) in batch {
                let (sql, key) = match reference {
                    Reference::Tag(tag) => (
                        "UPDATE tags SET pulled_at = $3 WHERE name = $2 \
                         AND repository_id = (SELECT id FROM repositories WHERE name = $1) \
                         AND (pulled_at IS NULL OR pulled_at < $3)",
                        tag.as_str(),
                    ),
                    Reference::Digest(digest) => (
                        "UPDATE manifests SET pulled_at = $3 WHERE digest = $2 \
                         AND repository_id = (SELECT id FROM repositories WHERE name = $1) \
                         AND (pulled_at IS NULL OR pulled_at < $3)",
                        digest.as_str(),
                    ),
                };
                sqlx::query(sql)
                    .bind(repository.as_str())
                    .bind(key)
                    .bind(millis(*at))
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)?;
        }
        Ok(())
    }

    async fn sync_quotas(&self, quotas: &[(String, u64)]) -> Result<(), MetadataError> {
        for (namespace, limit) in quotas {
            let mut tx = self.begin().await?;
            sqlx::query(
                "INSERT INTO namespace_usage (namespace, limit_bytes, bytes) VALUES ($1, $2, 0) \
                 ON CONFLICT (namespace) DO UPDATE SET limit_bytes = excluded.limit_bytes",
            )
            .bind(namespace)
            .bind(*limit as i64)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            if self.dialect == Dialect::Postgres {
                sqlx::query("SELECT 1 FROM namespace_usage WHERE namespace = $1 FOR UPDATE")
                    .bind(namespace)
                    .execute(&mut *tx)
                    .await
                    .map_err(db_error)?;
            }
            for sql in [
                "DELETE FROM namespace_blobs WHERE namespace = $1",
                "INSERT INTO namespace_blobs (namespace, digest, size) \
                 SELECT $1, b.digest, b.size FROM blobs b WHERE b.digest IN (SELECT rb.digest FROM repository_blobs rb \
                     JOIN repositories r ON r.id = rb.repository_id \
                     WHERE r.name = $1 OR substr(r.name, 1, length($1) + 1) = $1 || '/')",
                "UPDATE namespace_usage SET bytes = (SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) \
                     FROM namespace_blobs WHERE namespace = $1) WHERE namespace = $1",
            ] {
                sqlx::query(sql).bind(namespace).execute(&mut *tx).await.map_err(db_error)?;
            }
            tx.commit().await.map_err(db_error)?;
        }
        let rows =
            sqlx::query("SELECT namespace FROM namespace_usage").fetch_all(&self.reads).await.map_err(db_error)?;
        for row in &rows {
            let namespace: String = column(row, 0)?;
            if !quotas.iter().any(|(n, _)| *n == namespace) {
                let mut tx = self.begin().await?;
                for sql in [
                    "DELETE FROM namespace_blobs WHERE namespace = $1",
                    "DELETE FROM namespace_usage WHERE namespace = $1",
                ] {
                    sqlx::query(sql).bind(&namespace).execute(&mut *tx).await.map_err(db_error)?;
                }
                tx.commit().await.map_err(db_error)?;
            }
        }
        Ok(())
    }

    async fn usage(&self) -> Result<Vec<Usage>, MetadataError> {
        let rows = sqlx::query("SELECT namespace, bytes, limit_bytes FROM namespace_usage ORDER BY namespace")
            .fetch_all(&self.reads)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|r| Ok(Usage { namespace: column(r, 0)?, bytes: size_column(r, 1)?, limit: size_column(r, 2)? }))
            .collect()
    }

    async fn recount_usage(&self, namespace: &str) -> Result<u64, MetadataError> {
        let row = sqlx::query(
            "SELECT CAST(COALESCE(SUM(b.size), 0) AS BIGINT) FROM blobs b WHERE b.digest IN \
             (SELECT rb.digest FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
              WHERE r.name = $1 OR substr(r.name, 1, length($1) + 1) = $1 || '/')",
        )
        .bind(namespace)
        .fetch_one(&self.reads)
        .await
        .map_err(db_error)?;
        size_column(&row, 0)
    }

    async fn search_repositories(
        &self,
        filter: NameMatch<'_>,
        last: Option<&str>,
        limit: u32,
    ) -> Result<Page, MetadataError> {
        let last = last.unwrap_or("");
        let rows = match filter {
            NameMatch::All => return self.list_repositories(Some(last), limit).await,
            // Every character a name may hold sorts below `~`: the prefix's names are one range.
            NameMatch::Prefix(prefix) => sqlx::query(
                "SELECT name FROM repositories WHERE name > $1 AND name >= $2 AND name < $3 ORDER BY name LIMIT $4",
            )
            .bind(last)
            .bind(prefix)
            .bind(format!("{prefix}~"))
            .bind(limit_arg(limit)),
            NameMatch::Contains(part) => {
                let escaped: String = part
                    .chars()
                    .flat_map(|c| if matches!(c, '%' | '_' | '\\') { vec!['\\', c] } else { vec![c] })
                    .collect();
                sqlx::query(
                    "SELECT name FROM repositories WHERE name > $1 AND name LIKE $2 ESCAPE '\\' ORDER BY name LIMIT $3",
                )
                .bind(last)
                .bind(format!("%{escaped}%"))
                .bind(limit_arg(limit))
            }
        }
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        page(rows, limit)
    }

    async fn repository_summaries(&self, names: &[String]) -> Result<Vec<RepositorySummary>, MetadataError> {
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let sql = format!(
            "SELECT r.name, \
             (SELECT count(*) FROM tags t WHERE t.repository_id = r.id), \
             (SELECT CAST(coalesce(sum(b.size), 0) AS BIGINT) FROM repository_blobs rb \
              JOIN blobs b ON b.digest = rb.digest WHERE rb.repository_id = r.id), \
             (SELECT max(t.updated_at) FROM tags t WHERE t.repository_id = r.id), \
             (SELECT max(m.created_at) FROM manifests m WHERE m.repository_id = r.id) \
             FROM repositories r WHERE r.name IN ({}) ORDER BY r.name",
            placeholders(1, names.len())
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
        for name in names {
            query = query.bind(name.as_str());
        }
        let rows = query.fetch_all(&self.reads).await.map_err(db_error)?;
        rows.iter()
            .map(|r| {
                let (tagged, stored): (Option<i64>, Option<i64>) = (column(r, 3)?, column(r, 4)?);
                Ok(RepositorySummary {
                    name: column(r, 0)?,
                    tags: size_column(r, 1)?,
                    bytes: size_column(r, 2)?,
                    last_push: tagged.max(stored),
                })
            })
            .collect()
    }

    async fn namespace_size(&self, namespace: &str) -> Result<(u64, u64), MetadataError> {
        // The namespace itself, and the range of names under `namespace/` (`0` follows `/`).
        let (under, beyond) = if namespace.is_empty() {
            (String::new(), "~".to_owned())
        } else {
            (format!("{namespace}/"), format!("{namespace}0"))
        };
        let row = sqlx::query(
            "SELECT (SELECT CAST(coalesce(sum(b.size), 0) AS BIGINT) FROM blobs b WHERE b.digest IN \
             (SELECT rb.digest FROM repository_blobs rb JOIN repositories r ON r.id = rb.repository_id \
              WHERE r.name = $1 OR (r.name > $2 AND r.name < $3))), \
             (SELECT count(*) FROM repositories WHERE name = $1 OR (name > $2 AND name < $3))",
        )
        .bind(namespace)
        .bind(under)
        .bind(beyond)
        .fetch_one(&self.reads)
        .await
        .map_err(db_error)?;
        Ok((size_column(&row, 0)?, size_column(&row, 1)?))
    }

    async fn tag_page(
        &self,
        repository: &RepoName,
        order: TagOrder,
        offset: u64,
        limit: u32,
    ) -> Result<Option<Vec<TagRow>>, MetadataError> {
        let Some(id) = existing_repository_id(&self.reads, repository).await? else { return Ok(None) };
        let sql = match order {
            TagOrder::Pushed => TAG_PAGE_BY_PUSH,
            TagOrder::Name => TAG_PAGE_BY_NAME,
        };
        let rows = sqlx::query(sql)
            .bind(id)
            .bind(i64::from(limit))
            .bind(i64::try_from(offset).unwrap_or(i64::MAX))
            .fetch_all(&self.reads)
            .await
            .map_err(db_error)?;
        let tags = rows
            .iter()
            .map(|r| {
                Ok(TagRow {
                    name: column(r, 0)?,
                    digest: digest_column(r, 1)?,
                    media_type: column(r, 2)?,
                    size: size_column(r, 3)?,
                    pushed_at: column(r, 4)?,
                    payload: column(r, 5)?,
                })
            })
            .collect::<Result<Vec<_>, MetadataError>>()?;
        Ok(Some(tags))
    }

    async fn ping(&self) -> Result<(), MetadataError> {
        sqlx::query("SELECT 1").execute(&self.reads).await.map(|_| ()).map_err(db_error)
    }
}
