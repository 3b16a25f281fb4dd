//! Errors that point into a script, rendered like rustc: the message, the
//! `--> file:line:col` arrow, the source line with a caret, then what was
//! expected, what arrived and the last messages of the transcript.
//!
//! Rendering adds ANSI styles; they are written through `anstream`, which
//! drops them when stderr is not a terminal or `NO_COLOR` is set. Every
//! text field may hold a peer's bytes (a Rhai error quoting a received
//! value, say), so rendering escapes their control characters: only our
//! own styles reach the terminal.

use std::borrow::Cow;
use std::fmt;

use crate::message::escape_controls;

use anstyle::{AnsiColor, Style};

const ERROR: Style = AnsiColor::Red.on_default().bold();
const EMPHASIS: Style = Style::new().bold();
const GUTTER: Style = AnsiColor::Blue.on_default().bold();
const NOTE: Style = AnsiColor::Cyan.on_default().bold();
const ADDED: Style = AnsiColor::Green.on_default();

/// A place in a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: String,
    pub line: usize,
    pub column: usize,
    /// The text of that line, when the file could be read.
    pub source_line: Option<String>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let file = escape_controls(&self.file);
        write!(f, "{file}:{}:{}", self.line, self.column)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostic {
    pub message: String,
    pub location: Option<Location>,
    /// Context lines such as "in hook `on_message`", printed as `= note:`.
    pub notes: Vec<String>,
    /// What the script expected, shown beside `actual`.
    pub expected: Option<String>,
    pub actual: Option<String>,
    /// A line diff of expected and actual, when both are multi-line.
    pub diff: Vec<String>,
    /// The last messages of the conversation, already formatted.
    pub transcript: Vec<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let message = escape_controls(&self.message);
        match &self.location {
            Some(location) => write!(f, "{location}: {message}"),
            None => f.write_str(&message),
        }
    }
}

/// Bytes of a message, note, expected or actual value kept in a report:
/// a value compared with a 1 MB reply is shown by its start and length.
pub(crate) const FIELD_HEAD: usize = 1024;

/// Lines of a diff kept in a report, and bytes of each.
const DIFF_LINES: usize = 100;
const DIFF_LINE_HEAD: usize = 256;

/// `text` cut to its first `max` bytes (on a character boundary), with
/// its full length after the cut.
pub(crate) fn shorten(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}… ({} bytes in all)", &text[..end], text.len()))
}

fn shorten_in_place(text: &mut String, max: usize) {
    if let Cow::Owned(short) = shorten(text, max) {
        *text = short;
    }
}

/// `line` with control characters escaped but tabs kept, so the caret
/// under it still lines up.
fn escape_keeping_tabs(line: &str) -> String {
    line.split('\t')
        .map(escape_controls)
        .collect::<Vec<_>>()
        .join("\t")
}

impl Diagnostic {
    pub fn new(message: impl Into<String>) -> Self {
        Diagnostic {
            message: message.into(),
            ..Diagnostic::default()
        }
    }

    pub fn with_note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    /// Cuts every field to a bounded head, for a report that is kept
    /// until a run ends.
    pub(crate) fn bound(&mut self) {
        shorten_in_place(&mut self.message, FIELD_HEAD);
        for note in &mut self.notes {
            shorten_in_place(note, FIELD_HEAD);
        }
        for value in [&mut self.expected, &mut self.actual].into_iter().flatten() {
            shorten_in_place(value, FIELD_HEAD);
        }
        if let Some(line) = self.location.as_mut().and_then(|l| l.source_line.as_mut()) {
            shorten_in_place(line, FIELD_HEAD);
        }
        if self.diff.len() > DIFF_LINES {
            let more = self.diff.len() - DIFF_LINES;
            self.diff.truncate(DIFF_LINES);
            self.diff.push(format!(" … {more} more lines"));
        }
        for line in &mut self.diff {
            shorten_in_place(line, DIFF_LINE_HEAD);
        }
        for line in &mut self.transcript {
            shorten_in_place(line, FIELD_HEAD);
        }
    }

    /// The multi-line report, ending with a newline.
    pub fn render(&self) -> String {
        let mut out = format!(
            "{ERROR}error{ERROR:#}{EMPHASIS}: {}{EMPHASIS:#}\n",
            escape_controls(&self.message)
        );
        let gutter_width = self
            .location
            .as_ref()
            .map_or(1, |l| l.line.to_string().len());
        let pad = " ".repeat(gutter_width);
        if let Some(location) = &self.location {
            out += &format!("{pad}{GUTTER}-->{GUTTER:#} {location}\n");
            if let Some(line) = &location.source_line {
                let before: String = line
                    .chars()
                    .take(location.column.saturating_sub(1))
                    .collect();
                let caret_pad: String = escape_keeping_tabs(&before)
                    .chars()
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                let line = escape_keeping_tabs(line);
                out += &format!("{pad} {GUTTER}|{GUTTER:#}\n");
                out += &format!(
                    "{GUTTER}{}{GUTTER:#} {GUTTER}|{GUTTER:#} {line}\n",
                    location.line
                );
                out += &format!("{pad} {GUTTER}|{GUTTER:#} {caret_pad}{ERROR}^{ERROR:#}\n");
            }
        }
        for note in &self.notes {
            let note = escape_controls(note);
            out += &format!("{pad} {GUTTER}={GUTTER:#} {NOTE}note{NOTE:#}: {note}\n");
        }
        if let Some(expected) = &self.expected {
            let expected = escape_controls(expected);
            out += &format!("{pad} {GUTTER}={GUTTER:#} {NOTE}expected{NOTE:#}: {expected}\n");
        }
        if let Some(actual) = &self.actual {
            let actual = escape_controls(actual);
            out += &format!("{pad} {GUTTER}={GUTTER:#} {NOTE}  actual{NOTE:#}: {actual}\n");
        }
        if !self.diff.is_empty() {
            out += &format!("{pad} {GUTTER}={GUTTER:#} {NOTE}diff{NOTE:#} (-expected +actual):\n");
            for line in &self.diff {
                let style = match line.chars().next() {
                    Some('-') => ERROR,
                    Some('+') => ADDED,
                    _ => Style::new(),
                };
                let line = escape_controls(line);
                out += &format!("{pad}   {style}{line}{style:#}\n");
            }
        }
        if !self.transcript.is_empty() {
            out += "last messages (oldest first):\n";
            for line in &self.transcript {
                out += &format!("  {}\n", escape_controls(line));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bound_cuts_every_field_to_a_head_with_its_length() {
        let big = "y".repeat(1_000_000);
        let mut diagnostic = Diagnostic {
            message: big.clone(),
            notes: vec![big.clone()],
            expected: Some(big.clone()),
            actual: Some(big.clone()),
            diff: vec![big.clone(); 500],
            ..Diagnostic::default()
        };
        diagnostic.bound();
        let head = format!("{}… (1000000 bytes in all)", "y".repeat(FIELD_HEAD));
        assert_eq!(diagnostic.message, head);
        assert_eq!(diagnostic.notes.len(), 1);
        assert_eq!(diagnostic.notes[0], head);
        assert_eq!(diagnostic.expected.as_deref(), Some(head.as_str()));
        assert_eq!(diagnostic.actual.as_deref(), Some(head.as_str()));
        assert_eq!(diagnostic.diff.len(), DIFF_LINES + 1);
        assert_eq!(diagnostic.diff[DIFF_LINES], " … 400 more lines");
        assert!(diagnostic.diff[0].len() < DIFF_LINE_HEAD + 40);
    }

    #[test]
    fn shorten_cuts_on_a_character_boundary() {
        assert_eq!(shorten("你好", 4), "你… (6 bytes in all)");
        assert_eq!(shorten("short", 10), "short");
    }

    #[test]
    fn rendering_escapes_every_field() {
        let attack = "\u{1b}]0;T\u{7}\0";
        let diagnostic = Diagnostic {
            message: attack.into(),
            location: Some(Location {
                file: format!("{attack}.rhai"),
                line: 1,
                column: 1,
                source_line: Some(attack.into()),
            }),
            notes: vec![attack.into()],
            expected: Some(attack.into()),
            actual: Some(attack.into()),
            diff: vec![format!("-{attack}")],
            transcript: vec![attack.into()],
        };
        let plain = anstream::adapter::strip_str(&diagnostic.render()).to_string();
        assert!(!plain.contains(['\u{1b}', '\u{7}', '\0']), "{plain:?}");
        assert_eq!(plain.matches("\\u{1b}]0;T\\u{7}\\0").count(), 8, "{plain}");
    }

    #[test]
    fn renders_like_rustc() {
        let diagnostic = Diagnostic {
            message: "expected a message matching /^hi$/".into(),
            location: Some(Location {
                file: "conv.rhai".into(),
                line: 12,
                column: 9,
                source_line: Some("let m = expect(\"^hi$\");".into()),
            }),
            notes: vec![],
            expected: Some("/^hi$/".into()),
            actual: Some("\"hello\"".into()),
            diff: vec![],
            transcript: vec!["+0.001s < hello".into()],
        };
        let plain = anstream::adapter::strip_str(&diagnostic.render()).to_string();
        assert_eq!(
            plain,
            "error: expected a message matching /^hi$/\n\
             \x20 --> conv.rhai:12:9\n\
             \x20  |\n\
             12 | let m = expect(\"^hi$\");\n\
             \x20  |         ^\n\
             \x20  = expected: /^hi$/\n\
             \x20  =   actual: \"hello\"\n\
             last messages (oldest first):\n\
             \x20 +0.001s < hello\n"
        );
    }
}
