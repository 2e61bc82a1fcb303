#!/usr/bin/env python3
"""The storage lifecycle under load: 8 pushers and 2 deleters through 2 `berth serve`
replicas on PostgreSQL, Redis and S3, while each replica's collector runs every second
(retention, untagged manifests, blobs) under the lease, for RACE_SECONDS (default 30; the
acceptance run is 300). Then, once the collector has run past the grace time:

- every manifest the database holds pulls whole (manifest, then every blob it names,
  hashed; an index's manifests present);
- nothing a rule keeps is gone: the newest three tags of each `keep_last = 3` repository
  (pushed last, one by one), every `stable-*` tag (kept and immutable), and every tag of the
  repositories without a rule, unless a deleter deleted it;
- the bucket holds exactly what a mark and sweep of the manifests (their payloads parsed
  here, not Berth's reference rows) keeps, and the blob rows are exactly those;
- each quota namespace's counter equals a recount from scratch (SQL here, and `berth usage
  --recount`).

usage: lifecycle_race.py BERTH_BINARY   (TEST_DATABASE_URL, TEST_REDIS_URL, TEST_S3_ENDPOINT)
"""

import hashlib
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request

import boto3  # moto's dependency

BERTH = os.path.abspath(sys.argv[1])
SECONDS = float(os.environ.get("RACE_SECONDS", "30"))
DB_URL = os.environ["TEST_DATABASE_URL"]
REDIS = os.environ["TEST_REDIS_URL"]
S3 = os.environ["TEST_S3_ENDPOINT"]
GRACE = 1
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"

RULED = {"race/last/a": "last", "race/last/b": "last", "race/old/a": "old", "race/free/a": "free", "race/free/b": "free"}
REPOS = list(RULED)

tag_of = {}  # (repo, tag) -> digest, for every tag push that succeeded
deleted_tags = set()  # (repo, tag) a deleter removed (by tag or with its manifest)
pushed = []  # (repo, digest, tag or None)
stats = {k: 0 for k in ["images", "indexes", "referrers", "quota_refusals", "immutable_refusals",
                        "blob_unknown_retries", "unavailable_retries", "tag_deletes", "manifest_deletes"]}
lock = threading.Lock()
stop = threading.Event()


def psql(sql, database):
    url = DB_URL.rsplit("/", 1)[0] + "/" + database
    out = subprocess.run(["psql", "-qAtX", "-F", "\t", url, "-c", sql], check=True, capture_output=True, text=True)
    return [line.split("\t") for line in out.stdout.splitlines() if line]


def request(base, method, path, body=None, headers=None, ok=(200, 201, 202, 204)):
    """(status, body, headers) of one request; retries 503 a while, as clients do."""
    for attempt in range(40):
        req = urllib.request.Request(base + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read(), r.headers
        except urllib.error.HTTPError as e:
            payload = e.read()
            if e.code == 503:
                with lock:
                    stats["unavailable_retries"] += 1
                time.sleep(0.1 * (attempt + 1))
                continue
            return e.code, payload, e.headers
    raise RuntimeError(f"{method} {path}: 503 for too long")


def code(payload):
    try:
        return json.loads(payload)["errors"][0]["code"]
    except Exception:  # noqa: BLE001
        return None


class Replicas:
    def __init__(self, bases):
        self.bases = bases
        self.n = 0

    def next(self):
        with lock:
            self.n += 1
            return self.bases[self.n % len(self.bases)]


def push_blob(replicas, repo, data, chunked):
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if not chunked:
        status, payload, _ = request(replicas.next(), "POST", f"/v2/{repo}/blobs/uploads/?digest={digest}", data,
                                     {"Content-Type": "application/octet-stream"})
    else:
        status, payload, headers = request(replicas.next(), "POST", f"/v2/{repo}/blobs/uploads/", b"")
        if status == 202:
            location = headers["Location"]
            half = len(data) // 2
            for piece, start in [(data[:half], 0), (data[half:], half)]:
                status, payload, headers = request(replicas.next(), "PATCH", location, piece, {
                    "Content-Type": "application/octet-stream",
                    "Content-Range": f"{start}-{start + len(piece) - 1}"})
                if status != 202:
                    break
                location = headers["Location"]
            if status == 202:
                sep = "&" if "?" in location else "?"
                status, payload, _ = request(replicas.next(), "PUT", f"{location}{sep}digest={digest}")
    if status == 403 and code(payload) == "DENIED":
        return None
    assert status == 201, f"blob push to {repo}: {status} {payload[:300]!r}"
    return digest


def push_manifest(replicas, repo, reference, manifest, media_type):
    """Pushes by tag, or by digest when `reference` is None."""
    body = json.dumps(manifest).encode()
    digest = "sha256:" + hashlib.sha256(body).hexdigest()
    status, payload, _ = request(replicas.next(), "PUT", f"/v2/{repo}/manifests/{reference or digest}", body,
                                 {"Content-Type": media_type})
    return status, payload, digest


def push_image(replicas, rng, repo, tag, shared, worker, subject=None):
    """Pushes an image (config, a shared layer and one of its own); again from the blobs when a
    collection took a blob first. The digest, or None when a rule refused it."""
    for _ in range(20):
        config = json.dumps({"worker": worker, "tag": tag, "n": rng.random()}).encode()
        layers = [shared[rng.randrange(len(shared))], os.urandom(rng.randrange(1000, 30000))]
        digests = [push_blob(replicas, repo, config, rng.random() < 0.3)]
        digests += [push_blob(replicas, repo, layer, rng.random() < 0.5) for layer in layers]
        if None in digests:
            with lock:
                stats["quota_refusals"] += 1
            return None
        manifest = {
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": digests[0],
                       "size": len(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": len(b)}
                       for d, b in zip(digests[1:], layers)],
        }
        if subject:
            manifest["subject"] = {"mediaType": OCI_MANIFEST, "digest": subject[0], "size": subject[1]}
            manifest["artifactType"] = "application/vnd.example.signature"
        status, payload, digest = push_manifest(replicas, repo, tag, manifest, OCI_MANIFEST)
        if status == 201:
            return digest, len(json.dumps(manifest).encode())
        if status == 400 and code(payload) == "MANIFEST_BLOB_UNKNOWN":
            with lock:
                stats["blob_unknown_retries"] += 1
            continue
        if status == 403 and code(payload) == "DENIED":
            with lock:
                stats["immutable_refusals" if b"immutable" in payload else "quota_refusals"] += 1
            return None
        raise AssertionError(f"manifest push {repo}:{tag}: {status} {payload[:300]!r}")
    raise AssertionError(f"{repo}:{tag}: collected away 20 times")


def pusher(worker, replicas, shared):
    rng = random.Random(worker)
    n = 0
    while not stop.is_set():
        n += 1
        repo = rng.choice(REPOS)
        stable = rng.random() < 0.15
        tag = f"stable-{worker}-{n}" if stable else f"t-{worker}-{n}"
        image = push_image(replicas, rng, repo, tag, shared, worker)
        if image is None:
            continue
        with lock:
            stats["images"] += 1
            tag_of[(repo, tag)] = image[0]
            pushed.append((repo, image[0], tag))
        if stable and RULED[repo] != "last" and rng.random() < 0.5:
            # Moving an immutable tag is refused (where retention does not remove it: under
            # keep_last it may be gone already, and then it is a new tag).
            other = push_image(replicas, rng, repo, tag, shared, worker)
            if other is not None:
                # Only a deleter that deleted the tag meanwhile lets it be pushed anew.
                time.sleep(0.5)
                with lock:
                    assert (repo, tag) in deleted_tags, f"{repo}:{tag} moved to {other}"
                    stats["immutable_pushed_again_after_delete"] = stats.get("immutable_pushed_again_after_delete", 0) + 1
                # Deleted again, so that it ends deleted whichever delete came last.
                status, _, _ = request(replicas.next(), "DELETE", f"/v2/{repo}/manifests/{tag}")
                assert status in (202, 404), status
        if rng.random() < 0.3:
            signature = push_image(replicas, rng, repo, None, shared, worker, subject=image)
            if signature:
                with lock:
                    stats["referrers"] += 1
                    pushed.append((repo, signature[0], None))
        if rng.random() < 0.15:
            child = push_image(replicas, rng, repo, None, shared, worker)
            if child is None:
                continue
            index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": child[0], "size": child[1],
                 "platform": {"architecture": "arm64", "os": "linux"}}]}
            itag = f"i-{worker}-{n}"
            for _ in range(20):
                status, payload, digest = push_manifest(replicas, repo, itag, index, OCI_INDEX)
                if status == 400 and code(payload) == "MANIFEST_BLOB_UNKNOWN":
                    # The child was collected (untagged, past the grace time) first: push it again.
                    with lock:
                        stats["blob_unknown_retries"] += 1
                    child = push_image(replicas, rng, repo, None, shared, worker) or child
                    index["manifests"][0].update(digest=child[0], size=child[1])
                    continue
                break
            if status == 201:
                with lock:
                    stats["indexes"] += 1
                    tag_of[(repo, itag)] = digest
                    pushed.append((repo, digest, itag))


def deleter(worker, replicas):
    rng = random.Random(100 + worker)
    while not stop.is_set():
        time.sleep(0.05)
        with lock:
            if not pushed:
                continue
            repo, digest, tag = rng.choice(pushed)
            tags = [t for (r, t), d in tag_of.items() if r == repo and d == digest]
        if tag and rng.random() < 0.6:
            status, _, _ = request(replicas.next(), "DELETE", f"/v2/{repo}/manifests/{tag}", ok=())
            gone = [tag] if status == 202 else []
            kind = "tag_deletes"
        else:
            status, _, _ = request(replicas.next(), "DELETE", f"/v2/{repo}/manifests/{digest}", ok=())
            gone = tags if status == 202 else []
            kind = "manifest_deletes"
        if status == 202:
            with lock:
                stats[kind] += 1
                deleted_tags.update((repo, t) for t in gone)
        else:
            assert status in (404, 403), f"delete in {repo}: {status}"


def metric(base, name):
    _, text, _ = request(base, "GET", "/metrics")
    total = 0.0
    for line in text.decode().splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    started = time.time()
    suffix = f"{os.getpid()}{random.randrange(10**6)}"
    database, bucket, prefix = f"berth_race_{suffix}", f"berth-race-{suffix}", f"race{suffix}:"
    psql(f"CREATE DATABASE {database}", DB_URL.rsplit("/", 1)[1])
    s3 = boto3.client("s3", endpoint_url=S3, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    work = tempfile.mkdtemp(prefix="berth-race.")
    config = os.path.join(work, "berth.toml")
    with open(config, "w") as f:
        f.write(f"""gc_interval = 1
gc_grace = {GRACE}
gc_lease_ttl = 5
gc_batch = 50
pull_flush_interval = 1

[[retention]]
repositories = "race/last/*"
keep_last = 3

[[retention]]
repositories = "race/old/*"
keep_tags = "stable-.*"
remove_older_than = "4s"
remove_untagged_older_than = "4s"

[[immutable]]
repositories = "race/**"
tags = "stable-.*"

[[quota]]
namespace = "race"
limit = "4GB"

[[quota]]
namespace = "race/last"
limit = "1.2MB"
""")
    db_url = DB_URL.rsplit("/", 1)[0] + "/" + database
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}, BERTH_STORAGE="s3", BERTH_S3_BUCKET=bucket, BERTH_S3_ENDPOINT=S3,
               BERTH_S3_FORCE_PATH_STYLE="true", BERTH_S3_ACCESS_KEY_ID="test", BERTH_S3_SECRET_ACCESS_KEY="test",
               BERTH_DATABASE_URL=db_url, BERTH_REDIS_URL=REDIS, BERTH_REDIS_PREFIX=prefix, BERTH_CONFIG=config,
               BERTH_WORKERS="2")
    procs, bases, logs = [], [], []
    for i in range(2):
        port = free_port()
        log = open(os.path.join(work, f"replica{i}.log"), "w")
        logs.append(log.name)
        procs.append(subprocess.Popen([BERTH, "serve"], env=dict(env, BERTH_LISTEN=f"127.0.0.1:{port}",
                                                                    BERTH_DATA_DIR=os.path.join(work, f"d{i}")),
                                      stdout=log, stderr=log))
        bases.append(f"http://127.0.0.1:{port}")
    try:
        for base in bases:
            wait(base)
        run(bases, s3, bucket, database, env, started)
    except BaseException:
        for name in logs:
            print(f"--- last lines of {name} ---")
            print("".join(open(name).readlines()[-40:]))
        raise
    finally:
        stop.set()
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait()


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait(base):
    for _ in range(200):
        try:
            urllib.request.urlopen(base + "/readyz", timeout=1)
            return
        except Exception:  # noqa: BLE001
            time.sleep(0.1)
    raise RuntimeError(f"{base} did not become ready")


def run(bases, s3, bucket, database, env, started):
    replicas = Replicas(bases)
    rng = random.Random(7)
    shared = [bytes(rng.randrange(256) for _ in range(rng.randrange(20_000, 200_000))) for _ in range(6)]
    threads = [threading.Thread(target=pusher, args=(w, replicas, shared)) for w in range(8)]
    threads += [threading.Thread(target=deleter, args=(w, replicas)) for w in range(2)]
    errors = []

    def guard(target):
        def run_guarded(*args):
            try:
                target(*args)
            except BaseException as e:  # noqa: BLE001
                errors.append(e)
                stop.set()
        return run_guarded

    for t in threads:
        t._target = guard(t._target)
        t.start()
    deadline = time.time() + SECONDS
    while time.time() < deadline and not stop.is_set():
        time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    runs_during = sum(metric(b, 'berth_gc_runs_total{result="ok"}') for b in bases)
    # The newest three of each keep_last repository, pushed one after another.
    final = {}
    for repo in [r for r, rule in RULED.items() if rule == "last"]:
        for k in range(3):
            time.sleep(0.01)
            tag = f"final-{k}"
            image = None
            while image is None:
                image = push_image(replicas, rng, repo, tag, shared, 99)
                if image is None:  # the namespace was full: free it as retention does, and again
                    time.sleep(1)
            tag_of[(repo, tag)] = image[0]
            final.setdefault(repo, []).append(tag)
    # Settle: past the grace time and retention's ages, and two more runs.
    runs = sum(metric(b, 'berth_gc_runs_total{result="ok"}') for b in bases)
    time.sleep(GRACE + 5)
    for _ in range(100):
        if sum(metric(b, 'berth_gc_runs_total{result="ok"}') for b in bases) >= runs + 2:
            break
        time.sleep(0.2)
    check(bases, s3, bucket, database, env, final)
    removed = sum(metric(b, "berth_gc_removed_blobs_total") for b in bases)
    removed_tags = sum(metric(b, "berth_gc_removed_tags_total") for b in bases)
    removed_manifests = sum(metric(b, "berth_gc_removed_manifests_total") for b in bases)
    lost = sum(metric(b, 'berth_gc_runs_total{result="lost"}') for b in bases)
    failed = sum(metric(b, 'berth_gc_runs_total{result="error"}') for b in bases)
    per_replica = [metric(b, 'berth_gc_runs_total{result="ok"}') for b in bases]
    print(f"race: {SECONDS:.0f} s of load, {time.time() - started:.0f} s in all; {stats}")
    print(f"collector: {runs_during:.0f} runs during the load, per replica now {per_replica}, lost {lost:.0f}, "
          f"failed {failed:.0f}; removed {removed_tags:.0f} tags, {removed_manifests:.0f} manifests, "
          f"{removed:.0f} blobs")


def check(bases, s3, bucket, database, env, final):
    base = bases[0]
    rows = psql("SELECT r.name, m.digest, m.media_type, encode(m.payload, 'hex') FROM manifests m "
                "JOIN repositories r ON r.id = m.repository_id", database)
    referenced = set()
    pulled_blobs = set()
    for repo, digest, media_type, payload in rows:
        body = bytes.fromhex(payload)
        status, got, _ = request(base, "GET", f"/v2/{repo}/manifests/{digest}",
                                 headers={"Accept": f"{OCI_MANIFEST}, {OCI_INDEX}"})
        assert status == 200 and got == body, f"{repo}@{digest}: {status}"
        manifest = json.loads(body)
        if media_type == OCI_INDEX:
            for child in manifest["manifests"]:
                status, _, _ = request(base, "HEAD", f"/v2/{repo}/manifests/{child['digest']}")
                assert status == 200, f"{repo}@{digest} lists {child['digest']}: {status}"
            continue
        for d in [manifest["config"]] + manifest["layers"]:
            referenced.add(d["digest"])
            if (repo, d["digest"]) in pulled_blobs:
                continue
            pulled_blobs.add((repo, d["digest"]))
            status, blob, _ = request(base, "GET", f"/v2/{repo}/blobs/{d['digest']}")
            assert status == 200, f"{repo}@{digest}: blob {d['digest']}: {status}"
            assert "sha256:" + hashlib.sha256(blob).hexdigest() == d["digest"] and len(blob) == d["size"]
    print(f"check: {len(rows)} manifests pull whole ({len(pulled_blobs)} blob pulls)")

    tags = {(r, t): d for r, t, d in psql(
        "SELECT r.name, t.name, t.manifest_digest FROM tags t JOIN repositories r ON r.id = t.repository_id", database)}
    for repo, rule in RULED.items():
        remaining = {t for (r, t) in tags if r == repo}
        expected_stable = {t for (r, t) in tag_of if r == repo and t.startswith("stable-")
                           and (r, t) not in deleted_tags}
        if rule == "last":
            assert remaining == set(final[repo]), f"{repo}: {sorted(remaining)} instead of the newest three"
        elif rule == "old":
            assert remaining == expected_stable, f"{repo}: {sorted(remaining ^ expected_stable)} differ"
        else:
            expected = {t for (r, t) in tag_of if r == repo and (r, t) not in deleted_tags}
            assert remaining == expected, (f"{repo}: there but not expected {sorted(remaining - expected)}, "
                                           f"expected but gone {sorted(expected - remaining)}")
        if rule != "last":
            assert expected_stable <= remaining, f"{repo}: kept stable tags gone"
        for t in remaining:
            assert tags[(repo, t)] == tag_of[(repo, t)], f"{repo}:{t} moved"
    print(f"check: every tag a rule keeps is there ({len(tags)} tags)")

    # Mark (the manifests' own payloads) and sweep (the bucket, the blob rows).
    blob_rows = {d: loc for d, loc in psql("SELECT digest, COALESCE(location, '') FROM blobs", database)}
    assert set(blob_rows) == referenced, \
        f"blob rows: {len(set(blob_rows) - referenced)} unreferenced, {len(referenced - set(blob_rows))} missing"
    expected_keys = {loc or f"blobs/sha256/{d[7:9]}/{d[7:]}" for d, loc in blob_rows.items()}
    keys, uploads = set(), 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if obj["Key"].startswith("uploads/"):
                uploads += 1
            else:
                keys.add(obj["Key"])
    assert keys == expected_keys, f"bucket: {len(keys - expected_keys)} extra, {len(expected_keys - keys)} missing"
    print(f"check: the bucket holds exactly the {len(keys)} blobs a mark and sweep keeps "
          f"({uploads} objects of uploads in progress aside)")

    for namespace, counted in psql("SELECT namespace, bytes FROM namespace_usage", database):
        [[recount]] = psql(
            "SELECT COALESCE(SUM(b.size), 0) FROM blobs b WHERE b.digest IN (SELECT rb.digest FROM repository_blobs rb "
            f"JOIN repositories r ON r.id = rb.repository_id WHERE r.name = '{namespace}' "
            f"OR r.name LIKE '{namespace}/%')", database)
        assert counted == recount, f"{namespace}: counted {counted}, recounted {recount}"
        print(f"check: quota {namespace}: {counted} bytes, the same counted from scratch")
    out = subprocess.run([BERTH, "usage", "--recount"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    print(out.stdout.strip())


if __name__ == "__main__":
    main()
