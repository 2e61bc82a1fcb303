#!/usr/bin/env python3
"""The web UI's pages at scale: server time of the catalog page over 100,000 repositories
(first page, a later page, a prefix search and a substring search that matches one name) and
of a repository page with 10,000 tags (by push time and by name, first and last page), on
PostgreSQL with blobs on the filesystem.

One image is pushed through the API; the rest is seeded in SQL (the same manifest in every
repository, and 10,000 tags on it in one repository), so that the run measures the pages, not
the seeding. Each page is asked for REQUESTS times (default 20) after one warm-up; prints the
median and the slowest, in milliseconds.

usage: ui_pages.py BERTH_BINARY   (TEST_DATABASE_URL)
"""

import hashlib
import http.client
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "service", "tests", "e2e"))
from lifecycle_seed import psql  # noqa: E402

BERTH = os.path.abspath(sys.argv[1])
REPOSITORIES = int(os.environ.get("UI_REPOSITORIES", "100000"))
TAGS = int(os.environ.get("UI_TAGS", "10000"))
REQUESTS = int(os.environ.get("REQUESTS", "20"))
DB = os.environ["TEST_DATABASE_URL"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


def push_image(port, repo):
    config = json.dumps({"created": "2026-12-01T00:00:00Z", "architecture": "amd64", "os": "linux",
                         "config": {"Cmd": ["/bin/sh"]}}).encode()
    layer = os.urandom(4096)
    descriptors = []
    for blob, media_type in [(config, "application/vnd.oci.image.config.v1+json"),
                             (layer, "application/vnd.oci.image.layer.v1.tar+gzip")]:
        digest = "sha256:" + hashlib.sha256(blob).hexdigest()
        response, _ = request(port, "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", blob,
                              {"Content-Type": "application/octet-stream"})
        assert response.status == 201, response.status
        descriptors.append({"mediaType": media_type, "digest": digest, "size": len(blob)})
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": descriptors[0], "layers": descriptors[1:]}).encode()
    response, _ = request(port, "PUT", f"/v2/{repo}/manifests/seed", manifest,
                          {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert response.status == 201, response.status


def seed(url, repositories, tags):
    psql(url, f"""
        INSERT INTO repositories (name, created_at)
            SELECT 'bench/r' || lpad(i::text, 6, '0'), 0 FROM generate_series(1, {repositories}) i;
        INSERT INTO repository_blobs (repository_id, digest, created_at)
            SELECT r.id, rb.digest, 0 FROM repositories r, repository_blobs rb
            WHERE r.name LIKE 'bench/%' AND rb.repository_id = (SELECT id FROM repositories WHERE name = 'big/repo');
        INSERT INTO manifests (repository_id, digest, media_type, artifact_type, subject, annotations, size, payload, created_at)
            SELECT r.id, m.digest, m.media_type, m.artifact_type, m.subject, m.annotations, m.size, m.payload, m.created_at
            FROM repositories r, manifests m
            WHERE r.name LIKE 'bench/%' AND m.repository_id = (SELECT id FROM repositories WHERE name = 'big/repo');
        INSERT INTO tags (repository_id, name, manifest_digest, updated_at)
            SELECT m.repository_id, 'latest', m.digest, 1000 FROM manifests m
            JOIN repositories r ON r.id = m.repository_id WHERE r.name LIKE 'bench/%';
        INSERT INTO tags (repository_id, name, manifest_digest, updated_at)
            SELECT m.repository_id, 'v' || lpad(i::text, 5, '0'), m.digest, i FROM manifests m, generate_series(1, {tags}) i
            WHERE m.repository_id = (SELECT id FROM repositories WHERE name = 'big/repo');
        ANALYZE;
    """)


def timed(port, path, expect):
    response, body = request(port, "GET", path)
    assert response.status == 200 and expect.encode() in body, (path, response.status, body[:300])
    times = []
    for _ in range(REQUESTS):
        start = time.perf_counter()
        response, body = request(port, "GET", path)
        times.append((time.perf_counter() - start) * 1000)
        assert response.status == 200
    return statistics.median(times), max(times), len(body)


def main():
    database = f"berth_ui_bench_{os.getpid()}{random.randrange(10**6)}"
    psql(DB, f"CREATE DATABASE {database}")
    url = DB.rsplit("/", 1)[0] + "/" + database
    data = tempfile.mkdtemp(prefix="berth-ui-bench-")
    port = free_port()
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("BERTH_")},
               BERTH_DATABASE_URL=url, BERTH_DATA_DIR=data, BERTH_LISTEN=f"127.0.0.1:{port}", BERTH_LOG="warn")
    # The collector off: the second run's retention rule is only shown, never applied.
    env["BERTH_GC_INTERVAL"] = "0"

    def serve(extra):
        server = subprocess.Popen([BERTH, "serve"], env=dict(env, **extra))
        for _ in range(100):
            try:
                if request(port, "GET", "/readyz")[0].status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        return server

    server = serve({})
    try:
        push_image(port, "big/repo")
        started = time.perf_counter()
        seed(url, REPOSITORIES, TAGS)
        print(f"seeded {REPOSITORIES} repositories and {TAGS} tags in {time.perf_counter() - started:.1f} s")
        last_page = (TAGS + 1 + 49) // 50
        pages = [
            ("catalog, first page", "/ui/", "bench/r000001"),
            ("catalog, page after bench/r050000", "/ui/?after=bench%2Fr050000", "bench/r050001"),
            ("catalog, prefix bench/r0999", "/ui/?q=bench%2Fr0999&match=prefix", "bench/r099901"),
            ("catalog, substring r099999 (one match)", "/ui/?q=r099999", "bench/r099999"),
            (f"repository, {TAGS} tags, by push, page 1", "/ui/r/big/repo", f"v{TAGS:05d}"),
            (f"repository, {TAGS} tags, by push, page {last_page}", f"/ui/r/big/repo?page={last_page}", "v00001"),
            (f"repository, {TAGS} tags, by name, page 1", "/ui/r/big/repo?sort=name", "v00001"),
        ]
        print(f"{'page':48} {'median ms':>10} {'max ms':>8} {'bytes':>8}")
        for label, path, expect in pages:
            median, slowest, size = timed(port, path, expect)
            print(f"{label:48} {median:10.1f} {slowest:8.1f} {size:8}")
        # Again with a [[retention]] rule on the repository: its page marks the tags the rule
        # would remove, which reads every tag of the repository.
        server.terminate()
        server.wait()
        config = os.path.join(data, "berth.toml")
        with open(config, "w") as f:
            f.write('[[retention]]\nrepositories = "big/**"\nkeep_last = 100\n')
        server = serve({"BERTH_CONFIG": config})
        for label, path, expect in pages[4:]:
            median, slowest, size = timed(port, path, expect)
            print(f"{label + ', retention marks':48} {median:10.1f} {slowest:8.1f} {size:8}")
    finally:
        server.terminate()
        server.wait()
        subprocess.run(["rm", "-rf", data], check=False)
        psql(DB, f"DROP DATABASE {database}")


if __name__ == "__main__":
    main()
