#!/usr/bin/env python3
"""Berth's S3 data path next to the same store used directly, with the client pattern of
issue 14: Python http.client, one PATCH with chunked transfer encoding written in 1 MiB
pieces, or 8 MiB PATCHes with Content-Range; beside it boto3's multipart upload (16 MiB
parts, 4 in flight) and GetObject, against the same bucket. Runs interleaved, medians.

usage: s3_compare.py --registry http://127.0.0.1:5000 --pid PID --endpoint URL --bucket B \
                     --key ID --secret S [--region R] [--mib 512] [--rounds 3] [--other URL]

--pid is Berth's process, for its peak and current RSS (/proc/PID/status). --other is a second
registry (distribution) measured with the same client, for the Berth / distribution column, and
--other-pid its process.
"""
import argparse
import concurrent.futures
import hashlib
import http.client
import os
import statistics
import threading
import time
import urllib.parse

import boto3
from botocore.config import Config

MIB = 1 << 20


def blob(mib):
    """A fresh blob of `mib` MiB (one random MiB with its index written over its head) and
    its sha256 digest."""
    base = bytearray(os.urandom(MIB))
    pieces = []
    h = hashlib.sha256()
    for i in range(mib):
        base[:8] = i.to_bytes(8, "little")
        piece = bytes(base)
        pieces.append(piece)
        h.update(piece)
    return pieces, "sha256:" + h.hexdigest()


def connection(url):
    u = urllib.parse.urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=600)


def request(conn, method, path, body=None, headers=None):
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    data = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def post(conn, repo):
    status, headers, _ = request(conn, "POST", f"/v2/{repo}/blobs/uploads/", headers={"Content-Length": "0"})
    assert status == 202, status
    return headers["location"]


def put(conn, location, digest):
    sep = "&" if "?" in location else "?"
    status, _, body = request(conn, "PUT", f"{location}{sep}digest={digest}", headers={"Content-Length": "0"})
    assert status == 201, (status, body)


def push_streamed(url, repo, pieces, digest):
    """POST, one PATCH with chunked transfer encoding in 1 MiB pieces, PUT."""
    conn = connection(url)
    started = time.monotonic()
    location = post(conn, repo)
    conn.putrequest("PATCH", location)
    conn.putheader("Content-Type", "application/octet-stream")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    for piece in pieces:
        conn.send(b"%x\r\n" % len(piece) + piece + b"\r\n")
    conn.send(b"0\r\n\r\n")
    r = conn.getresponse()
    body = r.read()
    assert r.status == 202, (url, location, r.status, body[:500])
    put(conn, r.getheader("Location"), digest)
    elapsed = time.monotonic() - started
    conn.close()
    return elapsed


def push_chunked(url, repo, pieces, digest, chunk_mib=8):
    """POST, one PATCH per `chunk_mib` MiB with Content-Range and Content-Length, PUT."""
    conn = connection(url)
    started = time.monotonic()
    location = post(conn, repo)
    for first in range(0, len(pieces), chunk_mib):
        body = b"".join(pieces[first:first + chunk_mib])
        start = first * MIB
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + len(body) - 1}",
            "Content-Length": str(len(body)),
        }
        status, h, _ = request(conn, "PATCH", location, body=body, headers=headers)
        assert status == 202, status
        location = h["location"]
    put(conn, location, digest)
    elapsed = time.monotonic() - started
    conn.close()
    return elapsed


def pull(url, repo, digest, size, verify=False):
    """GET of the blob, counting its bytes as the direct GET does (`verify` also hashes them,
    outside the comparison: the client's hashing would be measured too)."""
    conn = connection(url)
    started = time.monotonic()
    conn.request("GET", f"/v2/{repo}/blobs/{digest}")
    r = conn.getresponse()
    assert r.status == 200, r.status
    h, got = hashlib.sha256(), 0
    while True:
        data = r.read(MIB)
        if not data:
            break
        got += len(data)
        if verify:
            h.update(data)
    elapsed = time.monotonic() - started
    conn.close()
    assert got == size, (got, size)
    assert not verify or "sha256:" + h.hexdigest() == digest, "pulled other bytes"
    return elapsed


def concurrent_pulls(url, repo, blobs):
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(blobs)) as pool:
        list(pool.map(lambda b: pull(url, repo, b[0], b[1]), blobs))
    return time.monotonic() - started


class Direct:
    def __init__(self, args):
        self.s3 = boto3.client(
            "s3", endpoint_url=args.endpoint, aws_access_key_id=args.key, aws_secret_access_key=args.secret,
            region_name=args.region, config=Config(s3={"addressing_style": "path"}, max_pool_connections=16))
        self.bucket = args.bucket

    def push(self, key, pieces, part_mib=16, in_flight=4):
        started = time.monotonic()
        upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        parts = [b"".join(pieces[i:i + part_mib]) for i in range(0, len(pieces), part_mib)]

        def send(n):
            r = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=n, Body=parts[n - 1])
            return {"PartNumber": n, "ETag": r["ETag"]}

        with concurrent.futures.ThreadPoolExecutor(in_flight) as pool:
            done = list(pool.map(send, range(1, len(parts) + 1)))
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload,
                                          MultipartUpload={"Parts": done})
        return time.monotonic() - started

    def get(self, key, size, streams=1):
        started = time.monotonic()
        step = -(-size // streams)

        def read(i):
            r = self.s3.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={i * step}-{min(size, (i + 1) * step) - 1}")
            body, got = r["Body"], 0
            while True:
                data = body.read(MIB)
                if not data:
                    return got
                got += len(data)

        with concurrent.futures.ThreadPoolExecutor(streams) as pool:
            got = sum(pool.map(read, range(streams)))
        assert got == size, (got, size)
        return time.monotonic() - started


def reset_peak(pid):
    """Starts a new peak for VmHWM (Linux: 5 to clear_refs)."""
    if pid:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")


def rss(pid):
    """(peak, current) resident memory in MiB."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            fields[name] = value
    return int(fields["VmHWM"].split()[0]) / 1024, int(fields["VmRSS"].split()[0]) / 1024


class Cpu:
    """The whole machine's busy share while a measurement runs, from /proc/stat."""

    def __enter__(self):
        self.start = self.read()
        return self

    def __exit__(self, *_):
        end = self.read()
        busy = (end[0] - self.start[0])
        total = (end[1] - self.start[1]) or 1
        self.share = busy / total

    @staticmethod
    def read():
        with open("/proc/stat") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + values[4]
        return sum(values) - idle, sum(values)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--registry", required=True)
    p.add_argument("--other")
    p.add_argument("--pid", type=int)
    p.add_argument("--other-pid", type=int)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--bucket", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--secret", required=True)
    p.add_argument("--region", default="garage")
    p.add_argument("--mib", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--pulls-only", action="store_true", help="only pulls of one blob, round after round")
    args = p.parse_args()
    direct = Direct(args)
    registries = {"berth": args.registry}
    if args.other:
        registries["other"] = args.other
    results = {}
    cpu = {}

    def note(name, seconds, mib=args.mib):
        results.setdefault(name, []).append(mib * MIB / seconds / 1e6)

    size = args.mib * MIB
    if args.pulls_only:
        # One blob, pushed once to each, pulled round after round beside the direct GETs.
        pieces, digest = blob(args.mib)
        key = f"s3-compare/pulls-{digest[7:19]}"
        direct.push(key, pieces)
        for url in registries.values():
            push_streamed(url, "bench/pulls", pieces, digest)
        for _ in range(args.rounds):
            note("direct get, 1 stream", direct.get(key, size, 1))
            note("direct get, 4 ranged streams", direct.get(key, size, 4))
            for name, url in registries.items():
                note(f"{name} pull", pull(url, "bench/pulls", digest, size))
        args.rounds = 0
    for round_ in range(args.rounds):
        pieces, digest = blob(args.mib)
        key = f"s3-compare/{round_}-{digest[7:19]}"
        with Cpu() as c:
            note("direct push", direct.push(key, pieces))
        cpu.setdefault("direct push", []).append(c.share)
        note("direct get, 1 stream", direct.get(key, size, 1))
        note("direct get, 4 ranged streams", direct.get(key, size, 4))
        for name, url in registries.items():
            pid = args.pid if name == "berth" else args.other_pid
            reset_peak(pid)
            fresh, fresh_digest = blob(args.mib)
            with Cpu() as c:
                note(f"{name} push, streamed", push_streamed(url, "bench/streamed", fresh, fresh_digest))
            cpu.setdefault(f"{name} push, streamed", []).append(c.share)
            chunked, chunked_digest = blob(args.mib)
            note(f"{name} push, 8 MiB chunks", push_chunked(url, "bench/chunked", chunked, chunked_digest))
            if pid:
                results.setdefault(f"{name} peak RSS during the pushes, MiB", []).append(rss(pid)[0])
                reset_peak(pid)
            note(f"{name} pull", pull(url, "bench/streamed", fresh_digest, size))
            if round_ == 0:
                pull(url, "bench/chunked", chunked_digest, size, verify=True)
            small = []
            for _ in range(8):
                pieces64, digest64 = blob(64)
                push_streamed(url, "bench/small", pieces64, digest64)
                small.append((digest64, 64 * MIB))
            note(f"{name} pull 8x64 MiB concurrent", concurrent_pulls(url, "bench/small", small), 8 * 64)
            if pid:
                results.setdefault(f"{name} peak RSS during the pulls, MiB", []).append(rss(pid)[0])
                time.sleep(15)
                results.setdefault(f"{name} RSS 15 s after, MiB", []).append(rss(pid)[1])

    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"{args.mib} MiB blobs, medians of {args.rounds} rounds")
    print(f"{'figure (MB/s, or MiB for RSS)':<48} {'median':>9}")
    for name, value in med.items():
        print(f"{name:<48} {value:>9.1f}")
    for name, shares in cpu.items():
        print(f"machine CPU busy during {name}: {100 * statistics.median(shares):.0f} %")

    def ratio(a, b):
        return med[a] / med[b] if a in med and b in med else float("nan")

    print("ratios:")
    print(f"  push streamed / direct multipart:  {ratio('berth push, streamed', 'direct push'):.2f}")
    print(f"  push 8 MiB chunks / direct:        {ratio('berth push, 8 MiB chunks', 'direct push'):.2f}")
    print(f"  pull / direct single GetObject:    {ratio('berth pull', 'direct get, 1 stream'):.2f}")
    if args.other:
        print(f"  push streamed / other:             {ratio('berth push, streamed', 'other push, streamed'):.2f}")
        print(f"  push chunked / other:              {ratio('berth push, 8 MiB chunks', 'other push, 8 MiB chunks'):.2f}")
        print(f"  pull / other:                      {ratio('berth pull', 'other pull'):.2f}")
        print(f"  pull 8x64 / other:                 {ratio('berth pull 8x64 MiB concurrent', 'other pull 8x64 MiB concurrent'):.2f}")
        print(f"  peak RSS, pushes / other:          {ratio('berth peak RSS during the pushes, MiB', 'other peak RSS during the pushes, MiB'):.2f}")


if __name__ == "__main__":
    main()
