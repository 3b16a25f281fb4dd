//! `--html FILE`: one self-contained page to look at a run in a browser or
//! as a CI artifact. No script, font or image: the style is inline, the
//! failure filter is CSS (`:has()` on a radio button), and a
//! Content-Security-Policy forbids anything else, so even a mistake in
//! escaping could not run a peer's `<script>`.
//!
//! ```html
//! <header><h1>tcpscript test report</h1>
//!   <p class="summary"><span class="count passed">1 passed</span> … </p></header>
//! <table class="cases"><tbody>
//!   <tr class="case failed"><td class="status">FAIL</td><td class="name"><a href="#case-1">tests/bad.rhai</a></td>…</tr>
//! </tbody></table>
//! <section class="case failed" id="case-1"><details open><summary>…</summary>
//!   <pre class="diagnostic">error: values differ … <span class="expected">  = expected: "2"</span> …</pre>
//!   <table class="transcript"><tr class="sent"><td class="at">+0.000s</td><td class="conn"></td><td class="dir">→</td><td class="msg">hello</td></tr>…</table>
//! </details></section>
//! ```
//!
//! Every text from a script or a peer goes through [`escape`] on its way
//! in; the rest is this file's own markup.

pub(crate) mod load; // load mode's --html: figures and charts

use std::borrow::Cow;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use super::{CaseResult, Outcome, diagnostic_of, millis};
use crate::diagnostic::shorten;
use crate::error::Error;

const STYLE: &str = include_str!("style.css");

/// Bytes of one transcript line or diagnostic line shown. Transcripts
/// keep 512 bytes of each message already; this bounds what else a line
/// may hold (a long file name, a note quoting a reply).
const LINE_HEAD: usize = 4096;

/// Bytes of transcript lines shown per case, the last ones kept: a case
/// may keep 64 KiB of message heads, and 200 such cases would make a page
/// of 13 MB that a browser opens slowly. The end of a conversation is
/// where it failed.
const TRANSCRIPT_BYTES: usize = 16 * 1024;

/// `text` safe anywhere in an element or a quoted attribute: the five
/// characters HTML gives a meaning, and control characters (NUL is a parse
/// error, and a peer's ESC means nothing on a page) as Rust escapes.
/// Line breaks and tabs stay, for `<pre>`.
pub(crate) fn escape(text: &str) -> Cow<'_, str> {
    let special = |c: char| {
        matches!(c, '&' | '<' | '>' | '"' | '\'') || (c.is_control() && c != '\n' && c != '\t')
    };
    if !text.contains(special) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if special(c) => out.extend(c.escape_debug()),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The page up to `<body>`: its title, the style, and a policy that lets
/// nothing but that style in.
fn head(out: &mut String, title: &str) {
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n",
        escape(title)
    );
}

/// How a case ended, as the page names it (and its CSS class).
fn status(outcome: &Outcome) -> (&'static str, &'static str) {
    match outcome {
        Outcome::Passed => ("passed", "PASS"),
        Outcome::Failed(_) => ("failed", "FAIL"),
        Outcome::Broken(_) => ("error", "ERROR"),
    }
}

pub(crate) fn render(results: &[CaseResult], total: Duration) -> String {
    let passed = results.iter().filter(|r| r.outcome.passed()).count();
    let failed = results
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Failed(_)))
        .count();
    let errors = results.len() - passed - failed;
    // Failures first, each group in the order the cases were given.
    let mut order: Vec<(usize, &CaseResult)> = results.iter().enumerate().collect();
    order.sort_by_key(|(_, r)| r.outcome.passed());

    let mut out = String::with_capacity(16 * 1024);
    let errors = match errors {
        1 => "1 error".to_string(),
        n => format!("{n} errors"),
    };
    let title = format!("tcpscript: {passed} passed, {failed} failed, {errors}");
    head(&mut out, &title);
    let _ = write!(
        out,
        "<header>\n<h1>tcpscript test report</h1>\n<p class=\"summary\">\
         <span class=\"count passed\">{passed} passed</span> \
         <span class=\"count failed\">{failed} failed</span> \
         <span class=\"count error\">{errors}</span> \
         <span class=\"count total\">{} cases</span> \
         <span class=\"duration\">in {:.2} s</span></p>\n",
        results.len(),
        total.as_secs_f64()
    );
    out += "<p class=\"filter\">show: \
            <label><input type=\"radio\" name=\"show\" id=\"show-all\" checked> all</label> \
            <label><input type=\"radio\" name=\"show\" id=\"show-failures\"> failures only</label></p>\n\
            </header>\n<main>\n";

    out += "<table class=\"cases\">\n<thead><tr><th>status</th><th>test</th><th>time</th><th>result</th></tr></thead>\n<tbody>\n";
    for (index, result) in &order {
        let (class, label) = status(&result.outcome);
        let message = result
            .outcome
            .error()
            .map(|e| diagnostic_of(e).to_string())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<tr class=\"case {class}\"><td class=\"status\">{label}</td>\
             <td class=\"name\"><a href=\"#case-{}\">{}</a></td>\
             <td class=\"time\">{}</td><td class=\"message\">{}</td></tr>",
            index + 1,
            escape(&result.name),
            millis(result.duration),
            escape(&shorten(&message, LINE_HEAD)),
        );
    }
    out += "</tbody>\n</table>\n";

    for (index, result) in &order {
        case(&mut out, index + 1, result);
    }
    out += "</main>\n</body>\n</html>\n";
    out
}

/// One case in full: its diagnostic, then its transcript.
fn case(out: &mut String, number: usize, result: &CaseResult) {
    let (class, label) = status(&result.outcome);
    let open = if result.outcome.passed() { "" } else { " open" };
    let _ = write!(
        out,
        "<section class=\"case {class}\" id=\"case-{number}\">\n<details{open}>\
         <summary><span class=\"status\">{label}</span> <span class=\"name\">{}</span> \
         <span class=\"time\">{}</span></summary>\n",
        escape(&result.name),
        millis(result.duration)
    );
    if let Some(error) = result.outcome.error() {
        diagnostic(out, error);
    }
    transcript(out, &result.transcript);
    *out += "</details>\n</section>\n";
}

/// The terminal's report, without its colours and without the last
/// messages (the transcript below has them all), each line classed so
/// expected, actual and the diff stand out.
fn diagnostic(out: &mut String, error: &Error) {
    let mut diagnostic = diagnostic_of(error);
    diagnostic.transcript.clear();
    let plain = anstream::adapter::strip_str(&diagnostic.render()).to_string();
    *out += "<pre class=\"diagnostic\">";
    let mut in_diff = false;
    // Diff lines follow the gutter's width and three spaces; their first
    // character after that is the sign (a context line's text may itself
    // start with one).
    let gutter = diagnostic
        .location
        .as_ref()
        .map_or(1, |l| l.line.to_string().len());
    // Rendering escaped the control characters of every field, so each
    // line below is one line of the report, never a peer's forged one.
    for line in plain.lines() {
        let trimmed = line.trim_start();
        let class = if line.starts_with("error") {
            Some("headline")
        } else if trimmed.starts_with("= expected:") {
            Some("expected")
        } else if trimmed.starts_with("=   actual:") {
            Some("actual")
        } else if trimmed.starts_with("= diff") {
            in_diff = true;
            Some("note")
        } else if trimmed.starts_with("= note:") {
            Some("note")
        } else if in_diff && line.get(gutter + 3..).is_some_and(|l| l.starts_with('-')) {
            Some("removed")
        } else if in_diff && line.get(gutter + 3..).is_some_and(|l| l.starts_with('+')) {
            Some("added")
        } else {
            None
        };
        let line = escape(&shorten(line, LINE_HEAD)).into_owned();
        match class {
            Some(class) => {
                let _ = writeln!(out, "<span class=\"{class}\">{line}</span>");
            }
            None => {
                let _ = writeln!(out, "{line}");
            }
        }
    }
    *out += "</pre>\n";
}

/// A transcript line taken apart: `+0.012s #2 > hello`.
#[derive(Debug, PartialEq, Eq)]
struct Line<'a> {
    at: &'a str,
    connection: &'a str,
    sent: bool,
    message: &'a str,
}

/// The parts of a line the transcript formatted; `None` for its notes
/// ("… 3 earlier messages not kept"). The prefix is ours, so a message
/// that looks like one cannot be mistaken: only what precedes the arrow
/// is parsed.
fn parse_line(line: &str) -> Option<Line<'_>> {
    let mut rest = line;
    let mut at = "";
    if rest.starts_with('+')
        && let Some((time, after)) = rest.split_once(' ')
        && time.ends_with('s')
    {
        at = time;
        rest = after;
    }
    let mut connection = "";
    if rest.starts_with('#')
        && let Some((label, after)) = rest.split_once(' ')
    {
        connection = label;
        rest = after;
    }
    let (sent, message) = if let Some(message) = rest.strip_prefix("> ") {
        (true, message)
    } else if let Some(message) = rest.strip_prefix("< ") {
        (false, message)
    } else {
        return None;
    };
    Some(Line {
        at,
        connection,
        sent,
        message,
    })
}

fn transcript(out: &mut String, lines: &[String]) {
    if lines.is_empty() {
        *out += "<p class=\"empty\">No messages.</p>\n";
        return;
    }
    // The last lines that fit the budget.
    let mut used = 0;
    let shown = lines
        .iter()
        .rev()
        .take_while(|line| {
            used += line.len();
            used <= TRANSCRIPT_BYTES
        })
        .count()
        .max(1);
    let first = lines.len() - shown;
    *out += "<table class=\"transcript\">\n<thead><tr><th>time</th><th>conn</th><th>dir</th><th>message</th></tr></thead>\n<tbody>\n";
    if first > 0 {
        let _ = writeln!(
            out,
            "<tr class=\"omitted\"><td colspan=\"4\">… {first} earlier lines not shown</td></tr>"
        );
    }
    for line in &lines[first..] {
        let line = shorten(line, LINE_HEAD);
        match parse_line(&line) {
            Some(parsed) => {
                let (class, arrow) = if parsed.sent {
                    ("sent", "→ sent")
                } else {
                    ("received", "← recv")
                };
                // The transcript shows a binary message as `<N bytes: hex>`.
                let hex = if parsed.message.starts_with('<') && parsed.message.contains(" byte") {
                    " hex"
                } else {
                    ""
                };
                let _ = writeln!(
                    out,
                    "<tr class=\"{class}\"><td class=\"at\">{}</td><td class=\"conn\">{}</td>\
                     <td class=\"dir\">{arrow}</td><td class=\"msg{hex}\">{}</td></tr>",
                    escape(parsed.at),
                    escape(parsed.connection),
                    escape(parsed.message)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "<tr class=\"omitted\"><td colspan=\"4\">{}</td></tr>",
                    escape(&line)
                );
            }
        }
    }
    *out += "</tbody>\n</table>\n";
}

pub(crate) fn write(path: &Path, results: &[CaseResult], total: Duration) -> Result<(), Error> {
    std::fs::write(path, render(results, total)).map_err(|source| Error::WriteFile {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diagnostic::Diagnostic;

    #[test]
    fn escape_leaves_no_markup_and_no_control_character() {
        assert_eq!(
            escape("<img src=x onerror='a(\"1\")'>&\u{1b}\0\n"),
            "&lt;img src=x onerror=&#39;a(&quot;1&quot;)&#39;&gt;&amp;\\u{1b}\\0\n"
        );
        assert!(matches!(escape("plain text"), Cow::Borrowed(_)));
    }

    #[test]
    fn transcript_lines_come_apart_at_our_prefix_only() {
        assert_eq!(
            parse_line("+0.012s #2 > #3 < x"),
            Some(Line {
                at: "+0.012s",
                connection: "#2",
                sent: true,
                message: "#3 < x"
            })
        );
        assert_eq!(
            parse_line("+1.000s < <3 bytes: 00 01 02>"),
            Some(Line {
                at: "+1.000s",
                connection: "",
                sent: false,
                message: "<3 bytes: 00 01 02>"
            })
        );
        assert_eq!(parse_line("… 4 earlier messages not kept"), None);
    }

    fn case(name: &str, outcome: Outcome, transcript: &[&str]) -> CaseResult {
        CaseResult {
            name: name.into(),
            duration: Duration::from_millis(3),
            outcome,
            transcript: transcript.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_page_escapes_names_values_and_messages() {
        let attack = "<script>alert(1)</script>";
        let mut diagnostic = Diagnostic::new(attack);
        diagnostic.expected = Some(attack.into());
        diagnostic.actual = Some(attack.into());
        let results = [
            case(attack, Outcome::Passed, &[]),
            case(
                "b.rhai",
                Outcome::Failed(Error::Failed(Box::new(diagnostic))),
                &[&format!("+0.001s < {attack}")],
            ),
        ];
        let page = render(&results, Duration::from_millis(7));
        assert!(!page.contains("<script"), "{page}");
        // Name twice, message (row and headline), expected, actual, message.
        assert_eq!(page.matches("&lt;script&gt;alert(1)").count(), 7, "{page}");
    }

    #[test]
    fn failures_come_first_and_open() {
        let failed = Outcome::Failed(Error::Failed(Box::new(Diagnostic::new("differ"))));
        let results = [
            case("a.rhai", Outcome::Passed, &[]),
            case("b.rhai", failed, &[]),
        ];
        let page = render(&results, Duration::ZERO);
        let a = page.find("#case-1\">a.rhai").unwrap();
        let b = page.find("#case-2\">b.rhai").unwrap();
        assert!(b < a);
        assert!(page.contains("<section class=\"case failed\" id=\"case-2\">\n<details open>"));
    }

    #[test]
    fn a_long_transcript_shows_its_last_lines() {
        let line = format!("+0.000s < {}", "x".repeat(1000));
        let lines: Vec<&str> = (0..100).map(|_| line.as_str()).collect();
        let page = render(&[case("a", Outcome::Passed, &lines)], Duration::ZERO);
        let shown = TRANSCRIPT_BYTES / line.len();
        assert!(page.contains(&format!("… {} earlier lines not shown", 100 - shown)));
        assert_eq!(page.matches("<tr class=\"received\">").count(), shown);
    }
}
