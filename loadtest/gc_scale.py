#!/usr/bin/env python3
"""The collector at scale: `berth gc` over GC_ROWS (default 1,000,000) blob rows on
PostgreSQL, 90 % of them unreferenced, the rest referenced by manifests of 100 layers each,
with blobs in S3 (moto; the unreferenced rows have no objects but a sample, so the run is
dominated by Berth and the database, not by moto writing). Prints the run's time, peak RSS,
the longest single transaction (as `berth gc` measures it), and checks the result: every
referenced row stays, every unreferenced one and its sampled object is gone.

usage: gc_scale.py BERTH_BINARY   (TEST_DATABASE_URL, TEST_S3_ENDPOINT)
"""

import os
import random
import re
import subprocess
import sys
import time

import boto3

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "service", "tests", "e2e"))
from lifecycle_seed import psql, sample_keys, seed  # noqa: E402

BERTH = os.path.abspath(sys.argv[1])
ROWS = int(os.environ.get("GC_ROWS", "1000000"))
LOOSE, KEPT = ROWS * 9 // 10, ROWS // 10
DB, S3 = os.environ["TEST_DATABASE_URL"], os.environ["TEST_S3_ENDPOINT"]


def main():
    suffix = f"{os.getpid()}{random.randrange(10**6)}"
    database, bucket = f"berth_gc_scale_{suffix}", f"berth-gc-scale-{suffix}"
    psql(DB, f"CREATE DATABASE {database}")
    url = DB.rsplit("/", 1)[0] + "/" + database
    s3 = boto3.client("s3", endpoint_url=S3, aws_access_key_id="test", aws_secret_access_key="test",
                      region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}, BERTH_STORAGE="s3", BERTH_S3_BUCKET=bucket, BERTH_S3_ENDPOINT=S3,
               BERTH_S3_FORCE_PATH_STYLE="true", BERTH_S3_ACCESS_KEY_ID="test", BERTH_S3_SECRET_ACCESS_KEY="test",
               BERTH_DATABASE_URL=url, BERTH_DATA_DIR=f"/tmp/{database}", BERTH_LOG="warn")
    subprocess.run([BERTH, "migrate"], env=env, check=True, capture_output=True)
    started = time.time()
    seed(url, LOOSE, KEPT)
    seeded = time.time() - started
    loose_keys, kept_keys = sample_keys("loose", LOOSE, 1000), sample_keys("kept", KEPT, 1000)
    for key in loose_keys + kept_keys:
        s3.put_object(Bucket=bucket, Key=key, Body=b"x")
    print(f"seeded {LOOSE} unreferenced and {KEPT} referenced blob rows in {seeded:.0f} s")
    out = subprocess.run(["/usr/bin/time", "-v", BERTH, "gc", "--grace", "1s"], env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", out.stderr).group(1)
    print(out.stdout.strip())
    print(f"peak RSS {rss / 1024:.1f} MiB, wall clock {wall}")
    [[rows]] = psql(url, "SELECT count(*) FROM blobs")
    assert int(rows) == KEPT, f"{rows} rows left, {KEPT} referenced"
    keys = set()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys.update(o["Key"] for o in page.get("Contents", []))
    assert keys == set(kept_keys), f"{len(keys & set(loose_keys))} unreferenced objects left, " \
                                   f"{len(set(kept_keys) - keys)} referenced gone"
    assert f"removed {LOOSE} unreferenced blob(s)" in out.stdout, out.stdout
    print(f"check: the {KEPT} referenced rows and their sampled objects stay; all {LOOSE} others are gone")
    psql(DB, f"DROP DATABASE {database}")


if __name__ == "__main__":
    main()
