#!/usr/bin/env python3
"""oras (PyPI) against Berth with authentication on: alice logs in and pushes and pulls an
artifact; bob logs in, pulls it, and is refused a push.

usage: oras_auth.py HOST:PORT WORKDIR MODE     (MODE: basic or token, oras's auth backend)
"""
import hashlib
import os
import sys

import oras.client

registry, workdir, mode = sys.argv[1:4]
os.makedirs(workdir, exist_ok=True)
os.chdir(workdir)
with open("artifact.txt", "wb") as f:
    f.write(os.urandom(100_000))
want = hashlib.sha256(open("artifact.txt", "rb").read()).hexdigest()

alice = oras.client.OrasClient(hostname=registry, insecure=True, auth_backend=mode)
alice.login(username="alice", password="alice-secret", hostname=registry, tls_verify=False)
response = alice.push(target=f"{registry}/team/artifact:v1", files=["artifact.txt"])
assert response.status_code == 201, response.text

bob = oras.client.OrasClient(hostname=registry, insecure=True, auth_backend=mode)
bob.login(username="bob", password="bob-secret", hostname=registry, tls_verify=False)
pulled = bob.pull(target=f"{registry}/team/artifact:v1", outdir="pulled")
assert hashlib.sha256(open(pulled[0], "rb").read()).hexdigest() == want
try:
    response = bob.push(target=f"{registry}/team/bob-artifact:v1", files=["artifact.txt"])
    refused = response.status_code >= 400
except Exception as error:  # oras raises on a refused upload
    refused = True
    response = error
assert refused, f"bob pushed: {response}"
print(f"ok: {mode} mode, oras: alice logged in and pushed, bob logged in and pulled; bob's push refused")
