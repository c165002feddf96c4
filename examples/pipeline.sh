#!/usr/bin/env bash
# The loop a CI job runs after a change to the model or its data: train, export, deploy, then
# check the deployed model through its URL, as its clients will call it, and fail the job when it
# is below the bar. Here the deployment is `maas serve` on this machine, with an API key; in
# production it is the container or the Kubernetes/KServe manifests of deploy/, and MAAS_URL
# points there instead.
#
#   examples/pipeline.sh                          # CIFAR-10 in data/ (downloaded when missing)
#   MAAS=target/debug/maas DATA=small BAR=0.9 EPOCHS=2 LIMIT=500 examples/pipeline.sh
#
# Exit status: 0 when the deployed model reaches BAR, 1 when it is below it or anything failed.
set -euo pipefail

maas=${MAAS:-maas}
data=${DATA:-data}
bar=${BAR:-0.45}
epochs=${EPOCHS:-3}

work=$(mktemp -d)
server=""
cleanup() {
    if [ -n "$server" ]; then kill "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

# 1. Train and export: one self-contained model file.
"$maas" --device cpu --quiet train --data "$data" --epochs "$epochs" --checkpoints "$work/run" \
    ${LIMIT:+--limit "$LIMIT"}
"$maas" --quiet export --checkpoints "$work/run" -o "$work/model.maas"

# 2. Deploy: a server on a free port, guarded by a key made for this run.
key=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
: >"$work/serve.log" # before the server starts: the background job opens it in its own time
MAAS_API_KEY=$key "$maas" --device cpu serve --model "$work/model.maas" --port 0 --no-grpc \
    2>"$work/serve.log" &
server=$!
url=""
for _ in $(seq 1 300); do
    # The whole line, up to the details after the URL: the server may still be writing it.
    url=$(sed -n 's/^listening on \(http[^ ]*\) (.*/\1/p' "$work/serve.log")
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$work/serve.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$url" ] || { echo "pipeline: the server did not start" >&2; exit 1; }

# 3. Call it as its clients will, and gate on its accuracy on the test split.
export MAAS_URL=$url MAAS_API_KEY=$key
"$maas" --quiet eval --data "$data" --plots "$work" --fail-under "$bar"
echo "pipeline: the deployed model at $url reaches --fail-under $bar"
