-- Storage lifecycle: the collector's lease, pull times for retention, and quota usage.
-- Keep in step with migrations/postgres.

-- One row per lease (`gc`). `token` grows by one at every acquisition: each transaction of a
-- run checks it, so a holder whose lease was taken over can no longer change anything.
-- `next_run_at` makes one schedule for all replicas.
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    token BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    next_run_at BIGINT NOT NULL
);
INSERT INTO leases (name, holder, token, expires_at, next_run_at) VALUES ('gc', '', 0, 0, 0);

-- Last pull, flushed from each replica's memory now and then (not written per pull).
ALTER TABLE tags ADD COLUMN pulled_at BIGINT;
ALTER TABLE manifests ADD COLUMN pulled_at BIGINT;

-- Quota namespaces (repository prefixes) being counted, with their limit and usage: the
-- bytes of the distinct blobs linked under them, kept exact by the transactions that link
-- and unlink, which lock the namespace's row.
CREATE TABLE namespace_usage (
    namespace TEXT PRIMARY KEY,
    limit_bytes BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);
CREATE TABLE namespace_blobs (
    namespace TEXT NOT NULL REFERENCES namespace_usage (namespace) ON DELETE CASCADE,
    digest TEXT NOT NULL,
    size BIGINT NOT NULL,
    PRIMARY KEY (namespace, digest)
);
CREATE INDEX namespace_blobs_by_digest ON namespace_blobs (digest);
