#!/usr/bin/env bash
# The container image, built and run for real (podman, runc), then checked from outside as its
# clients and its orchestrator see it. .ci/run calls it after the cargo tests; it also runs alone:
#
#   deploy/smoke.sh                  # as root, on Debian 12; MAAS_BINARY=path/to/maas to choose
#
# What is built: the Dockerfile's `runtime` stage, the one that ships, unchanged. Its binary comes
# from `cargo test --features turbojpeg` (target/debug/maas, the dev profile is optimised) through
# --build-arg BINARY=localhost/maas-binary:smoke, since the Rust builder image cannot be pulled
# here (no registry). For the same reason the base image debian:bookworm-slim is made from
# Debian's packages with mmdebstrap and `podman import`, once.
#
# Checks, each printed with its wall time: the binary runs on bookworm's glibc; the container
# runs as uid 10001 on a read-only root with no writable mount of ours; its HEALTHCHECK passes;
# `maas predict --url` gives what local `predict` gives; under --memory 256m it holds `maas bench`
# at 64 clients for 10 s without a failed request or an OOM kill; `promtool check metrics`
# accepts its /metrics after that traffic; SIGTERM during traffic drains and exits 0 well within
# the grace period; deploy/model.Dockerfile (the model inside) serves the same answers.
#
# Idempotent: containers of an earlier run are removed first, and every container and scratch
# file is removed at the end, pass or fail. The images (localhost/maas:latest...) stay.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

binary=${MAAS_BINARY:-target/debug/maas}
image=localhost/maas:latest
model_image=localhost/maas-model:smoke
containers=(maas-smoke maas-smoke-model)
grace=35 # docker stop --time, as deploy/README.md says: more than --timeout-ms (30 s)

started=$(date +%s.%N)
elapsed() { printf '%.2f' "$(echo "$(date +%s.%N) - $1" | bc)"; }
# check NAME COMMAND...: runs it, prints "ok  <seconds>  NAME", or the failure and exits 1.
check() {
    local name=$1 t0
    shift
    t0=$(date +%s.%N)
    if "$@"; then
        printf 'smoke: ok    %7ss  %s\n' "$(elapsed "$t0")" "$name"
    else
        printf 'smoke: FAIL  %7ss  %s\n' "$(elapsed "$t0")" "$name" >&2
        exit 1
    fi
}
fail() {
    echo "smoke: $*" >&2
    return 1
}

[ "$(id -u)" -eq 0 ] || { echo "smoke: run as root (rootful podman)" >&2; exit 1; }
[ -x "$binary" ] || { echo "smoke: no $binary: run cargo test --features turbojpeg first" >&2; exit 1; }

# ---- tools: podman with runc (crun refuses this machine's hybrid cgroups), iptables, mmdebstrap
# for the base image, promtool (Debian's prometheus package), curl and bc.
install_tools() {
    local packages=()
    command -v podman >/dev/null || packages+=(podman)
    command -v runc >/dev/null || packages+=(runc)
    # The bridge network's port mapping (CNI) programs iptables.
    command -v iptables >/dev/null || packages+=(iptables)
    command -v mmdebstrap >/dev/null || packages+=(mmdebstrap)
    command -v promtool >/dev/null || packages+=(prometheus)
    command -v curl >/dev/null || packages+=(curl)
    command -v bc >/dev/null || packages+=(bc)
    if [ ${#packages[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${packages[@]}" >/dev/null
    fi
}
command -v bc >/dev/null || { apt-get update -qq && apt-get install -y -qq bc >/dev/null; }
check "tools: podman, runc, mmdebstrap, promtool" install_tools
# Our settings, not the machine's: runc, and no default ulimits (podman's defaults are refused
# where the engine itself runs under a lower hard limit).
export CONTAINERS_CONF=$repo/deploy/containers.conf

work=$(mktemp -d)
cleanup() {
    for c in "${containers[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
    [ -n "${bench_pid:-}" ] && kill "$bench_pid" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT
cleanup_old() {
    for c in "${containers[@]}"; do podman rm -f -t 0 "$c" >/dev/null 2>&1 || true; done
}
check "no container left from an earlier run" cleanup_old

# ---- debian:bookworm-slim from Debian's packages, from the mirror this machine's apt uses.
base_image() {
    podman image exists debian:bookworm-slim && return 0
    local mirror
    mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null |
        grep -v security | head -n 1)
    [ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $0 !~ /security/ {print $2; exit}' \
        /etc/apt/sources.list 2>/dev/null)
    mmdebstrap --quiet --variant=minbase --mode=root \
        --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        bookworm "$work/bookworm.tar" "${mirror:-http://deb.debian.org/debian}" &&
        podman import --quiet "$work/bookworm.tar" debian:bookworm-slim >/dev/null &&
        rm -f "$work/bookworm.tar"
}
check "base image debian:bookworm-slim (mmdebstrap + podman import, once)" base_image

# ---- the binary: glibc and libgcc only (libturbojpeg is linked statically), no newer glibc
# symbol than bookworm's 2.36.
binary_fits_bookworm() {
    local libs newest
    libs=$(ldd "$binary" | awk '{print $1}' | sed 's/\.so.*//' | sort -u | tr '\n' ' ')
    for lib in $libs; do
        case $lib in
        linux-vdso | /lib64/ld-linux-x86-64 | libc | libm | libgcc_s | libpthread | libdl | librt) ;;
        *) fail "$binary links $lib ($libs): the runtime image has only glibc and libgcc"; return 1 ;;
        esac
    done
    newest=$(objdump -T "$binary" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -n 1)
    [ "$(printf '%s\nGLIBC_2.36\n' "$newest" | sort -V | tail -n 1)" = GLIBC_2.36 ] ||
        fail "$binary needs $newest, bookworm has GLIBC_2.36"
}
check "binary needs only glibc <= 2.36 and libgcc (ldd, objdump)" binary_fits_bookworm

# tagged NAME COMMAND...: runs the build COMMAND, then removes the image NAME named before, if
# the build moved the tag (each run would otherwise leave an untagged image behind).
tagged() {
    local name=$1 before after
    shift
    before=$(podman image inspect -f '{{.Id}}' "$name" 2>/dev/null || true)
    "$@" || return 1
    after=$(podman image inspect -f '{{.Id}}' "$name")
    if [ -n "$before" ] && [ "$before" != "$after" ]; then
        podman rmi "$before" >/dev/null 2>&1 || true
    fi
}

# ---- the image: the runtime stage, with the tests' binary.
build_image() {
    mkdir -p "$work/binary"
    cp "$binary" "$work/binary/maas"
    printf 'FROM scratch\nCOPY maas /usr/local/bin/maas\n' >"$work/binary/Containerfile"
    # --format docker: the OCI format has no HEALTHCHECK.
    { tagged localhost/maas-binary:smoke \
        podman build --format docker -t localhost/maas-binary:smoke "$work/binary" &&
        tagged "$image" podman build --format docker --target runtime \
            --build-arg BINARY=localhost/maas-binary:smoke -t "$image" .; } >"$work/build.log" 2>&1 ||
        { cat "$work/build.log" >&2; return 1; }
    podman run --rm "$image" --version >/dev/null 2>&1
}
check "podman build --target runtime -t $image (and maas --version in it)" build_image

# ---- a model: a small image folder (three colours, PPM files), trained for two epochs.
make_model() {
    python3 - "$work/data" <<'EOF'
import os, random, sys
random.seed(7)
for label, rgb in enumerate([(200, 40, 40), (40, 200, 40), (40, 40, 200)]):
    folder = os.path.join(sys.argv[1], f"class{label}")
    os.makedirs(folder)
    for i in range(30):
        pixels = bytes(max(0, min(255, c + random.randint(-40, 40))) for _ in range(32 * 32) for c in rgb)
        with open(os.path.join(folder, f"{i}.ppm"), "wb") as f:
            f.write(b"P6 32 32 255\n" + pixels)
EOF
    cp "$work/data/class1/0.ppm" "$work/probe.ppm"
    { "$binary" --device cpu --quiet train --data "$work/data" --epochs 2 --checkpoints "$work/run" &&
        "$binary" --quiet export --checkpoints "$work/run" -o "$work/model.maas"; } >/dev/null &&
        chmod 0644 "$work/model.maas"
}
check "a model to serve (maas train on a generated image folder, export)" make_model

key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
# run NAME IMAGE [podman run options]: the container as production runs it: read-only root and
# no tmpfs of podman's (--read-only-tmpfs=false), 256 MiB, an API key, ports on loopback.
run() {
    local name=$1 img=$2
    shift 2
    podman run -d --name "$name" --read-only --read-only-tmpfs=false --memory 256m \
        --memory-swap 256m -e MAAS_API_KEY="$key" -p 127.0.0.1::8080 -p 127.0.0.1::8081 \
        "$@" "$img" >/dev/null 2>"$work/run.log" ||
        { cat "$work/run.log" >&2; return 1; }
    # Without systemd podman cannot schedule the periodic healthcheck (it says so on stderr, in
    # run.log); `podman healthcheck run` below runs the same command.
}
url_of() { echo "http://$(podman port "$1" 8080/tcp)"; }
# Healthy: podman runs the image's own HEALTHCHECK command inside the container.
healthy() {
    local name=$1
    for _ in $(seq 1 120); do
        podman healthcheck run "$name" >/dev/null 2>&1 && return 0
        [ "$(podman inspect -f '{{.State.Running}}' "$name")" = true ] ||
            { podman logs "$name" >&2; fail "$name exited"; return 1; }
        sleep 0.25
    done
    podman logs "$name" >&2
    fail "$name never became healthy"
}
# The same top-k from the container as from the model file here.
predict_agrees() {
    local name=$1 local_json remote_json
    local_json=$("$binary" --device cpu --quiet predict --model "$work/model.maas" --json \
        "$work/probe.ppm" "$work/data/class0/1.ppm" "$work/data/class2/2.ppm") || return 1
    remote_json=$(MAAS_API_KEY=$key "$binary" --quiet predict --url "$(url_of "$name")" --json \
        "$work/probe.ppm" "$work/data/class0/1.ppm" "$work/data/class2/2.ppm") || return 1
    python3 - "$local_json" "$remote_json" <<'EOF'
import json, sys
def top(doc):
    return [[(p["label"], round(p["probability"], 5)) for p in item["top_k"]]
            for item in json.loads(doc)["predictions"]]
local, remote = top(sys.argv[1]), top(sys.argv[2])
if local != remote:
    sys.exit(f"smoke: predict --url {remote} != local predict {local}")
EOF
}

check "podman run --read-only --memory 256m $image (model mounted read-only)" \
    run maas-smoke "$image" -v "$work/model.maas:/srv/model.maas:ro"
check "its HEALTHCHECK passes (podman healthcheck run)" healthy maas-smoke
check "maas predict --url equals local maas predict" predict_agrees maas-smoke

unprivileged() {
    local uid root writable
    uid=$(podman exec maas-smoke sh -c 'grep ^Uid: /proc/1/status' | awk '{print $2, $3, $4, $5}')
    [ "$uid" = "10001 10001 10001 10001" ] || { fail "maas runs as uid $uid"; return 1; }
    root=$(podman inspect -f '{{.HostConfig.ReadonlyRootfs}}' maas-smoke)
    [ "$root" = true ] || { fail "root filesystem writable"; return 1; }
    # Writable: only the engine's /dev and /dev/shm; /srv and /tmp are read-only.
    writable=$(podman exec maas-smoke sh -c \
        'for d in / /srv /tmp /usr/local/bin; do touch "$d/.w" 2>/dev/null && echo "$d"; done')
    [ -z "$writable" ] || { fail "writable in the container: $writable"; return 1; }
    # Its API key guards the model: no key, 401.
    [ "$(curl -s -o /dev/null -w '%{http_code}' "$(url_of maas-smoke)/v2/models/maas")" = 401 ] ||
        fail "the model answers without the API key"
}
check "runs as uid 10001, read-only root, nothing writable of ours, key required" unprivileged

# 64 clients, each one keep-alive connection and one request in flight, for 10 s, in 256 MiB.
loaded() {
    MAAS_API_KEY=$key "$binary" --quiet bench --url "$(url_of maas-smoke)" --concurrency 64 \
        --duration 10 --json >"$work/bench.json" || return 1
    python3 - "$work/bench.json" <<'EOF' || return 1
import json, sys
report = json.load(open(sys.argv[1]))
level = report["results"][0]
print(f"smoke:       bench: {level['requests']} requests, {level['errors']} failed, "
      f"{level['requests_per_s']:.0f}/s, p99 {level['latency_ms']['p99']:.1f} ms, "
      f"{level['seconds']:.1f} s at {level['concurrency']} clients")
if level["concurrency"] != 64 or level["errors"] != 0 or level["requests"] == 0 or level["seconds"] < 10:
    sys.exit(f"smoke: {level['errors']} of {level['requests']} failed: {level['errors_by_status']}")
EOF
    [ "$(podman inspect -f '{{.State.OOMKilled}} {{.State.Running}}' maas-smoke)" = "false true" ] ||
        fail "the container was OOM-killed or stopped under load"
    echo "smoke:       memory: peak $(podman exec maas-smoke sh -c 'grep VmHWM /proc/1/status' |
        awk '{print $2, $3}') (VmHWM), now $(podman stats --no-stream --format '{{.MemUsage}}' maas-smoke)"
}
check "holds maas bench --concurrency 64 --duration 10 with --memory 256m, no failed request" loaded

metrics_pass_promtool() {
    curl -sf "$(url_of maas-smoke)/metrics" >"$work/metrics.txt" &&
        grep -q '^maas_request_duration_seconds_bucket' "$work/metrics.txt" &&
        promtool check metrics <"$work/metrics.txt"
}
check "promtool check metrics accepts /metrics after the traffic" metrics_pass_promtool

# SIGTERM with 16 clients sending, and 8 requests caught half-sent: maas stops accepting, finishes
# what it holds and exits 0. The 8 are completed only after the container has logged the SIGTERM,
# and each must still get its 200 and its whole answer. The clients' later requests find the port
# closed ("connection" errors: bench counts a cut answer so too, hence the 8).
drains() {
    local url port t0 code took
    url=$(url_of maas-smoke)
    port=${url##*:}
    MAAS_API_KEY=$key "$binary" --quiet bench --url "$url" --concurrency 16 \
        --duration 4 --json >"$work/drain.json" 2>/dev/null &
    bench_pid=$!
    sleep 1
    t0=$(date +%s.%N)
    python3 - "$port" "$key" "$work/probe.ppm" "$grace" <<'EOF' || return 1
import json, socket, subprocess, sys, time
port, key, image, grace = int(sys.argv[1]), sys.argv[2], open(sys.argv[3], "rb").read(), sys.argv[4]
head = (f"POST /v1/predict HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\n"
        f"Content-Type: application/octet-stream\r\nContent-Length: {len(image)}\r\n"
        "Connection: close\r\n\r\n").encode()
half = len(image) // 2
held = []
for _ in range(8):
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.sendall(head + image[:half])
    held.append(s)
time.sleep(0.3)
stop = subprocess.Popen(["podman", "stop", "-t", grace, "maas-smoke"],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    logs = subprocess.run(["podman", "logs", "maas-smoke"], capture_output=True, text=True)
    if "SIGTERM" in logs.stdout + logs.stderr:
        break
    time.sleep(0.05)
else:
    sys.exit("smoke: the container never logged the SIGTERM")
answers = []
for s in held:
    s.sendall(image[half:])
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    answers.append(data)
stop.wait()
ok = 0
for data in answers:
    head_end = data.find(b"\r\n\r\n")
    status = data.split(b"\r\n", 1)[0].decode(errors="replace")
    if " 200 " in status and json.loads(data[head_end + 4:])["label"] == "class1":
        ok += 1
    else:
        print(f"smoke: a held request got {status!r}: {data[-200:]!r}", file=sys.stderr)
print(f"smoke:       8 requests half-sent at SIGTERM, completed after it: {ok} answered 200, label class1")
sys.exit(0 if ok == 8 else 1)
EOF
    took=$(elapsed "$t0")
    wait "$bench_pid" || true
    bench_pid=""
    code=$(podman inspect -f '{{.State.ExitCode}}' maas-smoke)
    echo "smoke:       stopped in ${took}s (grace ${grace}s), exit code $code;" \
        "its last words: $(podman logs maas-smoke 2>&1 | tail -n 1)"
    [ "$code" = 0 ] || { podman logs maas-smoke 2>&1 | tail -n 5 >&2; fail "exit code $code"; return 1; }
    [ "$(echo "$took < $grace" | bc)" = 1 ] || { fail "took ${took}s"; return 1; }
    python3 - "$work/drain.json" <<'EOF'
import json, sys
level = json.load(open(sys.argv[1]))["results"][0]
print(f"smoke:       bench during the stop: {level['requests'] - level['errors']} answered, "
      f"refused: {level['errors_by_status']}")
if set(level["errors_by_status"]) - {"connection"} or level["requests"] == level["errors"]:
    sys.exit("smoke: requests failed otherwise than by a closed port")
EOF
}
check "SIGTERM under load drains and exits 0 within the grace period" drains

# ---- the model inside: deploy/model.Dockerfile on the image just built.
model_inside() {
    mkdir -p "$work/context"
    cp "$work/model.maas" "$work/context/model.maas"
    tagged "$model_image" podman build --format docker --build-arg MAAS_IMAGE="$image" \
        -f deploy/model.Dockerfile \
        -t "$model_image" "$work/context" >"$work/build.log" 2>&1 ||
        { cat "$work/build.log" >&2; return 1; }
    run maas-smoke-model "$model_image" && healthy maas-smoke-model &&
        predict_agrees maas-smoke-model
}
check "deploy/model.Dockerfile: built, healthy, predicts as local" model_inside

echo "smoke: all checks passed in $(elapsed "$started")s"
