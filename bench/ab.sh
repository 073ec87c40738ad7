#!/usr/bin/env bash
# A/B benchmark of two confab builds in one sitting (docs/benchmarks.md):
# the standard scenarios (fanout 1 × 100, 100 rooms × 10, idle 10,000),
# alternating A and B each round so drift in the machine's speed hits both.
#
#   bench/ab.sh A-BINARY B-BINARY BENCH-BINARY [ROUNDS]
#
# Each run gets a fresh server (taskset core 0, bench/confab-bench.toml, a new
# data dir) and the tool on core 1. Prints one line per run:
#   scenario  build  deliveries/s  p50  p99  server-CPU   (idle: KiB/connection)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

a=$1 b=$2 tool=$3 rounds=${4:-3}
results=${AB_RESULTS:-/tmp/confab-ab}   # every run's JSON report is kept here
mkdir -p "$results"
secret=confab-bench-secret-not-for-production
port=8080

serve() {
  rm -rf /tmp/confab-bench
  taskset -c 0 "$1" serve --config bench/confab-bench.toml >/tmp/confab-ab-server.log 2>&1 &
  server=$!
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:$port/readyz" >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "server $1 did not become ready" >&2
  return 1
}

stop() {
  kill "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
}

run() { # scenario, label, binary
  serve "$3"
  local out
  case $1 in
    fanout)
      out=$(taskset -c 1 "$tool" fanout --json --jwt-secret $secret --server-pid "$server" \
        --rooms 1 --clients 100 --senders 10 --rate 510 --duration 10) ;;
    rooms)
      out=$(taskset -c 1 "$tool" fanout --json --jwt-secret $secret --server-pid "$server" \
        --rooms 100 --clients 10 --senders all --rate 10.2 --duration 10) ;;
    idle)
      out=$(taskset -c 1 "$tool" idle --json --jwt-secret $secret --server-pid "$server" \
        --connections 10000 --per-room 100) ;;
  esac
  stop
  printf '%s\n' "$out" >"$results/$1-$2-$round.json"
  python3 - "$1" "$2" "$out" <<'PY'
import json, sys
scenario, label, raw = sys.argv[1], sys.argv[2], sys.argv[3]
try:
    r = json.loads(raw[raw.index("{"):])
except Exception:
    print(f"{scenario:7} {label:2} (no result) {raw[-300:]!r}")
    sys.exit(0)
if scenario == "idle":
    rss = r.get("rss_kib", {})
    print(f"{scenario:7} {label:2} KiB/conn={r.get('kib_per_connection')} "
          f"rss_before={rss.get('before')} rss_held={rss.get('after_hold')} ok={r.get('ok')}")
else:
    m = r.get("measured", {})
    lat = m.get("latency_ms", {})
    cpu = m.get("cpu_percent_of_core", {}).get("server")
    cpu = f"{cpu:.0f}%" if isinstance(cpu, (int, float)) else cpu
    print(f"{scenario:7} {label:2} deliveries/s={m.get('deliveries_per_s', 0):,.0f} "
          f"p50={lat.get('p50')} p99={lat.get('p99')} cpu={cpu} "
          f"seq_violations={r.get('totals', {}).get('seq_violations')} ok={r.get('ok')}")
PY
}

for round in $(seq 1 "$rounds"); do
  for scenario in fanout rooms idle; do
    run "$scenario" A "$a"
    run "$scenario" B "$b"
  done
done
