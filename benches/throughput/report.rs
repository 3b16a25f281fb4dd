//! Report: the machine, every section's table, the targets with PASS/FAIL,
//! and the number formatting they share.

use std::fmt::Write as _;
use std::fs;
use std::process::Command;
use std::time::Duration;

use crate::check::{CheckResult, check_table};
use crate::client::{ClientResults, client_table};
use crate::config::{Config, Section};
use crate::echo::{EchoResults, echo_table};
use crate::idle::{IdleResult, idle_table};
use crate::load::{LoadResults, load_table};
use crate::run::Context;
use crate::servers::tcpscript;
use crate::tls::{TlsResults, tls_table};

pub(crate) struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    commit: String,
}

impl Machine {
    pub(crate) fn read() -> Machine {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown CPU".into());
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_string())
            .unwrap_or_default();
        let commit = Command::new("git")
            .args([
                "-C",
                env!("CARGO_MANIFEST_DIR"),
                "describe",
                "--always",
                "--dirty",
            ])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cores,
            kernel,
            commit,
        }
    }

    pub(crate) fn line(&self) -> String {
        format!(
            "{}, {} cores, Linux {}, tcpscript {}",
            self.cpu, self.cores, self.kernel, self.commit
        )
    }
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) echo: Option<EchoResults>,
    pub(crate) client: Option<ClientResults>,
    pub(crate) load: Option<LoadResults>,
    pub(crate) idle: Option<Vec<IdleResult>>,
    pub(crate) check: Option<CheckResult>,
    pub(crate) tls: Option<TlsResults>,
}

/// The targets, in the order of the final table: (figure, target).
const TARGETS: [(&str, &str); 14] = [
    ("echo round trips/s, 1 conn", ">= 0.95x floor, no errors"),
    ("echo round trips/s, 50 conns", ">= 0.95x floor, no errors"),
    ("echo round trips/s, 500 conns", ">= 0.95x floor, no errors"),
    ("server CPU per message, 50 conns", "<= 1.15x floor"),
    (
        "scripted client throughput, 20k exchanges",
        ">= 0.95x python loop",
    ),
    (
        "scripted client user CPU, 20k exchanges",
        "<= 0.6x python loop",
    ),
    (
        "10,000 idle connections (tcpscript)",
        "all held and live, RSS < 64 MiB",
    ),
    ("`tcpscript check` wall time", "under 20 ms"),
    (
        "load mode, 50 users, one-exchange echo",
        ">= 0.5x tokio connect loop",
    ),
    (
        "TLS echo round trips/s, 50 conns",
        ">= 0.9x tokio-rustls floor, no errors",
    ),
    ("TLS server CPU per message, 50 conns", "<= 1.2x floor"),
    (
        "TLS load mode, 50 users, connect+handshake+exchange+close",
        ">= 0.8x tokio-rustls loop",
    ),
    (
        "load mode, 2,000 users, one-exchange echo",
        ">= 0.8x tcpscript's own 50-user figure",
    ),
    (
        "load mode, 10,000 users, one-exchange echo",
        "all running, no failures, RSS < 1 GiB",
    ),
];

/// A measured row of the targets table.
pub(crate) struct Verdict {
    /// Index into `TARGETS`.
    pub(crate) row: usize,
    pub(crate) measured: String,
    pub(crate) pass: bool,
}

impl Report {
    pub(crate) fn print(
        &self,
        config: &Config,
        machine: &Machine,
        context: &Context,
        elapsed: Duration,
    ) {
        let mut out = String::new();
        let _ = writeln!(out, "# tcpscript benchmark results\n");
        let _ = writeln!(out, "machine:   {}", machine.line());
        let _ = writeln!(out, "binary:    {}", tcpscript().display());
        let _ = writeln!(
            out,
            "run:       {}{}, {:.0} s",
            config.reproduce(),
            if config.quick { " (quick)" } else { "" },
            elapsed.as_secs_f64()
        );
        let _ = writeln!(
            out,
            "note:      the load generator runs in this process on the same {} cores as the server under test, the same for every server",
            machine.cores
        );
        let mut verdicts = Vec::new();
        if let Some(echo) = &self.echo {
            echo_table(&mut out, echo, config, &mut verdicts);
        }
        if let Some(client) = &self.client {
            client_table(&mut out, client, &mut verdicts);
        }
        if let Some(load) = &self.load {
            load_table(&mut out, load, &mut verdicts);
        }
        if let Some(idle) = &self.idle {
            idle_table(&mut out, idle, context, &mut verdicts);
        }
        if let Some(tls) = &self.tls {
            tls_table(&mut out, tls, config, &mut verdicts);
        }
        if let Some(check) = &self.check {
            check_table(&mut out, check, &mut verdicts);
        }

        let _ = writeln!(out, "\n## targets\n");
        let rows: Vec<(&str, String, &str, &str)> = TARGETS
            .iter()
            .enumerate()
            .map(
                |(i, (figure, target))| match verdicts.iter().find(|v| v.row == i) {
                    Some(v) => (
                        *figure,
                        v.measured.clone(),
                        *target,
                        if v.pass { "PASS" } else { "FAIL" },
                    ),
                    None => (*figure, "not measured in this run".into(), *target, "-"),
                },
            )
            .collect();
        let width = |f: fn(&(&str, String, &str, &str)) -> usize, min: usize| {
            rows.iter().map(f).max().unwrap_or(min).max(min)
        };
        let fig_w = width(|r| r.0.chars().count(), 6);
        let meas_w = width(|r| r.1.chars().count(), 8);
        let tgt_w = width(|r| r.2.chars().count(), 6);
        let _ = writeln!(
            out,
            "| {:<fig_w$} | {:<meas_w$} | {:<tgt_w$} | result |",
            "figure", "measured", "target"
        );
        let _ = writeln!(
            out,
            "|{}|{}|{}|--------|",
            "-".repeat(fig_w + 2),
            "-".repeat(meas_w + 2),
            "-".repeat(tgt_w + 2)
        );
        for (figure, measured, target, result) in &rows {
            let _ = writeln!(
                out,
                "| {figure:<fig_w$} | {measured:<meas_w$} | {target:<tgt_w$} | {result:<6} |"
            );
        }
        let passed = verdicts.iter().filter(|v| v.pass).count();
        let failed = verdicts.len() - passed;
        let _ = writeln!(
            out,
            "\n{passed} PASS, {failed} FAIL, {} not measured",
            TARGETS.len() - verdicts.len()
        );
        let skipped: Vec<&str> = Section::ALL
            .into_iter()
            .filter(|s| !config.sections.contains(s))
            .map(Section::name)
            .collect();
        if !skipped.is_empty() {
            let _ = writeln!(out, "not run: {}", skipped.join(", "));
        }
        let _ = writeln!(out, "reproduce: {}", config.reproduce());
        print!("{out}");
    }
}

pub(crate) fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `0.93x`, or `-` when there is nothing to compare with.
pub(crate) fn times(ratio: f64) -> String {
    if ratio.is_finite() {
        format!("{ratio:.2}x")
    } else {
        "-".into()
    }
}

/// `0.81x..0.93x`: the smallest and largest of some ratios.
pub(crate) fn spread(values: &[f64]) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.2}x..{max:.2}x")
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}
