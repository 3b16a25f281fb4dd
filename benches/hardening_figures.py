# Figures for the hostile cases the server holds up against, for comparing
# two builds by hand (not part of CI):
#
#   python3 benches/hardening_figures.py target/release/tcpscript
#   python3 benches/hardening_figures.py /path/to/an/older/tcpscript
#
# Each case starts `BIN server` on 127.0.0.1 port 0 with a small script,
# attacks it over loopback, and prints the server's memory (VmRSS when idle,
# VmHWM after) and whether a bystander is still served; `hogs` prints a
# bystander's round trips while two peers keep hooks spinning to their
# limit; `shutdown` sends SIGTERM with one hook asleep and one peer idle.
# Scripts are written to ./s.rhai: run it from a scratch folder.
import socket, subprocess, sys, time, re, resource, os, signal, threading, statistics
h = resource.getrlimit(resource.RLIMIT_NOFILE)[1]; resource.setrlimit(resource.RLIMIT_NOFILE, (h, h))
BIN = sys.argv[1]
def server(script, *args):
    open("s.rhai", "w").write(script)
    p = subprocess.Popen([BIN, "server", "s.rhai", "--listen", "127.0.0.1:0", *args], stderr=subprocess.PIPE, text=True)
    line = p.stderr.readline(); port = int(line.strip().rsplit(":", 1)[1])
    threading.Thread(target=lambda: p.stderr.read(), daemon=True).start()
    return p, port
def mem(p):
    s = open(f"/proc/{p.pid}/status").read()
    return {k: int(re.search(k + r":\s+(\d+)", s).group(1)) // 1024 for k in ("VmRSS", "VmHWM")}
def ping(port, timeout=15):
    t = time.time()
    try:
        c = socket.create_connection(("127.0.0.1", port), timeout=timeout); c.sendall(b"ping\n"); r = c.makefile().readline(); c.close()
        return f"{(time.time()-t)*1000:.0f} ms" if r else "closed"
    except Exception as e: return f"failed ({e.__class__.__name__})"
def done(p): p.kill(); p.wait()

def lenprefix():
    p, port = server("fn on_message(m) { m }", "--framing", "len:u32", "-q")
    idle = mem(p)["VmRSS"]; socks = []
    for i in range(2000):
        s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"\x00\x10\x00\x00" + b"x" * 100); socks.append(s)
    time.sleep(2); m = mem(p); done(p)
    return f"idle {idle} MiB, peak {m['VmHWM']} MiB with 2,000 peers each promising 1 MiB"

def sendloop():
    p, port = server('fn on_message(m) { if m != "flood" { return m; } let big = ""; big.pad(1048576, "x"); for i in 0..2000 { send(big + i); } }', "-q", "--max-ops", "0", "--hook-timeout", "60s")
    idle = mem(p)["VmRSS"]; s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"flood\n")
    time.sleep(8); m = mem(p); b = ping(port); done(p)
    return f"idle {idle} MiB, peak {m['VmHWM']} MiB after 2,000 sends of new 1 MiB strings to a peer that never reads, bystander {b}"

def broadcast():
    p, port = server('let big = ""; big.pad(8000000, "x"); fn on_message(m) { if m == "big" { broadcast(big + m.len()); return "sent"; } m }', "-q")
    idle = mem(p)["VmRSS"]; deaf = socket.create_connection(("127.0.0.1", port))
    t = socket.create_connection(("127.0.0.1", port)); f = t.makefile()
    for i in range(300): t.sendall(b"big\n"); f.readline()
    m = mem(p); b = ping(port); done(p)
    return f"idle {idle} MiB, peak {m['VmHWM']} MiB after 300 broadcasts of 8 MB to a member that never reads, bystander {b}"

def mapkeys():
    p, port = server('let seen = #{}; fn on_message(m) { if m != "keys" { return m; } let k = ""; k.pad(1048576, "k"); for i in 0..600 { seen[k + i] = i; } "kept" }', "-q", "--max-ops", "0", "--hook-timeout", "60s")
    idle = mem(p)["VmRSS"]; s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"keys\n")
    s.settimeout(60); r = s.recv(100)
    m = mem(p); b = ping(port); done(p)
    return f"idle {idle} MiB, peak {m['VmHWM']} MiB, hook {'answered' if r else 'stopped'}, bystander {b}"

def hogs():
    p, port = server('fn on_message(m) { if m == "spin" { loop {} } m }', "-q", "--max-ops", "0", "--hook-timeout", "1s")
    stop = False
    def hog():
        while not stop:
            s = socket.create_connection(("127.0.0.1", port)); s.sendall(b"spin\n")
            try: s.recv(10)
            except: pass
            s.close()
    ts = [threading.Thread(target=hog, daemon=True) for _ in range(2)]; [t.start() for t in ts]
    time.sleep(0.2)
    c = socket.create_connection(("127.0.0.1", port)); c.settimeout(15); f = c.makefile("rb"); rtts = []; t0 = time.time()
    while time.time() - t0 < 4:
        t = time.time(); c.sendall(b"ping\n"); f.readline(); rtts.append(time.time() - t)
    stop = True; done(p); rtts.sort()
    return f"{len(rtts)} round trips in 4 s, p50 {rtts[len(rtts)//2]*1000:.2f} ms, p99 {rtts[len(rtts)*99//100]*1000:.1f} ms, worst {rtts[-1]*1000:.0f} ms"

def shutdown():
    open("s.rhai", "w").write('fn on_message(m) { if m == "nap" { sleep(3600000); } m } fn on_disconnect() { log(`bye ${peer()}`) }')
    p = subprocess.Popen([BIN, "server", "s.rhai", "--listen", "127.0.0.1:0"], stderr=subprocess.PIPE, text=True)
    port = int(p.stderr.readline().strip().rsplit(":", 1)[1])
    a = socket.create_connection(("127.0.0.1", port)); a.sendall(b"nap\n")
    b = socket.create_connection(("127.0.0.1", port)); b.sendall(b"hi\n"); b.recv(10)
    time.sleep(0.2); t = time.time(); p.send_signal(signal.SIGTERM)
    try: out = p.communicate(timeout=30)[1]
    except subprocess.TimeoutExpired: done(p); out = "(still running after 30 s)"
    byes = out.count("bye ")
    summary = [l for l in out.splitlines() if l.startswith("shut down")]
    return f"exit {p.returncode} after {time.time()-t:.1f} s, on_disconnect ran {byes} times, {summary}"

for name, f in [("len prefix", lenprefix), ("send loop", sendloop), ("broadcast", broadcast), ("map keys", mapkeys), ("hogs", hogs), ("shutdown", shutdown)]:
    try: print(f"{name}: {f()}", flush=True)
    except Exception as e: print(f"{name}: error {e}", flush=True)
