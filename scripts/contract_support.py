"""What the chart and Terraform contract tests share: the test's own backends, a small image, and
skopeo pushing and pulling it."""

import gzip
import hashlib
import io
import json
import os
import re
import socket
import subprocess
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Backends:
    """The test's own PostgreSQL, Redis and S3: a database, a key prefix and a bucket per set."""

    def __init__(self):
        self.database = os.environ["TEST_DATABASE_URL"]
        self.redis = os.environ["TEST_REDIS_URL"]
        self.s3 = os.environ["TEST_S3_ENDPOINT"]
        self.count = 0

    def fresh(self):
        self.count += 1
        tag = f"contract{os.getpid()}x{self.count}"
        subprocess.run(["psql", "-q", self.database, "-c", f"CREATE DATABASE {tag}"], check=True)
        request = urllib.request.Request(f"{self.s3}/{tag}", method="PUT")
        urllib.request.urlopen(request).close()
        base = self.database.rsplit("/", 1)[0]
        return {"database": f"{base}/{tag}", "redis": self.redis, "prefix": f"{tag}:", "bucket": tag, "s3": self.s3}


def wait_http(url, timeout=30):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status
        except urllib.error.HTTPError as e:
            last = e.code
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200: {last}")


def oci_layout(directory):
    """A small image: one layer with one file, as an OCI layout skopeo reads."""
    blobs = Path(directory) / "blobs" / "sha256"
    blobs.mkdir(parents=True)

    def blob(data):
        digest = hashlib.sha256(data).hexdigest()
        (blobs / digest).write_bytes(data)
        return {"digest": f"sha256:{digest}", "size": len(data)}

    content = os.urandom(64 * 1024)
    tar_bytes = io.BytesIO()
    with tarfile.open(fileobj=tar_bytes, mode="w") as tar:
        info = tarfile.TarInfo("hello.bin")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    layer_tar = tar_bytes.getvalue()
    layer = blob(gzip.compress(layer_tar, mtime=0))
    config = blob(json.dumps({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_tar).hexdigest()]},
    }).encode())
    manifest = blob(json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **config},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", **layer}],
    }).encode())
    (Path(directory) / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (Path(directory) / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", **manifest,
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    }))
    return manifest["digest"]


def skopeo(*args):
    out = subprocess.run(["skopeo", "--insecure-policy", *args], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, f"skopeo {' '.join(args)}: {out.stderr}"
    return out.stdout


def push_and_pull(registry, work, user=None, password=None):
    """Pushes a small image with skopeo and pulls it back; returns its manifest digest."""
    layout = Path(work) / "image"
    digest = oci_layout(layout)
    creds = [] if user is None else ["--dest-creds", f"{user}:{password}"]
    skopeo("copy", "--dest-tls-verify=false", *creds, f"oci:{layout}:v1", f"docker://{registry}/contract/hello:v1")
    src_creds = [] if user is None else ["--src-creds", f"{user}:{password}"]
    back = Path(work) / "back"
    skopeo("copy", "--src-tls-verify=false", *src_creds, f"docker://{registry}/contract/hello:v1", f"oci:{back}:v1")
    pulled = json.loads((back / "index.json").read_text())["manifests"][0]["digest"]
    assert pulled == digest, f"pulled {pulled}, pushed {digest}"
    return digest


class Berth:
    """The real binary started with a rendered command and environment, its output kept."""

    def __init__(self, command, env, work):
        self.log = open(Path(work) / "berth.log", "w+")
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def probe(self, url, what):
        """The status of url once it answers 200; fails with berth's output if it never does."""
        try:
            return wait_http(url)
        except AssertionError:
            self.log.seek(0)
            raise AssertionError(f"{what}: berth exited {self.process.poll()}: {self.log.read()[-3000:]}")

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


def htpasswd(binary, user, password):
    """An htpasswd file's text with one user, made by berth user add."""
    with tempfile.TemporaryDirectory() as d:
        env = {"PATH": os.environ["PATH"], "BERTH_HTPASSWD": f"{d}/htpasswd"}
        subprocess.run([binary, "user", "add", user], input=password + "\n", env=env, check=True,
                       capture_output=True, text=True)
        return Path(f"{d}/htpasswd").read_text()


def token_key_pem():
    """A P-256 token signing key, PEM."""
    return subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
                          check=True, capture_output=True, text=True).stdout


def local_setting(value, paths, ports):
    """A setting as a process on this host needs it: a path under one of `paths`' prefixes
    (the longest that matches) moved to its local directory, and an address on one of `ports`'
    ports (`0.0.0.0:5000`) moved to the local port it maps to (`127.0.0.1:54321`)."""
    for prefix, directory in sorted(paths.items(), key=lambda p: -len(p[0])):
        if value == prefix or value.startswith(prefix + "/"):
            value = str(directory) + value[len(prefix):]
            break
    for remote, local in ports.items():
        value = re.sub(rf"^(0\.0\.0\.0|127\.0\.0\.1|\[::\]):{remote}$", f"127.0.0.1:{local}", value)
    return value


def ui_check(base, user, password):
    """The web UI the chart turns on: its catalog answers, and (with users) the sign-in form
    takes the chart's user and shows the pushed repository."""
    class Stay(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None
    opener = urllib.request.build_opener(Stay)
    catalog = opener.open(f"{base}/ui/", timeout=10)
    assert catalog.status == 200, f"/ui/ answered {catalog.status}"
    if user is None:
        return "web UI /ui/: 200"
    form = urllib.parse.urlencode({"user": user, "password": password}).encode()
    request = urllib.request.Request(f"{base}/ui/login", data=form, headers={"Origin": base})
    try:
        opener.open(request, timeout=10)
        raise AssertionError("the sign-in form did not redirect")
    except urllib.error.HTTPError as e:
        assert e.code == 303, f"sign-in answered {e.code}: {e.read()[:300]!r}"
        cookie = e.headers["Set-Cookie"].split(";")[0]
    page = opener.open(urllib.request.Request(f"{base}/ui/", headers={"Cookie": cookie}), timeout=10).read().decode()
    assert f">{user}<" in page and "/ui/r/" in page, "signed in, the catalog shows the user and a repository"
    return f"web UI /ui/: 200; {user} signs in through the form and sees the pushed repository"
