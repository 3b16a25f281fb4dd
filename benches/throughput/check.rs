//! The `check` section: startup, the wall time of `tcpscript check` on a
//! small script; and its table.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::config::Config;
use crate::measure::median;
use crate::report::Verdict;
use crate::servers::tcpscript;

pub(crate) struct CheckResult {
    script: PathBuf,
    runs: Vec<f64>,
}

pub(crate) fn check_section(config: &Config) -> Result<CheckResult, String> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/reply.rhai");
    if !script.exists() {
        return Err(format!("{} is missing", script.display()));
    }
    eprintln!(
        "== check: `tcpscript check -q {}`, median of {} runs after 3 warm-up runs",
        script.display(),
        config.check_runs
    );
    let mut runs = Vec::new();
    for i in 0..config.check_runs + 3 {
        let start = Instant::now();
        let status = Command::new(tcpscript())
            .args(["check", "-q"])
            .arg(&script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("tcpscript check: {e}"))?;
        let elapsed = start.elapsed().as_secs_f64();
        if !status.success() {
            return Err(format!(
                "tcpscript check {} failed: {status}",
                script.display()
            ));
        }
        if i >= 3 {
            runs.push(elapsed);
        }
    }
    let result = CheckResult { script, runs };
    eprintln!(
        "  median {:.1} ms, min {:.1} ms, max {:.1} ms\n",
        result.median_ms(),
        result.runs.iter().copied().fold(f64::INFINITY, f64::min) * 1e3,
        result.runs.iter().copied().fold(0.0, f64::max) * 1e3,
    );
    Ok(result)
}

impl CheckResult {
    fn median_ms(&self) -> f64 {
        median(self.runs.clone()) * 1e3
    }
}

pub(crate) fn check_table(out: &mut String, check: &CheckResult, verdicts: &mut Vec<Verdict>) {
    let median = check.median_ms();
    let _ = writeln!(
        out,
        "\n## startup: `tcpscript check -q {}`\n\nmedian {:.1} ms over {} runs (min {:.1} ms)",
        check.script.display(),
        median,
        check.runs.len(),
        check.runs.iter().copied().fold(f64::INFINITY, f64::min) * 1e3
    );
    verdicts.push(Verdict {
        row: 7,
        measured: format!("{median:.1} ms (median of {})", check.runs.len()),
        pass: median < 20.0,
    });
}
