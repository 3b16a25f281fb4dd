//! Text written into a recorded script that must read back exactly: Rhai
//! string literals, byte blobs, and the literal parts of a regex.

use std::fmt::Write;

use crate::message;

/// `text` as a double-quoted Rhai string literal that evaluates to exactly
/// `text`. Control and invisible characters are escaped so that the script
/// shows them and stays one line per statement.
pub(crate) fn rhai_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            // Every control character is below U+00A0: two digits suffice.
            c if c.is_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if invisible(c) => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Characters that print as nothing or reorder the text around them (bidi
/// controls): a reader of the script must see that they are there.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{00ad}'
            | '\u{061c}'
            | '\u{180e}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{206f}'
            | '\u{feff}'
            | '\u{fff9}'..='\u{fffb}'
    )
}

/// A Rhai expression for a message: a string literal when the bytes are
/// UTF-8 (scripts receive those as strings), else an `unhex("…")` blob.
pub(crate) fn rhai_bytes(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => rhai_string(text),
        Err(_) => format!("unhex(\"{}\")", message::hex(bytes)),
    }
}

/// `text` as a regex that matches exactly `text`. Unlike `regex::escape`,
/// it leaves `#`, `-`, `&` and `~` alone (they are only special in verbose
/// mode or inside a class), so recorded patterns stay readable.
pub(crate) fn regex_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(
            c,
            '\\' | '.' | '+' | '*' | '?' | '(' | ')' | '|' | '[' | ']' | '{' | '}' | '^' | '$'
        ) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{self, Limits, Params};
    use proptest::prelude::*;

    /// What Rhai makes of `expression`, as the bytes a script would send.
    fn evaluate(expression: &str) -> Vec<u8> {
        let engine = engine::new_engine(&Limits::default(), Params::default(), None);
        let value = engine
            .eval::<rhai::Dynamic>(expression)
            .unwrap_or_else(|e| panic!("{expression} does not evaluate: {e}"));
        message::to_bytes(value).to_vec()
    }

    #[test]
    fn escapes_what_rhai_or_a_reader_would_get_wrong() {
        assert_eq!(rhai_string(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(rhai_string("l1\nl2\r\t"), r#""l1\nl2\r\t""#);
        assert_eq!(rhai_string("\0\x1b\u{7f}"), r#""\x00\x1b\x7f""#);
        assert_eq!(rhai_string("a\u{202e}b"), r#""a\u202eb""#);
        // Interpolation only exists in backtick strings; `"` strings keep it.
        assert_eq!(rhai_string("${x} `y`"), r#""${x} `y`""#);
        assert_eq!(rhai_string("你好 é"), "\"你好 é\"");
        assert_eq!(rhai_bytes(b"\xff\x00a"), r#"unhex("ff0061")"#);
    }

    #[test]
    fn tricky_literals_read_back() {
        for text in [
            "",
            "\\",
            "\\\n",
            "\"\"",
            "a\"\"b",
            "\r\n",
            "\\${",
            "`${x}`",
            "end\\",
            "\u{feff}bom",
        ] {
            assert_eq!(evaluate(&rhai_string(text)), text.as_bytes(), "{text:?}");
        }
    }

    #[test]
    fn regex_literal_only_escapes_metacharacters() {
        assert_eq!(
            regex_literal("you are #17 (a+b)?"),
            r"you are #17 \(a\+b\)\?"
        );
        assert_eq!(regex_literal("a-b & ~c"), "a-b & ~c");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn every_string_literal_reads_back(text in any::<String>()) {
            let literal = rhai_string(&text);
            prop_assert!(!literal.contains('\n') && !literal.contains('\r'));
            prop_assert_eq!(evaluate(&literal), text.as_bytes());
        }

        #[test]
        fn every_message_reads_back(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(evaluate(&rhai_bytes(&bytes)), bytes);
        }

        #[test]
        fn every_regex_literal_matches_itself_only(text in any::<String>(), other in any::<String>()) {
            let regex = regex::Regex::new(&format!("^{}$", regex_literal(&text))).unwrap();
            prop_assert!(regex.is_match(&text));
            prop_assert_eq!(regex.is_match(&other), other == text);
        }
    }
}
