#!/usr/bin/env bash
# Measure ses-gateway against Postfix with the shared harness (DESIGN §9):
#   bench/run_gateway.sh [harness options]      e.g. --reuse, -r 5
# Needs the harness set up once: cp -r ../shared/bench /tmp/ses-bench && bash /tmp/ses-bench/setup.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
harness=${SES_BENCH:-/tmp/ses-bench}
[[ -x $harness/run.sh ]] || { echo "set up the harness first (see the comment above)" >&2; exit 1; }
rm -rf /tmp/ses-gateway-bench && mkdir -p /tmp/ses-gateway-bench
# WORKERS=N overrides [server] workers (worker processes sharing the listener).
sed "s/^log_level = \"warning\"/log_level = \"warning\"\nworkers = ${WORKERS:-1}/" "$here/gateway.toml" > /tmp/ses-gateway-bench/gateway.toml
python3 -m gateway run -c /tmp/ses-gateway-bench/gateway.toml > /tmp/ses-gateway-bench/gateway.log 2>&1 &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do (echo > /dev/tcp/127.0.0.1/2600) 2>/dev/null && break; sleep 0.1; done
"$harness/run.sh" 2600 "ses-gateway-w${WORKERS:-1}" "$@"
