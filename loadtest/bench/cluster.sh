#!/usr/bin/env bash
# Two release sfu-server nodes in cluster mode with the media relay (a redis-server on a free
# port; Debian: apt-get install redis-server), sfu-swarm spread over both (the publisher on the
# second, the viewers alternating, so half of them watch through the relay), then what the
# relay cost, from the nodes' own counters and CPU time:
#
#   origin: CPU per packet sent (forwarded to its viewers + relayed to the other node)
#   edge:   CPU per packet forwarded to its viewers (each came over the relay)
#   hop:    what a relay hop adds, p50/p99 (sfu_relay_hop_seconds: origin write to edge read)
#
#   loadtest/bench/cluster.sh --preset livestream --subscribers 200 --simulcast --duration 20
#   NODES=1 loadtest/bench/cluster.sh ...      (the same on one node: the baseline)
#   NO_BUILD=1 loadtest/bench/cluster.sh ...   (use the binaries already built)
#
# Ratios are over each server's life (its CPU time and counters at the end of the run, from
# its own /metrics), so the two layouts compare alike. Each node runs one media worker.
# Binaries come from ${CARGO_TARGET_DIR:-target}/release.
set -euo pipefail
cd "$(dirname "$0")/../.."
[[ -z "${NO_BUILD:-}" ]] && cargo build --release -q -p control-api -p loadtest
bin="${CARGO_TARGET_DIR:-target}/release"
command -v redis-server >/dev/null || { echo "redis-server is needed (apt-get install redis-server)" >&2; exit 1; }
base=$(( 20000 + RANDOM % 10000 ))
redis_port=$base
dir=$(mktemp -d /tmp/sfu-bench-cluster.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n "${KEEP:-}" ]]; then echo "logs and metrics kept in $dir" >&2; else rm -rf "$dir"; fi
}
trap cleanup EXIT
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$dir/redis.log" 2>&1 &
pids+=($!)
node() { # id http-port media-port
  "$bin/sfu-server" --http-addr "127.0.0.1:$2" --media-port "$3" --ice-tcp-port $(( $3 + 1 )) --workers 1 --log warn \
    --redis-url "redis://127.0.0.1:$redis_port" --node-id "$1" \
    --relay-addr 127.0.0.1:0 --cluster-secret "a benchmark's cluster secret" >"$dir/$1.log" 2>&1 &
  pids+=($!)
}
a_port=$(( base + 10 )); b_port=$(( base + 20 ))
node a "$a_port" $(( base + 11 ))
servers=(--server "127.0.0.1:$a_port")
if [[ "${NODES:-2}" != 1 ]]; then
  node b "$b_port" $(( base + 21 ))
  servers+=(--server "127.0.0.1:$b_port")
fi
for _ in $(seq 100); do
  grep -q ready "$dir/a.log" 2>/dev/null && { [[ "${NODES:-2}" == 1 ]] || grep -q ready "$dir/b.log" 2>/dev/null; } && break
  sleep 0.1
done
# Linked (the registry is read every second, then the smaller id dials).
for _ in $(seq 100); do
  [[ "${NODES:-2}" == 1 ]] && break
  curl -s "http://127.0.0.1:$a_port/metrics" | grep -q '^sfu_relay_links 1' && break
  sleep 0.1
done
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); ${NODES:-2} node(s), one media worker each" >&2
"$bin/sfu-swarm" "${servers[@]}" --json "$@" >"$dir/report.json"
curl -s "http://127.0.0.1:$a_port/metrics" >"$dir/a.metrics"
if [[ "${NODES:-2}" != 1 ]]; then curl -s "http://127.0.0.1:$b_port/metrics" >"$dir/b.metrics"; else : >"$dir/b.metrics"; fi
python3 - "$dir" <<'EOF'
import json, sys
d = sys.argv[1]
report = json.load(open(f"{d}/report.json"))
def metrics(name):
    out = {}
    for line in open(f"{d}/{name}.metrics"):
        if line.startswith("#") or " " not in line:
            continue
        key, value = line.rsplit(" ", 1)
        try:
            out[key] = float(value)
        except ValueError:
            pass
    return out
ma, mb = metrics("a"), metrics("b")
def quantile(m, q):
    buckets = sorted((float(k.split('le="')[1].split('"')[0]), v) for k, v in m.items()
                     if k.startswith("sfu_relay_hop_seconds_bucket") and 'le="+Inf"' not in k)
    total = m.get("sfu_relay_hop_seconds_count", 0)
    for bound, count in buckets:
        if total and count >= q * total:
            return bound * 1000
    return None
def per_cpu(m, packets):
    cpu = m.get("process_cpu_seconds_total")
    return round(packets / cpu) if cpu else None
viewers = report.get("viewers", {})
if not mb:  # one node: the baseline
    summary = {
        "cpu_seconds": ma.get("process_cpu_seconds_total"),
        "packets_forwarded": ma.get("sfu_rtp_forwarded_total"),
        "packets_per_cpu_second": per_cpu(ma, ma.get("sfu_rtp_forwarded_total", 0)),
    }
else:  # the publisher is on b (the origin); a is the edge
    relayed = mb.get("sfu_relay_packets_sent_total", 0)
    summary = {
        "origin_cpu_seconds": mb.get("process_cpu_seconds_total"),
        "origin_packets_forwarded": mb.get("sfu_rtp_forwarded_total"),
        "origin_packets_relayed": relayed,
        "origin_packets_per_cpu_second": per_cpu(mb, mb.get("sfu_rtp_forwarded_total", 0) + relayed),
        "edge_cpu_seconds": ma.get("process_cpu_seconds_total"),
        "edge_packets_received_over_relay": ma.get("sfu_relay_packets_received_total"),
        "edge_packets_forwarded": ma.get("sfu_rtp_forwarded_total"),
        "edge_packets_per_cpu_second": per_cpu(ma, ma.get("sfu_rtp_forwarded_total", 0)),
        "relay_repaired": mb.get("sfu_relay_packets_repaired_total"),
        "relay_dropped": mb.get("sfu_relay_packets_dropped_total"),
        "hop_samples": ma.get("sfu_relay_hop_seconds_count"),
        "hop_p50_ms_at_most": quantile(ma, 0.5),
        "hop_p99_ms_at_most": quantile(ma, 0.99),
    }
summary["viewers_loss_percent"] = viewers.get("loss_percent")
summary["ttff_p95_ms"] = report.get("ttff_ms", {}).get("p95")
summary["viewers"] = viewers.get("count")
summary["viewers_receiving_everything"] = viewers.get("receiving_everything")
summary["bad_payloads"] = report.get("bad_payloads")
print(json.dumps(summary, indent=2))
EOF
