//! SMTP-style replies: one or more lines with the same three-digit code,
//! a `-` after the code on every line but the last (also FTP's and
//! several other line protocols' multi-line form).
//!
//! ```text
//! 250-mail.example.com\r\n
//! 250-PIPELINING\r\n
//! 250 8BITMIME\r\n
//! ```

use rhai::{Array, Dynamic, INT, Map};

use super::{ProtocolError, line_end, quote, whole};

const PROTOCOL: &str = "SMTP";

/// Longest reply line: RFC 5321 allows 512 bytes; servers' banners and
/// EHLO keywords sometimes run longer, and a line that never ends must
/// not be waited for.
pub(crate) const MAX_LINE: usize = 4096;

/// The length of the first complete reply at the front of `buf`, or `None`
/// until its last line (`DDD text` or `DDD`) has arrived. Lines may end
/// in `\r\n` or a bare `\n`.
pub(crate) fn reply_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    let mut pos = 0;
    let mut first: Option<&[u8]> = None;
    loop {
        let Some((line, next)) = line_at(buf, pos, max)? else {
            return Ok(None);
        };
        let (code, last) = code_of(line)?;
        match first {
            Some(first) if first != code => {
                return Err(ProtocolError::SmtpCodeChanged {
                    first: String::from_utf8_lossy(first).into_owned(),
                    then: String::from_utf8_lossy(code).into_owned(),
                    line: quote(line),
                });
            }
            _ => first = Some(code),
        }
        pos = next;
        if last {
            return Ok(Some(pos));
        }
    }
}

/// The line at `pos` without its line end, and where the next starts.
fn line_at(buf: &[u8], pos: usize, max: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let too_long = |line: &[u8]| ProtocolError::SmtpLineTooLong {
        max: MAX_LINE,
        line: quote(line),
    };
    let Some(end) = line_end(buf, pos, MAX_LINE, max, PROTOCOL, too_long)? else {
        return Ok(None);
    };
    let line = &buf[pos..end];
    Ok(Some((line.strip_suffix(b"\r").unwrap_or(line), end + 1)))
}

/// The code of a reply line, and whether the line is the reply's last.
fn code_of(line: &[u8]) -> Result<(&[u8], bool), ProtocolError> {
    let bad = || ProtocolError::SmtpLine { line: quote(line) };
    let (code, rest) = line.split_at_checked(3).ok_or_else(bad)?;
    if !code.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    match rest.first() {
        None | Some(b' ') => Ok((code, true)),
        Some(b'-') => Ok((code, false)),
        Some(_) => Err(bad()),
    }
}

/// A whole reply as a script sees it: `#{code, lines, text}`, `text` being
/// the lines joined with `\n`.
pub(crate) fn parse_reply(bytes: &[u8]) -> Result<Map, ProtocolError> {
    whole(PROTOCOL, bytes, reply_len(bytes, usize::MAX)?)?;
    let mut code;
    let mut lines = Array::new();
    let mut texts = Vec::new();
    let mut pos = 0;
    loop {
        let incomplete = || ProtocolError::Incomplete {
            protocol: PROTOCOL,
            have: bytes.len(),
        };
        let (line, next) = line_at(bytes, pos, usize::MAX)?.ok_or_else(incomplete)?;
        pos = next;
        let (digits, last) = code_of(line)?;
        code = digits.iter().fold(0, |n, &d| n * 10 + INT::from(d - b'0'));
        let text = line.get(4..).unwrap_or_default();
        let text =
            std::str::from_utf8(text).map_err(|_| ProtocolError::SmtpText { line: quote(line) })?;
        lines.push(text.into());
        texts.push(text);
        if last {
            break;
        }
    }
    let mut map = Map::new();
    map.insert("code".into(), Dynamic::from_int(code));
    map.insert("text".into(), texts.join("\n").into());
    map.insert("lines".into(), Dynamic::from_array(lines));
    Ok(map)
}

/// A reply with `code` and these lines: `250-a\r\n250-b\r\n250 c\r\n`.
/// A line holding line ends becomes several lines, so no text can end the
/// reply early or forge another; no lines at all gives `250\r\n`.
pub(crate) fn build_reply(code: INT, lines: &[String]) -> Vec<u8> {
    let lines: Vec<&str> = lines
        .iter()
        .flat_map(|line| line.split('\n'))
        .map(|line| line.strip_suffix('\r').unwrap_or(line))
        .collect();
    let mut out = Vec::new();
    if lines.is_empty() {
        out.extend_from_slice(format!("{code}\r\n").as_bytes());
    }
    for (i, line) in lines.iter().enumerate() {
        let separator = if i + 1 == lines.len() { ' ' } else { '-' };
        out.extend_from_slice(format!("{code}{separator}{line}\r\n").as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 16;

    fn frames_exactly(reply: &[u8]) {
        for cut in 0..reply.len() {
            assert_eq!(reply_len(&reply[..cut], MAX), Ok(None), "prefix {cut}");
        }
        assert_eq!(reply_len(reply, MAX), Ok(Some(reply.len())));
        let mut more = reply.to_vec();
        more.extend_from_slice(b"221 bye\r\n");
        assert_eq!(reply_len(&more, MAX), Ok(Some(reply.len())));
    }

    fn lines(reply: &Map) -> Vec<String> {
        reply["lines"]
            .read_lock::<Array>()
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn replies_frame_line_by_line() {
        frames_exactly(b"220 mx ESMTP ready\r\n");
        frames_exactly(b"250-mx\r\n250-PIPELINING\r\n250-SIZE 10240000\r\n250 8BITMIME\r\n");
        frames_exactly(b"250\r\n");
        frames_exactly(b"250-a\n250 b\n");
        frames_exactly(b"354 \r\n");
    }

    #[test]
    fn malformed_replies_are_refused() {
        for (input, message) in [
            (
                &b"25 ok\r\n"[..],
                r#"SMTP: a reply line must start with a three-digit code and then '-', ' ' or the line end: "25 ok""#,
            ),
            (
                b"abc ok\r\n",
                r#"SMTP: a reply line must start with a three-digit code and then '-', ' ' or the line end: "abc ok""#,
            ),
            (
                b"250_ok\r\n",
                r#"SMTP: a reply line must start with a three-digit code and then '-', ' ' or the line end: "250_ok""#,
            ),
            (
                b"250-a\r\n\r\n",
                r#"SMTP: a reply line must start with a three-digit code and then '-', ' ' or the line end: """#,
            ),
            (
                b"250-a\r\n251 b\r\n",
                r#"SMTP: reply code 251 in the middle of a 250 reply: "251 b""#,
            ),
        ] {
            assert_eq!(reply_len(input, MAX).unwrap_err().to_string(), message);
        }
        let long = vec![b'2'; MAX_LINE + 1];
        assert!(matches!(
            reply_len(&long, MAX),
            Err(ProtocolError::SmtpLineTooLong { .. })
        ));
        assert_eq!(reply_len(&long[..MAX_LINE - 1], MAX), Ok(None));
        let endless = b"250-more\r\n".repeat(1000);
        assert!(matches!(
            reply_len(&endless, 5000),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn parse_reply_gives_code_lines_and_text() {
        let reply = parse_reply(b"250-mx.example\r\n250-SIZE 100\r\n250 HELP\r\n").unwrap();
        assert_eq!(reply["code"].as_int(), Ok(250));
        assert_eq!(lines(&reply), ["mx.example", "SIZE 100", "HELP"]);
        assert_eq!(reply["text"].to_string(), "mx.example\nSIZE 100\nHELP");
        let bare = parse_reply(b"250\r\n").unwrap();
        assert_eq!(lines(&bare), [""]);
        assert!(matches!(
            parse_reply(b"250 a\r\n250 b\r\n"),
            Err(ProtocolError::Trailing { .. })
        ));
        assert!(matches!(
            parse_reply(b"250-a\r\n"),
            Err(ProtocolError::Incomplete { .. })
        ));
        assert!(matches!(
            parse_reply(b"250 \xff\r\n"),
            Err(ProtocolError::SmtpText { .. })
        ));
    }

    #[test]
    fn build_reply_marks_every_line_but_the_last() {
        let built = build_reply(250, &["a".into(), "b".into(), "c".into()]);
        assert_eq!(built, b"250-a\r\n250-b\r\n250 c\r\n");
        frames_exactly(&built);
        assert_eq!(build_reply(221, &["bye".into()]), b"221 bye\r\n");
        assert_eq!(build_reply(250, &[]), b"250\r\n");
        let split = build_reply(550, &["no\r\n250 forged".into()]);
        assert_eq!(split, b"550-no\r\n550 250 forged\r\n");
        let reply = parse_reply(&split).unwrap();
        assert_eq!(lines(&reply), ["no", "250 forged"]);
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn built_replies_frame_and_parse_back(
                code in 200_i64..600,
                texts in proptest::collection::vec("[ -~]{0,30}", 1..6),
            ) {
                let built = build_reply(code, &texts);
                for cut in 0..built.len() {
                    prop_assert_eq!(reply_len(&built[..cut], MAX), Ok(None));
                }
                prop_assert_eq!(reply_len(&built, MAX), Ok(Some(built.len())));
                let reply = parse_reply(&built).unwrap();
                prop_assert_eq!(reply["code"].as_int(), Ok(code));
                prop_assert_eq!(lines(&reply), texts);
            }

            #[test]
            fn any_bytes_give_an_answer_without_panicking(
                bytes in proptest::collection::vec(
                    prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'-'), Just(b' '), Just(b'2'), any::<u8>()],
                    0..64,
                )
            ) {
                let _ = reply_len(&bytes, 32);
                let _ = parse_reply(&bytes);
            }
        }
    }
}
