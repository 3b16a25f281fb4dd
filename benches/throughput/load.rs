//! The `load` section: load mode, `tcpscript client --concurrency` against
//! the floor server, beside a tokio connect/send/recv/close loop; and its
//! table.

use std::fmt::Write as _;
use std::fs;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

use crate::config::Config;
use crate::measure::median;
use crate::report::{Verdict, thousands};
use crate::run::Context;
use crate::servers::{Kind, Server, tcpscript};

/// Load mode's conversation: one exchange, on a fresh connection each time.
pub(crate) const LOAD_CONVERSATION: &str = "send(\"ping\");\nassert_eq(recv(), \"ping\");\n";
/// Virtual users in the load section.
pub(crate) const LOAD_USERS: usize = 50;

pub(crate) struct LoadResults {
    /// Per round: (tcpscript conversations/s, tokio loop conversations/s).
    rounds: Vec<(f64, f64)>,
    tcpscript_failed: u64,
    tokio_errors: u64,
    /// tcpscript's peak resident memory over the rounds, in KiB.
    peak_rss_kib: u64,
    /// The same at more users, one round each.
    scales: Vec<LoadScale>,
}

/// Load mode at many users, beside the tokio loop at as many tasks.
struct LoadScale {
    users: usize,
    ours: f64,
    reference: f64,
    tcpscript_failed: u64,
    tokio_errors: u64,
    /// tcpscript's peak resident memory, in KiB.
    peak_rss_kib: u64,
}

/// User counts measured after the 50-user rounds.
const LOAD_SCALES: [usize; 2] = [2_000, 10_000];

/// The reference: LOAD_USERS tasks, each connecting, sending one line,
/// reading the echo and closing, in a loop, for `time`.
fn tokio_connect_loop(
    context: &Context,
    addr: SocketAddr,
    time: Duration,
    users: usize,
) -> (u64, u64, f64) {
    context.runtime.block_on(async {
        let started = Instant::now();
        let deadline = started + time;
        let mut tasks = Vec::new();
        for _ in 0..users {
            tasks.push(tokio::spawn(async move {
                let (mut done, mut errors) = (0u64, 0u64);
                while Instant::now() < deadline {
                    let once = async {
                        let mut stream = tokio::net::TcpStream::connect(addr).await?;
                        stream.set_nodelay(true)?;
                        stream.write_all(b"ping\n").await?;
                        let mut reply = [0u8; 5];
                        tokio::io::AsyncReadExt::read_exact(&mut stream, &mut reply).await?;
                        Ok::<_, std::io::Error>(reply == *b"ping\n")
                    };
                    match once.await {
                        Ok(true) => done += 1,
                        _ => errors += 1,
                    }
                }
                (done, errors)
            }));
        }
        let (mut done, mut errors) = (0, 0);
        for task in tasks {
            if let Ok((d, e)) = task.await {
                done += d;
                errors += e;
            }
        }
        (done, errors, started.elapsed().as_secs_f64())
    })
}

pub(crate) fn load_section(config: &Config, context: &Context) -> Result<LoadResults, String> {
    let rounds = if config.quick { 1 } else { 3 };
    let time = Duration::from_millis(if config.quick { 1000 } else { 2000 });
    eprintln!(
        "== load: {LOAD_USERS} users, one-exchange echo conversations against the floor server, {rounds} round(s) of {:.1} s, alternating",
        time.as_secs_f64()
    );
    let server = Server::start(Kind::Floor, context)?;
    let mut results = LoadResults {
        rounds: Vec::new(),
        tcpscript_failed: 0,
        tokio_errors: 0,
        peak_rss_kib: 0,
        scales: Vec::new(),
    };
    for round in 0..rounds {
        let mut command = Command::new(tcpscript());
        command
            .arg("client")
            .arg(context.path("load.rhai"))
            .args(["--connect", &server.addr.to_string(), "--json"])
            .args(["--concurrency", &LOAD_USERS.to_string()])
            .args(["--duration", &format!("{}ms", time.as_millis())]);
        let (stdout, peak_rss_kib) = run_watching_memory(command)?;
        results.peak_rss_kib = results.peak_rss_kib.max(peak_rss_kib);
        let summary: serde_json::Value = serde_json::from_slice(&stdout)
            .map_err(|e| format!("load mode printed no JSON summary: {e}"))?;
        let ours = summary["conversations_per_second"].as_f64().unwrap_or(0.0);
        results.tcpscript_failed += summary["failed"].as_u64().unwrap_or(0);
        let (done, errors, seconds) = tokio_connect_loop(context, server.addr, time, LOAD_USERS);
        results.tokio_errors += errors;
        let reference = done as f64 / seconds.max(1e-9);
        eprintln!(
            "  round {}  tcpscript {:>9}/s  tokio loop {:>9}/s  ratio {:.2}",
            round + 1,
            thousands(ours),
            thousands(reference),
            ours / reference.max(1e-9)
        );
        results.rounds.push((ours, reference));
    }
    // Past a few thousand users, what matters is what each one costs: one
    // longer round each, memory watched throughout.
    let time = Duration::from_millis(if config.quick { 2000 } else { 4000 });
    let usable = context.fd_limit.saturating_sub(256) as usize;
    for users in LOAD_SCALES {
        if users > usable {
            eprintln!(
                "  {users} users: skipped, the open-file limit is {}",
                context.fd_limit
            );
            continue;
        }
        let mut command = Command::new(tcpscript());
        command
            .arg("client")
            .arg(context.path("load.rhai"))
            .args(["--connect", &server.addr.to_string(), "--json", "-q"])
            .args(["--concurrency", &users.to_string()])
            .args(["--duration", &format!("{}ms", time.as_millis())]);
        let (stdout, peak_rss_kib) = run_watching_memory(command)?;
        let summary: serde_json::Value = serde_json::from_slice(&stdout)
            .map_err(|e| format!("load mode at {users} users printed no JSON summary: {e}"))?;
        let ours = summary["conversations_per_second"].as_f64().unwrap_or(0.0);
        let tcpscript_failed = summary["failed"].as_u64().unwrap_or(u64::MAX);
        let (done, tokio_errors, seconds) = tokio_connect_loop(context, server.addr, time, users);
        let reference = done as f64 / seconds.max(1e-9);
        eprintln!(
            "  {users} users  tcpscript {:>9}/s ({} failed, peak RSS {:.0} MiB)  tokio loop {:>9}/s  ratio {:.2}",
            thousands(ours),
            tcpscript_failed,
            peak_rss_kib as f64 / 1024.0,
            thousands(reference),
            ours / reference.max(1e-9)
        );
        results.scales.push(LoadScale {
            users,
            ours,
            reference,
            tcpscript_failed,
            tokio_errors,
            peak_rss_kib,
        });
    }
    drop(server);
    eprintln!();
    Ok(results)
}

/// Runs `command` to its end; its standard output and its peak resident
/// memory in KiB (VmHWM, read until it exits).
fn run_watching_memory(mut command: Command) -> Result<(Vec<u8>, u64), String> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("{}: {e}", tcpscript().display()))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = std::io::Read::read_to_end(&mut stdout, &mut out);
        out
    });
    let status_file = format!("/proc/{}/status", child.id());
    let mut peak = 0;
    loop {
        if let Ok(status) = fs::read_to_string(&status_file)
            && let Some(kib) = status
                .lines()
                .find_map(|line| line.strip_prefix("VmHWM:"))
                .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        {
            peak = kib;
        }
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = reader.join().map_err(|_| "reading stdout failed")?;
    Ok((out, peak))
}

pub(crate) fn load_table(out: &mut String, load: &LoadResults, verdicts: &mut Vec<Verdict>) {
    let ours = median(load.rounds.iter().map(|r| r.0).collect());
    let reference = median(load.rounds.iter().map(|r| r.1).collect());
    let ratio = median(load.rounds.iter().map(|r| r.0 / r.1.max(1e-9)).collect());
    let _ = writeln!(
        out,
        "\n## load mode: {LOAD_USERS} users, one-exchange echo conversations (connect, send, receive, close), against the floor server (median of {} round(s))\n",
        load.rounds.len()
    );
    let _ = writeln!(
        out,
        "| client                                  | conversations/s | failures | peak RSS |"
    );
    let _ = writeln!(
        out,
        "|-----------------------------------------|----------------:|---------:|---------:|"
    );
    let _ = writeln!(
        out,
        "| tcpscript client --concurrency {LOAD_USERS:<8} | {:>15} | {:>8} | {:>4.0} MiB |",
        thousands(ours),
        load.tcpscript_failed,
        load.peak_rss_kib as f64 / 1024.0
    );
    let _ = writeln!(
        out,
        "| tokio connect/send/recv/close loop      | {:>15} | {:>8} |          |",
        thousands(reference),
        load.tokio_errors
    );
    verdicts.push(Verdict {
        row: 8,
        measured: format!(
            "{}/s vs {}/s = {:.2}x",
            thousands(ours),
            thousands(reference),
            ratio
        ),
        pass: ratio >= 0.5 && load.tcpscript_failed == 0,
    });
    if load.scales.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "\n### at more users (one round each; the 50-user figure is the median above)\n"
    );
    let _ = writeln!(
        out,
        "| users  | tcpscript conv/s | failures | peak RSS    | per user | tokio loop conv/s | tokio errors | ratio | vs 50 users |"
    );
    let _ = writeln!(
        out,
        "|-------:|-----------------:|---------:|------------:|---------:|------------------:|-------------:|------:|------------:|"
    );
    for scale in &load.scales {
        let _ = writeln!(
            out,
            "| {:>6} | {:>16} | {:>8} | {:>7.0} MiB | {:>5.0} KB | {:>17} | {:>12} | {:>5.2} | {:>10.2}x |",
            scale.users,
            thousands(scale.ours),
            scale.tcpscript_failed,
            scale.peak_rss_kib as f64 / 1024.0,
            scale.peak_rss_kib as f64 * 1.024 / scale.users as f64,
            thousands(scale.reference),
            scale.tokio_errors,
            scale.ours / scale.reference.max(1e-9),
            scale.ours / ours.max(1e-9)
        );
        match scale.users {
            2_000 => verdicts.push(Verdict {
                row: 12,
                measured: format!(
                    "{}/s vs {}/s at 50 = {:.2}x",
                    thousands(scale.ours),
                    thousands(ours),
                    scale.ours / ours.max(1e-9)
                ),
                pass: scale.ours >= 0.8 * ours && scale.tcpscript_failed == 0,
            }),
            10_000 => verdicts.push(Verdict {
                row: 13,
                measured: format!(
                    "{}/s, {} failed, peak RSS {:.0} MiB",
                    thousands(scale.ours),
                    scale.tcpscript_failed,
                    scale.peak_rss_kib as f64 / 1024.0
                ),
                pass: scale.tcpscript_failed == 0 && scale.peak_rss_kib < 1 << 20,
            }),
            _ => {}
        }
    }
}
