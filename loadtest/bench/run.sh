#!/usr/bin/env bash
# Starts a release sfu-server on free local ports, runs sfu-swarm against it with the given
# arguments (plus --server-pid, so the server's CPU time comes from /proc), prints the swarm's
# report and stops the server. Ratios in the report come from the server's own counters and
# CPU time, so they hold on a shared, noisy machine.
#
#   loadtest/bench/run.sh --preset livestream --subscribers 50 --simulcast --duration 20
#   loadtest/bench/run.sh --preset meeting --publishers 5 --simulcast --duration 20 --json
#   WORKERS=1 loadtest/bench/run.sh ...      (media workers of the server; default: cores)
#   NO_BUILD=1 loadtest/bench/run.sh ...     (use the binaries already built)
#   TRANSPORT=tcp loadtest/bench/run.sh ...  (bots carry media over ICE-TCP instead of UDP)
#
# Binaries come from ${CARGO_TARGET_DIR:-target}/release.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -z "${NO_BUILD:-}" ]] && cargo build --release -q -p control-api -p loadtest
bin="${CARGO_TARGET_DIR:-target}/release"
http_port=$(( 20000 + RANDOM % 10000 ))
media_port=$(( http_port + 1 ))
tcp_port=$(( http_port + 100 ))
workers_flag=()
[[ -n "${WORKERS:-}" ]] && workers_flag=(--workers "$WORKERS")
log=$(mktemp /tmp/sfu-bench-server.XXXXXX.log)
"$bin/sfu-server" --http-addr "127.0.0.1:$http_port" --media-port "$media_port" \
  --ice-tcp-port "$tcp_port" --log warn "${workers_flag[@]}" >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
  grep -q "ready" "$log" 2>/dev/null && break
  sleep 0.1
done
transport=()
[[ "${TRANSPORT:-udp}" == tcp ]] && transport=(--ice-tcp "127.0.0.1:$tcp_port")
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); server workers: ${WORKERS:-$(nproc)}; transport: ${TRANSPORT:-udp}" >&2
"$bin/sfu-swarm" --server "127.0.0.1:$http_port" --server-pid "$server" "${transport[@]}" "$@"
