#!/usr/bin/env bash
# Profiles the release build under callgrind, then writes link/hot-text.ld
# from the profiles with link/hot_text.py. The workloads, over 127.0.0.1:
# a TLS echo and a TCP echo over 50 connections, the proxy with a
# pass-through script and without one over 50 connections (to an echo
# upstream run as it comes), a UDP echo from one peer. Run from the
# repository's top after `TCPSCRIPT_NO_HOT_TEXT=1 cargo build --release`
# (valgrind names no function outside `.text`, so it profiles a build laid
# out as it comes), or point BIN at such a build; needs valgrind, python3,
# nm and readelf. About a minute. See README, "Code layout".
# KEEP=1 keeps the profiles, and says where.
set -euo pipefail

bin=${BIN:-target/release/tcpscript}
if readelf -SW "$bin" | grep -q ' \.text\.hot '; then
    echo "$bin is laid out already: build it with TCPSCRIPT_NO_HOT_TEXT=1 cargo build --release" >&2
    exit 1
fi
work=$(mktemp -d)
trap 'pkill -f "[c]allgrind-out-file=$work" 2>/dev/null || true; [ -z "${upstream_pid:-}" ] || kill "$upstream_pid" 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
printf 'fn on_message(msg) { msg }\n' > "$work/echo.rhai"

# A Python peer: warms up, zeroes the counts, runs N messages, dumps.
cat > "$work/drive.py" <<'EOF'
import socket, ssl, subprocess, sys
kind, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
msg = b"00000000000000000000 ping-pong!\n"
if kind == "udp":
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("127.0.0.1", port))
    s.settimeout(5)
    def run(k):
        for _ in range(k):
            s.send(msg)
            s.recv(100)
    rounds = n
else:
    conns = [socket.create_connection(("127.0.0.1", port)) for _ in range(50)]
    if kind == "tls":
        ctx = ssl.create_default_context(cafile=sys.argv[4])
        conns = [ctx.wrap_socket(c, server_hostname="localhost") for c in conns]
    for c in conns:
        c.settimeout(5)
    def run(k):
        for _ in range(k):
            for c in conns:
                c.sendall(msg)
            for c in conns:
                got = b""
                while not got.endswith(b"\n"):
                    got += c.recv(100)
    rounds = n // 50
run(50)
subprocess.run(["callgrind_control", "-z"], capture_output=True)
run(rounds)
subprocess.run(["callgrind_control", "-d"], capture_output=True)
EOF

# port LOG: the port a process announced in LOG ("listening on ..."), once it has.
port() {
    local found=
    for _ in $(seq 240); do
        found=$(grep -o 'listening on [a-z ]*[0-9.]*:[0-9]*' "$1" | sed 's/.*://' || true)
        [ -n "$found" ] && break
        sleep 0.5
    done
    [ -n "$found" ] || { cat "$1" >&2; exit 1; }
    echo "$found"
}

# profile NAME MESSAGES ARGS...: runs tcpscript ARGS under callgrind and
# drives it; the profile of the measured part is $work/NAME.out.1.
profile() {
    local name=$1 messages=$2
    shift 2
    local out="$work/$name.out"
    valgrind --tool=callgrind --dump-instr=yes --callgrind-out-file="$out" \
        "$bin" "$@" > "$out.log" 2>&1 &
    python3 "$work/drive.py" "$name" "$(port "$out.log")" "$messages" "$work/ca.pem"
    pkill -INT -f "[c]allgrind-out-file=$out" || true
    for _ in $(seq 60); do
        pgrep -f "[c]allgrind-out-file=$out" > /dev/null || break
        sleep 0.5
    done
    profiles+=("$out.1:$messages")
}

# The proxies' upstream, run as it comes (not profiled).
"$bin" server --listen 127.0.0.1:0 -q "$work/echo.rhai" > "$work/upstream.log" 2>&1 &
upstream_pid=$!
upstream=127.0.0.1:$(port "$work/upstream.log")
printf 'const FRAMING = "line";\nfn on_client_message(msg) { msg }\nfn on_server_message(msg) { msg }\n' \
    > "$work/pass.rhai"

# The order is the generator's too: workloads next to each other in it
# share the most code (see link/hot_text.py).
profiles=()
profile tls 5000 server --listen 127.0.0.1:0 -q --tls --tls-ca-out "$work/ca.pem" "$work/echo.rhai"
profile tcp 5000 server --listen 127.0.0.1:0 -q "$work/echo.rhai"
profile script 5000 proxy --listen 127.0.0.1:0 --upstream "$upstream" -q "$work/pass.rhai"
profile proxy 5000 proxy --listen 127.0.0.1:0 --upstream "$upstream" -q
profile udp 2000 server --listen 127.0.0.1:0 -q --udp "$work/echo.rhai"
python3 link/hot_text.py "$bin" "${profiles[@]}"
[ -z "${KEEP:-}" ] || echo "profiles kept in $work" >&2
