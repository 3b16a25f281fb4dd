//! The `echo` section: ping-pong of 32-byte lines against each server,
//! servers alternating, each figure compared with the floor's; and its table.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::config::Config;
use crate::loadgen::{
    EchoStream, MEASURE, STALL_LIMIT, STOP, WARMUP, connect_many, new_histogram, ping_pong,
};
use crate::measure::{median, self_cpu};
use crate::report::{Verdict, spread, thousands, times};
use crate::run::Context;
use crate::servers::{Kind, Server};

pub(crate) const CONNECTIONS: [usize; 3] = [1, 50, 500];

/// One echo measurement: `n` connections to `server`.
#[derive(Clone)]
pub(crate) struct EchoRun {
    round_trips: u64,
    pub(crate) errors: u64,
    pub(crate) first_error: Option<String>,
    hist: Histogram<u64>,
    seconds: f64,
    server_cpu: f64,
    loadgen_cpu: f64,
}

impl EchoRun {
    pub(crate) fn empty() -> Self {
        EchoRun {
            round_trips: 0,
            errors: 0,
            first_error: None,
            hist: new_histogram(),
            seconds: 0.0,
            server_cpu: 0.0,
            loadgen_cpu: 0.0,
        }
    }

    pub(crate) fn add(&mut self, other: &EchoRun) {
        self.round_trips += other.round_trips;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.hist.add(&other.hist).expect("same histogram bounds");
        self.seconds += other.seconds;
        self.server_cpu += other.server_cpu;
        self.loadgen_cpu += other.loadgen_cpu;
    }

    pub(crate) fn per_second(&self) -> f64 {
        self.round_trips as f64 / self.seconds.max(1e-9)
    }

    /// Server CPU seconds per round trip, in microseconds.
    pub(crate) fn cpu_per_message_us(&self) -> f64 {
        self.server_cpu / (self.round_trips.max(1) as f64) * 1e6
    }

    pub(crate) fn loadgen_cpu_per_message_us(&self) -> f64 {
        self.loadgen_cpu / (self.round_trips.max(1) as f64) * 1e6
    }

    pub(crate) fn p50_us(&self) -> f64 {
        self.hist.value_at_quantile(0.50) as f64 / 1e3
    }

    pub(crate) fn p99_us(&self) -> f64 {
        self.hist.value_at_quantile(0.99) as f64 / 1e3
    }
}

fn echo_run(
    context: &Context,
    server: &Server,
    n: usize,
    warmup: Duration,
    measure: Duration,
) -> Result<EchoRun, String> {
    let (streams, connect_errors) = context
        .runtime
        .block_on(connect_many(server.addr, n, false));
    measure_echo(context, server, streams, connect_errors, warmup, measure)
}

/// Ping-pong on `streams` (already connected) for `warmup` then `measure`,
/// with the server's CPU over the measured window.
pub(crate) fn measure_echo<S: EchoStream>(
    context: &Context,
    server: &Server,
    streams: Vec<S>,
    connect_errors: Vec<String>,
    warmup: Duration,
    measure: Duration,
) -> Result<EchoRun, String> {
    let runtime = &context.runtime;
    let mut run = EchoRun::empty();
    run.errors = connect_errors.len() as u64;
    run.first_error = connect_errors.into_iter().next();
    let phase = Arc::new(AtomicU8::new(WARMUP));
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|stream| runtime.spawn(ping_pong(stream, phase.clone())))
        .collect();
    std::thread::sleep(warmup);
    let server_before = server.cpu()?;
    let loadgen_before = self_cpu();
    let start = Instant::now();
    phase.store(MEASURE, Ordering::Relaxed);
    std::thread::sleep(measure);
    phase.store(STOP, Ordering::Relaxed);
    run.seconds = start.elapsed().as_secs_f64();
    let server_after = server.cpu()?;
    let loadgen_after = self_cpu();
    run.server_cpu = server_after.since(server_before).total();
    run.loadgen_cpu = loadgen_after.since(loadgen_before).total();
    runtime.block_on(async {
        let give_up = tokio::time::Instant::now() + STALL_LIMIT;
        for task in tasks {
            let abort = task.abort_handle();
            match tokio::time::timeout_at(give_up, task).await {
                Ok(Ok(stats)) => {
                    run.round_trips += stats.round_trips;
                    run.hist.add(&stats.hist).expect("same histogram bounds");
                    if let Some(e) = stats.error {
                        run.errors += 1;
                        run.first_error.get_or_insert(e);
                    }
                }
                Ok(Err(e)) => {
                    run.errors += 1;
                    run.first_error.get_or_insert(format!("task: {e}"));
                }
                Err(_) => {
                    abort.abort();
                    run.errors += 1;
                    run.first_error
                        .get_or_insert("stalled: no reply 10 s after the end".into());
                }
            }
        }
    });
    Ok(run)
}

pub(crate) struct EchoResults {
    kinds: Vec<Kind>,
    /// For each connection count, each kind's aggregate over the rounds.
    rows: Vec<(usize, Vec<(Kind, EchoRun)>)>,
    /// For each connection count and server, its (round trips/s, CPU per
    /// message) ratios to the floor's run in the same round.
    round_ratios: Vec<(usize, Vec<KindRatios>)>,
}

/// One server's (round trips/s, CPU per message) ratios to the floor, per round.
type KindRatios = (Kind, Vec<(f64, f64)>);

impl EchoResults {
    /// The per-round ratios to the floor of `kind` at `n` connections.
    fn ratios(&self, n: usize, kind: Kind) -> Option<(Vec<f64>, Vec<f64>)> {
        if kind == Kind::Floor {
            return None;
        }
        let (_, per_kind) = self.round_ratios.iter().find(|(m, _)| *m == n)?;
        let (_, ratios) = per_kind.iter().find(|(k, _)| *k == kind)?;
        if ratios.is_empty() {
            return None;
        }
        Some((
            ratios.iter().map(|r| r.0).collect(),
            ratios.iter().map(|r| r.1).collect(),
        ))
    }

    /// Median over the rounds of (round trips/s, CPU per message) ratios
    /// to the floor: what the targets use. 1 for the floor itself.
    fn ratio(&self, n: usize, kind: Kind) -> (f64, f64) {
        if kind == Kind::Floor && self.get(n, Kind::Floor).is_some() {
            return (1.0, 1.0);
        }
        match self.ratios(n, kind) {
            Some((rate, cpu)) => (median(rate), median(cpu)),
            None => (f64::NAN, f64::NAN),
        }
    }

    fn get(&self, n: usize, kind: Kind) -> Option<&EchoRun> {
        self.rows
            .iter()
            .find(|(m, _)| *m == n)?
            .1
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, r)| r)
    }
}

/// Rounds at `connections`. One connection's rate turns on where the
/// kernel puts the load and the server (the same CPU or two), drawn anew
/// with each connection: single rounds went from 0.80x to 1.15x the
/// floor in one run of 12. Twice the rounds, twice the draws, as in the
/// proxy bench's one-connection row.
fn echo_rounds(config: &Config, connections: usize) -> usize {
    if connections == 1 {
        config.echo_rounds * 2
    } else {
        config.echo_rounds
    }
}

pub(crate) fn echo_section(config: &Config, context: &Context) -> Result<EchoResults, String> {
    let kinds = config.kinds(context, &[Kind::Floor, Kind::Tcpscript, Kind::Python]);
    eprintln!(
        "== echo: ping-pong of 32-byte lines, {} s measured per run after {} ms warm-up, {} round(s) (twice at 1 connection), servers alternating",
        config.echo_time.as_secs_f64(),
        config.echo_warmup.as_millis(),
        config.echo_rounds
    );
    // One process per server for the whole section; connections are new per run.
    let servers: Vec<Server> = kinds
        .iter()
        .map(|&k| Server::start(k, context))
        .collect::<Result<_, _>>()?;
    eprintln!(
        "  pids (to attach a profiler): {}",
        servers
            .iter()
            .map(|s| format!("{} {}", s.kind.name(), s.pid()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut rows = Vec::new();
    let mut round_ratios = Vec::new();
    for &n in &config.connections {
        let mut totals: Vec<(Kind, EchoRun)> =
            kinds.iter().map(|&k| (k, EchoRun::empty())).collect();
        let mut ratios = Vec::new();
        for round in 0..echo_rounds(config, n) {
            let mut this_round: Vec<(Kind, EchoRun)> = Vec::new();
            // Who goes first rotates from round to round.
            for i in 0..servers.len() {
                let index = (i + round) % servers.len();
                let server = &servers[index];
                let run = echo_run(context, server, n, config.echo_warmup, config.echo_time)?;
                eprintln!(
                    "  {n:>3} conn  round {}  {:<15} {:>9} rt/s  p50 {:>8.1} us  p99 {:>8.1} us  server cpu {:>6.2} us/msg  load gen {:>6.2} us/msg  errors {}",
                    round + 1,
                    server.kind.name(),
                    thousands(run.per_second()),
                    run.p50_us(),
                    run.p99_us(),
                    run.cpu_per_message_us(),
                    run.loadgen_cpu_per_message_us(),
                    run.errors,
                );
                if let Some(e) = &run.first_error {
                    eprintln!("      first error: {e}");
                }
                totals[index].1.add(&run);
                this_round.push((server.kind, run));
            }
            let floor = this_round.iter().find(|(k, _)| *k == Kind::Floor);
            for (kind, run) in &this_round {
                if let (Some((_, f)), true) = (floor, *kind != Kind::Floor) {
                    let slot = match ratios.iter_mut().find(|(k, _)| k == kind) {
                        Some(slot) => slot,
                        None => {
                            ratios.push((*kind, Vec::new()));
                            ratios.last_mut().expect("just pushed")
                        }
                    };
                    slot.1.push((
                        run.per_second() / f.per_second().max(1e-9),
                        run.cpu_per_message_us() / f.cpu_per_message_us().max(1e-9),
                    ));
                }
            }
        }
        round_ratios.push((n, ratios));
        rows.push((n, totals));
    }
    for server in servers {
        let kind = server.kind;
        let stderr = server.stop();
        let noted = stderr
            .lines()
            .filter(|l| !l.starts_with("shut down:") || !l.ends_with(" 0 errors"))
            .collect::<Vec<_>>();
        if !noted.is_empty() {
            eprintln!("  {} said on stderr: {}", kind.name(), noted.join(" | "));
        }
    }
    eprintln!();
    Ok(EchoResults {
        kinds,
        rows,
        round_ratios,
    })
}

pub(crate) fn echo_table(
    out: &mut String,
    echo: &EchoResults,
    config: &Config,
    verdicts: &mut Vec<Verdict>,
) {
    let _ = writeln!(
        out,
        "\n## echo server ping-pong (32-byte lines, {} round(s) x {} s per server and connection count, twice at 1 connection, alternating)\n",
        config.echo_rounds,
        config.echo_time.as_secs_f64()
    );
    let _ = writeln!(
        out,
        "| conns | server         | round trips/s | vs floor | p50 us  | p99 us   | errors | server CPU us/msg | vs floor | load gen CPU us/msg |"
    );
    let _ = writeln!(
        out,
        "|------:|----------------|--------------:|---------:|--------:|---------:|-------:|------------------:|---------:|--------------------:|"
    );
    for (n, runs) in &echo.rows {
        for (kind, run) in runs {
            let (rate_ratio, cpu_ratio) = echo.ratio(*n, *kind);
            let _ = writeln!(
                out,
                "| {n:>5} | {:<14} | {:>13} | {:>8} | {:>7.1} | {:>8.1} | {:>6} | {:>17.2} | {:>8} | {:>19.2} |",
                kind.name(),
                thousands(run.per_second()),
                times(rate_ratio),
                run.p50_us(),
                run.p99_us(),
                run.errors,
                run.cpu_per_message_us(),
                times(cpu_ratio),
                run.loadgen_cpu_per_message_us(),
            );
        }
    }
    let _ = writeln!(
        out,
        "\nround trips/s, latency, errors and CPU are totals over the rounds; \"vs floor\" is the median over the rounds of the ratio to the floor's run in the same round."
    );
    let errors: Vec<String> = echo
        .rows
        .iter()
        .flat_map(|(n, runs)| {
            runs.iter().filter_map(move |(k, r)| {
                r.first_error
                    .as_ref()
                    .map(|e| format!("{} at {n} conns: {e}", k.name()))
            })
        })
        .collect();
    for e in errors {
        let _ = writeln!(out, "first error, {e}");
    }
    let mut spreads = String::new();
    for (n, _) in &echo.rows {
        for &kind in &echo.kinds {
            if let Some((rate, cpu)) = echo.ratios(*n, kind) {
                let _ = writeln!(
                    spreads,
                    "  {n:>3} conns, {:<14}: round trips/s {}, server CPU/msg {}",
                    kind.name(),
                    spread(&rate),
                    spread(&cpu),
                );
            }
        }
    }
    if !spreads.is_empty() {
        let _ = writeln!(
            out,
            "ratios to the floor, lowest..highest round (the spread is the machine's noise):\n{spreads}"
        );
    }
    if config.servers.contains(&Kind::Python) && !echo.kinds.contains(&Kind::Python) {
        let _ = writeln!(out, "(python3 not found: no Python row)");
    }
    for (row, n) in CONNECTIONS.into_iter().enumerate() {
        if let Some(t) = echo.get(n, Kind::Tcpscript) {
            let (ratio, _) = echo.ratio(n, Kind::Tcpscript);
            if ratio.is_nan() {
                continue;
            }
            verdicts.push(Verdict {
                row,
                measured: format!(
                    "{}/s, {:.2}x floor, {} errors",
                    thousands(t.per_second()),
                    ratio,
                    t.errors
                ),
                pass: ratio >= 0.95 && t.errors == 0,
            });
        }
    }
    if let (Some(t), Some(f)) = (echo.get(50, Kind::Tcpscript), echo.get(50, Kind::Floor)) {
        let (_, ratio) = echo.ratio(50, Kind::Tcpscript);
        verdicts.push(Verdict {
            row: 3,
            measured: format!(
                "{:.2} us vs {:.2} us, {:.2}x floor",
                t.cpu_per_message_us(),
                f.cpu_per_message_us(),
                ratio
            ),
            pass: ratio <= 1.15,
        });
    }
}
