#!/usr/bin/env python3
"""Adds a multi-platform image index to an OCI layout.

usage: make_index.py LAYOUT NEW_TAG TAG...

Each TAG names an image manifest already in the layout; the index lists them with the
platform their config declares, and is tagged NEW_TAG in index.json.
"""
import hashlib
import json
import os
import sys

layout, new_tag, tags = sys.argv[1], sys.argv[2], sys.argv[3:]


def blob_path(digest):
    algorithm, encoded = digest.split(":", 1)
    return os.path.join(layout, "blobs", algorithm, encoded)


def read_blob(digest):
    with open(blob_path(digest), "rb") as f:
        return f.read()


with open(os.path.join(layout, "index.json")) as f:
    top = json.load(f)

by_tag = {m.get("annotations", {}).get("org.opencontainers.image.ref.name"): m for m in top["manifests"]}
entries = []
for tag in tags:
    descriptor = by_tag[tag]
    manifest = json.loads(read_blob(descriptor["digest"]))
    config = json.loads(read_blob(manifest["config"]["digest"]))
    entries.append({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": descriptor["digest"],
        "size": descriptor["size"],
        "platform": {"architecture": config["architecture"], "os": config["os"]},
    })

index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": entries}).encode()
digest = "sha256:" + hashlib.sha256(index).hexdigest()
with open(blob_path(digest), "wb") as f:
    f.write(index)
top["manifests"].append({
    "mediaType": "application/vnd.oci.image.index.v1+json",
    "digest": digest,
    "size": len(index),
    "annotations": {"org.opencontainers.image.ref.name": new_tag},
})
with open(os.path.join(layout, "index.json"), "w") as f:
    json.dump(top, f)
print(digest)
