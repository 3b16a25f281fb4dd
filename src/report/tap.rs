//! `--tap`: the Test Anything Protocol, version 13, on stdout. Failures
//! carry a YAML block with the message, the place and the values.

use std::fmt::Write;

use super::{CaseResult, Outcome, diagnostic_of};
use crate::message::escape_controls;

/// A YAML scalar that is always valid: JSON strings are YAML strings.
/// Control characters are escaped first: JSON leaves DEL and the C1
/// codes (CSI among them) as they are, and a TAP stream is often read
/// on a terminal.
fn quoted(text: &str) -> String {
    serde_json::to_string(&escape_controls(text)).unwrap_or_else(|_| "\"\"".into())
}

pub(crate) fn render(results: &[CaseResult]) -> String {
    let mut out = String::from("TAP version 13\n");
    let _ = writeln!(out, "1..{}", results.len());
    for (index, result) in results.iter().enumerate() {
        let number = index + 1;
        let time = result.duration.as_millis();
        let name = escape_controls(&result.name);
        let Some(error) = result.outcome.error() else {
            let _ = writeln!(out, "ok {number} - {name} # time={time}ms");
            continue;
        };
        let diagnostic = diagnostic_of(error);
        let _ = writeln!(out, "not ok {number} - {name} # time={time}ms");
        out += "  ---\n";
        let _ = writeln!(out, "  message: {}", quoted(&diagnostic.message));
        let severity = match result.outcome {
            Outcome::Broken(_) => "error",
            _ => "fail",
        };
        let _ = writeln!(out, "  severity: {severity}");
        let _ = writeln!(out, "  exit_code: {}", error.exit_code());
        if let Some(location) = &diagnostic.location {
            out += "  at:\n";
            let _ = writeln!(out, "    file: {}", quoted(&location.file));
            let _ = writeln!(out, "    line: {}", location.line);
            let _ = writeln!(out, "    column: {}", location.column);
        }
        if let Some(expected) = &diagnostic.expected {
            let _ = writeln!(out, "  expected: {}", quoted(expected));
        }
        if let Some(actual) = &diagnostic.actual {
            let _ = writeln!(out, "  actual: {}", quoted(actual));
        }
        if !result.transcript.is_empty() {
            out += "  transcript:\n";
            for line in &result.transcript {
                let _ = writeln!(out, "    - {}", quoted(line));
            }
        }
        out += "  ...\n";
    }
    out
}
