//! `--junit FILE`: JUnit XML, which CI systems turn into test reports. A
//! failed expectation is a `<failure>`, a script or network error an
//! `<error>`, and the transcript goes in `<system-out>`:
//!
//! ```xml
//! <testsuites name="tcpscript" tests="2" failures="1" errors="0" time="0.012">
//!     <testsuite name="tcpscript" tests="2" disabled="0" errors="0" failures="1" time="0.012">
//!         <testcase name="tests/ok.rhai" classname="tcpscript" time="0.003">
//!             <system-out>+0.000s &gt; hello
//! +0.001s &lt; welcome
//! </system-out>
//!         </testcase>
//!         <testcase name="tests/bad.rhai" classname="tcpscript" time="0.004">
//!             <failure message="tests/bad.rhai:4:1: values differ" type="expectation failed">error: values differ ...</failure>
//!         </testcase>
//!     </testsuite>
//! </testsuites>
//! ```
//!
//! Every text is escaped of control characters before it goes in: most are
//! not even legal in XML 1.0, and peers' bytes are what reports quote.

use std::path::Path;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::{CaseResult, Outcome, diagnostic_of, plain};
use crate::error::Error;
use crate::load::threshold::Verdict;
use crate::message::escape_controls;

pub(crate) fn render(
    results: &[CaseResult],
    total: Duration,
) -> Result<String, quick_junit::SerializeError> {
    let mut suite = TestSuite::new("tcpscript");
    suite.set_time(total);
    for result in results {
        let status = match &result.outcome {
            Outcome::Passed => TestCaseStatus::success(),
            Outcome::Failed(error) | Outcome::Broken(error) => {
                let kind = match result.outcome {
                    Outcome::Failed(_) => NonSuccessKind::Failure,
                    _ => NonSuccessKind::Error,
                };
                let diagnostic = diagnostic_of(error);
                let mut status = TestCaseStatus::non_success(kind);
                status.set_message(diagnostic.to_string());
                status.set_type(kind_name(error));
                // Rendering escaped every field: only its line breaks remain.
                status.set_description(plain(error));
                status
            }
        };
        let mut case = TestCase::new(escape_controls(&result.name).into_owned(), status);
        case.set_classname("tcpscript");
        case.set_time(result.duration);
        if !result.transcript.is_empty() {
            let mut out = String::new();
            for line in &result.transcript {
                out += &escape_controls(line);
                out.push('\n');
            }
            case.set_system_out(out);
        }
        suite.add_test_case(case);
    }
    let mut report = Report::new("tcpscript");
    report.set_time(total);
    report.add_test_suite(suite);
    report.to_string()
}

fn kind_name(error: &Error) -> &'static str {
    match error.exit_code() {
        crate::error::exit::FAILED => "expectation failed",
        crate::error::exit::USAGE => "usage error",
        crate::error::exit::SCRIPT => "script error",
        crate::error::exit::NETWORK => "network error",
        _ => "error",
    }
}

pub(crate) fn write(path: &Path, results: &[CaseResult], total: Duration) -> Result<(), Error> {
    write_xml(path, render(results, total))
}

/// Load mode's and `merge`'s `--junit FILE`: one test case per
/// `--threshold`, named by it, in a suite `tcpscript load`; a broken one
/// is a `<failure>` whose message says what was measured:
///
/// ```xml
/// <testcase name="p99&lt;50ms" classname="tcpscript load">
///     <failure message="p99 was 73.215ms" type="threshold broken"/>
/// </testcase>
/// ```
pub(crate) fn render_thresholds(
    verdicts: &[Verdict],
    total: Duration,
) -> Result<String, quick_junit::SerializeError> {
    const NAME: &str = "tcpscript load";
    let mut suite = TestSuite::new(NAME);
    suite.set_time(total);
    for verdict in verdicts {
        let status = if verdict.passed {
            TestCaseStatus::success()
        } else {
            let mut status = TestCaseStatus::non_success(NonSuccessKind::Failure);
            status.set_message(format!("{} was {}", verdict.figure, verdict.shown));
            status.set_type("threshold broken");
            status
        };
        let mut case = TestCase::new(verdict.text.clone(), status);
        case.set_classname(NAME);
        suite.add_test_case(case);
    }
    let mut report = Report::new(NAME);
    report.set_time(total);
    report.add_test_suite(suite);
    report.to_string()
}

pub(crate) fn write_thresholds(
    path: &Path,
    verdicts: &[Verdict],
    total: Duration,
) -> Result<(), Error> {
    write_xml(path, render_thresholds(verdicts, total))
}

fn write_xml(path: &Path, xml: Result<String, quick_junit::SerializeError>) -> Result<(), Error> {
    let failed = |source| Error::WriteFile {
        path: path.display().to_string(),
        source,
    };
    let xml = xml.map_err(|e| failed(std::io::Error::other(e)))?;
    std::fs::write(path, xml).map_err(failed)
}
