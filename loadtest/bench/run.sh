#!/usr/bin/env bash
# Starts a release sfu-server on free local ports, runs sfu-swarm against it with the given
# arguments, prints the swarm's report and stops the server. Ratios in the report come from
# the server's own counters and CPU time (/metrics), so they hold on a shared, noisy machine.
#
#   loadtest/bench/run.sh --publishers 1 --subscribers 20 --duration 20
#   WORKERS=1 loadtest/bench/run.sh ...      (media workers of the server; default: cores)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release -q -p control-api -p loadtest
http_port=$(( 20000 + RANDOM % 10000 ))
media_port=$(( http_port + 1 ))
workers_flag=()
[[ -n "${WORKERS:-}" ]] && workers_flag=(--workers "$WORKERS")
./target/release/sfu-server --http-addr "127.0.0.1:$http_port" --media-port "$media_port" \
  --log warn "${workers_flag[@]}" >/tmp/sfu-bench-server.log 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
  grep -q "ready" /tmp/sfu-bench-server.log 2>/dev/null && break
  sleep 0.1
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); server workers: ${WORKERS:-$(nproc)}"
./target/release/sfu-swarm --server "127.0.0.1:$http_port" "$@"
