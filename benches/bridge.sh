#!/usr/bin/env bash
# Bridge benchmark (issue #11): QoS 1 messages published on a local broker, forwarded by its
# bridge to a Mosquitto remote, received there by target/release/brokerd-bench (`bridge`
# scenario). Runs the same path with brokerd's bridge and with Mosquitto's own bridge.
#
#   bash benches/bridge.sh [--steady N] [--backlog N] [--payload B] [--only brokerd|mosquitto]
#                          [--no-persistence] [--no-build]
#
#   --steady N    messages for the steady-state forwarding rate (default 200000)
#   --backlog N   messages published while the remote is stopped, then drained (default 1000000)
#
# Per local broker: (1) steady: the remote is up, the generator publishes N messages (window
# 1000) on the local broker and receives them on the remote: forwarded msgs/s, end to end;
# (2) backlog: the remote is stopped, N messages are published (and acknowledged) locally, the
# remote is started again and the generator, subscribed there, times the drain from the first
# message to the last. Every message is checked (order, loss; QoS 1 duplicates counted).
#
# brokerd: [persistence] on (sync = "always": each message is on disk before its PUBACK), bridge
# defaults (max_inflight 20), journal bounds raised to hold the backlog, reconnect_delay 1 s.
# Mosquitto 2.0: bridge defaults (max_inflight_messages 20, in-memory queue), max_queued_messages
# raised to hold the backlog, restart_timeout 1. Only PIDs this script started are killed.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
STEADY=200000
BACKLOG=1000000
PAYLOAD=64
ONLY=""
BUILD=1
PERSIST=1
while [ $# -gt 0 ]; do
    case "$1" in
        --steady) STEADY=${2:?}; shift ;;
        --backlog) BACKLOG=${2:?}; shift ;;
        --payload) PAYLOAD=${2:?}; shift ;;
        --only) ONLY=${2:?}; shift ;;
        --no-persistence) PERSIST=0 ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
    shift
done

if [ "$BUILD" = 1 ]; then
    cargo build --release --workspace --bins >&2
fi
BROKERD=${BROKERD:-$ROOT/target/release/brokerd}
BENCH=${BENCH:-$ROOT/target/release/brokerd-bench}
command -v mosquitto >/dev/null || { echo "mosquitto is not installed" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_port() {
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.05
    done
    echo "nothing listening on port $1" >&2
    return 1
}

# start_remote PORT: Mosquitto as the remote; sets REMOTE_PID.
start_remote() {
    cat >"$WORK/remote.conf" <<EOF
listener $1 127.0.0.1
allow_anonymous true
user root
max_queued_messages 0
log_type error
EOF
    mosquitto -c "$WORK/remote.conf" >>"$WORK/remote.log" 2>&1 &
    REMOTE_PID=$!
    PIDS+=("$REMOTE_PID")
    wait_port "$1"
}

stop_pid() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# start_local KIND PORT REMOTE_PORT: the bridging broker; sets LOCAL_PID.
start_local() {
    local kind=$1 port=$2 remote=$3
    if [ "$kind" = brokerd ]; then
        local persistence="enabled = false"
        [ "$PERSIST" = 1 ] && persistence="enabled = true
path = \"$WORK/data\""
        rm -rf "$WORK/data"
        cat >"$WORK/local.toml" <<EOF
[listener]
bind = "127.0.0.1:$port"
[http]
bind = "127.0.0.1:0"
[persistence]
$persistence
[log]
level = "warn"
[[bridge]]
name = "bench"
addresses = ["127.0.0.1:$remote"]
topics = ["bench/bridge/# out 1"]
max_journal_messages = 5000000
max_journal_bytes = 4294967296
reconnect_delay_ms = 1000
reconnect_max_delay_ms = 1000
EOF
        "$BROKERD" --config "$WORK/local.toml" >/dev/null 2>>"$WORK/local.log" &
    else
        cat >"$WORK/local.conf" <<EOF
listener $port 127.0.0.1
allow_anonymous true
user root
max_queued_messages 5000000
log_type error
connection bench
address 127.0.0.1:$remote
topic bench/bridge/# out 1
restart_timeout 1
EOF
        mosquitto -c "$WORK/local.conf" >>"$WORK/local.log" 2>&1 &
    fi
    LOCAL_PID=$!
    PIDS+=("$LOCAL_PID")
    wait_port "$port"
}

bench() {
    "$BENCH" bridge --port "$1" --remote-port "$2" --payload "$PAYLOAD" "${@:3}"
}

for kind in brokerd mosquitto; do
    [ -n "$ONLY" ] && [ "$ONLY" != "$kind" ] && continue
    rport=$(free_port)
    lport=$(free_port)
    start_remote "$rport"
    start_local "$kind" "$lport" "$rport"
    # Until the bridge is up: a short run that must deliver everything.
    up=0
    for _ in $(seq 1 20); do
        if bench "$lport" "$rport" --messages 1000 --idle-s 1 >/dev/null 2>&1; then up=1; break; fi
    done
    [ "$up" = 1 ] || { echo "$kind: bridge never came up" >&2; continue; }
    echo "$kind steady: $(bench "$lport" "$rport" --messages "$STEADY")"
    stop_pid "$REMOTE_PID"
    sleep 1
    echo "$kind backlog publish: $(bench "$lport" "$rport" --phase publish --messages "$BACKLOG")"
    start_remote "$rport"
    echo "$kind backlog drain: $(bench "$lport" "$rport" --phase collect --messages "$BACKLOG" --idle-s 60)"
    stop_pid "$LOCAL_PID"
    stop_pid "$REMOTE_PID"
done
