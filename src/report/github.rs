//! Under GitHub Actions (`GITHUB_ACTIONS=true`): an `::error` workflow
//! command per failure, which GitHub shows on the script's line, and a
//! Markdown table appended to `$GITHUB_STEP_SUMMARY`.

use std::fmt::Write as _;
use std::io::Write as _;

use super::{CaseResult, diagnostic_of, millis, plain};
use crate::error::Error;
use crate::message::escape_controls;

pub(crate) fn enabled() -> bool {
    std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

/// Workflow commands end at a newline and split properties on `,` and
/// `:`. Line breaks are kept as `%0A`; every other control character is
/// escaped, since the text may quote a peer's bytes and the log is read
/// on terminals too.
fn escape_data(text: &str) -> String {
    text.split('\n')
        .map(|line| escape_controls(line).replace('%', "%25"))
        .collect::<Vec<_>>()
        .join("%0A")
}

fn escape_property(text: &str) -> String {
    escape_data(text).replace(':', "%3A").replace(',', "%2C")
}

/// `::error file=F,line=L,col=C,title=T::message`.
pub(crate) fn annotation(error: &Error, test: Option<&str>) -> String {
    let diagnostic = diagnostic_of(error);
    let mut properties = Vec::new();
    if let Some(location) = &diagnostic.location {
        properties.push(format!("file={}", escape_property(&location.file)));
        properties.push(format!("line={}", location.line));
        properties.push(format!("col={}", location.column));
    } else if let Some(test) = test {
        properties.push(format!("file={}", escape_property(test)));
    }
    let title = match test {
        Some(test) => format!("tcpscript: {test}"),
        None => "tcpscript".to_string(),
    };
    properties.push(format!("title={}", escape_property(&title)));
    let mut message = diagnostic.message.clone();
    if let (Some(expected), Some(actual)) = (&diagnostic.expected, &diagnostic.actual) {
        let _ = write!(message, "\nexpected: {expected}\n  actual: {actual}");
    }
    format!(
        "::error {}::{}",
        properties.join(","),
        escape_data(&message)
    )
}

/// Prints the annotation for a failed command, when under GitHub Actions.
pub(crate) fn annotate(error: &Error, test: Option<&str>) {
    if enabled() {
        println!("{}", annotation(error, test));
    }
}

/// The step summary: a table of every test, then each failure in full.
pub(crate) fn summary(results: &[CaseResult]) -> String {
    let passed = results.iter().filter(|r| r.outcome.passed()).count();
    let failed = results.len() - passed;
    let mut out = format!("### tcpscript: {passed} passed, {failed} failed\n\n");
    out += "| | test | time | result |\n|---|---|---|---|\n";
    for result in results {
        let (mark, what) = match result.outcome.error() {
            None => ("✅", "passed".to_string()),
            Some(error) => {
                let diagnostic = diagnostic_of(error);
                let place = diagnostic
                    .location
                    .as_ref()
                    .map(|l| format!("`{}:{}` ", escape_controls(&l.file), l.line))
                    .unwrap_or_default();
                let message = escape_controls(&diagnostic.message).replace('|', "\\|");
                ("❌", format!("{place}{message}"))
            }
        };
        let _ = writeln!(
            out,
            "| {mark} | `{}` | {} | {what} |",
            escape_controls(&result.name),
            millis(result.duration)
        );
    }
    for result in results {
        if let Some(error) = result.outcome.error() {
            let _ = write!(
                out,
                "\n<details><summary>{}</summary>\n\n```\n{}```\n</details>\n",
                escape_controls(&result.name),
                plain(error)
            );
        }
    }
    out
}

/// Appends the summary to `$GITHUB_STEP_SUMMARY`, when it is set.
pub(crate) fn write_summary(results: &[CaseResult]) -> std::io::Result<()> {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY") else {
        return Ok(());
    };
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    file.write_all(summary(results).as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::{Diagnostic, Location};

    #[test]
    fn annotations_escape_what_would_break_them() {
        let mut diagnostic = Diagnostic::new("50% done\nthen: fail");
        diagnostic.location = Some(Location {
            file: "a,b:c.rhai".into(),
            line: 3,
            column: 7,
            source_line: None,
        });
        let error = Error::Failed(Box::new(diagnostic));
        assert_eq!(
            annotation(&error, Some("t.rhai")),
            "::error file=a%2Cb%3Ac.rhai,line=3,col=7,title=tcpscript%3A t.rhai::50%25 done%0Athen: fail"
        );
    }
}
