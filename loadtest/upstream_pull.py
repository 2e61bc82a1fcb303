#!/usr/bin/env python3
"""Pull-through cache throughput: a 512 MiB layer pulled from the upstream directly, through
Berth cold (fetched from upstream while it streams to the client and is stored), and through
Berth warm (from its cache), each as a ratio to the direct pull, in the same run.

Both registries are `berth serve` on loopback with the embedded default (filesystem, SQLite);
the upstream has no authentication. ROUNDS (default 3) distinct layers, each pulled the three
ways in turn; prints each pull and the medians.

With LINK_MIBPS=N, the upstream is reached through a TCP proxy that passes at most N MiB/s
each way (an upstream across a network link), for the direct and the cold pulls alike.

usage: upstream_pull.py BERTH_BINARY   [MIB=512] [ROUNDS=3] [LINK_MIBPS=100]
"""

import hashlib
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import asyncio

BERTH = os.path.abspath(sys.argv[1])
MIB = int(os.environ.get("MIB", "512"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
BLOCK = 1 << 20


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def serve(data, port, extra):
    env = dict({k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}, BERTH_DATA_DIR=data,
               BERTH_LISTEN=f"127.0.0.1:{port}", BERTH_LOG="warn", BERTH_GC_INTERVAL="0", **extra)
    process = subprocess.Popen([BERTH, "serve"], env=env)
    for _ in range(200):
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", "/v2/")
            if c.getresponse().status == 200:
                return process
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"berth on {port} did not start")


def layer(seed):
    """MIB MiB of bytes that differ per seed, as blocks; and their digest."""
    block = hashlib.sha256(seed.encode()).digest() * (BLOCK // 32)
    digest = hashlib.sha256()
    for i in range(MIB):
        digest.update(block[:-8] + i.to_bytes(8, "big"))
    return (lambda: (block[:-8] + i.to_bytes(8, "big") for i in range(MIB))), "sha256:" + digest.hexdigest()


def push(port, repo, seed):
    blocks, digest = layer(seed)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.putrequest("POST", f"/v2/{repo}/blobs/uploads/?digest={digest}")
    c.putheader("Content-Length", str(MIB * BLOCK))
    c.putheader("Content-Type", "application/octet-stream")
    c.endheaders()
    for b in blocks():
        c.send(b)
    r = c.getresponse()
    assert r.status == 201, (r.status, r.read())
    config = json.dumps({"architecture": "amd64", "os": "linux", "seed": seed}).encode()
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("POST", f"/v2/{repo}/blobs/uploads/?digest={config_digest}", body=config,
              headers={"Content-Type": "application/octet-stream"})
    assert c.getresponse().status == 201
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest, "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": MIB * BLOCK}],
    }).encode()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("PUT", f"/v2/{repo}/manifests/{seed}", body=manifest,
              headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"})
    assert c.getresponse().status == 201
    return digest


def pull(port, repo, digest, tag):
    """Seconds to pull the layer (after its manifest, as a client does); checks its length."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("GET", f"/v2/{repo}/manifests/{tag}", headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
    r = c.getresponse()
    r.read()
    assert r.status == 200, r.status
    started = time.perf_counter()
    c.request("GET", f"/v2/{repo}/blobs/{digest}")
    r = c.getresponse()
    assert r.status == 200, r.status
    read = 0
    while True:
        piece = r.read(BLOCK)
        if not piece:
            break
        read += len(piece)
    elapsed = time.perf_counter() - started
    assert read == MIB * BLOCK, f"read {read} bytes"
    return elapsed


def links(port):
    """Blobs the registry has recorded so far (its link_blob operations)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    c.request("GET", "/metrics")
    text = c.getresponse().read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("berth_metadata_operation_duration_seconds_count{")
               and 'operation="link_blob"' in line)


def stored(port, before):
    """Waits until the registry has recorded one more blob than `before`."""
    for _ in range(1200):
        if links(port) > before:
            return
        time.sleep(0.05)
    raise SystemExit("the cold pull's blob was never stored")


def throttled_proxy(target_port, mibps):
    """A TCP proxy on a free port to 127.0.0.1:target_port passing at most `mibps` MiB/s per
    direction and connection; returns its port."""
    port = free_port()
    rate = mibps * BLOCK

    async def pipe(reader, writer):
        # Each piece takes the time the link needs for it; idle time earns no credit (a kept-alive
        # connection gets no burst).
        try:
            while True:
                started = time.perf_counter()
                data = await reader.read(256 << 10)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                ahead = len(data) / rate - (time.perf_counter() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer):
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", target_port)
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    async def run():
        server = await asyncio.start_server(handle, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    threading.Thread(target=lambda: asyncio.run(run()), daemon=True).start()
    time.sleep(0.3)
    return port


def main():
    with tempfile.TemporaryDirectory(prefix="berth-upstream-bench-") as work:
        up_port, cache_port = free_port(), free_port()
        os.makedirs(f"{work}/up")
        os.makedirs(f"{work}/cache")
        upstream = serve(f"{work}/up", up_port, {})
        link = os.environ.get("LINK_MIBPS")
        # Where the upstream is pulled from, directly and by the cache.
        via = throttled_proxy(up_port, int(link)) if link else up_port
        if link:
            print(f"the upstream is reached through a link of {link} MiB/s")
        with open(f"{work}/berth.toml", "w") as f:
            f.write(f'[[upstream]]\nname = "up"\nurl = "http://127.0.0.1:{via}"\nttl = "1h"\n')
        cache = serve(f"{work}/cache", cache_port, {"BERTH_CONFIG": f"{work}/berth.toml"})
        try:
            times = {"direct": [], "cold": [], "warm": []}
            for i in range(ROUNDS):
                seed = f"round{i}"
                digest = push(up_port, "bench/app", seed)
                times["direct"].append(pull(via, "bench/app", digest, seed))
                before = links(cache_port)
                times["cold"].append(pull(cache_port, "up/bench/app", digest, seed))
                # The cold pull's client has every byte a moment before the store has checked
                # and recorded the blob: the warm pull starts once it has.
                stored(cache_port, before)
                times["warm"].append(pull(cache_port, "up/bench/app", digest, seed))
                print(f"round {i}: " + ", ".join(f"{k} {MIB / v[-1]:.0f} MiB/s" for k, v in times.items()))
            direct = statistics.median(times["direct"])
            for kind in ("direct", "cold", "warm"):
                median = statistics.median(times[kind])
                print(f"{kind:6} median {median:6.2f} s  {MIB / median:6.0f} MiB/s  ratio to direct {direct / median:.2f}")
        finally:
            for p in (cache, upstream):
                p.terminate()
                p.wait()


if __name__ == "__main__":
    main()
