#!/usr/bin/env bash
# Real clients against Berth with authentication on, in Basic mode and in token mode: skopeo
# (--creds), oras (login), podman (login, push, pull) and containerd's ctr (--user). alice
# may do everything; bob may only pull, and a push as bob is refused.
#
# usage: auth.sh BERTH_BINARY
set -euo pipefail

berth=$(realpath "${1:?usage: auth.sh BERTH_BINARY}")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/berth-auth.XXXXXX)
pid=
# shellcheck source=service/tests/e2e/containerd.sh
. "$here/containerd.sh"
cleanup() {
    status=$?
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    stop_containerd || true
    if [ $status -ne 0 ]; then
        echo "--- last lines of the berth log ---"
        tail -n 30 "$work/berth.log" 2>/dev/null || true
    fi
    chmod -R u+rwX "$work" 2>/dev/null
    rm -rf "$work" 2>/dev/null || true
}
trap cleanup EXIT
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

export BERTH_HTPASSWD=$work/htpasswd
echo 'alice-secret' | "$berth" user add alice >/dev/null
echo 'bob-secret' | "$berth" user add bob >/dev/null
grep -q '^alice:\$2' "$BERTH_HTPASSWD" || fail "berth user add wrote no bcrypt entry"
cat >"$work/access.toml" <<'EOF'
[[rules]]
users = ["alice"]
repositories = ["**"]
actions = ["*"]
catalog = true

[[rules]]
users = ["bob"]
repositories = ["**"]
actions = ["pull"]
EOF
ok "berth user add wrote bcrypt entries for alice and bob"

umoci init --layout "$work/img" >/dev/null
umoci new --image "$work/img:v1" >/dev/null
umoci unpack --rootless --image "$work/img:v1" "$work/bundle" >/dev/null
head -c 200000 /dev/urandom >"$work/bundle/rootfs/data.bin"
umoci repack --image "$work/img:v1" "$work/bundle" >/dev/null

start() { # MODE
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    reg=127.0.0.1:$port
    BERTH_AUTH=$1 BERTH_ACCESS=$work/access.toml BERTH_LISTEN=$reg BERTH_DATA_DIR=$work/data-$1 \
        "$berth" serve >"$work/berth.log" 2>&1 &
    pid=$!
    for _ in $(seq 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "http://$reg/v2/" || true)
        [ "$code" = 401 ] && return 0
        sleep 0.1
    done
    fail "berth in $1 mode did not answer 401 on /v2/"
}

skopeo=(skopeo --insecure-policy)
with_ctr=
if command -v containerd >/dev/null && command -v ctr >/dev/null; then
    start_containerd "$work"
    with_ctr=1
fi
for mode in basic token; do
    start "$mode"
    challenge=$(curl -s -D - -o /dev/null "http://$reg/v2/" | awk 'tolower($1)=="www-authenticate:" {print $2}')
    ok "$mode mode: GET /v2/ asks for $challenge credentials"

    if "${skopeo[@]}" copy -q --dest-tls-verify=false "oci:$work/img:v1" "docker://$reg/team/app:v1" 2>/dev/null; then
        fail "$mode: an anonymous push was accepted"
    fi
    "${skopeo[@]}" copy -q --dest-tls-verify=false --dest-creds alice:alice-secret "oci:$work/img:v1" "docker://$reg/team/app:v1"
    "${skopeo[@]}" inspect --tls-verify=false --creds bob:bob-secret "docker://$reg/team/app:v1" >/dev/null
    if "${skopeo[@]}" inspect --tls-verify=false --creds bob:wrong "docker://$reg/team/app:v1" >/dev/null 2>&1; then
        fail "$mode: a wrong password was accepted"
    fi
    if out=$("${skopeo[@]}" copy -q --dest-tls-verify=false --dest-creds bob:bob-secret "oci:$work/img:v1" \
        "docker://$reg/team/bob:v1" 2>&1); then
        fail "$mode: bob, who may only pull, pushed"
    fi
    echo "$out" | grep -qiE 'denied|unauthorized|insufficient' || fail "$mode: bob's refusal does not say why: $out"
    ok "$mode mode, skopeo: alice pushed, bob pulled; bob's push refused ($(echo "$out" | grep -oiE 'denied|unauthorized|insufficient_scope' | head -1))"

    python3 "$here/oras_auth.py" "$reg" "$work/oras-$mode" "$mode"

    podman=(podman --root "$work/podman" --runroot "/tmp/pra.$$" --storage-driver vfs --cgroup-manager cgroupfs
        --events-backend file)
    auth=(--authfile "$work/auth-$mode.json")
    "${podman[@]}" login -u alice -p alice-secret --tls-verify=false "${auth[@]}" "$reg" >/dev/null
    "${podman[@]}" pull -q --tls-verify=false "${auth[@]}" "$reg/team/app:v1" >/dev/null
    "${podman[@]}" push -q --tls-verify=false "${auth[@]}" "$reg/team/app:v1" "docker://$reg/team/podman:v1"
    "${podman[@]}" login -u bob -p bob-secret --tls-verify=false "${auth[@]}" "$reg" >/dev/null
    "${podman[@]}" pull -q --tls-verify=false "${auth[@]}" "$reg/team/podman:v1" >/dev/null
    if "${podman[@]}" push -q --tls-verify=false "${auth[@]}" "$reg/team/app:v1" "docker://$reg/team/bob-podman:v1" 2>/dev/null; then
        fail "$mode: podman pushed as bob"
    fi
    if "${podman[@]}" login -u bob -p nope --tls-verify=false "${auth[@]}" "$reg" >/dev/null 2>&1; then
        fail "$mode: podman logged in with a wrong password"
    fi
    "${podman[@]}" rmi -a -f >/dev/null 2>&1 || true
    rm -rf "/tmp/pra.$$"
    ok "$mode mode, podman: login and push as alice, pull as bob; bob's push and a wrong password refused"

    if [ -n "$with_ctr" ]; then
        ctr_pull=("${ctr[@]}" images pull --plain-http --snapshotter native)
        if "${ctr_pull[@]}" "$reg/team/app:v1" >/dev/null 2>&1; then fail "$mode: ctr pulled anonymously"; fi
        if "${ctr_pull[@]}" --user bob:nope "$reg/team/app:v1" >/dev/null 2>&1; then
            fail "$mode: ctr pulled with a wrong password"
        fi
        "${ctr_pull[@]}" --user bob:bob-secret "$reg/team/app:v1" >/dev/null || fail "$mode: ctr pull as bob"
        "${ctr[@]}" images tag --force "$reg/team/app:v1" "$reg/team/ctr-$mode:v1" >/dev/null
        if "${ctr[@]}" images push --plain-http --user bob:bob-secret "$reg/team/ctr-$mode:v1" >/dev/null 2>&1; then
            fail "$mode: ctr pushed as bob"
        fi
        "${ctr[@]}" images push --plain-http --user alice:alice-secret "$reg/team/ctr-$mode:v1" >/dev/null ||
            fail "$mode: ctr push as alice"
        "${skopeo[@]}" inspect --tls-verify=false --creds bob:bob-secret "docker://$reg/team/ctr-$mode:v1" >/dev/null
        ok "$mode mode, containerd (ctr): pull as bob, push as alice; anonymous, a wrong password and bob's push refused"
    fi

    grep -qiE 'alice-secret|bob-secret' "$work/berth.log" && fail "$mode: a password appears in the log"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    pid=
done
echo "all authentication checks passed"
