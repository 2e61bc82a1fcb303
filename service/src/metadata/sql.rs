//! Metadata in SQL through sqlx's `Any` driver, so that SQLite (embedded) and PostgreSQL
//! run the very same statements. The statements stick to what both understand: `$n`
//! parameters, `ON CONFLICT`, no vendor functions. Byte-order sorting comes from the
//! schema (`COLLATE "C"` on PostgreSQL; SQLite compares bytes by default).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::{Any, AnyPool, Connection, Executor, Row, Transaction};

use super::{
    BlobHolders, BlobRecord, Collectable, MetadataError, MetadataStore, NewManifest, Page, PutManifest, Referrer,
    StoredManifest,
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
const BLOB_ROW_EXCLUSIVE: (&str, &str) = with_lock!(blob_row_sql!(), "FOR UPDATE");
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
    repository: i64,
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
    let record = match blob_row(tx, lock_row, digest).await? {
        None | Some((_, true)) => return Err(MetadataError::BlobBeingRemoved(digest.clone())),
        Some((record, false)) => record,
    };
    add_link(tx, repository, digest).await?;
    Ok(record)
}

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
        let id = repository_id(&mut tx, repository).await?;
        let stored = link(&mut tx, self.locking(BLOB_ROW_SHARED), id, digest, blob).await?;
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
        let record = match blob_row(&mut tx, self.locking(BLOB_ROW_EXCLUSIVE), digest).await? {
            None => return Ok(None),
            Some((record, true)) => return Ok(Some(record)),
            Some((record, false)) => record,
        };
        // Asked again under the row lock: whatever linked or referenced the blob since it was
        // listed has committed by now, and shows.
        let cutoff = millis(cutoff);
        let still_used = sqlx::query(
            "SELECT 1 FROM blobs b WHERE b.digest = $1 AND (b.created_at >= $2 \
             OR EXISTS (SELECT 1 FROM manifest_references mr WHERE mr.target_digest = b.digest) \
             OR EXISTS (SELECT 1 FROM repository_blobs rb WHERE rb.digest = b.digest AND rb.created_at >= $2))",
        )
        .bind(digest.as_str())
        .bind(cutoff)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        if still_used.is_some() {
            return Ok(None);
        }
        sqlx::query("DELETE FROM repository_blobs WHERE digest = $1")
            .bind(digest.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query("UPDATE blobs SET deleting = $2 WHERE digest = $1")
            .bind(digest.as_str())
            .bind(now_ms())
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(record))
    }

    async fn finish_blob_removal(&self, digest: &Digest) -> Result<(), MetadataError> {
        sqlx::query("DELETE FROM blobs WHERE digest = $1 AND deleting IS NOT NULL")
            .bind(digest.as_str())
            .execute(&self.writes)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn unkept_manifests(&self, repository: &RepoName, cutoff: SystemTime) -> Result<Vec<Digest>, MetadataError> {
        let Some(id) = existing_repository_id(&self.reads, repository).await? else { return Ok(Vec::new()) };
        let cutoff = millis(cutoff);
        let rows = sqlx::query(
            "SELECT m.digest, m.subject, CAST(CASE WHEN m.created_at >= $2 \
                 OR EXISTS (SELECT 1 FROM tags t WHERE t.repository_id = m.repository_id \
                            AND t.manifest_digest = m.digest) THEN 1 ELSE 0 END AS BIGINT) \
             FROM manifests m WHERE m.repository_id = $1",
        )
        .bind(id)
        .bind(cutoff)
        .fetch_all(&self.reads)
        .await
        .map_err(db_error)?;
        let mut manifests = Vec::with_capacity(rows.len());
        for row in &rows {
            let subject: Option<String> = column(row, 1)?;
            let rooted: i64 = column(row, 2)?;
            manifests.push((digest_column(row, 0)?, subject.and_then(|s| s.parse().ok()), rooted == 1));
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
        Ok(super::unkept(&manifests, &lists))
    }

    async fn remove_unkept_manifest(
        &self,
        repository: &RepoName,
        digest: &Digest,
        cutoff: SystemTime,
    ) -> Result<bool, MetadataError> {
        let mut tx = self.begin().await?;
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
        let id = repository_id(&mut tx, to).await?;
        add_link(&mut tx, id, digest).await?;
        tx.commit().await.map_err(db_error)?;
        Ok(Some(blob))
    }

    async fn unlink_blob(&self, repository: &RepoName, digest: &Digest) -> Result<bool, MetadataError> {
        let done = sqlx::query(
            "DELETE FROM repository_blobs WHERE digest = $2 \
             AND repository_id = (SELECT id FROM repositories WHERE name = $1)",
        )
        .bind(repository.as_str())
        .bind(digest.as_str())
        .execute(&self.writes)
        .await
        .map_err(db_error)?;
        Ok(done.rows_affected() > 0)
    }

    async fn put_manifest(&self, m: &NewManifest, tags: &[Tag]) -> Result<PutManifest, MetadataError> {
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
        if !missing.is_empty() {
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
        for tag in tags {
            sqlx::query(
                "INSERT INTO tags (repository_id, name, manifest_digest, updated_at) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (repository_id, name) DO UPDATE \
                 SET manifest_digest = excluded.manifest_digest, updated_at = excluded.updated_at",
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

    async fn ping(&self) -> Result<(), MetadataError> {
        sqlx::query("SELECT 1").execute(&self.reads).await.map(|_| ()).map_err(db_error)
    }
}
