#!/usr/bin/env bash
# Side-by-side benchmark: Mosquitto, rumqttd and brokerd under the same load generator
# (target/release/brokerd-bench, see benches/loadgen/README.md).
#
#   bash benches/compare.sh [--quick] [--pinned|--unpinned] [--reps N] [--conns N] [--no-build]
#
#   --pinned     each broker on core 0 (taskset -c 0), the generator on core 1
#   --unpinned   no taskset: brokers use every core, the generator runs one thread
#                (default: both modes, pinned first)
#   --quick      R=1, fewer scenarios, shorter runs: both modes in under 3 minutes
#   --reps N     repetitions (default 3; 1 with --quick); figures are medians
#   --conns N    idle connections for `conns` (default 10000; capped by the fd hard limit)
#   --only IDS   run only these scenario ids, comma-separated (fanin_q0 fanin_q1 fanout_q0
#                fanout_q1 pairs_q0 pairs_q1 shared1_q0 shared4_q0 shared16_q0 shared1_q1
#                shared4_q1 shared16_q1 shared4_keyed_q1 latency_1k latency_10k conns retained)
#   Shared: 8 publishers -> one share group ($share/bench/bench/shared/+) of 1, 4 or 16
#   members, checked exactly once across the group; brokerd round robin (Mosquitto's only
#   strategy). shared4_keyed_q1: brokerd's group "keyed" is hash_topic and every publisher's
#   topic must stay on one member, in order (Mosquitto has no such strategy: its row fails).
#   --no-build   do not run cargo build first
#   Environment: MOSQUITTO, RUMQTTD = broker binaries (default: from PATH / ~/.cargo/bin)
#
# Run time on the 2-core dev machine: --quick about 2.3 min; full about 7.5 min per mode
# (about 15 min for both). Every broker run is a fresh process on a free loopback port; brokers
# alternate per repetition (Mosquitto, rumqttd, brokerd, Mosquitto, ...). Only the PIDs this
# script started are ever killed, and none is left running on exit.
#
# Limits ("default" = each broker's defaults, "generous" = for throughput):
#   brokerd    default: built-in (max_inflight 20, max_queued_messages 1000, 16 MiB)
#              generous: [limits] max_inflight 1000, max_queued_messages 100000, max_queued_bytes 0
#   Mosquitto  default: built-in (max_inflight_messages 20, max_queued_messages 1000)
#              generous: max_inflight_messages 1000, max_queued_messages 100000
#   rumqttd    always its generous config (it has no queue limits of the same kind): v4 server,
#              max_inflight_count 1000, max_payload_size 1 MiB, max_connections 30000,
#              connection_timeout_ms 60000, next_connection_delay_ms 0,
#              max_outgoing_packet_count 100000 (it truncates retained replays to this),
#              commit log 10 x 10 MiB segments per filter (kept in memory: shows in its RSS)
#   Logging quiet everywhere (brokerd level "warn", Mosquitto errors/warnings, rumqttd warn).
# Throughput scenarios use "generous", latency/conns/retained use "default".
#
# Output: a table per mode on stdout; all records (the generator's JSON line wrapped with
# mode/broker/scenario/repetition) in target/compare/<timestamp>.jsonl, the tables as markdown
# in target/compare/<timestamp>.md, broker and generator logs in target/compare/<timestamp>/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
HELPER=(python3 "$ROOT/benches/compare.py")

QUICK=0
MODES=()
REPS=""
CONNS_REQ=10000
BUILD=1
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --pinned) MODES+=(pinned) ;;
        --unpinned) MODES+=(unpinned) ;;
        --reps) REPS=${2:?--reps N}; shift ;;
        --conns) CONNS_REQ=${2:?--conns N}; shift ;;
        --only) ONLY=${2:?--only IDS}; shift ;;
        --no-build) BUILD=0 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
[ ${#MODES[@]} -gt 0 ] || MODES=(pinned unpinned)

log() { printf '%s\n' "$*" >&2; }
T_START=$(date +%s)

# ------------------------------------------------------------------ process bookkeeping
PIDS=()
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null || true
    done
    PIDS=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

forget_pid() {
    local keep=() p
    for p in "${PIDS[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
    PIDS=("${keep[@]}")
}

# ------------------------------------------------------------------ tools and builds
for tool in python3 timeout taskset; do
    command -v "$tool" >/dev/null || { log "compare.sh: $tool is required"; exit 2; }
done

MOSQUITTO=${MOSQUITTO:-$(command -v mosquitto || echo /usr/sbin/mosquitto)}
if [ ! -x "$MOSQUITTO" ]; then
    log "Mosquitto missing: apt-get install mosquitto"
    { timeout 600 apt-get update -qq && DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq mosquitto; } >&2 \
        || log "  could not install Mosquitto: its column will show err"
    MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
fi
RUMQTTD=${RUMQTTD:-$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")}
if [ ! -x "$RUMQTTD" ]; then
    # Not --locked: its pinned metrics 0.22.1 does not build on current rustc.
    log "rumqttd missing: cargo install rumqttd --version 0.20.0"
    timeout 1800 cargo install rumqttd --version 0.20.0 >&2 \
        || log "  could not install rumqttd: its column will show err"
    RUMQTTD=$(command -v rumqttd || echo "$HOME/.cargo/bin/rumqttd")
fi
if [ "$BUILD" = 1 ]; then
    log "building brokerd and brokerd-bench (release)"
    timeout 1800 cargo build --release -q -p brokerd --bin brokerd >&2
    timeout 1800 cargo build --release -q -p brokerd-loadgen >&2
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BROKERD=$TARGET_DIR/release/brokerd
BENCH=$TARGET_DIR/release/brokerd-bench
[ -x "$BENCH" ] || { log "compare.sh: $BENCH missing (build it or drop --no-build)"; exit 2; }

# Brokers inherit the raised soft limit (10k connections need 10k descriptors on each side).
HARD_NOFILE=$(ulimit -Hn)
if [ "$HARD_NOFILE" = unlimited ]; then HARD_NOFILE=1048576; fi
ulimit -n "$HARD_NOFILE" 2>/dev/null || true
CONNS=$CONNS_REQ
CONNS_ALLOWED=$((HARD_NOFILE - 200))
CONNS_NOTE="conns: $CONNS connections"
if [ "$CONNS" -gt "$CONNS_ALLOWED" ]; then
    CONNS=$CONNS_ALLOWED
    CONNS_NOTE="conns: $CONNS connections (requested $CONNS_REQ: the fd hard limit is $HARD_NOFILE per process, so at most $CONNS_ALLOWED can be held here)"
fi

# conns binds each client socket to 127.0.0.x:0 before connecting, so every run holds its ports
# on those addresses for the TIME_WAIT minute: --per-ip 1000 spreads a run over 127.0.0.1..N
# (ten addresses for 10k connections) so that the nine back-to-back conns runs do not exhaust the
# ephemeral port range (with one address, later runs failed and connected at a few hundred/s).
# --concurrency 64 stays below Mosquitto's listen backlog (100): with 200 attempts in flight an
# unpinned broker overflowed it and SYN retransmits (1 s) made the CONNACK rate noise.

# ------------------------------------------------------------------ plan
if [ "$QUICK" = 1 ]; then
    REPS=${REPS:-1}
    TP="--duration-s 2 --warmup-s 0.5"
    LAT="--duration-s 2 --warmup-s 0.5"
    if [ "$CONNS" -gt 2000 ]; then CONNS=2000; CONNS_NOTE="conns: 2000 connections (--quick)"; fi
    HOLD=1
    SKIPPED="--quick skipped: fanout QoS 1, pairs QoS 0, shared QoS 0 with 1 and 16 members, shared keyed, latency at 10k msg/s; runs 2 s (+0.5 s warm-up), 1 repetition, $CONNS connections"
else
    REPS=${REPS:-3}
    TP="--duration-s 3 --warmup-s 1"
    LAT="--duration-s 5 --warmup-s 1"
    HOLD=2
    SKIPPED=""
fi
QOS0_FLAGS="--e2e-window 1000"
QOS1_FLAGS="--e2e-window 1000 --window 1000"
# id | limits | timeout s | generator arguments
SCENARIOS=(
    "fanin_q0|generous|60|fanin --qos 0 $QOS0_FLAGS $TP"
    "fanin_q1|generous|60|fanin --qos 1 $QOS1_FLAGS $TP"
    "fanout_q0|generous|60|fanout --qos 0 $QOS0_FLAGS $TP"
    "fanout_q1|generous|60|fanout --qos 1 $QOS1_FLAGS $TP"
    "pairs_q0|generous|60|pairs --qos 0 $QOS0_FLAGS $TP"
    "pairs_q1|generous|60|pairs --qos 1 $QOS1_FLAGS $TP"
    "shared1_q0|generous|60|shared --members 1 --qos 0 $QOS0_FLAGS $TP"
    "shared4_q0|generous|60|shared --members 4 --qos 0 $QOS0_FLAGS $TP"
    "shared16_q0|generous|60|shared --members 16 --qos 0 $QOS0_FLAGS $TP"
    "shared1_q1|generous|60|shared --members 1 --qos 1 $QOS1_FLAGS $TP"
    "shared4_q1|generous|60|shared --members 4 --qos 1 $QOS1_FLAGS $TP"
    "shared16_q1|generous|60|shared --members 16 --qos 1 $QOS1_FLAGS $TP"
    "shared4_keyed_q1|generous|60|shared --members 4 --publishers 16 --group keyed --keyed --qos 1 $QOS1_FLAGS $TP"
    "latency_1k|default|60|latency --qos 0 --rate 1000 $LAT"
    "latency_10k|default|60|latency --qos 0 --rate 10000 $LAT"
    "conns|default|240|conns --conns $CONNS --hold-s $HOLD --per-ip 1000 --concurrency 64"
    "retained|default|120|retained --qos 0 --count 10000 --timeout-s 30"
)
if [ "$QUICK" = 1 ]; then
    keep=()
    for s in "${SCENARIOS[@]}"; do
        case "${s%%|*}" in fanout_q1|pairs_q0|latency_10k|shared1_q0|shared16_q0|shared4_keyed_q1) ;; *) keep+=("$s") ;; esac
    done
    SCENARIOS=("${keep[@]}")
fi
if [ -n "$ONLY" ]; then
    keep=()
    for s in "${SCENARIOS[@]}"; do
        case ",$ONLY," in *",${s%%|*},"*) keep+=("$s") ;; esac
    done
    [ ${#keep[@]} -gt 0 ] || { log "compare.sh: --only $ONLY matches no scenario"; exit 2; }
    SCENARIOS=("${keep[@]}")
    SKIPPED="${SKIPPED:+$SKIPPED; }--only $ONLY"
fi
BROKERS=(mosquitto rumqttd brokerd)

STAMP=$(date +%Y%m%d-%H%M%S)
OUT=$TARGET_DIR/compare
RUNDIR=$OUT/$STAMP
RESULTS=$OUT/$STAMP.jsonl
MD=$OUT/$STAMP.md
mkdir -p "$RUNDIR"
: >"$RESULTS"

version_of() { timeout 5 "$@" 2>&1 | head -1 || true; }
V_MOSQ=$( [ -x "$MOSQUITTO" ] && version_of "$MOSQUITTO" -h | sed 's/^mosquitto version /Mosquitto /' || echo "Mosquitto: missing")
V_RUMQ=$( [ -x "$RUMQTTD" ] && version_of "$RUMQTTD" --version || echo "rumqttd: missing")
V_BRKD=$( [ -x "$BROKERD" ] && version_of "$BROKERD" --version || echo "brokerd: missing")
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain -- src 2>/dev/null | head -1)
[ -z "$DIRTY" ] || COMMIT="$COMMIT (src/ modified)"

{
    echo "## brokerd vs Mosquitto vs rumqttd ($STAMP)"
    echo
    echo "- $V_MOSQ, $V_RUMQ, $V_BRKD at $COMMIT; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'))"
    echo "- 64-byte payloads, loopback. Medians of $REPS run(s) per cell; brokers alternate per repetition; each run on a freshly started broker."
    echo "- QoS 0 throughput: \`$QOS0_FLAGS\` (closed loop: a publisher is at most 1000 messages ahead of its slowest subscriber, so the figure is delivered throughput, not how fast a broker drops)."
    echo "- QoS 1 throughput: \`$QOS1_FLAGS\` (also at most 1000 unacknowledged PUBLISHes per publisher, matching the brokers' max_inflight 1000)."
    echo "- Throughput runs: generous limits (brokerd/Mosquitto max_inflight 1000, max_queued 100000; rumqttd max_inflight_count 1000, 10 x 10 MiB log segments per filter); latency, conns, retained: each broker's defaults (rumqttd: the same generous config)."
    echo "- $CONNS_NOTE (\`--per-ip 1000 --concurrency 64\`, 10 s CONNACK timeout); retained: 10000 retained topics, time from SUBSCRIBE to the last one."
    [ -z "$SKIPPED" ] || echo "- $SKIPPED"
    echo
} >"$MD"
cat "$MD"

# ------------------------------------------------------------------ brokers
BPID=""
BPORT=""

wait_port() { # port seconds
    timeout "$2" bash -c "until (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null; do sleep 0.05; done" 2>/dev/null
}

# start_broker NAME LIMITS MODE LOGPREFIX -> BPID, BPORT; non-zero if it did not come up
start_broker() {
    local name=$1 limits=$2 mode=$3 lp=$4 cfg pin=()
    [ "$mode" = pinned ] && pin=(taskset -c 0)
    BPID=""
    BPORT=""
    case "$name" in
        brokerd)
            [ -x "$BROKERD" ] || return 1
            cfg=$lp.toml
            {
                printf '[listener]\nbind = "127.0.0.1:0"\n[http]\nbind = "127.0.0.1:0"\n'
                if [ "$limits" = generous ]; then
                    printf '[limits]\nmax_inflight = 1000\nmax_queued_messages = 100000\nmax_queued_bytes = 0\n'
                fi
                printf '[log]\nlevel = "warn"\n'
                printf '[shared_subscriptions.groups]\nkeyed = "hash_topic"\n'
            } >"$cfg"
            "${pin[@]}" "$BROKERD" --config "$cfg" >"$lp.out" 2>"$lp.err" </dev/null &
            BPID=$!
            PIDS+=("$BPID")
            for _ in $(seq 200); do
                BPORT=$(sed -n 's/^listening on .*:\([0-9][0-9]*\)$/\1/p' "$lp.out" 2>/dev/null | head -1)
                [ -n "$BPORT" ] && break
                kill -0 "$BPID" 2>/dev/null || break
                sleep 0.05
            done
            [ -n "$BPORT" ] || return 1
            ;;
        mosquitto)
            [ -x "$MOSQUITTO" ] || return 1
            BPORT=$("${HELPER[@]}" freeport)
            cfg=$lp.conf
            {
                echo "listener $BPORT 127.0.0.1"
                echo "allow_anonymous true"
                echo "persistence false"
                echo "log_dest stderr"
                echo "log_type error"
                echo "log_type warning"
                if [ "$limits" = generous ]; then
                    echo "max_inflight_messages 1000"
                    echo "max_queued_messages 100000"
                fi
            } >"$cfg"
            chmod 644 "$cfg"
            "${pin[@]}" "$MOSQUITTO" -c "$cfg" >"$lp.out" 2>"$lp.err" </dev/null &
            BPID=$!
            PIDS+=("$BPID")
            wait_port "$BPORT" 10 || return 1
            ;;
        rumqttd)
            [ -x "$RUMQTTD" ] || return 1
            BPORT=$("${HELPER[@]}" freeport)
            cfg=$lp.toml
            cat >"$cfg" <<EOF
id = 0

[router]
id = 0
max_connections = 30000
max_outgoing_packet_count = 100000
max_segment_size = 10485760
max_segment_count = 10

[v4.1]
name = "v4-1"
listen = "127.0.0.1:$BPORT"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = 1000
    dynamic_filters = true
EOF
            "${pin[@]}" "$RUMQTTD" -q -c "$cfg" >"$lp.out" 2>"$lp.err" </dev/null &
            BPID=$!
            PIDS+=("$BPID")
            wait_port "$BPORT" 10 || return 1
            ;;
    esac
    kill -0 "$BPID" 2>/dev/null
}

stop_broker() {
    local pid=$1
    [ -n "$pid" ] || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    forget_pid "$pid"
}

# ------------------------------------------------------------------ runs
run_mode() {
    local mode=$1 gpin=() entry id limits tmo args rep b lp rc err threads t0 n total
    [ "$mode" = pinned ] && gpin=(taskset -c 1)
    if [ "$mode" = pinned ] && [ "$(nproc)" -lt 2 ]; then
        log "pinned mode needs 2 CPUs: skipped"
        return
    fi
    local busy_before busy_after
    busy_before=$("${HELPER[@]}" busy 1)
    t0=$(date +%s)
    total=$(( ${#SCENARIOS[@]} * REPS * ${#BROKERS[@]} ))
    n=0
    log ""
    log "== $mode: ${#SCENARIOS[@]} scenarios x $REPS rep(s) x ${#BROKERS[@]} brokers (background CPU busy before: ${busy_before}%)"
    for entry in "${SCENARIOS[@]}"; do
        IFS='|' read -r id limits tmo args <<<"$entry"
        for rep in $(seq "$REPS"); do
            for b in "${BROKERS[@]}"; do
                n=$((n + 1))
                lp=$RUNDIR/$mode-$id-$rep-$b
                printf '[%3d/%d %4ss] %-8s %-12s rep %d %-9s ' "$n" "$total" "$(( $(date +%s) - t0 ))" "$mode" "$id" "$rep" "$b" >&2
                rc=""
                err=""
                threads=""
                if start_broker "$b" "$limits" "$mode" "$lp"; then
                    threads=$(awk '/^Threads:/{print $2}' "/proc/$BPID/status" 2>/dev/null || true)
                    rc=0
                    # shellcheck disable=SC2086 # args is a word list on purpose
                    timeout -k 5 "$tmo" "${gpin[@]}" "$BENCH" $args --threads 1 --port "$BPORT" \
                        --broker-pid "$BPID" >"$lp.json" 2>"$lp.bench.err" </dev/null || rc=$?
                    if ! kill -0 "$BPID" 2>/dev/null; then
                        err="broker exited during the run (see $lp.err)"
                    fi
                else
                    err="broker did not start (see $lp.err)"
                    rc=-1
                fi
                stop_broker "$BPID"
                "${HELPER[@]}" record "$RESULTS" mode="$mode" broker="$b" id="$id" rep="$rep" \
                    rc="$rc" config="$limits" args="$args" threads="$threads" error="$err" \
                    --result "$lp.json" >&2 || log "(record failed)"
            done
        done
    done
    busy_after=$("${HELPER[@]}" busy 1)
    local secs=$(( $(date +%s) - t0 ))
    local pin_note="brokers unpinned (all $(nproc) CPUs), generator unpinned with --threads 1"
    [ "$mode" = pinned ] && pin_note="brokers on CPU 0 (taskset -c 0), generator on CPU 1 (taskset -c 1, --threads 1)"
    "${HELPER[@]}" table "$RESULTS" "$mode" "$MD" \
        "$pin_note" \
        "$mode mode took ${secs}s; other load on the machine (all CPUs busy, 1 s sample with no broker running): ${busy_before}% before, ${busy_after}% after"
}

for mode in "${MODES[@]}"; do
    run_mode "$mode"
done

log ""
log "total time: $(( $(date +%s) - T_START ))s"
log "raw results: $RESULTS"
log "markdown:    $MD"
log "logs:        $RUNDIR/"
