//! The `client` section: scripted client, `tcpscript client` running a
//! send/recv/assert_eq loop against the floor server, beside the same loop
//! in blocking Python; and its table.

use std::fmt::Write as _;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::config::Config;
use crate::measure::{median, timeval};
use crate::report::{Verdict, thousands};
use crate::run::Context;
use crate::servers::{Kind, Server, tcpscript};

pub(crate) const CLIENT_EXCHANGES: usize = 20_000;

/// The scripted client's conversation, as a plain blocking Python loop.
pub(crate) const PYTHON_CLIENT: &str = r#"
import socket, sys

port, n = int(sys.argv[1]), int(sys.argv[2])
s = socket.create_connection(("127.0.0.1", port), timeout=10)
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
f = s.makefile("rb")
for i in range(n):
    m = f"ping {i}"
    s.sendall(m.encode() + b"\n")
    r = f.readline().decode().rstrip("\r\n")
    assert r == m, (r, m)
s.close()
"#;

pub(crate) fn rhai_client(exchanges: usize) -> String {
    format!(
        "for i in 0..{exchanges} {{\n    let m = `ping ${{i}}`;\n    send(m);\n    assert_eq(recv(), m);\n}}\n"
    )
}

/// One client process run: wall time and CPU from wait4.
#[derive(Debug, Clone, Copy)]
struct ProcessRun {
    wall: f64,
    user: f64,
    system: f64,
}

/// Runs a command to completion; fails unless it exits 0.
fn run_measured(
    command: &mut Command,
    what: &str,
    stderr_path: &Path,
) -> Result<ProcessRun, String> {
    let stderr = fs::File::create(stderr_path).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot start {what}: {e}"))?;
    let mut status = 0;
    // SAFETY: waiting for our own child, into structs we own. std's Child
    // is not waited for afterwards.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        let pid = libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage);
        if pid < 0 {
            return Err(format!("wait4 {what}: {}", std::io::Error::last_os_error()));
        }
        usage
    };
    let wall = start.elapsed().as_secs_f64();
    let exited = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    if exited != Some(0) {
        return Err(format!(
            "{what} failed (status {status:#x}): {}",
            fs::read_to_string(stderr_path).unwrap_or_default().trim()
        ));
    }
    Ok(ProcessRun {
        wall,
        user: timeval(usage.ru_utime),
        system: timeval(usage.ru_stime),
    })
}

pub(crate) struct ClientResults {
    exchanges: usize,
    tcpscript: Vec<ProcessRun>,
    python: Vec<ProcessRun>,
}

impl ClientResults {
    fn wall(runs: &[ProcessRun]) -> f64 {
        median(runs.iter().map(|r| r.wall).collect())
    }
    fn user(runs: &[ProcessRun]) -> f64 {
        median(runs.iter().map(|r| r.user).collect())
    }
    fn system(runs: &[ProcessRun]) -> f64 {
        median(runs.iter().map(|r| r.system).collect())
    }
}

pub(crate) fn client_section(config: &Config, context: &Context) -> Result<ClientResults, String> {
    eprintln!(
        "== client: {CLIENT_EXCHANGES} send/recv/assert_eq exchanges against the floor server, {} run(s) each, alternating",
        config.client_runs
    );
    let server = Server::start(Kind::Floor, context)?;
    let port = server.addr.port().to_string();
    let mut results = ClientResults {
        exchanges: CLIENT_EXCHANGES,
        tcpscript: Vec::new(),
        python: Vec::new(),
    };
    let err = context.path("client.stderr");
    for run in 0..config.client_runs {
        let mut command = Command::new(tcpscript());
        command
            .arg("client")
            .arg(context.path("client.rhai"))
            .args(["--connect", &server.addr.to_string(), "-q"]);
        let t = run_measured(&mut command, "tcpscript client", &err)?;
        eprintln!(
            "  run {}  tcpscript client  wall {:>7.3} s  user {:>6.3} s  sys {:>6.3} s",
            run + 1,
            t.wall,
            t.user,
            t.system
        );
        results.tcpscript.push(t);
        if let Some(python) = &context.python {
            let mut command = Command::new(python);
            command
                .arg(context.path("client.py"))
                .arg(&port)
                .arg(CLIENT_EXCHANGES.to_string());
            let p = run_measured(&mut command, "python client", &err)?;
            eprintln!(
                "  run {}  python loop       wall {:>7.3} s  user {:>6.3} s  sys {:>6.3} s",
                run + 1,
                p.wall,
                p.user,
                p.system
            );
            results.python.push(p);
        }
    }
    drop(server);
    eprintln!();
    Ok(results)
}

pub(crate) fn client_table(out: &mut String, client: &ClientResults, verdicts: &mut Vec<Verdict>) {
    let n = client.exchanges as f64;
    let _ = writeln!(
        out,
        "\n## scripted client: {} send/recv/assert_eq exchanges against the floor server (median of {} run(s), whole process incl. startup)\n",
        client.exchanges,
        client.tcpscript.len()
    );
    let _ = writeln!(
        out,
        "| client              | wall s  | exchanges/s | user CPU s | sys CPU s |"
    );
    let _ = writeln!(
        out,
        "|---------------------|--------:|------------:|-----------:|----------:|"
    );
    let t_wall = ClientResults::wall(&client.tcpscript);
    let t_user = ClientResults::user(&client.tcpscript);
    let _ = writeln!(
        out,
        "| tcpscript client    | {:>7.3} | {:>11} | {:>10.3} | {:>9.3} |",
        t_wall,
        thousands(n / t_wall),
        t_user,
        ClientResults::system(&client.tcpscript)
    );
    if client.python.is_empty() {
        let _ = writeln!(out, "(python3 not found: no comparison)");
        return;
    }
    let p_wall = ClientResults::wall(&client.python);
    let p_user = ClientResults::user(&client.python);
    let _ = writeln!(
        out,
        "| python socket loop  | {:>7.3} | {:>11} | {:>10.3} | {:>9.3} |",
        p_wall,
        thousands(n / p_wall),
        p_user,
        ClientResults::system(&client.python)
    );
    let throughput = p_wall / t_wall;
    let cpu = t_user / p_user.max(1e-9);
    verdicts.push(Verdict {
        row: 4,
        measured: format!(
            "{}/s vs {}/s = {:.2}x python",
            thousands(n / t_wall),
            thousands(n / p_wall),
            throughput
        ),
        pass: throughput >= 0.95,
    });
    verdicts.push(Verdict {
        row: 5,
        measured: format!("{t_user:.3} s vs {p_user:.3} s = {cpu:.2}x python"),
        pass: cpu <= 0.6,
    });
}
