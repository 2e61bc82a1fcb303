# Sourced by the e2e scripts: a containerd as a Kubernetes node runs it, with its own root,
# state and socket and no CRI plugin, for `ctr` to pull and push with.
#
# start_containerd DIR: starts it with its root under DIR; sets the array ctr (the command,
# with the socket and a namespace) and containerd_pid. stop_containerd: stops it, removes
# its state.

containerd_pid=
containerd_state=

start_containerd() { # DIR
    containerd_state=/tmp/ctd.$$ # short: a unix socket's path has a length limit
    cat >"$1/containerd.toml" <<TOML
version = 2
root = "$1/containerd"
state = "$containerd_state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$containerd_state/containerd.sock"
TOML
    containerd --config "$1/containerd.toml" >"$1/containerd.log" 2>&1 &
    containerd_pid=$!
    ctr=(ctr --address "$containerd_state/containerd.sock" --namespace e2e)
    for _ in $(seq 100); do
        "${ctr[@]}" version >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "containerd did not start: $(tail -n 5 "$1/containerd.log")" >&2
    return 1
}

stop_containerd() {
    [ -n "$containerd_pid" ] || return 0
    kill "$containerd_pid" 2>/dev/null && wait "$containerd_pid" 2>/dev/null || true
    containerd_pid=
    rm -rf "$containerd_state"
}
