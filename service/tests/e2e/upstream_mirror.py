#!/usr/bin/env python3
"""containerd pulling through Berth set as its mirror, for two upstream registries at once.

    python3 service/tests/e2e/upstream_mirror.py BERTH_BINARY

Two upstreams, each a `berth serve` in token mode with a user Berth signs in as, get an image
pushed with skopeo. A third `berth serve` caches both (`[[upstream]]`). A containerd of its own
(no CRI plugin) gets a `hosts.toml` per upstream host naming Berth as the mirror, and `ctr`
pulls and unpacks each image by the upstream's name: containerd sends `?ns=<host>` and Berth
picks the upstream by it. Then both upstreams are stopped, containerd's content is removed,
and the same pulls succeed again: they can only have come from Berth's cache.
"""

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "scripts"))
from contract_support import Berth, free_port, htpasswd, push_and_pull  # noqa: E402

BINARY = os.path.abspath(sys.argv[1])
PASSWORD = "mirror-password"


def serve(work, name, env):
    directory = Path(work) / name
    directory.mkdir()
    port = free_port()
    base = {"PATH": os.environ["PATH"], "BERTH_LISTEN": f"127.0.0.1:{port}", "BERTH_DATA_DIR": str(directory),
            "BERTH_GC_INTERVAL": "0", "BERTH_LOG": "info"}
    berth = Berth([BINARY, "serve"], dict(base, **env), directory)
    berth.probe(f"http://127.0.0.1:{port}/healthz", name)
    return berth, port


def upstream(work, name):
    users = Path(work) / f"{name}.htpasswd"
    users.write_text(htpasswd(BINARY, "mirror", PASSWORD))
    port = free_port()
    env = {"BERTH_AUTH": "token", "BERTH_HTPASSWD": str(users), "BERTH_EXTERNAL_URL": f"http://127.0.0.1:{port}"}
    directory = Path(work) / name
    directory.mkdir()
    base = {"PATH": os.environ["PATH"], "BERTH_LISTEN": f"127.0.0.1:{port}", "BERTH_DATA_DIR": str(directory),
            "BERTH_GC_INTERVAL": "0"}
    berth = Berth([BINARY, "serve"], dict(base, **env), directory)
    berth.probe(f"http://127.0.0.1:{port}/healthz", name)
    digest = push_and_pull(f"127.0.0.1:{port}", directory, "mirror", PASSWORD)
    return berth, port, digest


def containerd(work):
    state = f"/tmp/ctd-mirror.{os.getpid()}"  # short: a unix socket's path has a length limit
    config = Path(work) / "containerd.toml"
    config.write_text(f'version = 2\nroot = "{work}/containerd"\nstate = "{state}"\n'
                      f'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n[grpc]\n  address = "{state}/containerd.sock"\n')
    log = open(Path(work) / "containerd.log", "w")
    process = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    ctr = ["ctr", "--address", f"{state}/containerd.sock", "--namespace", "mirror"]
    for _ in range(100):
        if subprocess.run([*ctr, "version"], capture_output=True).returncode == 0:
            return process, ctr, state
        time.sleep(0.1)
    raise AssertionError(f"containerd did not start: {(Path(work) / 'containerd.log').read_text()[-2000:]}")


def pull(ctr, hosts, reference):
    out = subprocess.run([*ctr, "images", "pull", "--hosts-dir", str(hosts), reference],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"ctr pull {reference}: {out.stdout[-1500:]}{out.stderr[-1500:]}"
    listed = subprocess.run([*ctr, "images", "ls", "-q"], capture_output=True, text=True, check=True).stdout.split()
    assert reference in listed, f"{reference} not in {listed}"


def metric(port, name, **labels):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def main():
    with tempfile.TemporaryDirectory(prefix="berth-mirror-") as work:
        first, first_port, first_digest = upstream(work, "first")
        second, second_port, second_digest = upstream(work, "second")
        config = Path(work) / "berth.toml"
        config.write_text("".join(
            f'[[upstream]]\nname = "{name}"\nurl = "http://127.0.0.1:{port}"\nusername = "mirror"\n'
            f'password = "{PASSWORD}"\nttl = "1h"\n\n'
            for name, port in (("first", first_port), ("second", second_port))))
        cache, cache_port = serve(work, "cache", {"BERTH_CONFIG": str(config)})
        hosts = Path(work) / "hosts"
        for port in (first_port, second_port):
            directory = hosts / f"127.0.0.1:{port}"
            directory.mkdir(parents=True)
            (directory / "hosts.toml").write_text(
                f'server = "http://127.0.0.1:{port}"\n\n[host."http://127.0.0.1:{cache_port}"]\n'
                f'  capabilities = ["pull", "resolve"]\n')
        process, ctr, state = containerd(work)
        try:
            references = [f"127.0.0.1:{first_port}/contract/hello:v1", f"127.0.0.1:{second_port}/contract/hello:v1"]
            for reference in references:
                pull(ctr, hosts, reference)
            misses = {name: metric(cache_port, "berth_upstream_cache_total", upstream=name, result="miss")
                      for name in ("first", "second")}
            assert all(m >= 2 for m in misses.values()), f"each upstream's image came through the cache: {misses}"
            print(f"ok: ctr pulled an image of each of two upstreams through Berth as their mirror "
                  f"(cache misses per upstream: {misses})")
            # The upstreams go away; what containerd pulls now can only come from the cache.
            first.__exit__()
            second.__exit__()
            for reference in references:
                subprocess.run([*ctr, "images", "rm", reference], capture_output=True, check=True)
            subprocess.run([*ctr, "content", "prune", "references"], capture_output=True)
            leases = subprocess.run([*ctr, "content", "ls", "-q"], capture_output=True, text=True).stdout.split()
            for digest in (first_digest, second_digest):
                assert digest not in leases, f"containerd still holds {digest}"
            for reference in references:
                pull(ctr, hosts, reference)
            hits = {name: metric(cache_port, "berth_upstream_cache_total", upstream=name, result="hit")
                    for name in ("first", "second")}
            assert all(h >= 2 for h in hits.values()), f"served from the cache: {hits}"
            print(f"ok: with both upstreams stopped, ctr pulled both images again from Berth's cache (hits: {hits})")
        finally:
            process.terminate()
            process.wait(timeout=30)
            shutil.rmtree(state, ignore_errors=True)
            cache.__exit__()
            for b in (first, second):
                if b.process.poll() is None:
                    b.__exit__()


if __name__ == "__main__":
    main()
