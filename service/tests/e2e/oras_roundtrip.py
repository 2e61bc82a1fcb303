#!/usr/bin/env python3
"""oras (the PyPI OCI client) against Berth: a chunked artifact push and pull, and a
referrer attached to an image, found again through the referrers API.

usage: oras_roundtrip.py HOST:PORT SUBJECT_REPO SUBJECT_DIGEST WORKDIR
"""
import hashlib
import json
import os
import sys
import urllib.request

import oras.client
import oras.oci

registry, subject_repo, subject_digest, workdir = sys.argv[1:5]
client = oras.client.OrasClient(hostname=registry, insecure=True)


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# A 6 MiB file, pushed in 1 MiB chunks (POST, six PATCHes with Content-Range, PUT).
os.makedirs(os.path.join(workdir, "push"), exist_ok=True)
os.chdir(os.path.join(workdir, "push"))
with open("payload.bin", "wb") as f:
    f.write(os.urandom(6 << 20))
want = sha256_file("payload.bin")
response = client.push(target=f"{registry}/artifacts/blob:v1", files=["payload.bin"],
                       do_chunked=True, chunk_size=1 << 20)
assert response.status_code == 201, response.text
pulled = client.pull(target=f"{registry}/artifacts/blob:v1", outdir=os.path.join(workdir, "pull"))
assert len(pulled) == 1, pulled
got = sha256_file(pulled[0])
assert got == want, (got, want)
print(f"oras: pushed and pulled a 6 MiB artifact in 1 MiB chunks, sha256 {got[:12]} matches")

# A referrer: an artifact whose subject is the image pushed by skopeo.
with open("sbom.json", "w") as f:
    json.dump({"sbom": "example"}, f)
request = urllib.request.Request(f"http://{registry}/v2/{subject_repo}/manifests/{subject_digest}", method="HEAD")
with urllib.request.urlopen(request) as r:
    subject = oras.oci.Subject(mediaType=r.headers["Content-Type"], digest=subject_digest,
                               size=int(r.headers["Content-Length"]))
response = client.push(target=f"{registry}/{subject_repo}:sbom", files=["sbom.json:application/vnd.example.sbom+json"],
                       subject=subject, manifest_annotations={"org.example.kind": "sbom"})
assert response.status_code == 201, response.text
assert response.headers.get("OCI-Subject") == subject_digest, response.headers
with urllib.request.urlopen(f"http://{registry}/v2/{subject_repo}/referrers/{subject_digest}") as r:
    assert r.headers["Content-Type"] == "application/vnd.oci.image.index.v1+json"
    index = json.load(r)
referrers = index["manifests"]
assert len(referrers) == 1, index
assert referrers[0]["annotations"]["org.example.kind"] == "sbom", referrers
print(f"oras: referrer {referrers[0]['digest'][:19]} listed by the referrers API "
      f"(artifactType {referrers[0].get('artifactType')})")
