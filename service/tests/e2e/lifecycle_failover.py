#!/usr/bin/env python3
"""The collector's lease fails over: two `berth serve` replicas on PostgreSQL, Redis and S3,
FAILOVER_LOOSE (default 40000) blob rows nothing references and 5000 that a manifest does
(with S3 objects for a sample of each), and a real image pushed over HTTP. The replica that
takes the lease is SIGKILLed in the middle of its run; the other must take over within the
lease's time (well within one interval) and finish. Afterwards nothing referenced is gone,
every unreferenced row and sampled object is, the survivor removed exactly the rows left at
the kill (no removal counted twice, none missed), and the image pulls whole.

usage: lifecycle_failover.py BERTH_BINARY   (TEST_DATABASE_URL, TEST_REDIS_URL, TEST_S3_ENDPOINT)
"""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import boto3

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from lifecycle_seed import psql, sample_keys, seed  # noqa: E402

BERTH = os.path.abspath(sys.argv[1])
LOOSE = int(os.environ.get("FAILOVER_LOOSE", "40000"))
KEPT = 5000
INTERVAL, TTL = 60, 4
DB = os.environ["TEST_DATABASE_URL"]
S3 = os.environ["TEST_S3_ENDPOINT"]


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def get(url, data=None, method="GET", headers=None):
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, r.read()


def metric(base, name):
    try:
        _, text = get(base + "/metrics")
    except Exception:  # noqa: BLE001 (a killed replica)
        return None
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.decode().splitlines() if line.startswith(name))


def push_image(base, repo):
    blobs = [json.dumps({"os": "linux", "n": random.random()}).encode(), os.urandom(200_000)]
    digests = []
    for blob in blobs:
        d = "sha256:" + hashlib.sha256(blob).hexdigest()
        status, _ = get(f"{base}/v2/{repo}/blobs/uploads/?digest={d}", blob, "POST",
                        {"Content-Type": "application/octet-stream"})
        assert status == 201
        digests.append(d)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": digests[0], "size": len(blobs[0])},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": digests[1], "size": len(blobs[1])}]}).encode()
    status, _ = get(f"{base}/v2/{repo}/manifests/v1", manifest, "PUT",
                    {"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert status == 201
    return digests, blobs


def main():
    suffix = f"{os.getpid()}{random.randrange(10**6)}"
    database, bucket = f"berth_failover_{suffix}", f"berth-failover-{suffix}"
    psql(DB, f"CREATE DATABASE {database}")
    url = DB.rsplit("/", 1)[0] + "/" + database
    s3 = boto3.client("s3", endpoint_url=S3, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    work = tempfile.mkdtemp(prefix="berth-failover.")
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}, BERTH_STORAGE="s3", BERTH_S3_BUCKET=bucket, BERTH_S3_ENDPOINT=S3,
               BERTH_S3_FORCE_PATH_STYLE="true", BERTH_S3_ACCESS_KEY_ID="test", BERTH_S3_SECRET_ACCESS_KEY="test",
               BERTH_DATABASE_URL=url, BERTH_REDIS_URL=os.environ["TEST_REDIS_URL"], BERTH_REDIS_PREFIX=f"fo{suffix}:",
               BERTH_GC_INTERVAL=str(INTERVAL), BERTH_GC_LEASE_TTL=str(TTL), BERTH_GC_GRACE="1",
               BERTH_GC_BATCH="100", BERTH_WORKERS="2")
    subprocess.run([BERTH, "migrate"], env=env, check=True, capture_output=True)
    seed(url, LOOSE, KEPT)
    loose_keys, kept_keys = sample_keys("loose", LOOSE, 100), sample_keys("kept", KEPT, 50)
    for key in loose_keys + kept_keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 1000)
    # The collector must not start before the image is in: the lease's schedule says not yet.
    psql(url, f"UPDATE leases SET next_run_at = {int(time.time() * 1000) + 3_000_000}")
    procs, bases = [], []
    for i in range(2):
        port = free_port()
        log = open(os.path.join(work, f"replica{i}.log"), "w")
        procs.append(subprocess.Popen([BERTH, "serve"], env=dict(env, BERTH_LISTEN=f"127.0.0.1:{port}",
                                                                    BERTH_DATA_DIR=os.path.join(work, f"d{i}")),
                                      stdout=log, stderr=log))
        bases.append(f"http://127.0.0.1:{port}")
    try:
        for base in bases:
            for _ in range(100):
                try:
                    get(base + "/readyz")
                    break
                except Exception:  # noqa: BLE001
                    time.sleep(0.1)
        digests, blobs = push_image(bases[0], "fo/app")
        time.sleep(1.5)  # past the grace time: only the manifest keeps the image's blobs now
        psql(url, "UPDATE leases SET next_run_at = 0")
        run(bases, procs, url, s3, bucket, loose_keys, kept_keys, digests, blobs)
    except BaseException:
        for i in range(2):
            print(f"--- last lines of replica{i}.log ---")
            print("".join(open(os.path.join(work, f"replica{i}.log")).readlines()[-30:]))
        raise
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()


def run(bases, procs, url, s3, bucket, loose_keys, kept_keys, digests, blobs):
    finishes = 'berth_metadata_operation_duration_seconds_count{backend="postgres",operation="finish_blob_removals"}'
    holder = None
    deadline = time.time() + 60
    while holder is None and time.time() < deadline:
        for i, base in enumerate(bases):
            if metric(base, "berth_gc_lease_held") == 1 and (metric(base, finishes) or 0) >= 20:
                holder = i
        time.sleep(0.05)
    assert holder is not None, "no replica got far into a run"
    procs[holder].send_signal(signal.SIGKILL)
    procs[holder].wait()
    killed_at = time.time()
    [[left]] = psql(url, "SELECT count(*) FROM blobs WHERE digest LIKE 'sha256:%'")
    survivor = bases[1 - holder]
    taken = None
    while time.time() < killed_at + INTERVAL:
        if metric(survivor, "berth_gc_lease_held") == 1:
            taken = time.time() - killed_at
            break
        time.sleep(0.05)
    assert taken is not None, f"the survivor did not take the lease within one interval ({INTERVAL} s)"
    for _ in range(600):
        if metric(survivor, 'berth_gc_runs_total{result="ok"}') >= 1:
            break
        time.sleep(0.1)
    removed = metric(survivor, "berth_gc_removed_blobs_total")
    [[rows]] = psql(url, "SELECT count(*) FROM blobs")
    [[kept]] = psql(url, "SELECT count(*) FROM blobs WHERE digest IN (SELECT target_digest FROM manifest_references)")
    assert int(rows) == KEPT + 2 == int(kept), f"{rows} blob rows left, {kept} of them referenced"
    # Rows left at the kill, less what stays, is what the survivor removed: each once.
    assert int(removed) == int(left) - KEPT - 2, f"survivor removed {removed}, {left} rows were left at the kill"
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(o["Key"] for o in page.get("Contents", []))
    assert not keys & set(loose_keys), f"{len(keys & set(loose_keys))} unreferenced objects left"
    assert set(kept_keys) <= keys, f"{len(set(kept_keys) - keys)} referenced objects gone"
    for d, blob in zip(digests, blobs):
        status, got = get(f"{survivor}/v2/fo/app/blobs/{d}")
        assert status == 200 and got == blob
    print(f"failover: SIGKILL of replica {holder} mid-run with {left} blob rows left of {LOOSE + KEPT + 2}; "
          f"the survivor held the lease {taken:.1f} s later (lease {TTL} s, interval {INTERVAL} s) and removed "
          f"the {int(removed)} rows left, each once; {KEPT + 2} referenced rows and all {len(kept_keys)} sampled "
          f"referenced objects stay, none of the {len(loose_keys)} sampled unreferenced objects does")


if __name__ == "__main__":
    main()
