#!/usr/bin/env bash
# Berth on Garage, a real disk-backed S3 store, next to the same Garage used directly.
#
# usage: loadtest/garage.sh [GARAGE_BINARY]     (default: garage on PATH, or /opt/garage/bin/garage)
#
# Starts a one-node Garage on 127.0.0.1 with a fresh data directory (compression off), then, in
# one run:
#   0. the client pattern of issue 14 (s3_compare.py: Python http.client, one PATCH with
#      chunked encoding in 1 MiB pieces, and 8 MiB PATCHes), through Berth, through
#      distribution (Debian's docker-registry, when installed) on the same bucket, and as
#      boto3's multipart upload and GetObject straight to the store; medians of 3 rounds, the
#      ratios, and each registry's peak RSS during the pushes and 15 s after;
#   1. 512 MiB pushed in one streamed PATCH through Berth and as a direct multipart upload
#      (same part size and concurrency), pulled through Berth (redirects off) and by a direct
#      GET; medians of 5 rounds and their ratios;
#   2. Berth's peak RSS during 8 concurrent 512 MiB pushes;
#   3. how bytes travel, from Garage's own request counters: a push whose digest is known up
#      front, and one whose digest comes last;
#   4. redirect mode: skopeo pulls an image through presigned redirects, and Garage refuses
#      a presigned URL that was tampered with or has expired.
# Install Garage with `cargo install garage` (about 20 minutes to build).
set -euo pipefail
cd "$(dirname "$0")/.."
garage_bin=${1:-$(command -v garage || echo /opt/garage/bin/garage)}
[ -x "$garage_bin" ] || { echo "no garage binary (cargo install garage)" >&2; exit 1; }
cargo build --release -q -p berth -p berth-loadtest
berth=$PWD/target/release/berth
loadtest=$PWD/target/release/berth-loadtest

work=$(mktemp -d /tmp/berth-garage.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
s3_port=$(free_port); rpc_port=$(free_port); admin_port=$(free_port)
cat >"$work/garage.toml" <<EOF
metadata_dir = "$work/meta"
data_dir = "$work/data"
db_engine = "sqlite"
replication_factor = 1
compression_level = "none"
rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(openssl rand -hex 32)"
[s3_api]
s3_region = "garage"
api_bind_addr = "127.0.0.1:$s3_port"
[admin]
api_bind_addr = "127.0.0.1:$admin_port"
metrics_token = "metrics"
EOF
garage=("$garage_bin" -c "$work/garage.toml")
"${garage[@]}" server >"$work/garage.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do "${garage[@]}" status >/dev/null 2>&1 && break; sleep 0.2; done
node=$("${garage[@]}" status 2>/dev/null | awk -v a="127.0.0.1:$rpc_port" '$0 ~ a {print $1; exit}')
"${garage[@]}" layout assign -z dc1 -c 10G "$node" >/dev/null
"${garage[@]}" layout apply --version 1 >/dev/null
"${garage[@]}" bucket create bench >/dev/null
keys=$("${garage[@]}" key create bench-key)
key_id=$(echo "$keys" | awk '/Key ID/ {print $NF}')
secret=$(echo "$keys" | awk '/Secret key/ {print $NF}')
"${garage[@]}" bucket allow --read --write --owner bench --key bench-key >/dev/null
endpoint=http://127.0.0.1:$s3_port
echo "Garage $("$garage_bin" --version | awk '{print $2}') at $endpoint"

s3_env=(BERTH_STORAGE=s3 BERTH_S3_BUCKET=bench BERTH_S3_ENDPOINT=$endpoint BERTH_S3_REGION=garage
    BERTH_S3_FORCE_PATH_STYLE=true BERTH_S3_ACCESS_KEY_ID=$key_id BERTH_S3_SECRET_ACCESS_KEY=$secret)
env_flags=()
for e in "${s3_env[@]}" BERTH_S3_REDIRECT=false; do env_flags+=(--env "$e"); done

echo; echo "== 0. the issue's client pattern, through Berth and distribution and directly, 3 rounds =="
compare_port=$(free_port)
env -i PATH="$PATH" "${s3_env[@]}" BERTH_S3_REDIRECT=false BERTH_LISTEN=127.0.0.1:$compare_port \
    BERTH_DATA_DIR="$work/compare" BERTH_LOG=warn "$berth" serve >"$work/compare.log" 2>&1 &
berth_pid=$!
pids+=($berth_pid)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$compare_port/v2/" >/dev/null && break; sleep 0.1; done
other=() dist_pid=
if command -v docker-registry >/dev/null; then
    dist_port=$(free_port)
    cat >"$work/distribution.yml" <<EOF
version: 0.1
log: {level: warn}
storage:
  s3: {accesskey: $key_id, secretkey: $secret, region: garage, regionendpoint: $endpoint, bucket: bench,
       rootdirectory: /distribution, secure: false, v4auth: true}
  redirect: {disable: true}
http: {addr: 127.0.0.1:$dist_port}
EOF
    # env -i: distribution refuses an AWS_CA_BUNDLE it cannot use for plain HTTP.
    env -i PATH="$PATH" docker-registry serve "$work/distribution.yml" >"$work/distribution.log" 2>&1 &
    dist_pid=$!
    pids+=($dist_pid)
    for _ in $(seq 50); do curl -fs "http://127.0.0.1:$dist_port/v2/" >/dev/null && break; sleep 0.1; done
    other=(--other "http://127.0.0.1:$dist_port" --other-pid "$dist_pid")
    echo "distribution $(docker-registry --version | awk '{print $NF}') on the same bucket"
fi
python3 loadtest/s3_compare.py --registry "http://127.0.0.1:$compare_port" --pid "$berth_pid" "${other[@]}" \
    --endpoint "$endpoint" --bucket bench --key "$key_id" --secret "$secret" --region garage --mib 512 --rounds 3
kill "$berth_pid" $dist_pid 2>/dev/null || true

echo; echo "== 1. 512 MiB through Berth and directly, same Garage, 5 rounds =="
"$loadtest" --berth "$berth" "${env_flags[@]}" --repeat 5 --s3-endpoint "$endpoint" --s3-bucket bench \
    --s3-region garage --s3-access-key "$key_id" --s3-secret "$secret" --s3-unsigned

echo; echo "== 2. 8 concurrent 512 MiB pushes (part size 8 MiB, 4 parts in flight per upload) =="
"$loadtest" --berth "$berth" "${env_flags[@]}" --concurrent-pushes 8
echo "  bound: 8 x (4 x 8 MiB) + 64 MiB = 320 MiB"

counters() { curl -s -H "Authorization: Bearer metrics" "http://127.0.0.1:$admin_port/metrics" |
    awk -F'[{}"= ]+' '/^api_s3_request_counter\{/ {print $3, $NF}' | sort; }
delta() { # BEFORE AFTER
    join -a2 -e0 -o 2.1,1.2,2.2 <(echo "$1") <(echo "$2") | awk '$3 - $2 > 0 {printf "    %-24s %d\n", $1, $3 - $2}'
}
reg_port=$(free_port)
env "${s3_env[@]}" BERTH_LISTEN=127.0.0.1:$reg_port BERTH_DATA_DIR=$work/berth BERTH_LOG=info \
    "$berth" serve >"$work/berth.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$reg_port/v2/" >/dev/null && break; sleep 0.1; done
reg=http://127.0.0.1:$reg_port

echo; echo "== 3. how the bytes travel (Garage's request counters) =="
head -c $((100 << 20)) /dev/urandom >"$work/blob"
digest=sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)
before=$(counters)
curl -fsS -o /dev/null -X POST -H 'Content-Type: application/octet-stream' --data-binary @"$work/blob" \
    "$reg/v2/bench/known/blobs/uploads/?digest=$digest"
echo "  100 MiB, digest known up front (POST ?digest= with the body):"; delta "$before" "$(counters)"
head -c $((100 << 20)) /dev/urandom >"$work/blob"
digest=sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)
location=$(curl -fsS -D - -o /dev/null -X POST "$reg/v2/bench/late/blobs/uploads/" | awk 'tolower($1)=="location:" {print $2}' | tr -d '\r')
before=$(counters)
location=$(curl -fsS -D - -o /dev/null -X PATCH -H 'Transfer-Encoding: chunked' --data-binary @"$work/blob" \
    "$reg$location" | awk 'tolower($1)=="location:" {print $2}' | tr -d '\r')
curl -fsS -o /dev/null -X PUT "$reg$location?digest=$digest"
echo "  100 MiB, digest last (POST, one streamed PATCH, PUT): 12 parts of 8 MiB and a 4 MiB rest"
delta "$before" "$(counters)"

echo; echo "== 4. redirect mode =="
cd "$work"
umoci init --layout img >/dev/null && umoci new --image img:v1 >/dev/null
umoci unpack --rootless --image img:v1 bundle >/dev/null
head -c 20000000 /dev/urandom >bundle/rootfs/payload && umoci repack --image img:v1 bundle >/dev/null
skopeo --insecure-policy copy -q --dest-tls-verify=false oci:img:v1 "docker://127.0.0.1:$reg_port/redirect/app:v1"
before=$(counters)
skopeo --insecure-policy copy -q --src-tls-verify=false "docker://127.0.0.1:$reg_port/redirect/app:v1" oci:pulled:v1
redirects=$(grep -c 'redirect/app/blobs/.* status=307' berth.log || true)
echo "  skopeo pulled the image through $redirects presigned redirects; Garage served:"; delta "$before" "$(counters)"
layer=$(jq -r '.layers[0].digest' "pulled/blobs/sha256/$(jq -r '.manifests[0].digest' pulled/index.json | cut -d: -f2)")
answer() { # URL: status and S3 error code
    curl -s -o "$work/answer" -w '%{http_code}' "$1"
    code=$(grep -o '<Code>[^<]*' "$work/answer" | cut -c7- || true)
    echo " ${code:-}"
}
url=$(curl -s -o /dev/null -w '%{redirect_url}' "$reg/v2/redirect/app/blobs/$layer")
echo "  presigned URL as issued: HTTP $(answer "$url")"
tampered=$(echo "$url" | sed -E 's/(X-Amz-Signature=.)./\1x/')
echo "  signature tampered with: HTTP $(answer "$tampered")"
other_key=$(echo "$url" | sed -E 's#\?#x?#')
echo "  another key, same signature: HTTP $(answer "$other_key")"
short_port=$(free_port)
env "${s3_env[@]}" BERTH_S3_PRESIGN_EXPIRY=1 BERTH_LISTEN=127.0.0.1:$short_port BERTH_DATA_DIR=$work/berth \
    "$berth" serve >"$work/berth-short.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do curl -fs "http://127.0.0.1:$short_port/v2/" >/dev/null && break; sleep 0.1; done
url=$(curl -s -o /dev/null -w '%{redirect_url}' "http://127.0.0.1:$short_port/v2/redirect/app/blobs/$layer")
sleep 2
echo "  URL valid for 1 s, fetched 2 s later: HTTP $(answer "$url")"

echo; echo "== 5. committing by copy instead, for comparison (boto3; a 512 MiB object from section 1) =="
python3 - "$endpoint" "$key_id" "$secret" <<'PY'
import concurrent.futures, sys, time
import boto3
from botocore.config import Config
endpoint, key, secret = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                  region_name="garage", config=Config(s3={"addressing_style": "path"}))
source = next(o for o in s3.list_objects_v2(Bucket="bench", Prefix="loadtest-direct/")["Contents"]
              if o["Size"] == 512 << 20)["Key"]
started = time.monotonic()
s3.copy_object(Bucket="bench", Key="copy/single", CopySource={"Bucket": "bench", "Key": source})
print(f"  CopyObject of 512 MiB: {time.monotonic() - started:.2f} s")
part = 64 << 20
started = time.monotonic()
upload = s3.create_multipart_upload(Bucket="bench", Key="copy/parts")["UploadId"]
def copy(n):
    first = (n - 1) * part
    r = s3.upload_part_copy(Bucket="bench", Key="copy/parts", UploadId=upload, PartNumber=n,
                            CopySource={"Bucket": "bench", "Key": source},
                            CopySourceRange=f"bytes={first}-{first + part - 1}")
    return {"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]}
with concurrent.futures.ThreadPoolExecutor(8) as pool:
    parts = list(pool.map(copy, range(1, 9)))
s3.complete_multipart_upload(Bucket="bench", Key="copy/parts", UploadId=upload, MultipartUpload={"Parts": parts})
print(f"  8 parallel UploadPartCopy of 64 MiB: {time.monotonic() - started:.2f} s")
print("  metadata pointer (what Berth does): no request, the CompleteMultipartUpload already made the object")
PY
