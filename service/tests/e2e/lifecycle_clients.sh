#!/usr/bin/env bash
# The lifecycle's refusals as real clients show them: docker and skopeo pushing to a Berth
# with an immutable rule (every tag under prod/ but latest) and a quota (100 KB under small/).
# Moving an immutable tag and a push past the quota must fail, the client must print the
# registry's message, and what was stored must stay.
#
# usage: lifecycle_clients.sh BERTH_BINARY   (with a Docker engine answering: compose.sh
# runs it with the engine it uses)
set -euo pipefail

berth=$(realpath "${1:?usage: lifecycle_clients.sh BERTH_BINARY}")
work=$(mktemp -d /tmp/berth-lifecycle.XXXXXX)
pid=
cleanup() {
    status=$?
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    [ $status -ne 0 ] && tail -n 30 "$work/berth.log"
    rm -rf "$work"
    exit $status
}
trap cleanup EXIT
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# Only the settings written here: a caller's BERTH_* (compose.sh sets BERTH_IMAGE for its
# compose files) would be refused as unknown, or change what is tested.
for variable in $(compgen -e | grep '^BERTH_' || true); do unset "$variable"; done
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
registry=127.0.0.1:$port
cat >"$work/berth.toml" <<EOF
[[immutable]]
repositories = "prod/**"
except_tags = "latest"

[[quota]]
namespace = "small"
limit = "100KB"
EOF
BERTH_CONFIG=$work/berth.toml BERTH_LISTEN=$registry BERTH_DATA_DIR=$work/data "$berth" serve >"$work/berth.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -fs "http://$registry/v2/" >/dev/null && break; sleep 0.1; done
curl -fs "http://$registry/v2/" >/dev/null || fail "berth serve did not start"

image() { # DIR BYTES: an image FROM scratch with a file of BYTES random bytes
    mkdir -p "$1"
    head -c "$2" /dev/urandom >"$1/file.bin"
    printf 'FROM scratch\nCOPY file.bin /file.bin\n' >"$1/Dockerfile"
}
build() { # TAG DIR
    DOCKER_BUILDKIT=0 docker build -q -t "$1" "$2" >/dev/null 2>"$work/build.log" || { cat "$work/build.log"; fail "build $1"; }
}
refused() { # WHAT EXPECTED COMMAND...: the command fails, printing EXPECTED
    local what=$1 expected=$2
    shift 2
    if "$@" >"$work/out.log" 2>&1; then fail "$what succeeded: $(cat "$work/out.log")"; fi
    grep -q -- "$expected" "$work/out.log" || fail "$what: the message lacks '$expected': $(cat "$work/out.log")"
    echo "--- $what prints:"
    grep -- "$expected" "$work/out.log" | sed 's/^/    /'
}

image "$work/first" 2000
image "$work/second" 2000
image "$work/big" 300000
build "$registry/prod/app:v1" "$work/first"
docker push -q "$registry/prod/app:v1" >/dev/null
first=$(curl -fsI -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$registry/v2/prod/app/manifests/v1" | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}')
docker push -q "$registry/prod/app:v1" >/dev/null || fail "pushing the same image again was refused"
ok "docker pushed prod/app:v1 ($first), and the same again"

build "$registry/prod/app:v1" "$work/second"
refused "docker push of another image as prod/app:v1" "tag v1 is immutable" docker push "$registry/prod/app:v1"
docker save -o "$work/second.tar" "$registry/prod/app:v1"
refused "skopeo copy of another image to prod/app:v1" "tag v1 is immutable" \
    skopeo copy --dest-tls-verify=false "docker-archive:$work/second.tar" "docker://$registry/prod/app:v1"
now=$(curl -fsI -H 'Accept: application/vnd.docker.distribution.manifest.v2+json' \
    "http://$registry/v2/prod/app/manifests/v1" | tr -d '\r' | awk -F': ' 'tolower($1) == "docker-content-digest" {print $2}')
[ "$now" = "$first" ] || fail "prod/app:v1 moved to $now"
docker tag "$registry/prod/app:v1" "$registry/prod/app:latest"
docker push -q "$registry/prod/app:latest" >/dev/null || fail "latest is not immutable, yet refused"
ok "prod/app:v1 still points at $first; latest took the other image"

build "$registry/small/app:v1" "$work/big"
refused "docker push past the quota" "quota of namespace small exceeded" docker push "$registry/small/app:v1"
docker save -o "$work/big.tar" "$registry/small/app:v1"
refused "skopeo copy past the quota" "quota of namespace small exceeded" \
    skopeo copy --dest-tls-verify=false "docker-archive:$work/big.tar" "docker://$registry/small/app:v2"
code=$(curl -s -o /dev/null -w '%{http_code}' "http://$registry/v2/small/app/manifests/v1")
[ "$code" = 404 ] || fail "small/app:v1 answers $code"
BERTH_CONFIG=$work/berth.toml BERTH_DATA_DIR=$work/data "$berth" usage --recount | sed 's/^/    /'
build "$registry/small/app:v1" "$work/first"
docker push -q "$registry/small/app:v1" >/dev/null || fail "a small image under the quota was refused"
ok "a push past the quota refused, nothing of it visible; a small one fits"
for i in $(docker images -q "$registry/*" | sort -u); do docker rmi -f "$i" >/dev/null 2>&1 || true; done
echo "lifecycle client tests passed"
