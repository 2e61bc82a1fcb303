"""Synthetic metadata for collector tests and benchmarks, written straight into Berth's
PostgreSQL schema (after `berth migrate`): blob rows nothing references (stored long ago,
linked nowhere), and blob rows that manifests reference, with S3 objects for a sample of
each so that what the collector deletes, and what it must not, can be seen in the bucket.
"""

import hashlib
import subprocess

MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def psql(url, sql):
    out = subprocess.run(["psql", "-qAtX", "-v", "ON_ERROR_STOP=1", url, "-c", sql], check=True,
                         capture_output=True, text=True)
    return [line.split("|") for line in out.stdout.splitlines() if line]


def digest_sql(prefix, i="i"):
    return f"'sha256:' || encode(sha256(('{prefix}' || {i})::text::bytea), 'hex')"


def seed(url, loose, referenced, per_manifest=100, size=1000):
    """`loose` unreferenced blob rows and `referenced` ones, `per_manifest` per manifest in
    repository `seed/ref`."""
    manifests = max(1, -(-referenced // per_manifest))
    psql(url, f"""
        INSERT INTO blobs (digest, size, created_at)
            SELECT {digest_sql('loose ')}, {size}, 0 FROM generate_series(1, {loose}) i;
        INSERT INTO repositories (name, created_at) VALUES ('seed/ref', 0);
        INSERT INTO manifests (repository_id, digest, media_type, size, payload, created_at)
            SELECT r.id, {digest_sql('manifest ', 'm')}, '{MANIFEST}', 2, '\\x7b7d'::bytea, 0
            FROM repositories r, generate_series(1, {manifests}) m WHERE r.name = 'seed/ref';
        INSERT INTO blobs (digest, size, created_at)
            SELECT {digest_sql('kept ')}, {size}, 0 FROM generate_series(1, {referenced}) i;
        INSERT INTO manifest_references (repository_id, manifest_digest, target_digest, kind)
            SELECT r.id, {digest_sql('manifest ', f'(1 + (i - 1) / {per_manifest})')}, {digest_sql('kept ')}, 'blob'
            FROM repositories r, generate_series(1, {referenced}) i WHERE r.name = 'seed/ref';
        ANALYZE;
    """)


def sample_keys(kind, count, every):
    """Object keys of every `every`-th of the `count` seeded blobs of `kind` (`loose` or `kept`),
    as the S3 store names them (content-addressed, no prefix)."""
    keys = []
    for i in range(1, count + 1, every):
        d = hashlib.sha256(f"{kind} {i}".encode()).hexdigest()
        keys.append(f"blobs/sha256/{d[:2]}/{d}")
    return keys
