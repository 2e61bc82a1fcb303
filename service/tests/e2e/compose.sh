#!/usr/bin/env bash
# The container image and the compose deployments, driven with the docker client as the
# self-hosting tutorial drives registry:2:
#
#   1. the image, built from the Dockerfile around the binary cargo built (no image registry is
#      reachable here, so the base images are made with debootstrap); non-root, healthy;
#   2. compose.yaml (Berth behind nginx with TLS), in Basic and in token mode: docker login,
#      build, push, a push to a second repository (mounted), rmi, pull, logout, an anonymous
#      pull refused;
#   3. deploy/compose/scaled.yaml (three replicas, PostgreSQL, Redis, S3): a 100 MiB layer
#      pushed while the replica receiving it is killed, then pulled back whole;
#   4. with the same engine, lifecycle_clients.sh: docker's and skopeo's view of an immutable
#      tag moved and of a push past a quota.
#
# With BERTH_E2E_BENCH_MIB=512 it also times docker push and pull of a layer that size through
# nginx and straight to Berth's port (a figure, not a check; not in the test command).
#
# usage: compose.sh BERTH_BINARY
# With no Docker engine reachable it installs Debian's docker.io and docker-compose, starts a
# dockerd of its own (its own data root, exec root and socket, storage driver vfs) and stops it
# afterwards. Base and stand-in images are kept between runs (in the engine, and the Debian
# root as a tarball under $BERTH_E2E_CACHE, default ~/.cache/berth-e2e, which also holds the
# own dockerd's data root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../../.." && pwd)
binary=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
cache=${BERTH_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/berth-e2e}
run=$(mktemp -d /tmp/berth-compose.XXXXXX)
sudo=()
[ "$(id -u)" = 0 ] || sudo=(sudo)
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }
quiet() { # COMMAND...: its output only when it fails (the legacy builder warns on every build)
    local log=$run/quiet.log
    "$@" >"$log" 2>&1 || { cat "$log" >&2; fail "$*"; }
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }

projects=() certs_dirs=() containers=() dockerd_pid=
cleanup() {
    set +e
    for container in "${containers[@]}"; do docker rm -f "$container" >/dev/null 2>&1; done
    for project in "${projects[@]}"; do
        (cd "$project" && compose down -v --remove-orphans >/dev/null 2>&1)
    done
    for dir in "${certs_dirs[@]}"; do "${sudo[@]}" rm -rf "$dir"; done
    if [ -n "$dockerd_pid" ]; then
        "${sudo[@]}" kill "$dockerd_pid"
        wait "$dockerd_pid" 2>/dev/null
    fi
    "${sudo[@]}" rm -rf "$run"
}
trap cleanup EXIT

# --- a Docker engine -------------------------------------------------------------------
if ! docker info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null; then
        echo "installing Debian packages: docker.io docker-compose"
        "${sudo[@]}" apt-get update -qq
        DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq docker.io docker-compose >/dev/null
    fi
    # Its images (the base and the stand-ins) stay in the cache for the next run.
    mkdir -p "$run/docker" "$cache/docker-data"
    # A configuration of its own, not the machine's /etc/docker/daemon.json; the bridge takes
    # the MTU of the host's way out, or containers cannot fetch packages over a smaller one.
    uplink=$(ip -o route get 1.1.1.1 2>/dev/null | sed -n 's/.* dev \([^ ]*\).*/\1/p')
    mtu=$(cat "/sys/class/net/${uplink:-none}/mtu" 2>/dev/null || echo 1500)
    echo "{\"mtu\": $mtu}" >"$run/docker/daemon.json"
    "${sudo[@]}" dockerd --config-file "$run/docker/daemon.json" --data-root "$cache/docker-data" \
        --exec-root "$run/docker/exec" \
        --host "unix://$run/docker/docker.sock" --pidfile "$run/docker/docker.pid" --storage-driver vfs \
        >"$run/docker/dockerd.log" 2>&1 &
    dockerd_pid=$!
    export DOCKER_HOST=unix://$run/docker/docker.sock
    for _ in $(seq 100); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
    docker info >/dev/null 2>&1 || { cat "$run/docker/dockerd.log" >&2; fail "dockerd did not start"; }
    "${sudo[@]}" chmod 666 "$run/docker/docker.sock"
    ok "started a dockerd of its own (vfs)"
fi
export DOCKER_CONFIG=$run/docker-config
export DOCKER_BUILDKIT=0
mkdir -p "$DOCKER_CONFIG"

# --- base and stand-in images ----------------------------------------------------------
base=berth-e2e/debian:bookworm
if ! docker image inspect "$base" >/dev/null 2>&1; then
    if [ ! -s "$cache/debian-bookworm-minbase.tar" ]; then
        command -v debootstrap >/dev/null || {
            "${sudo[@]}" apt-get update -qq
            DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq debootstrap >/dev/null
        }
        mkdir -p "$cache"
        "${sudo[@]}" debootstrap --variant=minbase bookworm "$run/rootfs" http://deb.debian.org/debian >/dev/null
        "${sudo[@]}" tar -C "$run/rootfs" -cf "$cache/debian-bookworm-minbase.tar" .
        "${sudo[@]}" rm -rf "$run/rootfs"
    fi
    docker import "$cache/debian-bookworm-minbase.tar" "$base" >/dev/null
fi
ok "base image $base (Debian bookworm from debootstrap)"
# Stand-ins for the images the compose files name; rebuilt when their directory changes.
stand_in() { # NAME
    local dir=$here/images/$1 sum
    sum=$(cd "$dir" && cat ./* | sha256sum | cut -c1-12)
    local tag=berth-e2e/$1:$sum
    if ! docker image inspect "$tag" >/dev/null 2>&1; then
        cp -r "$dir" "$run/image-$1"
        [ "$1" = minio ] && cp /etc/ssl/certs/ca-certificates.crt "$run/image-$1/"
        quiet docker build -q --build-arg "BASE=$base" -t "$tag" "$run/image-$1"
    fi
    echo "$tag"
}
export NGINX_IMAGE POSTGRES_IMAGE REDIS_IMAGE MINIO_IMAGE MC_IMAGE
NGINX_IMAGE=$(stand_in nginx) POSTGRES_IMAGE=$(stand_in postgres) REDIS_IMAGE=$(stand_in redis)
MINIO_IMAGE=$(stand_in minio) MC_IMAGE=$(stand_in mc)
ok "stand-in images for nginx, postgres, redis, minio and mc (see images/README.md)"

# --- the Berth image -------------------------------------------------------------------
mkdir -p "$run/image" && cp "$binary" "$run/image/berth"
export BERTH_IMAGE=berth-e2e/berth:test
quiet docker build -q -f "$repo/Dockerfile" --build-arg "BUILD_IMAGE=$base" --build-arg "RUNTIME_IMAGE=$base" \
    --build-arg PREBUILT=berth -t "$BERTH_IMAGE" "$run/image"
user=$(docker image inspect -f '{{.Config.User}}' "$BERTH_IMAGE")
[ "$user" = 10001:10001 ] || fail "the image runs as '$user'"
[ "$(docker run --rm --entrypoint id "$BERTH_IMAGE" -u)" = 10001 ] || fail "the image's process is not uid 10001"
health=$(docker image inspect -f '{{json .Config.Healthcheck.Test}}' "$BERTH_IMAGE")
[ "$health" = '["CMD","berth","healthcheck"]' ] || fail "health check: $health"
size=$(docker image inspect -f '{{.Size}}' "$BERTH_IMAGE")
started=$(date +%s.%N)
container=$(docker run -d "$BERTH_IMAGE")
containers+=("$container")
for _ in $(seq 150); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$container")" = healthy ] && break
    docker exec "$container" berth healthcheck >/dev/null 2>&1 && ready_at=${ready_at:-$(date +%s.%N)}
    sleep 0.2
done
[ "$(docker inspect -f '{{.State.Health.Status}}' "$container")" = healthy ] || fail "the container never became healthy"
ready=$(python3 -c "print(f'{${ready_at:-$(date +%s.%N)} - $started:.2f}')")
docker rm -f "$container" >/dev/null
ok "image $BERTH_IMAGE: $((size / 1000000)) MB, runs as uid 10001, healthy by 'berth healthcheck' (ready ${ready} s after start)"

# --- a deployment of one of the compose files, in a directory of its own -----------------
# The registry's host name: this host as the containers' bridge reaches it, so that the daemon
# (on this host) and nginx (in a container) agree on it.
gateway=$(docker network inspect bridge -f '{{(index .IPAM.Config 0).Gateway}}')
[ -n "$gateway" ] || gateway=$(ip -4 -o addr show docker0 | awk '{print $4}' | cut -d/ -f1)
[ -n "$gateway" ] || fail "no address of this host on the docker bridge"
project() { # NAME COMPOSE_FILE: a directory of its own for a deployment, in $dir
    dir=$run/$1
    mkdir -p "$dir"
    echo "$2" >"$dir/.file"
    projects+=("$dir")
}
add_user() { # AUTH_DIR: busy/bee in its htpasswd, with berth itself (htpasswd -Bbn busy bee works too)
    echo bee | docker run --rm -i --user "$(id -u)" -e BERTH_HTPASSWD=/auth/htpasswd -v "$1:/auth" \
        "$BERTH_IMAGE" user add busy >/dev/null
}
compose() { # ARGS...: docker-compose on the deployment in this directory (.file: its files, one a line)
    local files=() file
    while read -r file; do files+=(-f "$file"); done <.file
    docker-compose -p "$(basename "$PWD")" "${files[@]}" "$@"
}
trust() { # HOST:PORT CERT: what the README says, for this daemon
    "${sudo[@]}" mkdir -p "/etc/docker/certs.d/$1"
    "${sudo[@]}" cp "$2" "/etc/docker/certs.d/$1/ca.crt"
    certs_dirs+=("/etc/docker/certs.d/$1")
}
wait_ready() { # URL CA: seconds until it answers 200
    local started=$(date +%s.%N)
    for _ in $(seq 300); do
        curl -fsS --cacert "$2" -o /dev/null "$1" 2>/dev/null && { python3 -c "print(f'{$(date +%s.%N) - $started:.1f}')"; return; }
        sleep 0.2
    done
    compose logs --tail 30 >&2
    fail "$1 did not answer"
}
hello() { # DIR: a small image of the test's own, built FROM scratch
    mkdir -p "$1"
    echo "hello from berth $RANDOM$RANDOM" >"$1/hello.txt"
    printf 'FROM scratch\nCOPY hello.txt /hello.txt\n' >"$1/Dockerfile"
}
contents() { # IMAGE FILE: the file's bytes in the image
    local c
    c=$(docker create "$1" /none)
    docker cp "$c:$2" - | tar -xO
    docker rm "$c" >/dev/null
}

# --- compose.yaml: the tutorial, in Basic and token mode ---------------------------------
project single compose.yaml
cp "$repo/compose.yaml" "$dir/"
mkdir -p "$dir/deploy/compose" && cp "$repo/deploy/compose/nginx.conf" "$repo/deploy/compose/self-signed.sh" "$dir/deploy/compose/"
cd "$dir"
export HTTPS_PORT HTTP_PORT REGISTRY_HOST
HTTPS_PORT=$(free_port) HTTP_PORT=$(free_port)
REGISTRY_HOST=$gateway:$HTTPS_PORT
deploy/compose/self-signed.sh "$REGISTRY_HOST" >/dev/null
mkdir -p deploy/compose/auth
add_user "$dir/deploy/compose/auth"
trust "$REGISTRY_HOST" deploy/compose/certs/fullchain.pem
image=$REGISTRY_HOST/pliutau/hello-world:v0
for mode in basic token; do
    BERTH_AUTH=$mode compose up -d >/dev/null 2>&1
    took=$(wait_ready "https://$REGISTRY_HOST/readyz" deploy/compose/certs/fullchain.pem)
    echo "  $mode mode: /readyz through nginx answered 200 ${took} s after 'docker-compose up'"
    echo bee | docker login -u busy --password-stdin "$REGISTRY_HOST" >/dev/null
    hello "$run/hello-$mode"
    quiet docker build -q -t "$image" "$run/hello-$mode"
    docker push "$image" >"$run/push-$mode.log"
    grep -q "v0: digest: sha256:" "$run/push-$mode.log" || fail "$mode: docker push: $(cat "$run/push-$mode.log")"
    docker tag "$image" "$REGISTRY_HOST/pliutau/hello-again:v0"
    docker push "$REGISTRY_HOST/pliutau/hello-again:v0" >"$run/mount-$mode.log"
    grep -q "Mounted from pliutau/hello-world" "$run/mount-$mode.log" || fail "$mode: not mounted: $(cat "$run/mount-$mode.log")"
    docker rmi "$image" "$REGISTRY_HOST/pliutau/hello-again:v0" >/dev/null
    docker pull -q "$image" >/dev/null
    [ "$(contents "$image" /hello.txt)" = "$(cat "$run/hello-$mode/hello.txt")" ] || fail "$mode: pulled another image"
    docker rmi "$image" >/dev/null
    docker logout "$REGISTRY_HOST" >/dev/null
    if refused=$(docker pull "$image" 2>&1); then fail "$mode: anonymous pull worked"; fi
    ok "compose.yaml, $mode mode, as the tutorial: docker login, build, push ($(grep -o 'digest: sha256:[0-9a-f]\{12\}' "$run/push-$mode.log")), push to another repository (Mounted from pliutau/hello-world), rmi, pull; after logout: $(echo "$refused" | tail -1)"
    if [ "$mode" = token ]; then
        # The backup and restore of docs/tutorials/compose.md, into a deployment started afresh.
        volume=$(basename "$PWD")_berth-data
        compose stop berth >/dev/null 2>&1
        docker run --rm --user 0 --entrypoint tar -v "$volume:/data" -v "$PWD:/backup" \
            "$BERTH_IMAGE" -czf /backup/berth-data.tgz -C /data .
        tar -tzf berth-data.tgz >"$run/backup.list"
        grep -q '^./berth.db$' "$run/backup.list" || fail "the backup has no berth.db: $(head "$run/backup.list")"
        compose down -v >/dev/null 2>&1
        docker run --rm --user 0 --entrypoint tar -v "$volume:/data" -v "$PWD:/backup" \
            "$BERTH_IMAGE" -xzf /backup/berth-data.tgz -C /data
        compose up -d >/dev/null 2>&1
        wait_ready "https://$REGISTRY_HOST/readyz" deploy/compose/certs/fullchain.pem >/dev/null
        echo bee | docker login -u busy --password-stdin "$REGISTRY_HOST" >/dev/null 2>&1
        docker pull -q "$REGISTRY_HOST/pliutau/hello-again:v0" >/dev/null
        [ "$(contents "$REGISTRY_HOST/pliutau/hello-again:v0" /hello.txt)" = "$(cat "$run/hello-$mode/hello.txt")" ] ||
            fail "the restored registry serves another image"
        docker rmi "$REGISTRY_HOST/pliutau/hello-again:v0" >/dev/null
        docker logout "$REGISTRY_HOST" >/dev/null
        ok "the tutorial's backup ($(grep -c '^./blobs/.*/.*/.' "$run/backup.list") blob files and berth.db), restored into a new volume: the image pulls back"
    fi
    compose down -v >/dev/null 2>&1
done

# --- figures: a large layer through nginx and straight to Berth (BERTH_E2E_BENCH_MIB=512) -----
if [ -n "${BERTH_E2E_BENCH_MIB:-}" ]; then
    project bench compose.yaml
    cp -r "$run/single/compose.yaml" "$run/single/deploy" "$dir/"
    cd "$dir"
    HTTPS_PORT=$(free_port) HTTP_PORT=$(free_port) direct_port=$(free_port)
    REGISTRY_HOST=$gateway:$HTTPS_PORT
    deploy/compose/self-signed.sh "$REGISTRY_HOST" >/dev/null
    trust "$REGISTRY_HOST" deploy/compose/certs/fullchain.pem
    # Berth's own port too, on loopback (plain HTTP: the daemon allows that for 127.0.0.0/8).
    printf 'services:\n  berth:\n    ports: ["127.0.0.1:%s:5000"]\n' "$direct_port" >direct.yaml
    printf 'compose.yaml\ndirect.yaml\n' >.file
    BERTH_AUTH=basic compose up -d >/dev/null 2>&1
    wait_ready "https://$REGISTRY_HOST/readyz" deploy/compose/certs/fullchain.pem >/dev/null
    printf 'FROM scratch\nCOPY layer.bin /layer.bin\n' >"$run/Dockerfile.bench"
    seconds() { local t=$(date +%s.%N); "$@" >/dev/null; python3 -c "print($(date +%s.%N) - $t)"; }
    declare -A took=()
    for via in nginx direct; do
        host=$REGISTRY_HOST
        [ $via = direct ] && host=127.0.0.1:$direct_port
        echo bee | docker login -u busy --password-stdin "$host" >/dev/null 2>&1
        # Bytes of its own each time: a layer the registry has is not sent again.
        mkdir -p "$run/bench-$via" && cp "$run/Dockerfile.bench" "$run/bench-$via/Dockerfile"
        head -c $((BERTH_E2E_BENCH_MIB << 20)) /dev/urandom >"$run/bench-$via/layer.bin"
        quiet docker build -q -t "$host/bench/big:$via" "$run/bench-$via"
        took[push-$via]=$(seconds docker push "$host/bench/big:$via")
        docker rmi "$host/bench/big:$via" >/dev/null
        took[pull-$via]=$(seconds docker pull -q "$host/bench/big:$via")
        docker rmi "$host/bench/big:$via" >/dev/null
    done
    python3 - "$BERTH_E2E_BENCH_MIB" "${took[push-nginx]}" "${took[push-direct]}" "${took[pull-nginx]}" "${took[pull-direct]}" <<'PY'
import sys
mib, push_n, push_d, pull_n, pull_d = int(sys.argv[1]), *map(float, sys.argv[2:])
mb = mib * 1.048576
for what, n, d in (("push", push_n, push_d), ("pull", pull_n, pull_d)):
    print(f"  docker {what} of a {mib} MiB layer: through nginx (TLS) {mb / n:.1f} MB/s, "
          f"straight to Berth {mb / d:.1f} MB/s, ratio {d / n:.2f}")
PY
    compose down -v >/dev/null 2>&1
fi

# --- deploy/compose/scaled.yaml: a replica killed in the middle of a push ------------------
project scaled scaled.yaml
cp "$repo/deploy/compose/"{scaled.yaml,nginx-scaled.conf,self-signed.sh} "$dir/"
cd "$dir"
HTTPS_PORT=$(free_port) HTTP_PORT=$(free_port)
REGISTRY_HOST=$gateway:$HTTPS_PORT
cat >.env <<EOF
REGISTRY_HOST=$REGISTRY_HOST
POSTGRES_PASSWORD=pg-$RANDOM$RANDOM
REDIS_PASSWORD=redis-$RANDOM$RANDOM
MINIO_ROOT_USER=berth
MINIO_ROOT_PASSWORD=minio-$RANDOM$RANDOM
EOF
./self-signed.sh "$REGISTRY_HOST" certs >/dev/null
mkdir -p auth
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out auth/token-key.pem 2>/dev/null
chmod 644 auth/token-key.pem
add_user "$dir/auth"
trust "$REGISTRY_HOST" certs/fullchain.pem
compose up -d >/dev/null 2>&1
took=$(wait_ready "https://$REGISTRY_HOST/readyz" certs/fullchain.pem)
echo "  scaled: /readyz through nginx answered 200 ${took} s after 'docker-compose up'"
echo bee | docker login -u busy --password-stdin "$REGISTRY_HOST" >/dev/null
mkdir -p "$run/big" && head -c $((100 << 20)) /dev/urandom >"$run/big/layer.bin"
printf 'FROM scratch\nCOPY layer.bin /layer.bin\n' >"$run/big/Dockerfile"
big=$REGISTRY_HOST/scaled/big:v1
quiet docker build -q -t "$big" "$run/big"
received() { # CONTAINER: bytes its network interfaces received
    awk 'NR > 2 {sum += $2} END {print sum}' "/proc/$(docker inspect -f '{{.State.Pid}}' "$1")/net/dev"
}
replicas=$(for r in berth1 berth2 berth3; do compose ps -q "$r"; done)
declare -A before=()
for c in $replicas; do before[$c]=$(received "$c"); done
docker push "$big" >"$run/big-push.log" 2>&1 &
push=$!
victim=
for _ in $(seq 600); do
    sleep 0.1
    for c in $replicas; do
        # The replica taking the layer: 16 MiB of it in, most of it still to come.
        if [ $(( $(received "$c") - ${before[$c]} )) -gt $((16 << 20)) ]; then victim=$c; break 2; fi
    done
    kill -0 $push 2>/dev/null || break
done
[ -n "$victim" ] || fail "no replica was seen receiving the layer: $(cat "$run/big-push.log")"
docker kill "$victim" >/dev/null
wait $push || fail "the push did not finish after the kill: $(cat "$run/big-push.log")"
# docker says so when an upload broke and it started again.
retried=$(grep -ciE 'retrying' "$run/big-push.log" || true)
[ "$retried" -gt 0 ] || fail "the kill did not interrupt the upload: $(cat "$run/big-push.log")"
docker rmi "$big" >/dev/null
docker pull -q "$big" >/dev/null || fail "the pull after the kill failed"
[ "$(contents "$big" /layer.bin | sha256sum)" = "$(sha256sum <"$run/big/layer.bin")" ] || fail "the layer came back different"
ok "scaled.yaml: a 100 MiB layer pushed through nginx, $(docker inspect -f '{{.Name}}' "$victim" | tr -d /) killed while receiving it; docker retried ($retried retry lines) and the push finished; pulled back whole"
cd /
echo "compose tests passed"
# The lifecycle's refusals as docker (and skopeo) show them, with this engine.
bash "$here/lifecycle_clients.sh" "$binary"
