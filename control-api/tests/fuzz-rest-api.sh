#!/usr/bin/env bash
# Schema-driven fuzzing of the room service: schemathesis reads /api/openapi.json and sends
# generated requests (valid and invalid) to every operation; any 5xx fails. Run by the
# project's test command with .venv (requirements.txt next to this file).
#
#   control-api/tests/fuzz-rest-api.sh [path/to/sfu-server]
set -euo pipefail
cd "$(dirname "$0")/../.."
bin="${1:-target/debug/sfu-server}"
port=$(( 30000 + RANDOM % 10000 ))
log=$(mktemp)
"$bin" --http-addr "127.0.0.1:$port" --media-port 0 --workers 1 --log warn >"$log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q ready "$log" && break; sleep 0.1; done
token=$("$bin" token --identity fuzzer --room fuzz --room-create true --room-list true --room-admin true)
timeout 600 .venv/bin/schemathesis run "http://127.0.0.1:$port/api/openapi.json" \
  -H "Authorization: Bearer $token" --checks not_a_server_error -n 25 --generation-deterministic
# The server must still be up and answering after all that.
.venv/bin/python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/healthz')"
