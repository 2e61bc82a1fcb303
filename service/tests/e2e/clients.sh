#!/usr/bin/env bash
# Real clients against a real Berth on the embedded default: umoci builds images without a
# daemon, skopeo pushes, pulls, copies (cross-repository mount), pushes a multi-arch index,
# lists tags and deletes; oras pushes a chunked artifact and a referrer; podman and containerd
# (ctr) push and pull.
#
# usage: clients.sh BERTH_BINARY
#
# With E2E_REGISTRY=HOST:PORT the script drives that registry instead of starting one
# (E2E_LOGS: the replicas' log files, E2E_PIDS: their process ids, for the checks that read
# them).
set -euo pipefail

berth=$(realpath "${1:?usage: clients.sh BERTH_BINARY}")
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d /tmp/berth-e2e.XXXXXX)
pid=
logs=()
# shellcheck source=service/tests/e2e/containerd.sh
. "$here/containerd.sh"
cleanup() {
    status=$?
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
    stop_containerd || true
    if [ $status -ne 0 ]; then
        for log in "${logs[@]}"; do
            echo "--- last lines of $log ---"
            tail -n 30 "$log" || true
        done
    else
        chmod -R u+rwX "$work" 2>/dev/null
        rm -rf "$work" 2>/dev/null || echo "note: could not remove all of $work"
    fi
}
trap cleanup EXIT
ok() { echo "ok: $*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

# With no configuration at all: 127.0.0.1:5000, blobs and SQLite under ./data.
mkdir -p "$work/noconfig"
(cd "$work/noconfig" && exec env -i PATH="$PATH" HOME="$HOME" "$berth" serve >"$work/noconfig.log" 2>&1) &
noconfig=$!
for _ in $(seq 100); do
    curl -fsS http://127.0.0.1:5000/v2/ >/dev/null 2>&1 && break
    sleep 0.1
done
status=$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:5000/v2/ || true)
kill "$noconfig" 2>/dev/null || true
wait "$noconfig" 2>/dev/null || true
[ "$status" = 200 ] || fail "berth serve with no configuration: GET http://127.0.0.1:5000/v2/ gave '$status' (is port 5000 free?)"
[ -f "$work/noconfig/data/berth.db" ] && [ -d "$work/noconfig/data/blobs" ] || fail "no ./data/berth.db and ./data/blobs"
ok "berth serve with no configuration answers GET /v2/ on 127.0.0.1:5000 and keeps its data in ./data"

if [ -n "${E2E_REGISTRY:-}" ]; then
    reg=$E2E_REGISTRY
    read -r -a logs <<<"${E2E_LOGS:?E2E_LOGS names the log files of the replicas}"
    read -r -a pids <<<"${E2E_PIDS:?E2E_PIDS names the process ids of the replicas}"
else
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    reg=127.0.0.1:$port
    BERTH_LISTEN=$reg BERTH_DATA_DIR=$work/data "$berth" serve >"$work/berth.log" 2>&1 &
    pid=$!
    logs=("$work/berth.log")
    pids=("$pid")
fi
for _ in $(seq 100); do
    curl -fsS "http://$reg/v2/" >/dev/null 2>&1 && break
    sleep 0.1
done
curl -fsS "http://$reg/v2/" >/dev/null || fail "no registry answers on $reg"
ok "registry serving on $reg"

skopeo=(skopeo --insecure-policy)
tls=(--src-tls-verify=false --dest-tls-verify=false)

# An image with two layers, built by umoci with no daemon.
img=$work/img
umoci init --layout "$img"
umoci new --image "$img:v1"
umoci unpack --rootless --image "$img:v1" "$work/bundle" >/dev/null
echo "first layer" >"$work/bundle/rootfs/hello.txt"
umoci repack --image "$img:old" "$work/bundle"
umoci repack --image "$img:v1" "$work/bundle"
rm -rf "$work/bundle"
umoci unpack --rootless --image "$img:v1" "$work/bundle" >/dev/null
head -c 3000000 /dev/urandom >"$work/bundle/rootfs/random.bin"
umoci repack --image "$img:v1" "$work/bundle"
layers=$(jq -r '.manifests[] | select(.annotations."org.opencontainers.image.ref.name" == "v1") | .digest' "$img/index.json" |
    sed 's/sha256://' | xargs -I{} jq '.layers | length' "$img/blobs/sha256/{}")
[ "$layers" = 2 ] || fail "umoci image has $layers layers, expected 2"
local_digest=$(jq -r '.manifests[] | select(.annotations."org.opencontainers.image.ref.name" == "v1") | .digest' "$img/index.json")
ok "umoci built an image with 2 layers ($local_digest)"

"${skopeo[@]}" copy -q "${tls[@]}" "oci:$img:v1" "docker://$reg/e2e/app:v1"
"${skopeo[@]}" copy -q "${tls[@]}" "oci:$img:old" "docker://$reg/e2e/app:old"
remote_digest=$("${skopeo[@]}" inspect --tls-verify=false "docker://$reg/e2e/app:v1" | jq -r .Digest)
raw_digest=sha256:$("${skopeo[@]}" inspect --tls-verify=false --raw "docker://$reg/e2e/app:v1" | sha256sum | cut -d' ' -f1)
[ "$remote_digest" = "$local_digest" ] || fail "pushed digest $remote_digest != local $local_digest"
[ "$raw_digest" = "$local_digest" ] || fail "raw manifest digest $raw_digest != local $local_digest"
ok "skopeo push: manifest digest matches ($remote_digest)"

"${skopeo[@]}" copy -q "${tls[@]}" "docker://$reg/e2e/app:v1" "oci:$work/by-tag:v1"
"${skopeo[@]}" copy -q "${tls[@]}" "docker://$reg/e2e/app@$remote_digest" "oci:$work/by-digest:v1"
for layout in by-tag by-digest; do
    pulled=$(jq -r '.manifests[0].digest' "$work/$layout/index.json")
    [ "$pulled" = "$local_digest" ] || fail "pull $layout gave $pulled"
    for blob in "$work/$layout"/blobs/sha256/*; do
        [ "sha256:$(sha256sum "$blob" | cut -d' ' -f1)" = "sha256:$(basename "$blob")" ] || fail "blob $blob corrupt"
    done
done
ok "skopeo pull by tag and by digest: same manifest, every blob verified"

"${skopeo[@]}" copy -q "${tls[@]}" "docker://$reg/e2e/app:v1" "docker://$reg/e2e/copy:v1"
mounts=$(cat "${logs[@]}" | grep -c 'method=POST path=/v2/e2e/copy/blobs/uploads/ query=.*mount=.* status=201' || true)
[ "$mounts" -ge 1 ] || fail "copy to a second repository mounted no blob"
[ "$("${skopeo[@]}" inspect --tls-verify=false "docker://$reg/e2e/copy:v1" | jq -r .Digest)" = "$local_digest" ] ||
    fail "copy has another digest"
ok "skopeo copy to a second repository: $mounts layer(s) mounted from e2e/app instead of uploaded"

umoci config --image "$img:v1" --tag arm64 --architecture arm64 >/dev/null
index_digest=$(python3 "$here/make_index.py" "$img" multi v1 arm64)
"${skopeo[@]}" copy -q --all "${tls[@]}" "oci:$img:multi" "docker://$reg/e2e/multi:latest"
raw=$("${skopeo[@]}" inspect --tls-verify=false --raw "docker://$reg/e2e/multi:latest")
[ "$(echo "$raw" | jq -r .mediaType)" = application/vnd.oci.image.index.v1+json ] || fail "not an index: $raw"
[ "$(echo "$raw" | jq '.manifests | length')" = 2 ] || fail "index does not list 2 manifests"
[ "sha256:$(echo -n "$raw" | sha256sum | cut -d' ' -f1)" = "$index_digest" ] || fail "index digest changed"
"${skopeo[@]}" --override-arch arm64 copy -q "${tls[@]}" "docker://$reg/e2e/multi:latest" "oci:$work/arm:latest"
arm_manifest=$(jq -r '.manifests[0].digest' "$work/arm/index.json" | sed 's/sha256://')
arm_config=$(jq -r .config.digest "$work/arm/blobs/sha256/$arm_manifest" | sed 's/sha256://')
[ "$(jq -r .architecture "$work/arm/blobs/sha256/$arm_config")" = arm64 ] || fail "arm64 pull got another platform"
ok "skopeo copy --all: multi-arch index ($index_digest) pushed; arm64 variant pulled"

tags=$("${skopeo[@]}" list-tags --tls-verify=false "docker://$reg/e2e/app" | jq -r '.Tags | join(",")')
[ "$tags" = "old,v1" ] || fail "tags are $tags"
ok "skopeo list-tags: $tags"

"${skopeo[@]}" delete --tls-verify=false "docker://$reg/e2e/app:old"
if "${skopeo[@]}" inspect --tls-verify=false "docker://$reg/e2e/app:old" >/dev/null 2>&1; then fail "old still there"; fi
"${skopeo[@]}" inspect --tls-verify=false "docker://$reg/e2e/app:v1" >/dev/null || fail "delete took v1 too"
ok "skopeo delete: app:old gone, app:v1 still there"

python3 "$here/oras_roundtrip.py" "$reg" e2e/app "$remote_digest" "$work/oras"

if [ "${BERTH_STORAGE:-filesystem}" = s3 ] && [ "${BERTH_S3_REDIRECT:-true}" = true ]; then
    redirects=$(cat "${logs[@]}" | grep -c 'method=GET path=/v2/[^ ]*/blobs/sha256:[^ ]* query= status=307' || true)
    [ "$redirects" -ge 1 ] || fail "no blob GET was redirected to the object store"
    ok "blob pulls went to the object store through $redirects presigned redirects"
fi

if command -v podman >/dev/null; then
    podman=(podman --root "$work/podman" --runroot "/tmp/pr.$$" --storage-driver vfs
        --cgroup-manager cgroupfs --events-backend file)
    "${podman[@]}" pull -q --tls-verify=false "$reg/e2e/app:v1" >/dev/null
    "${podman[@]}" push -q --tls-verify=false "$reg/e2e/app:v1" "docker://$reg/e2e/podman:v1"
    "${podman[@]}" rmi -a -f >/dev/null
    "${podman[@]}" pull -q --tls-verify=false "$reg/e2e/podman:v1" >/dev/null
    "${podman[@]}" rmi -a -f >/dev/null
    rm -rf "/tmp/pr.$$"
    ok "podman: pulled, pushed to a new repository, pulled that back"
fi

# containerd's ctr, as a Kubernetes node pulls: pulling unpacks every layer (which checks each
# against the config's diff_ids); pushing uploads to a repository that has none of the blobs.
if command -v containerd >/dev/null && command -v ctr >/dev/null; then
    start_containerd "$work"
    "${ctr[@]}" images pull --plain-http --snapshotter native "$reg/e2e/app:v1" >/dev/null ||
        fail "ctr pull of e2e/app:v1"
    "${ctr[@]}" images pull --plain-http --snapshotter native --platform linux/arm64 \
        "$reg/e2e/multi:latest" >/dev/null || fail "ctr pull of the arm64 variant of e2e/multi:latest"
    "${ctr[@]}" images tag "$reg/e2e/app:v1" "$reg/e2e/containerd:v1" >/dev/null
    "${ctr[@]}" images push --plain-http "$reg/e2e/containerd:v1" >/dev/null || fail "ctr push"
    pushed=$("${skopeo[@]}" inspect --tls-verify=false "docker://$reg/e2e/containerd:v1" | jq -r .Digest)
    [ "$pushed" = "$remote_digest" ] || fail "ctr pushed $pushed, expected $remote_digest"
    "${skopeo[@]}" copy -q "${tls[@]}" "docker://$reg/e2e/containerd:v1" "oci:$work/from-ctr:v1"
    stop_containerd
    ok "containerd (ctr): pulled and unpacked an image and an arm64 variant, pushed to a new repository ($pushed)"
fi

# A 1 GiB blob in one streamed PATCH and back, digest checked by the client; the server's
# peak RSS must stay far below the blob's size.
loadtest=$(dirname "$berth")/berth-loadtest
big=${E2E_BIG_MIB:-1024}
"$loadtest" --registry "http://$reg" --blob-mib "$big" --repeat 1 --only stream,pull --repository e2e/big | sed 's/^/  /'
peak_kib=$(for p in "${pids[@]}"; do awk '/^VmHWM:/ {print $2}' "/proc/$p/status"; done | sort -n | tail -1)
[ "$peak_kib" -lt $((100 * 1024)) ] || fail "peak RSS $((peak_kib / 1024)) MiB during the $big MiB round trip"
ok "$big MiB blob pushed in one streamed PATCH and pulled back, digests match; server peak RSS $((peak_kib / 1024)) MiB"

# berth gc --untagged next to the serving registry (not through nginx, whose replicas this
# script does not configure): the manifest a moving tag left behind goes, the deleted
# app:old's own blobs and the big blob, which no manifest names, go; every image still tagged
# pulls whole, the index's untagged platform manifests included.
if [ -z "${E2E_REGISTRY:-}" ]; then
    "${skopeo[@]}" copy -q --format v2s2 "${tls[@]}" "docker://$reg/e2e/app:v1" "docker://$reg/e2e/moving:latest"
    left=$("${skopeo[@]}" inspect --tls-verify=false "docker://$reg/e2e/moving:latest" | jq -r .Digest)
    "${skopeo[@]}" copy -q "${tls[@]}" "docker://$reg/e2e/app:v1" "docker://$reg/e2e/moving:latest"
    [ "$("${skopeo[@]}" inspect --tls-verify=false "docker://$reg/e2e/moving:latest" | jq -r .Digest)" != "$left" ] ||
        fail "e2e/moving:latest did not move"
    out=$(BERTH_LISTEN=$reg BERTH_DATA_DIR=$work/data "$berth" gc --grace 0s --untagged 2>>"$work/gc.log")
    echo "$out" | grep -qx 'removed 1 untagged manifest(s)' || fail "berth gc --untagged: $out"
    status=$(curl -s -o /dev/null -w '%{http_code}' "http://$reg/v2/e2e/moving/manifests/$left")
    [ "$status" = 404 ] || fail "the manifest e2e/moving:latest left behind answers $status after berth gc"
    removed=$(echo "$out" | sed -n 's/^removed \([0-9]*\) unreferenced blob(s), \([0-9]*\) bytes$/\1 \2/p')
    read -r blobs bytes <<<"${removed:-0 0}"
    [ "$blobs" -ge 2 ] && [ "$bytes" -ge $((big << 20)) ] || fail "berth gc: $out"
    for ref in e2e/app:v1 e2e/copy:v1 e2e/multi:latest e2e/moving:latest e2e/podman:v1; do
        [ "$ref" = e2e/podman:v1 ] && ! command -v podman >/dev/null && continue
        rm -rf "$work/after-gc"
        "${skopeo[@]}" copy -q --all "${tls[@]}" "docker://$reg/$ref" "oci:$work/after-gc:x" ||
            fail "$ref does not pull after berth gc"
        for blob in "$work/after-gc"/blobs/sha256/*; do
            [ "sha256:$(sha256sum "$blob" | cut -d' ' -f1)" = "sha256:$(basename "$blob")" ] ||
                fail "blob $blob of $ref corrupt after berth gc"
        done
    done
    ok "berth gc --untagged while serving removed the manifest a moving tag left and $blobs unreferenced blobs ($((bytes >> 20)) MiB); every tagged image still pulls whole"
fi

echo "all real-client checks passed"
