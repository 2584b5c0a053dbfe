#!/usr/bin/env bash
# Interoperability tests: drive the built brokerd binary with third-party clients
# (mosquitto_pub/mosquitto_sub from Debian's mosquitto-clients, and Python paho-mqtt 2.x).
#
#   bash tests/interop/interop.sh                        # builds brokerd (debug) with cargo
#   BROKERD=/path/to/brokerd bash tests/interop/interop.sh   # this binary; no build
#
# Without BROKERD, cargo builds the binary and reports where it put it, so CARGO_TARGET_DIR and
# cargo's build.target-dir settings are honoured.
# Starts one broker on a free loopback port, runs every case (each prints PASS or FAIL), stops
# the broker with SIGTERM, and ends with "N passed, M failed"; exits non-zero when M > 0. The
# users-and-ACL cases run against a second broker with a password file and an ACL file.
# Every wait is bounded. Needs: mosquitto_pub, mosquitto_sub, mosquitto_passwd, python3 with
# paho-mqtt 2.x.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
PAHO=(python3 "$HERE/paho_client.py")
T=10 # seconds: the bound on any single wait

for tool in mosquitto_pub mosquitto_sub mosquitto_passwd python3 timeout stdbuf; do
    command -v "$tool" >/dev/null || { echo "interop: $tool not found" >&2; exit 2; }
done
python3 -c 'import paho.mqtt.client as m; assert hasattr(m, "CallbackAPIVersion")' 2>/dev/null || {
    echo "interop: python3 needs paho-mqtt 2.x (pip install paho-mqtt==2.2.0)" >&2
    exit 2
}

# brokerd_path: builds the brokerd binary (diagnostics on stderr) and prints the path cargo
# reports for it: the "executable" of its compiler-artifact message.
brokerd_path() {
    (cd "$ROOT" && cargo build --bin brokerd --message-format=json-render-diagnostics) |
        python3 -c '
import json, sys
exe = ""
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    target = msg.get("target") or {}
    if msg.get("reason") == "compiler-artifact" and target.get("name") == "brokerd" \
            and "bin" in target.get("kind", []) and msg.get("executable"):
        exe = msg["executable"]
print(exe)
'
}
if [[ -z "${BROKERD:-}" ]]; then
    BROKERD="$(brokerd_path)" || { echo "interop: cargo build --bin brokerd failed" >&2; exit 2; }
fi
[[ -n "$BROKERD" && -x "$BROKERD" ]] || { echo "interop: broker binary '$BROKERD' not found" >&2; exit 2; }
echo "interop: using $BROKERD"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/brokerd-interop.XXXXXX")"
BROKER_PID=""
AUTH_PID=""

# On exit: stop the clients this script started and still running (its own jobs only), then the
# broker it started (SIGTERM, SIGKILL after 5 s), by PID.
cleanup() {
    local pid
    for pid in $(jobs -pr); do
        [[ "$pid" == "$BROKER_PID" || "$pid" == "$AUTH_PID" ]] || kill "$pid" 2>/dev/null
    done
    for pid in "$BROKER_PID" "$AUTH_PID"; do
        if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
            kill -9 "$pid" 2>/dev/null
        fi
    done
    rm -rf "$TMP"
}
trap cleanup EXIT

PASSED=0
FAILED=0
pass() { PASSED=$((PASSED + 1)); echo "PASS $1"; }
fail() {
    FAILED=$((FAILED + 1))
    echo "FAIL $1"
    shift
    local f
    for f in "$@"; do
        [[ -f "$f" ]] && sed "s|^|    $(basename "$f"): |" "$f"
    done
}

# --- the broker -------------------------------------------------------------------------------
# start_broker NAME: starts brokerd on $TMP/NAME.toml (stdout in $TMP/NAME.out, log in
# $TMP/NAME.log) and waits until it listens; sets STARTED_PID and STARTED_PORT, or exits.
start_broker() {
    local name=$1
    "$BROKERD" --config "$TMP/$name.toml" >"$TMP/$name.out" 2>"$TMP/$name.log" &
    STARTED_PID=$!
    STARTED_PORT=""
    for _ in $(seq 100); do
        STARTED_PORT="$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9][0-9]*\)$/\1/p' "$TMP/$name.out")"
        [[ -n "$STARTED_PORT" ]] && break
        kill -0 "$STARTED_PID" 2>/dev/null || break
        sleep 0.1
    done
    if [[ -z "$STARTED_PORT" ]]; then
        echo "interop: broker $name did not print 'listening on 127.0.0.1:PORT' within 10 s" >&2
        cat "$TMP/$name.out" "$TMP/$name.log" >&2
        exit 1
    fi
    echo "brokerd $name (pid $STARTED_PID) listening on 127.0.0.1:$STARTED_PORT"
}

cat >"$TMP/broker.toml" <<'EOF'
[listener]
bind = "127.0.0.1:0"
shutdown_grace_ms = 2000
EOF
start_broker broker
BROKER_PID=$STARTED_PID
PORT=$STARTED_PORT
H=(-h 127.0.0.1 -p "$PORT")

# --- helpers ----------------------------------------------------------------------------------
# Lines of mosquitto_sub output are "MSG <qos> <retain> <topic> <payload>", like paho_client.py.
FMT='MSG %q %r %t %p'

# wait_for FILE PATTERN: wait (bounded) until FILE has a line matching PATTERN.
wait_for() {
    local i
    for i in $(seq $((T * 20))); do
        grep -q -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# msub NAME ARGS...: start mosquitto_sub in the background (output in $TMP/NAME.out, pid in
# SUB_PID) and wait until its SUBACK has arrived. Give it -C N and/or -W S so it ends by itself.
msub() {
    local name=$1
    shift
    # stdbuf: -d's debug lines (SUBACK) go to stdout through stdio, which buffers a file.
    timeout $((T + 5)) stdbuf -oL mosquitto_sub -d "${H[@]}" -F "$FMT" "$@" >"$TMP/$name.out" 2>&1 &
    SUB_PID=$!
    wait_for "$TMP/$name.out" '^Subscribed'
}

# psub NAME ARGS...: start paho_client.py sub in the background (output in $TMP/NAME.out, pid
# in SUB_PID) and wait until it printed READY (subscribed) or failed.
psub() {
    local name=$1
    shift
    timeout $((T + 5)) "${PAHO[@]}" --port "$PORT" --timeout "$T" "$@" >"$TMP/$name.out" 2>&1 &
    SUB_PID=$!
    wait_for "$TMP/$name.out" '^READY\|^ERROR'
}

# mpub ARGS...: mosquitto_pub, bounded.
mpub() { timeout "$T" mosquitto_pub "${H[@]}" "$@"; }

# paho ARGS...: paho_client.py in the foreground, bounded.
paho() { timeout $((T + 5)) "${PAHO[@]}" --port "$PORT" --timeout "$T" "$@"; }

# finish NAME: wait for the background subscriber SUB_PID, keep its MSG lines in $TMP/NAME.got.
finish() {
    wait "$SUB_PID"
    SUB_RC=$?
    grep '^MSG ' "$TMP/$1.out" >"$TMP/$1.got"
}

# expect NAME CASE LINE...: the subscriber NAME got exactly LINE... (in order).
expect() {
    local name=$1 case=$2
    shift 2
    printf '%s\n' "$@" >"$TMP/$name.want"
    if diff -q "$TMP/$name.want" "$TMP/$name.got" >/dev/null; then
        pass "$case"
    else
        fail "$case" "$TMP/$name.want" "$TMP/$name.got" "$TMP/$name.out"
    fi
}

# --- QoS round trips --------------------------------------------------------------------------
for q in 0 1 2; do
    msub "mm$q" -t "interop/mm/q$q" -q "$q" -C 3 -W "$T"
    printf 'a%s\nb%s\nc%s\n' "$q" "$q" "$q" | mpub -t "interop/mm/q$q" -q "$q" -l
    finish "mm$q"
    expect "mm$q" "QoS $q mosquitto_pub -> mosquitto_sub" \
        "MSG $q 0 interop/mm/q$q a$q" "MSG $q 0 interop/mm/q$q b$q" "MSG $q 0 interop/mm/q$q c$q"
done

for q in 0 1 2; do
    msub "pm$q" -t "interop/pm/q$q" -q "$q" -C 3 -W "$T"
    paho pub --topic "interop/pm/q$q" --qos "$q" --count 3 --prefix "p$q-" >"$TMP/pm$q.pub" 2>&1
    finish "pm$q"
    expect "pm$q" "QoS $q paho publisher -> mosquitto_sub" \
        "MSG $q 0 interop/pm/q$q p$q-1" "MSG $q 0 interop/pm/q$q p$q-2" "MSG $q 0 interop/pm/q$q p$q-3"
done

for q in 0 1 2; do
    psub "mp$q" sub --topic "interop/mp/q$q" --qos "$q" --count 3
    printf 'x%s\ny%s\nz%s\n' "$q" "$q" "$q" | mpub -t "interop/mp/q$q" -q "$q" -l
    finish "mp$q"
    expect "mp$q" "QoS $q mosquitto_pub -> paho subscriber" \
        "MSG $q 0 interop/mp/q$q x$q" "MSG $q 0 interop/mp/q$q y$q" "MSG $q 0 interop/mp/q$q z$q"
done

# MQTT 3.1 (protocol level 3, "MQIsdp") clients.
msub v31 -V mqttv31 -i interop-v31-sub -t interop/v31 -q 1 -C 2 -W "$T"
printf 'old1\nold2\n' | mpub -V mqttv31 -i interop-v31-pub -t interop/v31 -q 1 -l
finish v31
expect v31 "MQTT 3.1 mosquitto_pub -> MQTT 3.1 mosquitto_sub" \
    "MSG 1 0 interop/v31 old1" "MSG 1 0 interop/v31 old2"

# Downgrade: a message is delivered at the lower of the publish QoS and the subscription QoS.
for sq in 0 1; do
    pq=$((sq + 1))
    msub "down$sq" -t "interop/down/$sq" -q "$sq" -C 1 -W "$T"
    mpub -t "interop/down/$sq" -q "$pq" -m "sent-at-$pq"
    finish "down$sq"
    expect "down$sq" "QoS $pq publish to a QoS $sq subscription arrives at QoS $sq" \
        "MSG $sq 0 interop/down/$sq sent-at-$pq"
done

# Wildcards; overlapping subscriptions of one client get one copy (brokerd delivers once per
# client, at the highest granted QoS).
msub wild -t 'interop/wild/+/x' -t 'interop/wild/#' -q 1 -C 2 -W "$T"
mpub -t interop/wild/a/x -q 1 -m one
mpub -t interop/wild/b -q 1 -m two
finish wild
expect wild "wildcards '+' and '#', overlapping subscriptions deliver one copy" \
    "MSG 1 0 interop/wild/a/x one" "MSG 1 0 interop/wild/b two"

# A client may not publish to $SYS topics: the broker acknowledges and drops it, so the
# subscriber's first message is the marker published after it.
msub sys -t '$SYS/#' -t interop/sys -q 1 -C 1 -W "$T"
mpub -t '$SYS/interop' -q 1 -m forged
mpub -t interop/sys -q 1 -m marker
finish sys
expect sys "client PUBLISH to \$SYS/... is not delivered" "MSG 1 0 interop/sys marker"

# --- retained messages ------------------------------------------------------------------------
mpub -t interop/retained -q 1 -r -m kept
msub ret1 -t interop/retained -q 1 -C 1 -W "$T"
finish ret1
expect ret1 "retained message delivered to a new subscriber with RETAIN=1" "MSG 1 1 interop/retained kept"

# A subscriber that is already subscribed gets a retained publish with RETAIN=0 [MQTT-3.3.1-9].
msub ret2 -t interop/retained -q 1 -C 2 -W "$T"
mpub -t interop/retained -q 1 -r -m kept2
finish ret2
expect ret2 "retained publish to an existing subscription has RETAIN=0" \
    "MSG 1 1 interop/retained kept" "MSG 1 0 interop/retained kept2"

# An empty retained publish clears it: a new subscriber's first message is the marker after it.
mpub -t interop/retained -q 1 -r -n
msub ret3 -t interop/retained -q 1 -C 1 -W "$T"
mpub -t interop/retained -q 1 -m marker
finish ret3
expect ret3 "retained message cleared by an empty retained publish (-r -n)" "MSG 1 0 interop/retained marker"

# --- will -------------------------------------------------------------------------------------
# A client whose process is killed (the kernel closes its socket, no DISCONNECT) -> will published.
msub will1 -t interop/will/kill -q 1 -C 1 -W "$T"
# (No timeout wrapper: --mode hold exits by itself after --timeout, and $! is python's PID.)
"${PAHO[@]}" --port "$PORT" --timeout "$T" --client-id interop-will-kill \
    will --will-topic interop/will/kill --will-payload "gone-kill" --qos 1 --mode hold \
    >"$TMP/will1.paho" 2>&1 &
WILL_PID=$!
wait_for "$TMP/will1.paho" '^READY' && kill -9 "$WILL_PID"
{ wait "$WILL_PID"; } 2>/dev/null
finish will1
expect will1 "will published when the client process is killed (SIGKILL)" "MSG 1 0 interop/will/kill gone-kill"

# The socket is closed without DISCONNECT while the process lives on -> will published.
msub will2 -t interop/will/drop -q 1 -C 1 -W "$T"
paho --client-id interop-will-drop will --will-topic interop/will/drop --will-payload "gone-drop" \
    --qos 1 --mode drop >"$TMP/will2.paho" 2>&1
finish will2
expect will2 "will published when the socket closes without DISCONNECT" "MSG 1 0 interop/will/drop gone-drop"

# A clean DISCONNECT discards the will: the subscriber's first message is the marker after it.
msub will3 -t interop/will/clean -q 1 -C 1 -W "$T"
paho --client-id interop-will-clean will --will-topic interop/will/clean --will-payload "gone-clean" \
    --qos 1 --mode disconnect >"$TMP/will3.paho" 2>&1
sleep 0.5
mpub -t interop/will/clean -q 1 -m marker
finish will3
expect will3 "no will after a clean DISCONNECT" "MSG 1 0 interop/will/clean marker"

# --- persistent sessions ----------------------------------------------------------------------
# mosquitto_sub -c: subscribe, exit (-E), messages published meanwhile are queued, then resumed.
timeout "$T" mosquitto_sub "${H[@]}" -c -i interop-persist-mosq -q 1 -t interop/persist/mosq -E \
    >"$TMP/pers1.first" 2>&1
printf 'q1\nq2\nq3\n' | mpub -t interop/persist/mosq -q 1 -l
timeout $((T + 5)) mosquitto_sub "${H[@]}" -F "$FMT" -c -i interop-persist-mosq -q 1 \
    -t interop/persist/mosq -C 3 -W "$T" >"$TMP/pers1.out" 2>&1
grep '^MSG ' "$TMP/pers1.out" >"$TMP/pers1.got"
expect pers1 "mosquitto_sub -c: messages queued while offline are delivered on resume" \
    "MSG 1 0 interop/persist/mosq q1" "MSG 1 0 interop/persist/mosq q2" "MSG 1 0 interop/persist/mosq q3"

# paho clean_session=False: first connect has session present 0; the resumed one has 1 and gets
# the queued messages without subscribing again.
paho --client-id interop-persist-paho sub --no-clean --topic interop/persist/paho --qos 2 --count 0 \
    >"$TMP/pers2.first" 2>&1
if grep -q '^CONNACK sp=0 rc=0' "$TMP/pers2.first" && grep -q '^READY' "$TMP/pers2.first"; then
    pass "paho clean_session=False: first CONNACK has session present = 0"
else
    fail "paho clean_session=False: first CONNACK has session present = 0" "$TMP/pers2.first"
fi
mpub -t interop/persist/paho -q 1 -m r1
mpub -t interop/persist/paho -q 2 -m r2
paho --client-id interop-persist-paho sub --no-clean --no-subscribe --count 2 >"$TMP/pers2.out" 2>&1
grep '^MSG ' "$TMP/pers2.out" >"$TMP/pers2.got"
if grep -q '^CONNACK sp=1 rc=0' "$TMP/pers2.out"; then
    pass "paho clean_session=False: resumed CONNACK has session present = 1"
else
    fail "paho clean_session=False: resumed CONNACK has session present = 1" "$TMP/pers2.out"
fi
expect pers2 "paho clean_session=False: queued QoS 1 and 2 messages delivered on resume" \
    "MSG 1 0 interop/persist/paho r1" "MSG 2 0 interop/persist/paho r2"

# A clean session discards the stored one: session present = 0 again.
paho --client-id interop-persist-paho sub --no-subscribe --count 0 >"$TMP/pers3.out" 2>&1
if grep -q '^CONNACK sp=0 rc=0' "$TMP/pers3.out"; then
    pass "clean_session=True after a persistent session: session present = 0"
else
    fail "clean_session=True after a persistent session: session present = 0" "$TMP/pers3.out"
fi

# --- packets sent before CONNACK (issue #8 item 1) --------------------------------------------
# The README's Paho shape: clean_session=False, connect() then subscribe() before the network
# loop runs, so SUBSCRIBE leaves right behind CONNECT. The SUBACK and a message published right
# after it must come within 1 s, not one keep-alive later.
psub early1 --client-id interop-early-sub early --mode sub --no-clean --topic 'interop/early/sub/#'
mpub -t interop/early/sub/temp -q 1 -m "$(date +%s.%N)"
finish early1
EARLY1="$(grep -m1 '^SUBACK\|^ERROR' "$TMP/early1.out"); message $(grep -m1 '^LATENCY\|^ERROR got' "$TMP/early1.out")"
if [[ "$SUB_RC" == 0 ]] && grep -q '^SUBACK 1 after' "$TMP/early1.out" && grep -q '^LATENCY' "$TMP/early1.out"; then
    pass "paho connect() + subscribe() before loop_start(): SUBACK and a message within 1 s ($EARLY1)"
else
    fail "paho connect() + subscribe() before loop_start(): SUBACK and a message within 1 s ($EARLY1)" \
        "$TMP/early1.out"
fi

# connect() then publish(qos=1) before the network loop runs: the PUBACK within 1 s.
paho --client-id interop-early-pub early --mode pub --no-clean --topic interop/early/pub \
    >"$TMP/early2.out" 2>&1
EARLY2_RC=$?
EARLY2="$(grep -m1 '^PUBACK\|^ERROR' "$TMP/early2.out")"
if [[ "$EARLY2_RC" == 0 ]]; then
    pass "paho connect() + publish(qos=1) before loop_start(): PUBACK within 1 s ($EARLY2)"
else
    fail "paho connect() + publish(qos=1) before loop_start(): PUBACK within 1 s ($EARLY2)" "$TMP/early2.out"
fi

# --- users and ACLs (issue #9), on a second broker ------------------------------------------
# A password file from mosquitto_passwd plus an entry from `brokerd passwd`, an ACL file in
# Mosquitto's syntax; anonymous clients refused.
mosquitto_passwd -c -b "$TMP/passwd" alice alice-pw >/dev/null 2>&1
printf 'bob-pw\n' | "$BROKERD" passwd "$TMP/passwd" bob --password-stdin >/dev/null
chmod 600 "$TMP/passwd"
cat >"$TMP/acl" <<'EOF'
# alice may publish anywhere under acl/; bob may read acl/public/ only.
user alice
topic write acl/#
user bob
topic read acl/public/#
EOF
cat >"$TMP/auth.toml" <<EOF
[listener]
bind = "127.0.0.1:0"
shutdown_grace_ms = 2000
[auth]
allow_anonymous = false
password_file = "$TMP/passwd"
acl_file = "$TMP/acl"
EOF
start_broker auth
AUTH_PID=$STARTED_PID
A=(-h 127.0.0.1 -p "$STARTED_PORT")

if timeout "$T" mosquitto_pub "${A[@]}" -u alice -P alice-pw -t acl/public/hello -m hi >"$TMP/auth1.out" 2>&1; then
    pass "mosquitto_pub -u/-P with a mosquitto_passwd entry is accepted"
else
    fail "mosquitto_pub -u/-P with a mosquitto_passwd entry is accepted" "$TMP/auth1.out"
fi
if ! timeout "$T" mosquitto_pub "${A[@]}" -u alice -P wrong -t acl/public/hello -m hi >"$TMP/auth2.out" 2>&1 &&
    grep -qi 'not authori' "$TMP/auth2.out"; then
    pass "mosquitto_pub with a wrong password is refused (not authorised)"
else
    fail "mosquitto_pub with a wrong password is refused (not authorised)" "$TMP/auth2.out"
fi
if ! timeout "$T" mosquitto_pub "${A[@]}" -t acl/public/hello -m hi >"$TMP/auth3.out" 2>&1 &&
    grep -qi 'not authori' "$TMP/auth3.out"; then
    pass "mosquitto_pub without a username is refused (allow_anonymous = false)"
else
    fail "mosquitto_pub without a username is refused (allow_anonymous = false)" "$TMP/auth3.out"
fi
"${PAHO[@]}" --port "$STARTED_PORT" --timeout "$T" --username bob --password bob-pw \
    sub --topic acl/public/x --count 0 >"$TMP/auth4.out" 2>&1
if grep -q '^CONNACK sp=0 rc=0' "$TMP/auth4.out"; then
    pass "paho username_pw_set with a brokerd passwd entry is accepted"
else
    fail "paho username_pw_set with a brokerd passwd entry is accepted" "$TMP/auth4.out"
fi
"${PAHO[@]}" --port "$STARTED_PORT" --timeout "$T" --username bob --password nope \
    sub --topic acl/public/x --count 0 >"$TMP/auth5.out" 2>&1
# paho 2.x reports the 3.1.1 return code 5 as its reason code 135 ("Not authorized").
if grep -q '^CONNACK sp=0 rc=\(5\|135\)$' "$TMP/auth5.out"; then
    pass "paho with a wrong password gets CONNACK 5 (not authorized)"
else
    fail "paho with a wrong password gets CONNACK 5 (not authorized)" "$TMP/auth5.out"
fi

# bob subscribes to acl/# (granted: it overlaps what he may read) and acl/secret/# (0x80); alice
# publishes a secret message, then a public one: bob receives only the public one.
timeout $((T + 5)) stdbuf -oL mosquitto_sub -d "${A[@]}" -u bob -P bob-pw -F "$FMT" -q 1 \
    -t 'acl/#' -t 'acl/secret/#' -C 1 -W "$T" >"$TMP/acl1.out" 2>&1 &
SUB_PID=$!
wait_for "$TMP/acl1.out" '^Subscribed'
timeout "$T" mosquitto_pub "${A[@]}" -u alice -P alice-pw -q 1 -t acl/secret/plan -m secret
timeout "$T" mosquitto_pub "${A[@]}" -u alice -P alice-pw -q 1 -t acl/public/news -m public
finish acl1
expect acl1 "ACL: a subscriber to acl/# receives only the topics it may read" "MSG 1 0 acl/public/news public"
if grep -q '^Subscribed (mid: [0-9]*): 1, 128' "$TMP/acl1.out"; then
    pass "ACL: SUBACK grants acl/# and refuses acl/secret/# (128)"
else
    fail "ACL: SUBACK grants acl/# and refuses acl/secret/# (128)" "$TMP/acl1.out"
fi
kill -TERM "$AUTH_PID"
wait "$AUTH_PID" 2>/dev/null
AUTH_PID=""

# --- shutdown ---------------------------------------------------------------------------------
kill -TERM "$BROKER_PID"
BROKER_RC=""
for _ in $(seq $((T * 10))); do
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then
        wait "$BROKER_PID"
        BROKER_RC=$?
        break
    fi
    sleep 0.1
done
if [[ "$BROKER_RC" == 0 ]]; then
    BROKER_PID=""
    pass "broker exits 0 on SIGTERM"
else
    fail "broker exits 0 on SIGTERM (exit status: ${BROKER_RC:-still running})" "$TMP/broker.log"
fi

if ((FAILED > 0)); then
    echo "--- broker log (last 40 lines) ---"
    tail -n 40 "$TMP/broker.log"
fi
echo "$PASSED passed, $FAILED failed"
((FAILED == 0))
