#!/usr/bin/env bash
# Runs Berth's whole test suite on a fresh Debian machine: installs what is missing (Debian
# packages, PyPI tools), builds, runs the unit, integration and contract tests, then the
# real-client end-to-end script. Services the tests need are started by the tests themselves
# on 127.0.0.1 and stopped again.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)

# Debian packages: the real clients (skopeo, umoci, podman), and the servers later test
# stages run (PostgreSQL, Redis, nginx).
missing=()
for pair in skopeo:skopeo umoci:umoci podman:podman jq:jq curl:curl redis-server:redis-server nginx:nginx; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair##*:}")
done
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PyPI tools: oras (an OCI client library) and moto's S3 server.
python3 -c 'import oras.client' 2>/dev/null || pip install -q oras
command -v moto_server >/dev/null || pip install -q 'moto[server]'

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi

cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast
bash service/tests/e2e/clients.sh target/debug/berth
echo "all tests passed"
