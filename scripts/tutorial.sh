#!/usr/bin/env bash
# The tutorial's conversation, scripted, end to end: build tcpscript, start
# scripts/reply.rhai on a free loopback port, wait for its `listening on`
# line, run scripts/conversation.rhai against it, stop the server.
# Exits with the client's exit code (0 when every expectation held).
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release --locked --quiet
bin=target/release/tcpscript

log=$(mktemp)
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
"$bin" server scripts/reply.rhai --listen 127.0.0.1:0 2>"$log" &
server=$!

# Wait for the bound port (never a fixed sleep); give up after 10 seconds.
for _ in $(seq 200); do
  port=$(sed -n 's/^listening on 127\.0\.0\.1:\([0-9]*\)$/\1/p' "$log")
  [ -n "$port" ] && break
  kill -0 "$server" 2>/dev/null || { cat "$log"; exit 4; }
  sleep 0.05
done
[ -n "$port" ] || { echo "server did not start:"; cat "$log"; exit 4; }

status=0
"$bin" client scripts/conversation.rhai --connect "127.0.0.1:$port" -v "$@" || status=$?
kill -TERM "$server"
wait "$server" || true
echo "--- server log"
cat "$log"
exit "$status"
