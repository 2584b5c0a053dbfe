#!/usr/bin/env bash
# The container image, built and run for real (issue #10 item 4). Builds the static binary,
# builds docker/Dockerfile with buildah from that binary (BROKERD_BINARY=prebuilt: nothing is
# pulled, no registry is needed), runs it with podman on the host network on free ports, and
# checks from the host with the Mosquitto clients: publish/subscribe, a retained message that
# survives re-creating the container on the same volume, `podman stop` exiting 0 within the
# grace period with a clean shutdown in the log, the HEALTHCHECK turning healthy, SIGHUP
# reloading the mounted configuration, and the error a root-owned data directory or password
# file gives (naming uid 10001).
#
#   bash tests/docker/docker.sh        (as root; needs buildah podman runc, mosquitto-clients)
#
# Everything lives in a private container storage under a temporary directory (vfs driver),
# removed at the end, so nothing else on the machine is touched.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

for tool in buildah podman runc mosquitto_pub mosquitto_sub python3; do
    command -v "$tool" >/dev/null || { echo "docker.sh: $tool is not installed" >&2; exit 2; }
done

PASS=0
FAIL=0
ok() { PASS=$((PASS + 1)); echo "ok   - $*"; }
bad() { FAIL=$((FAIL + 1)); echo "FAIL - $*"; }
ms() { date +%s%3N; }

WORK=$(mktemp -d /tmp/brokerd-docker.XXXXXX)
STORE=(--root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
printf '[containers]\ndefault_ulimits = []\n[engine]\nevents_logger = "file"\n' >"$WORK/containers.conf"
export CONTAINERS_CONF="$WORK/containers.conf"
PODMAN=(podman "${STORE[@]}" --runtime runc --cgroup-manager cgroupfs)
IMAGE=localhost/brokerd:ci
# podman without systemd logs an error about healthcheck timers on every stop and rm (we run no
# timer; see run_broker); everything else it writes to stderr is kept.
pod() { "${PODMAN[@]}" "$@" 2> >(grep -v 'unable to get systemd connection' >&2); }

cleanup() {
    "${PODMAN[@]}" rm -f -a -t 0 >/dev/null 2>&1 || true
    "${PODMAN[@]}" volume rm -a -f >/dev/null 2>&1 || true
    buildah "${STORE[@]}" rm -a >/dev/null 2>&1 || true
    "${PODMAN[@]}" rmi -a -f >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- the static binary and the image ----------------------------------------------------------
TARGET=x86_64-unknown-linux-gnu
echo "building the static binary (--target $TARGET, +crt-static)"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet \
    --bin brokerd --target "$TARGET"
BIN="${CARGO_TARGET_DIR:-target}/$TARGET/release/brokerd"
mkdir -p target/docker
strip --strip-debug -o target/docker/brokerd "$BIN"
kind=$(file target/docker/brokerd)
if [[ "$kind" == *"statically linked"* || "$kind" == *"static-pie linked"* ]]; then
    ok "the binary is statically linked"
else
    bad "the binary is not static: $kind"
fi

t0=$(ms)
buildah "${STORE[@]}" bud --quiet --format docker --pull-never \
    --build-arg BROKERD_BINARY=prebuilt --build-arg BROKERD_PREBUILT=target/docker/brokerd \
    --build-arg TARGETARCH=amd64 \
    -f docker/Dockerfile -t "$IMAGE" . >/dev/null
echo "image built in $(($(ms) - t0)) ms"
size=$(pod image inspect --format '{{.Size}}' "$IMAGE")
echo "image size: $size bytes ($((size / 1024)) KiB)"
health=$(pod image inspect --format '{{.HealthCheck.Test}}' "$IMAGE" 2>/dev/null ||
    buildah "${STORE[@]}" inspect --format '{{.Docker.Config.Healthcheck.Test}}' "$IMAGE")
if [[ "$health" == *"/brokerd health"* ]]; then ok "the image has the HEALTHCHECK ($health)"; else bad "no HEALTHCHECK: $health"; fi
user=$(pod image inspect --format '{{.User}}' "$IMAGE" 2>/dev/null ||
    buildah "${STORE[@]}" inspect --format '{{.Docker.Config.User}}' "$IMAGE")
if [[ "$user" == "10001:10001" ]]; then ok "the image runs as 10001:10001"; else bad "image user: $user"; fi

# --- configuration: free ports, a user, persistence in the volume -----------------------------
read -r MQTT HTTP < <(python3 - <<'PY'
import socket
socks = [socket.socket() for _ in range(2)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*[s.getsockname()[1] for s in socks])
PY
)
mkdir -p "$WORK/etc"
sed -e "s/^bind = \"0.0.0.0:1883\"/bind = \"0.0.0.0:$MQTT\"/" \
    -e "s/^bind = \"127.0.0.1:8081\"/bind = \"127.0.0.1:$HTTP\"/" \
    -e 's|^\[auth\]$|[auth]\npassword_file = "/etc/brokerd/passwd"|' \
    docker/broker.toml >"$WORK/etc/broker.toml"
grep -q "0.0.0.0:$MQTT" "$WORK/etc/broker.toml" && grep -q "127.0.0.1:$HTTP" "$WORK/etc/broker.toml" ||
    { echo "docker.sh: could not set the ports in the configuration" >&2; exit 1; }
printf 'ci-password\n' | target/docker/brokerd passwd --password-stdin --iterations 1000 \
    "$WORK/etc/passwd" ci >/dev/null
chown 10001:10001 "$WORK/etc/passwd"
chmod 0755 "$WORK/etc"
chmod 0644 "$WORK/etc/broker.toml"
pod volume create brokerd-ci-data >/dev/null
AUTH=(-h 127.0.0.1 -p "$MQTT" -u ci -P ci-password)

run_broker() { # NAME: starts it detached; prints the ms until its MQTT port accepted a client
    local start
    start=$(ms)
    # No health timer (podman would drive it through systemd, absent here): the checks below
    # run the image's HEALTHCHECK command with `podman healthcheck run`.
    pod run -d --pull never --name "$1" --network host --health-interval disable \
        -v "$WORK/etc:/etc/brokerd:ro" -v brokerd-ci-data:/var/lib/brokerd "$IMAGE" >/dev/null 2>&1
    for _ in $(seq 1 200); do
        if mosquitto_pub "${AUTH[@]}" -t ready/probe -n -q 0 2>/dev/null; then
            echo $(($(ms) - start))
            return 0
        fi
        sleep 0.05
    done
    echo "docker.sh: $1 did not accept a client within 10 s; its log:" >&2
    pod logs "$1" >&2 || true
    return 1
}

# --- run: publish/subscribe, retained, stop, re-create, health --------------------------------
if ready=$(run_broker brokerd-ci-1); then
    ok "the container accepts MQTT clients (ready in $ready ms, podman run to first CONNACK)"
else
    bad "the container did not come up"
fi
logs=$(pod logs brokerd-ci-1 2>&1)
if grep -q 'persistence=on path=/var/lib/brokerd' <<<"$logs"; then
    ok "persistence is on in /var/lib/brokerd"
else
    bad "persistence is not on in /var/lib/brokerd: $logs"
fi

out="$WORK/sub.out"
mosquitto_sub "${AUTH[@]}" -t ci/live -C 1 -W 10 >"$out" 2>&1 &
sub=$!
# Publish until the subscriber (which exits after one message) has it: no race with SUBSCRIBE.
for _ in $(seq 1 50); do
    kill -0 "$sub" 2>/dev/null || break
    mosquitto_pub "${AUTH[@]}" -t ci/live -m hello-from-host -q 1 >/dev/null 2>&1 || true
    sleep 0.2
done
wait "$sub" || true
if [[ "$(cat "$out")" == "hello-from-host" ]]; then ok "publish/subscribe through the container"; else bad "publish/subscribe: $(cat "$out")"; fi

mosquitto_pub "${AUTH[@]}" -t ci/retained -m survives-recreation -q 1 -r
if mosquitto_sub -h 127.0.0.1 -p "$MQTT" -t ci/x -C 1 -W 3 >/dev/null 2>&1; then
    bad "an anonymous client was accepted on 0.0.0.0"
else
    ok "anonymous clients are refused (non-loopback listener, no allow_anonymous)"
fi

t0=$(ms)
if pod stop -t 10 brokerd-ci-1 >/dev/null; then
    took=$(($(ms) - t0))
    code=$(pod inspect --format '{{.State.ExitCode}}' brokerd-ci-1)
    logs=$(pod logs brokerd-ci-1 2>&1)
    if [[ "$code" == 0 && $took -lt 5000 ]] && grep -q 'shutdown requested' <<<"$logs" &&
        grep -q 'broker stopped' <<<"$logs" && ! grep -q 'exiting anyway' <<<"$logs"; then
        ok "podman stop: exit code 0 in $took ms, clean shutdown logged"
    else
        bad "podman stop: exit code $code after $took ms; log tail: $(tail -3 <<<"$logs")"
    fi
else
    bad "podman stop failed"
fi
pod rm brokerd-ci-1 >/dev/null

if ready=$(run_broker brokerd-ci-2); then
    got=$(mosquitto_sub "${AUTH[@]}" -t ci/retained -C 1 -W 10 2>&1 || true)
    if [[ "$got" == "survives-recreation" ]]; then
        ok "the retained message survived re-creating the container (ready in $ready ms)"
    else
        bad "retained message after re-creation: '$got'"
    fi
else
    bad "the re-created container did not come up"
fi

healthy=""
for _ in $(seq 1 50); do
    if pod healthcheck run brokerd-ci-2 >/dev/null 2>&1; then healthy=yes; break; fi
    sleep 0.2
done
status=$(pod inspect --format '{{.State.Health.Status}}' brokerd-ci-2 2>/dev/null ||
    pod inspect --format '{{.State.Healthcheck.Status}}' brokerd-ci-2)
if [[ -n "$healthy" && "$status" == healthy ]]; then
    ok "the HEALTHCHECK (brokerd health) reports healthy"
else
    bad "healthcheck: run=${healthy:-failed} status=$status"
fi
# SIGHUP through the container runtime reloads the mounted configuration.
pod kill -s HUP brokerd-ci-2 >/dev/null
reloaded=""
for _ in $(seq 1 50); do
    logs=$(pod logs brokerd-ci-2 2>&1)
    if grep -q 'config reloaded' <<<"$logs"; then reloaded=yes; break; fi
    sleep 0.1
done
if [[ -n "$reloaded" ]]; then ok "podman kill -s HUP reloads the configuration"; else bad "no reload after SIGHUP: $(pod logs brokerd-ci-2 2>&1 | tail -3)"; fi
pod stop -t 10 brokerd-ci-2 >/dev/null
pod rm brokerd-ci-2 >/dev/null

# --- root-owned mounts: the error names the uid ------------------------------------------------
mkdir -p "$WORK/rootdata"
chown 0:0 "$WORK/rootdata"
chmod 0755 "$WORK/rootdata"
err=$(pod run --rm --pull never --network host -v "$WORK/etc:/etc/brokerd:ro" \
    -v "$WORK/rootdata:/var/lib/brokerd" "$IMAGE" 2>&1 || true)
want="brokerd runs as uid 10001; make /var/lib/brokerd readable and writable by uid 10001"
if grep -qF "$want" <<<"$err"; then ok "a root-owned data directory: '$want'"; else bad "root-owned data directory: $err"; fi

mkdir -p "$WORK/etc-root"
cp "$WORK/etc/broker.toml" "$WORK/etc/passwd" "$WORK/etc-root/"
chown 0:0 "$WORK/etc-root/passwd"
chmod 0755 "$WORK/etc-root"
err=$(pod run --rm --pull never --network host -v "$WORK/etc-root:/etc/brokerd:ro" \
    -v brokerd-ci-data:/var/lib/brokerd "$IMAGE" 2>&1 || true)
want="brokerd runs as uid 10001; make /etc/brokerd/passwd readable by uid 10001"
if grep -qF "$want" <<<"$err"; then ok "a root-owned password file: '$want'"; else bad "root-owned password file: $err"; fi

echo
echo "docker: $PASS passed, $FAIL failed"
[[ $FAIL -eq 0 ]]
