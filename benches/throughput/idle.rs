//! The `idle` section: idle connections, a server's memory while it holds
//! 10,000 of them; and its table.

use std::fmt::Write as _;
use std::time::Instant;

use tokio::task::JoinSet;

use crate::config::Config;
use crate::loadgen::{MESSAGE, STALL_LIMIT, connect_many, round_trip, stamp};
use crate::report::{Verdict, mib};
use crate::run::Context;
use crate::servers::{Kind, Server};

pub(crate) const IDLE_CONNECTIONS: usize = 10_000;

pub(crate) struct IdleResult {
    kind: Kind,
    target: usize,
    held: usize,
    live: usize,
    first_error: Option<String>,
    rss_before_kib: u64,
    rss_held_kib: u64,
    rss_after_check_kib: u64,
    hwm_kib: u64,
    connect_seconds: f64,
}

pub(crate) fn idle_section(config: &Config, context: &Context) -> Result<Vec<IdleResult>, String> {
    let kinds = config.kinds(context, &[Kind::Tcpscript, Kind::Floor, Kind::Python]);
    // Room for the connections plus stdio, the runtime and servers' pipes.
    let usable = context.fd_limit.saturating_sub(64) as usize;
    let target = IDLE_CONNECTIONS.min(usable);
    eprintln!("== idle: {IDLE_CONNECTIONS} connections held open, one message exchanged on each");
    if target < IDLE_CONNECTIONS {
        eprintln!(
            "  WARNING: this process's open-file limit is {} and could not be raised: only {target} connections will be opened",
            context.fd_limit
        );
    }
    let mut results = Vec::new();
    for kind in kinds {
        let server = Server::start(kind, context)?;
        let (rss_before_kib, _) = server.memory()?;
        let start = Instant::now();
        let (streams, errors) = context
            .runtime
            .block_on(connect_many(server.addr, target, true));
        let connect_seconds = start.elapsed().as_secs_f64();
        let held = streams.len();
        let (rss_held_kib, _) = server.memory()?;
        // Are they all still live? One more round trip on every one.
        let (streams, live, check_error) = context.runtime.block_on(async move {
            let mut set = JoinSet::new();
            for (i, mut stream) in streams.into_iter().enumerate() {
                set.spawn(async move {
                    let mut msg = *MESSAGE;
                    stamp(&mut msg, i as u64);
                    let ok = tokio::time::timeout(STALL_LIMIT, round_trip(&mut stream, &msg))
                        .await
                        .map_err(|_| "no reply within 10 s".to_string())
                        .and_then(|r| r);
                    (stream, ok)
                });
            }
            let mut live = 0;
            let mut first_error = None;
            let mut kept = Vec::with_capacity(held);
            while let Some(joined) = set.join_next().await {
                match joined {
                    Ok((stream, Ok(()))) => {
                        live += 1;
                        kept.push(stream);
                    }
                    Ok((stream, Err(e))) => {
                        first_error.get_or_insert(e);
                        kept.push(stream);
                    }
                    Err(e) => {
                        first_error.get_or_insert(format!("task: {e}"));
                    }
                }
            }
            (kept, live, first_error)
        });
        let (rss_after_check_kib, hwm_kib) = server.memory()?;
        // Close ours first so the server sees every peer leave, then stop it.
        context.runtime.block_on(async { drop(streams) });
        let stderr = server.stop();
        let first_error = errors.into_iter().next().or(check_error).or_else(|| {
            stderr
                .lines()
                .find(|l| !l.starts_with("shut down:") && !l.trim().is_empty())
                .map(str::to_string)
        });
        eprintln!(
            "  {:<15} held {held}/{target}, live {live}, RSS {} before, {} held, {} after the check (peak {}), connect {:.2} s",
            kind.name(),
            mib(rss_before_kib),
            mib(rss_held_kib),
            mib(rss_after_check_kib),
            mib(hwm_kib),
            connect_seconds
        );
        if let Some(e) = &first_error {
            eprintln!("      first error: {e}");
        }
        results.push(IdleResult {
            kind,
            target,
            held,
            live,
            first_error,
            rss_before_kib,
            rss_held_kib,
            rss_after_check_kib,
            hwm_kib,
            connect_seconds,
        });
    }
    eprintln!();
    Ok(results)
}

pub(crate) fn idle_table(
    out: &mut String,
    idle: &[IdleResult],
    context: &Context,
    verdicts: &mut Vec<Verdict>,
) {
    let _ = writeln!(
        out,
        "\n## {IDLE_CONNECTIONS} idle connections, one message exchanged on each (RSS = VmRSS of the server)\n"
    );
    let _ = writeln!(
        out,
        "| server         | held        | live   | RSS before | RSS held  | RSS after check | peak (VmHWM) | per conn   | connect s |"
    );
    let _ = writeln!(
        out,
        "|----------------|-------------|-------:|-----------:|----------:|----------------:|-------------:|-----------:|----------:|"
    );
    for r in idle {
        let per_conn = (r.rss_held_kib.max(r.rss_after_check_kib) as f64 - r.rss_before_kib as f64)
            * 1024.0
            / (r.held.max(1) as f64);
        let _ = writeln!(
            out,
            "| {:<14} | {:>5}/{:<5} | {:>6} | {:>10} | {:>9} | {:>15} | {:>12} | {:>6.2} KiB | {:>9.2} |",
            r.kind.name(),
            r.held,
            r.target,
            r.live,
            mib(r.rss_before_kib),
            mib(r.rss_held_kib),
            mib(r.rss_after_check_kib),
            mib(r.hwm_kib),
            per_conn / 1024.0,
            r.connect_seconds,
        );
        if let Some(e) = &r.first_error {
            let _ = writeln!(out, "first error, {}: {e}", r.kind.name());
        }
    }
    if let Some(t) = idle.iter().find(|r| r.kind == Kind::Tcpscript) {
        let rss = t.rss_held_kib.max(t.rss_after_check_kib);
        let all = t.held == IDLE_CONNECTIONS && t.live == IDLE_CONNECTIONS;
        let mut measured = format!(
            "{}/{} held, {} live, {}",
            t.held,
            IDLE_CONNECTIONS,
            t.live,
            mib(rss)
        );
        if t.target < IDLE_CONNECTIONS {
            let _ = write!(measured, " (fd limit {} too low)", context.fd_limit);
        }
        verdicts.push(Verdict {
            row: 6,
            measured,
            pass: all && rss < 64 * 1024,
        });
    }
}
