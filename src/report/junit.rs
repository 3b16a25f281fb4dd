//! `--junit FILE`: JUnit XML, which CI systems turn into test reports. A
//! failed expectation is a `<failure>`, a script or network error an
//! `<error>`, and the transcript goes in `<system-out>`.

use std::path::Path;
use std::time::Duration;

use quick_junit::{NonSuccessKind, Report, TestCase, TestCaseStatus, TestSuite};

use super::{CaseResult, Outcome, diagnostic_of, plain};
use crate::error::Error;

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
                let message = match &diagnostic.location {
                    Some(location) => format!("{location}: {}", diagnostic.message),
                    None => diagnostic.message.clone(),
                };
                status.set_message(message);
                status.set_type(kind_name(error));
                status.set_description(plain(error));
                status
            }
        };
        let mut case = TestCase::new(result.name.clone(), status);
        case.set_classname("tcpscript");
        case.set_time(result.duration);
        if !result.transcript.is_empty() {
            case.set_system_out(result.transcript.join("\n") + "\n");
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
    let failed = |source| Error::WriteFile {
        path: path.display().to_string(),
        source,
    };
    let xml = render(results, total).map_err(|e| failed(std::io::Error::other(e)))?;
    std::fs::write(path, xml).map_err(failed)
}
