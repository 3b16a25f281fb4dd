//! Which parts of a message are likely to differ from one run to the next
//! (numbers, timestamps, ids, hex), and a regex that still matches when
//! they do. This is what keeps a recording from being as brittle as an
//! autoexpect script.

use std::ops::Range;
use std::sync::LazyLock;

use regex::Regex;

use super::literal::regex_literal;

/// A kind of value that changes between runs, tried in this order at
/// every word start of a message.
struct Variable {
    /// Anchored at the start of what is left of the message.
    shape: Regex,
    /// The value must end at a word end (not cut a longer word short).
    whole_word: bool,
    /// A second look the regex cannot express.
    accept: fn(&str) -> bool,
    /// The pattern written in place of the value.
    pattern: fn(&str) -> String,
}

fn anchored(pattern: &str) -> Regex {
    Regex::new(&format!("^(?:{pattern})")).expect("built-in pattern")
}

static VARIABLES: LazyLock<Vec<Variable>> = LazyLock::new(|| {
    vec![
        // A UUID: 550e8400-e29b-41d4-a716-446655440000.
        Variable {
            shape: anchored(
                "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
            ),
            whole_word: true,
            accept: |_| true,
            pattern: |value| {
                let c = hex_class(value);
                format!("{c}{{8}}-{c}{{4}}-{c}{{4}}-{c}{{4}}-{c}{{12}}")
            },
        },
        // An ISO 8601 date or timestamp: 2024-05-01, 2024-05-01T12:34:56.789+02:00.
        Variable {
            shape: anchored(
                "[0-9]{4}-[0-9]{2}-[0-9]{2}\
                 (?:[T ][0-9]{2}:[0-9]{2}(?::[0-9]{2}(?:[.,][0-9]+)?)?\
                 (?:Z|[+-][0-9]{2}(?::?[0-9]{2})?)?)?",
            ),
            whole_word: true,
            accept: |_| true,
            pattern: digits_by_width,
        },
        // An HTTP date: Sun, 06 Nov 1994 08:49:37 GMT.
        Variable {
            shape: anchored(
                "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), [0-9]{2} \
                 (?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) \
                 [0-9]{4} [0-9]{2}:[0-9]{2}:[0-9]{2} GMT",
            ),
            whole_word: true,
            accept: |_| true,
            pattern: |_| r"[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT".into(),
        },
        // A hex number with its prefix: 0x7ffd5a3c.
        Variable {
            shape: anchored("0[xX][0-9a-fA-F]+"),
            whole_word: true,
            accept: |_| true,
            pattern: |value| format!("{}{}+", &value[..2], hex_class(&value[2..])),
        },
        // Hex digits that are not a plain number or word: a hash, an id.
        Variable {
            shape: anchored("[0-9a-fA-F]{6,}"),
            whole_word: true,
            accept: |value| has_digit(value) && value.bytes().any(|b| b.is_ascii_alphabetic()),
            pattern: |value| format!("{}+", hex_class(value)),
        },
        // A long token of letters and digits: a session id, a nonce.
        Variable {
            shape: anchored("[0-9A-Za-z]{8,}"),
            whole_word: true,
            accept: |value| has_digit(value) && value.bytes().any(|b| b.is_ascii_alphabetic()),
            pattern: |_| "[0-9A-Za-z]+".into(),
        },
        // A number, not part of a word (`v2`, `utf8` stay as they are), but
        // it may carry a unit (`10ms`).
        Variable {
            shape: anchored("[0-9]+(?:\\.[0-9]+)?"),
            whole_word: false,
            accept: |_| true,
            pattern: |value| {
                if value.contains('.') {
                    r"\d+\.\d+".into()
                } else {
                    r"\d+".into()
                }
            },
        },
    ]
});

fn has_digit(value: &str) -> bool {
    value.bytes().any(|b| b.is_ascii_digit())
}

/// The class of hex digits in the case the value was written in.
fn hex_class(value: &str) -> &'static str {
    let lower = value.bytes().any(|b| matches!(b, b'a'..=b'f'));
    let upper = value.bytes().any(|b| matches!(b, b'A'..=b'F'));
    match (lower, upper) {
        (true, true) => "[0-9a-fA-F]",
        (false, true) => "[0-9A-F]",
        _ => "[0-9a-f]",
    }
}

/// A timestamp keeps its layout: each run of digits becomes `\d{N}`, but a
/// fraction of a second may have any number of digits.
fn digits_by_width(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    let mut previous = None;
    while let Some(c) = rest.chars().next() {
        if c.is_ascii_digit() {
            let width = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if matches!(previous, Some('.' | ',')) {
                out.push_str(r"\d+");
            } else {
                out.push_str(&format!(r"\d{{{width}}}"));
            }
            rest = &rest[width..];
            previous = Some('0');
        } else {
            out.push_str(&regex_literal(&c.to_string()));
            rest = &rest[c.len_utf8()..];
            previous = Some(c);
        }
    }
    out
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Where `keep` occurs in `text` as whole words: text the client sent and
/// the peer echoed back cannot differ on a replay, so it stays literal.
fn kept_ranges(text: &str, keep: Option<&str>) -> Vec<Range<usize>> {
    let Some(keep) = keep.filter(|k| !k.is_empty()) else {
        return Vec::new();
    };
    let mut ranges = Vec::new();
    let mut from = 0;
    while let Some(found) = text[from..].find(keep) {
        let start = from + found;
        let end = start + keep.len();
        let before = text[..start].chars().next_back();
        let after = text[end..].chars().next();
        let starts_word = !keep.starts_with(is_word_char) || !before.is_some_and(is_word_char);
        let ends_word = !keep.ends_with(is_word_char) || !after.is_some_and(is_word_char);
        if starts_word && ends_word {
            ranges.push(start..end);
            from = end;
        } else {
            from = start + keep.chars().next().map_or(1, char::len_utf8);
        }
    }
    ranges
}

/// Status codes and protocol keywords: a conversation is about them, so a
/// different one on a replay is a failure, never a value that varied.
struct ProtocolWords {
    /// A reply code opening a message (SMTP, FTP): `250 OK`, `250-8BITMIME`.
    reply_code: Regex,
    /// An HTTP status line's version and code.
    status_line: Regex,
    /// A request line's version.
    request_version: Regex,
    /// A word of capitals (`STARTTLS`, `8BITMIME`, `SMTPUTF8`); kept when
    /// it has at most one digit, as ids and hashes in capitals have more.
    capitals: Regex,
}

static PROTOCOL_WORDS: LazyLock<ProtocolWords> = LazyLock::new(|| ProtocolWords {
    reply_code: anchored("[1-5][0-9]{2}(?:[ -]|$)"),
    status_line: anchored(r"HTTP/[0-9](?:\.[0-9])? [1-5][0-9]{2}\b"),
    request_version: Regex::new(r" HTTP/[0-9](?:\.[0-9])?$").expect("built-in pattern"),
    capitals: Regex::new(r"\b[A-Z0-9]*[A-Z][A-Z0-9]*[A-Z][A-Z0-9]*\b").expect("built-in pattern"),
});

/// Where `text` holds status codes and keywords to keep literal.
fn protocol_ranges(text: &str) -> Vec<Range<usize>> {
    let words = &*PROTOCOL_WORDS;
    let mut ranges = Vec::new();
    if words.reply_code.is_match(text) {
        ranges.push(0..3);
    }
    ranges.extend(words.status_line.find(text).map(|m| m.range()));
    ranges.extend(words.request_version.find(text).map(|m| m.range()));
    ranges.extend(
        words
            .capitals
            .find_iter(text)
            .filter(|m| m.as_str().bytes().filter(u8::is_ascii_digit).count() <= 1)
            .map(|m| m.range()),
    );
    ranges
}

/// A regex (anchored `^…$`) that matches `text` with every variable-looking
/// value replaced by a pattern for its kind, or `None` when nothing in
/// `text` looks variable. `keep` is text to leave literal wherever it
/// appears as whole words (what the client just sent); status codes and
/// protocol keywords stay literal too.
pub(crate) fn generalise(text: &str, keep: Option<&str>) -> Option<String> {
    let kept = kept_ranges(text, keep);
    // Only skipped, never an obstacle: an HTTP date still covers its `GMT`.
    let protocol = protocol_ranges(text);
    let mut pattern = String::from("^");
    let mut literal_from = 0;
    let mut generalised = false;
    let mut at = 0;
    'scan: while at < text.len() {
        if let Some(range) = kept.iter().chain(&protocol).find(|r| r.start == at) {
            at = range.end;
            continue;
        }
        let previous = text[..at].chars().next_back();
        if !previous.is_some_and(is_word_char) {
            let rest = &text[at..];
            for variable in VARIABLES.iter() {
                let Some(found) = variable.shape.find(rest) else {
                    continue;
                };
                let value = found.as_str();
                let end = at + value.len();
                let cut_short = text[end..].chars().next().is_some_and(is_word_char);
                let overlaps_kept = kept.iter().any(|r| r.start < end && at < r.end);
                if (variable.whole_word && cut_short) || overlaps_kept || !(variable.accept)(value)
                {
                    continue;
                }
                pattern.push_str(&regex_literal(&text[literal_from..at]));
                pattern.push_str(&(variable.pattern)(value));
                generalised = true;
                at = end;
                literal_from = end;
                continue 'scan;
            }
        }
        at += text[at..].chars().next().map_or(1, char::len_utf8);
    }
    pattern.push_str(&regex_literal(&text[literal_from..]));
    pattern.push('$');
    generalised.then_some(pattern)
}

/// `text` with every run of ASCII digits written `#`. The recorded server
/// script computes the same in Rhai (`shape(msg)`) to answer messages that
/// differ only in their numbers.
pub(crate) fn shape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_number = false;
    for c in text.chars() {
        let digit = c.is_ascii_digit();
        if !digit {
            out.push(c);
        } else if !in_number {
            out.push('#');
        }
        in_number = digit;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn general(text: &str) -> Option<String> {
        generalise(text, None)
    }

    #[test]
    fn plain_text_stays_literal() {
        for text in [
            "hello",
            "",
            "v2 utf8 x86_64",
            "deadbeef facade",
            "HTTP OK",
            "user42",
        ] {
            assert_eq!(general(text), None, "{text:?}");
        }
    }

    #[test]
    fn numbers_become_digit_patterns() {
        assert_eq!(general("echo 2: hi?").unwrap(), r"^echo \d+: hi\?$");
        assert_eq!(general("you are #17").unwrap(), r"^you are #\d+$");
        assert_eq!(
            general("took 10ms, 3.25s").unwrap(),
            r"^took \d+ms, \d+\.\d+s$"
        );
        assert_eq!(
            general("welcome, you are 127.0.0.1:50312").unwrap(),
            r"^welcome, you are \d+\.\d+\.\d+\.\d+:\d+$"
        );
        assert_eq!(general("-5").unwrap(), r"^-\d+$");
    }

    #[test]
    fn timestamps_keep_their_layout() {
        assert_eq!(
            general("at 2024-05-01T12:34:56.789Z ok").unwrap(),
            r"^at \d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d+Z ok$"
        );
        assert_eq!(
            general("2024-05-01 12:34+02:00").unwrap(),
            r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}\+\d{2}:\d{2}$"
        );
        assert_eq!(
            general("on 2024-05-01.").unwrap(),
            r"^on \d{4}-\d{2}-\d{2}\.$"
        );
        assert_eq!(
            general("Date: Sun, 06 Nov 1994 08:49:37 GMT").unwrap(),
            r"^Date: [A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} GMT$"
        );
    }

    #[test]
    fn ids_and_hex() {
        assert_eq!(
            general("id 550e8400-e29b-41d4-a716-446655440000").unwrap(),
            r"^id [0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
        );
        assert_eq!(general("at 0x7ffd5A3C").unwrap(), r"^at 0x[0-9a-fA-F]+$");
        assert_eq!(general("commit 426ede3").unwrap(), r"^commit [0-9a-f]+$");
        assert_eq!(general("HASH=9F86D081").unwrap(), r"^HASH=[0-9A-F]+$");
        assert_eq!(
            general("token x7Kq9Zp2Lm").unwrap(),
            r"^token [0-9A-Za-z]+$"
        );
    }

    #[test]
    fn what_was_sent_and_echoed_stays_literal() {
        assert_eq!(
            generalise("echo 3: add 2 3", Some("add 2 3")).unwrap(),
            r"^echo \d+: add 2 3$"
        );
        assert_eq!(generalise("add 2 3", Some("add 2 3")), None);
        // Only whole words: a sent `1` does not pin the 1 inside 1000.
        assert_eq!(generalise("1 of 1000", Some("1")).unwrap(), r"^1 of \d+$");
    }

    #[test]
    fn status_codes_and_keywords_stay_literal() {
        assert_eq!(general("250 OK"), None);
        assert_eq!(general("250-8BITMIME"), None);
        assert_eq!(general("250-SMTPUTF8"), None);
        assert_eq!(general("250-SIZE 33554432").unwrap(), r"^250-SIZE \d+$");
        assert_eq!(
            general("220 mx.local ESMTP 4.2 ready").unwrap(),
            r"^220 mx\.local ESMTP \d+\.\d+ ready$"
        );
        assert_eq!(general("HTTP/1.1 404 Not Found"), None);
        assert_eq!(
            general("HTTP/1.0 200 OK, 12 bytes").unwrap(),
            r"^HTTP/1\.0 200 OK, \d+ bytes$"
        );
        assert_eq!(general("GET /index.html HTTP/1.1"), None);
        assert_eq!(general("+OK"), None);
        assert_eq!(general("VALUE k 0 5").unwrap(), r"^VALUE k \d+ \d+$");
        assert_eq!(general("END"), None);
        // Capitals with many digits are ids, not keywords.
        assert_eq!(general("ID A7F3K9Q2"), Some(r"^ID [0-9A-Za-z]+$".into()));
        // Not at the start, or not three digits: a value.
        assert_eq!(general("took 250 ms").unwrap(), r"^took \d+ ms$");
        assert_eq!(general("2500 left").unwrap(), r"^\d+ left$");
    }

    #[test]
    fn shapes_hide_numbers_only() {
        assert_eq!(shape("pid 4242 at 12:05"), "pid # at #:#");
        assert_eq!(shape("x"), "x");
        assert_eq!(shape("v2.10"), "v#.#");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// A recording must pass against the very messages it recorded.
        #[test]
        fn the_pattern_matches_the_recorded_text(
            text in "([a-fA-F0-9xTZ:._#\\- ]|[0-9]{1,5}|2024-05-01T12:00:00Z|\\PC){0,24}",
            keep in proptest::option::of("[a-z0-9 ]{1,4}"),
        ) {
            if let Some(pattern) = generalise(&text, keep.as_deref()) {
                let regex = Regex::new(&pattern).unwrap();
                prop_assert!(regex.is_match(&text), "{} does not match {:?}", pattern, text);
            }
        }

        #[test]
        fn any_text_gives_a_valid_matching_pattern(text in any::<String>()) {
            if let Some(pattern) = generalise(&text, None) {
                prop_assert!(Regex::new(&pattern).unwrap().is_match(&text));
            }
        }
    }
}
