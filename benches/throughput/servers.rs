//! Servers under test: `tcpscript server`, the floor (this binary
//! re-executed, see `floor.rs`) and Python asyncio, each in its own process.

use std::fs;
use std::io::{BufRead, BufReader, Read as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use clap::ValueEnum;

use crate::measure::{Cpu, proc_cpu};
use crate::run::Context;
use crate::tls::{FLOOR_CERT, FLOOR_KEY, TCPSCRIPT_CA};

/// The release binary cargo built for this bench (`target/release/tcpscript`).
const BUILT_TCPSCRIPT: &str = env!("CARGO_BIN_EXE_tcpscript");
/// Set to benchmark another build instead, e.g. one with debug info to profile.
const BIN_VAR: &str = "TCPSCRIPT_BENCH_BIN";

/// The tcpscript binary under test.
pub(crate) fn tcpscript() -> PathBuf {
    std::env::var_os(BIN_VAR).map_or_else(|| PathBuf::from(BUILT_TCPSCRIPT), PathBuf::from)
}
/// The hidden argument that turns this binary into the floor server.
pub(crate) const FLOOR_ARG: &str = "--floor-server";
/// The hidden argument that turns this binary into the TLS floor server;
/// it takes the certificate and key PEM files.
pub(crate) const FLOOR_TLS_ARG: &str = "--floor-tls-server";

pub(crate) const ECHO_HOOK: &str = "fn on_message(msg) { msg }\n";

/// The Python asyncio line-echo server: what a user writes instead.
pub(crate) const PYTHON_SERVER: &str = r#"
import asyncio, resource, socket, sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
try:
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
except (ValueError, OSError):
    pass

async def handle(reader, writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            line = await reader.readline()
            if not line:
                break
            writer.write(line)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=4096)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"listening on {host}:{port}", file=sys.stderr, flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"#;

/// A server under test; `value(name)` is the name `--servers` takes (the
/// TLS ones are the `tls` section's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub(crate) enum Kind {
    #[value(name = "floor")]
    Floor,
    #[value(name = "tcpscript")]
    Tcpscript,
    #[value(name = "python")]
    Python,
    /// The tokio-rustls floor (`--floor-tls-server`).
    #[value(skip)]
    FloorTls,
    /// `tcpscript server --tls` with its throwaway CA.
    #[value(skip)]
    TcpscriptTls,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Floor => "floor (tokio)",
            Kind::Tcpscript => "tcpscript",
            Kind::Python => "python asyncio",
            Kind::FloorTls => "floor (tokio-rustls)",
            Kind::TcpscriptTls => "tcpscript --tls",
        }
    }
}

/// A server process, stopped (killed if need be) when dropped.
pub(crate) struct Server {
    pub(crate) kind: Kind,
    child: Child,
    pub(crate) addr: SocketAddr,
    /// Everything it printed on stderr after the `listening on` line.
    stderr: Arc<Mutex<String>>,
}

impl Server {
    pub(crate) fn start(kind: Kind, context: &Context) -> Result<Server, String> {
        let mut command = match kind {
            Kind::Floor => {
                let mut c =
                    Command::new(std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?);
                c.arg(FLOOR_ARG);
                c
            }
            Kind::Tcpscript => {
                let mut c = Command::new(tcpscript());
                c.arg("server").arg(context.path("echo.rhai")).args([
                    "--listen",
                    "127.0.0.1:0",
                    "-q",
                ]);
                c
            }
            Kind::Python => {
                let python = context.python.as_ref().ok_or("python3 not found")?;
                let mut c = Command::new(python);
                c.arg(context.path("echo_server.py"));
                c
            }
            Kind::FloorTls => {
                let mut c =
                    Command::new(std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?);
                c.arg(FLOOR_TLS_ARG)
                    .arg(context.path(FLOOR_CERT))
                    .arg(context.path(FLOOR_KEY));
                c
            }
            Kind::TcpscriptTls => {
                let mut c = Command::new(tcpscript());
                c.arg("server")
                    .arg(context.path("echo.rhai"))
                    .args(["--listen", "127.0.0.1:0", "-q", "--tls", "--tls-ca-out"])
                    .arg(context.path(TCPSCRIPT_CA));
                c
            }
        };
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", kind.name()))?;
        let stderr = child.stderr.take().expect("piped stderr");
        let rest = Arc::new(Mutex::new(String::new()));
        let (first_tx, first_rx) = mpsc::channel();
        {
            let rest = rest.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stderr);
                let mut first = String::new();
                let _ = reader.read_line(&mut first);
                let _ = first_tx.send(first);
                let mut buf = [0u8; 4096];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut rest = rest.lock().unwrap();
                    if rest.len() < 64 * 1024 {
                        rest.push_str(&String::from_utf8_lossy(&buf[..n]));
                    }
                }
            });
        }
        let mut server = Server {
            kind,
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            stderr: rest,
        };
        let first = first_rx
            .recv_timeout(Duration::from_secs(20))
            .map_err(|_| format!("{} printed nothing on stderr in 20 s", kind.name()))?;
        let addr = first
            .trim_end()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .ok_or_else(|| {
                format!(
                    "{} did not start: its first stderr line is {first:?} {}",
                    kind.name(),
                    server.stderr.lock().unwrap()
                )
            })?;
        if !addr.ip().is_loopback() {
            return Err(format!("{} listens on {addr}, not loopback", kind.name()));
        }
        server.addr = addr;
        Ok(server)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User and system CPU the process has used so far, in seconds.
    pub(crate) fn cpu(&self) -> Result<Cpu, String> {
        proc_cpu(self.pid())
    }

    /// (VmRSS, VmHWM) in KiB.
    pub(crate) fn memory(&self) -> Result<(u64, u64), String> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .map_err(|e| format!("/proc/{}/status: {e}", self.pid()))?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        Ok((field("VmRSS:"), field("VmHWM:")))
    }

    /// Stops it with SIGTERM; returns what it printed after starting.
    pub(crate) fn stop(mut self) -> String {
        self.terminate();
        self.stderr.lock().unwrap().clone()
    }

    fn terminate(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.terminate();
    }
}
