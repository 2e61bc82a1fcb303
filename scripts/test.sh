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

# PyPI tools: oras (an OCI client library) and moto's S3 server. moto is pinned: 5.2 answers
# CompleteMultipartUpload with an XML root the AWS SDKs refuse.
python3 -c 'import oras.client' 2>/dev/null || pip install -q oras
moto_version=5.1.22
python3 -c "import moto, sys; sys.exit(moto.__version__ != '$moto_version')" 2>/dev/null ||
    pip install -q "moto[server]==$moto_version"

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
started=()
stop_services() { for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap stop_services EXIT
wait_for() { # URL
    for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "service at $1 did not start" >&2; return 1
}

# S3 for the tests: moto, in memory, on a free port of 127.0.0.1. Each test makes its own bucket.
moto_port=$(free_port)
moto_server -H 127.0.0.1 -p "$moto_port" >"${TMPDIR:-/tmp}/berth-test-moto.log" 2>&1 &
started+=($!)
export TEST_S3_ENDPOINT=http://127.0.0.1:$moto_port
wait_for "$TEST_S3_ENDPOINT"

cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast

echo "--- real clients, embedded default (filesystem, SQLite) ---"
bash service/tests/e2e/clients.sh target/debug/berth

echo "--- real clients, blobs in S3 (moto), redirects on ---"
bucket=berth-e2e-$RANDOM$RANDOM
curl -fsS -X PUT "$TEST_S3_ENDPOINT/$bucket" >/dev/null
BERTH_STORAGE=s3 BERTH_S3_BUCKET=$bucket BERTH_S3_ENDPOINT=$TEST_S3_ENDPOINT BERTH_S3_FORCE_PATH_STYLE=true \
    BERTH_S3_ACCESS_KEY_ID=test BERTH_S3_SECRET_ACCESS_KEY=test BERTH_S3_PART_SIZE=5242880 E2E_BIG_MIB=64 \
    bash service/tests/e2e/clients.sh target/debug/berth
echo "all tests passed"
