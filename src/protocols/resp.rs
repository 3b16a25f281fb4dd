//! RESP, the Redis protocol: RESP2 and the basic RESP3 types.
//!
//! ```text
//! *3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\na\r\nb!\r\n     a command (bulk strings)
//! +OK\r\n   -ERR no\r\n   :42\r\n   $-1\r\n   *-1\r\n  replies
//! ```
//!
//! Framing reads headers only and skips bulk bodies by their length, so a
//! large value arriving in many pieces costs one header parse per piece,
//! not a rescan of everything received so far.

use std::io::Write;

use rhai::{Array, Blob, Dynamic, INT, Map};

use super::{ProtocolError, line_end, quote, whole, within};
use crate::message::to_dynamic;

const PROTOCOL: &str = "RESP";

/// Deepest nesting of arrays (and maps, sets, pushes) accepted: Redis
/// replies nest a few levels; a peer sending `*1\r\n` a million times
/// gets an error instead of a million-deep value.
pub(crate) const MAX_DEPTH: usize = 64;

/// Longest length or number line: a sign and 20 digits fit many times
/// over, so a line of digits that never ends is refused early.
const MAX_NUMBER_LINE: usize = 64;

/// The fewest bytes one value takes (`+\r\n`), to refuse an array
/// announcing more items than the limit could hold before any arrive.
const MIN_VALUE: usize = 3;

/// Where a complete value ends, and how many values it holds (itself
/// included, every level counted), or `None` if more bytes are needed.
struct Scan {
    len: usize,
    values: usize,
}

/// The length of the first complete RESP value at the front of `buf`,
/// `None` if it has not all arrived, an error if it is malformed or
/// would be longer than `max` bytes.
pub(crate) fn frame_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    frame_len_resuming(buf, max, &mut Resume::default())
}

/// How far [`frame_len_resuming`] got through a value not yet whole: the
/// values already complete need no second look when more bytes arrive, so
/// a big array trickling in byte by byte is walked once, not once per read.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resume {
    /// Where the next header starts.
    pos: usize,
    values: usize,
    /// Items still to come in each open aggregate, innermost last.
    owed: Vec<usize>,
}

/// [`frame_len`] carrying on from `resume`, the state a previous call on
/// the same buffer (grown since) left; reset it once a value is taken.
pub(crate) fn frame_len_resuming(
    buf: &[u8],
    max: usize,
    resume: &mut Resume,
) -> Result<Option<usize>, ProtocolError> {
    let found = scan(buf, max, resume);
    if !matches!(found, Ok(None)) {
        *resume = Resume::default();
    }
    Ok(found?.map(|scan| scan.len))
}

/// How many values `bytes`, one whole RESP value, decodes into (every
/// level counted): known from the headers, before anything is built.
pub(crate) fn count_values(bytes: &[u8]) -> Result<usize, ProtocolError> {
    let scan = scan(bytes, usize::MAX, &mut Resume::default())?;
    whole(PROTOCOL, bytes, scan.as_ref().map(|s| s.len))?;
    Ok(scan.map_or(0, |s| s.values))
}

fn scan(buf: &[u8], max: usize, state: &mut Resume) -> Result<Option<Scan>, ProtocolError> {
    // `owed` never grows past MAX_DEPTH, so the walk needs no recursion.
    let Resume { pos, values, owed } = state;
    loop {
        let Some(header) = header_at(buf, *pos, max)? else {
            return Ok(None);
        };
        let mut next = header.next;
        match header.body {
            Body::Scalar => {}
            Body::Bulk(len) => {
                let end = body_end(next, len, max)?;
                if buf.len() < end {
                    // Resumed at this header once the rest has come.
                    return Ok(None);
                }
                check_bulk_end(buf, next, len)?;
                next = end;
            }
            Body::Items(0) => {}
            Body::Items(count) => {
                if owed.len() >= MAX_DEPTH {
                    return Err(ProtocolError::RespTooDeep { max: MAX_DEPTH });
                }
                within(
                    PROTOCOL,
                    count.saturating_mul(MIN_VALUE).saturating_add(next),
                    max,
                )?;
                owed.push(count);
                *values += 1;
                *pos = next;
                continue;
            }
        }
        *values += 1;
        *pos = next;
        // A value is complete: it may complete the aggregates around it.
        loop {
            match owed.last_mut() {
                None => {
                    return Ok(Some(Scan {
                        len: *pos,
                        values: *values,
                    }));
                }
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    owed.pop();
                }
            }
        }
    }
}

/// What follows a value's header line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    /// Nothing: the line was the whole value (also nil bulks and arrays).
    Scalar,
    /// This many bytes, then `\r\n`.
    Bulk(usize),
    /// This many values.
    Items(usize),
}

struct Header<'a> {
    kind: u8,
    line: &'a [u8],
    body: Body,
    /// Just after the header line.
    next: usize,
}

/// The header line of the value at `pos`, checked, or `None` if the line
/// has not all arrived.
fn header_at(buf: &[u8], pos: usize, max: usize) -> Result<Option<Header<'_>>, ProtocolError> {
    let Some(&kind) = buf.get(pos) else {
        return Ok(None);
    };
    let simple = matches!(kind, b'+' | b'-');
    if !simple
        && !matches!(
            kind,
            b':' | b'$' | b'*' | b'_' | b'#' | b',' | b'(' | b'!' | b'=' | b'%' | b'~' | b'>'
        )
    {
        return Err(ProtocolError::RespType {
            found: quote(&buf[pos..pos + 1]),
        });
    }
    let cap = if simple { usize::MAX } else { MAX_NUMBER_LINE };
    let Some((line, next)) = line_at(buf, pos + 1, cap, max)? else {
        return Ok(None);
    };
    let bad = |what| ProtocolError::RespNumber {
        what,
        line: quote(&buf[pos..next]),
    };
    let body = match kind {
        b'+' | b'-' => Body::Scalar,
        b':' => {
            integer(line).ok_or_else(|| bad("integer"))?;
            Body::Scalar
        }
        b'_' if line.is_empty() => Body::Scalar,
        b'_' => return Err(bad("null")),
        b'#' if line == b"t" || line == b"f" => Body::Scalar,
        b'#' => return Err(bad("boolean")),
        b',' => {
            double(line).ok_or_else(|| bad("double"))?;
            Body::Scalar
        }
        b'(' => {
            let digits = line.strip_prefix(b"-").unwrap_or(line);
            if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
                return Err(bad("big number"));
            }
            Body::Scalar
        }
        // Only `$` and `*` have a nil (-1) form.
        b'$' | b'*' if line == b"-1" => Body::Scalar,
        b'$' | b'!' | b'=' => Body::Bulk(length(line).ok_or_else(|| bad("length"))?),
        b'%' => {
            let pairs = length(line).ok_or_else(|| bad("length"))?;
            Body::Items(pairs.checked_mul(2).ok_or_else(|| bad("length"))?)
        }
        _ => Body::Items(length(line).ok_or_else(|| bad("length"))?),
    };
    Ok(Some(Header {
        kind,
        line,
        body,
        next,
    }))
}

/// The line starting at `start` (without its `\r\n`) and the position after
/// it; `None` if its end has not arrived. Lines longer than `cap`, or
/// reaching past `max`, are refused as soon as that is certain.
fn line_at(
    buf: &[u8],
    start: usize,
    cap: usize,
    max: usize,
) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let Some(end) = line_end(buf, start, cap, max, PROTOCOL, |line| {
        ProtocolError::RespNumber {
            what: "length or number (no line end)",
            line: quote(line),
        }
    })?
    else {
        return Ok(None);
    };
    if end == start || buf[end - 1] != b'\r' {
        return Err(ProtocolError::RespLineEnd {
            line: quote(&buf[start.saturating_sub(1)..=end]),
        });
    }
    Ok(Some((&buf[start..end - 1], end + 1)))
}

/// Where a bulk body of `len` bytes starting at `pos` ends, its `\r\n`
/// included, if within `max`.
fn body_end(pos: usize, len: usize, max: usize) -> Result<usize, ProtocolError> {
    let end = pos.saturating_add(len).saturating_add(2);
    within(PROTOCOL, end, max)?;
    Ok(end)
}

fn check_bulk_end(buf: &[u8], pos: usize, len: usize) -> Result<(), ProtocolError> {
    let after = buf.get(pos.saturating_add(len)..).unwrap_or_default();
    let after = &after[..after.len().min(2)];
    if after != b"\r\n" {
        return Err(ProtocolError::RespBulkEnd {
            len,
            near: quote(after),
        });
    }
    Ok(())
}

/// A length: digits only (the nil `-1` is handled by the caller).
fn length(line: &[u8]) -> Option<usize> {
    if line.is_empty() || !line.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(line).ok()?.parse().ok()
}

fn integer(line: &[u8]) -> Option<INT> {
    let digits = line
        .strip_prefix(b"-")
        .or(line.strip_prefix(b"+"))
        .unwrap_or(line);
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(line).ok()?.parse().ok()
}

fn double(line: &[u8]) -> Option<f64> {
    std::str::from_utf8(line).ok()?.parse().ok()
}

/// One whole RESP value as a script sees it: simple strings and bulks as
/// strings (blobs if not UTF-8), errors as `#{error: text}`, integers as
/// INT, nils as `()`, arrays as arrays. Trailing bytes are an error.
pub(crate) fn decode(bytes: &[u8]) -> Result<Dynamic, ProtocolError> {
    let len = frame_len(bytes, usize::MAX)?;
    whole(PROTOCOL, bytes, len)?;
    let mut pos = 0;
    value_at(bytes, &mut pos, 0)
}

/// The value at `pos`, moving `pos` past it. `bytes` has been scanned
/// whole already, so depth and sizes are known to be in bounds; the
/// checks here only keep a mistake from becoming a panic.
fn value_at(bytes: &[u8], pos: &mut usize, depth: usize) -> Result<Dynamic, ProtocolError> {
    if depth > MAX_DEPTH {
        return Err(ProtocolError::RespTooDeep { max: MAX_DEPTH });
    }
    let incomplete = || ProtocolError::Incomplete {
        protocol: PROTOCOL,
        have: bytes.len(),
    };
    let header = header_at(bytes, *pos, usize::MAX)?.ok_or_else(incomplete)?;
    *pos = header.next;
    let line = header.line;
    Ok(match (header.kind, header.body) {
        (b'+', _) => to_dynamic(line),
        (b'-', _) => error_map(line),
        (b':', _) => Dynamic::from_int(integer(line).unwrap_or_default()),
        (b'#', _) => Dynamic::from_bool(line == b"t"),
        (b',', _) => Dynamic::from_float(double(line).unwrap_or_default()),
        (b'(', _) => to_dynamic(line),
        (_, Body::Scalar) => Dynamic::UNIT,
        (kind, Body::Bulk(len)) => {
            let end = body_end(*pos, len, usize::MAX)?;
            let body = bytes.get(*pos..end - 2).ok_or_else(incomplete)?;
            *pos = end;
            match kind {
                b'!' => error_map(body),
                // Verbatim strings start with their format: `txt:`.
                b'=' if body.get(3) == Some(&b':') => to_dynamic(&body[4..]),
                _ => to_dynamic(body),
            }
        }
        (b'%', Body::Items(count)) => {
            let mut map = Map::new();
            for _ in 0..count / 2 {
                let key = value_at(bytes, pos, depth + 1)?;
                let value = value_at(bytes, pos, depth + 1)?;
                // Script maps have string keys: others by their text.
                let key = if key.is_string() {
                    key.into_immutable_string()
                        .unwrap_or_default()
                        .as_str()
                        .into()
                } else {
                    crate::stack::display(&key).into()
                };
                map.insert(key, value);
            }
            Dynamic::from_map(map)
        }
        (_, Body::Items(count)) => {
            // Never more room than the bytes left could fill.
            let room = count.min((bytes.len() - *pos) / MIN_VALUE);
            let mut items = Array::with_capacity(room);
            for _ in 0..count {
                items.push(value_at(bytes, pos, depth + 1)?);
            }
            Dynamic::from_array(items)
        }
    })
}

fn error_map(text: &[u8]) -> Dynamic {
    let mut map = Map::new();
    map.insert("error".into(), to_dynamic(text));
    Dynamic::from_map(map)
}

/// A command as Redis expects it: an array of bulk strings. Strings and
/// blobs go as they are; numbers, booleans and characters as their text.
pub(crate) fn encode(args: &Array, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let start = out.len();
    let _ = write!(out, "*{}\r\n", args.len());
    for (index, arg) in args.iter().enumerate() {
        if !scalar_bulk(arg, out) {
            out.truncate(start);
            return Err(ProtocolError::RespValue {
                index,
                type_name: arg.type_name(),
            });
        }
    }
    Ok(())
}

/// Writes a string, blob, number, boolean or character as a bulk string;
/// false for any other value.
fn scalar_bulk(value: &Dynamic, out: &mut Vec<u8>) -> bool {
    if let Ok(text) = value.as_immutable_string_ref() {
        bulk(out, text.as_bytes());
    } else if let Some(blob) = value.read_lock::<Blob>() {
        bulk(out, &blob);
    } else if let Some(text) = number_text(value) {
        bulk(out, text.as_bytes());
    } else {
        return false;
    }
    true
}

/// The text of a number, boolean or character.
fn number_text(value: &Dynamic) -> Option<String> {
    if let Ok(n) = value.as_int() {
        Some(n.to_string())
    } else if let Ok(x) = value.as_float() {
        Some(x.to_string())
    } else if let Ok(b) = value.as_bool() {
        Some(b.to_string())
    } else if let Ok(c) = value.as_char() {
        Some(c.to_string())
    } else {
        None
    }
}

fn bulk(out: &mut Vec<u8>, bytes: &[u8]) {
    let _ = write!(out, "${}\r\n", bytes.len());
    out.extend_from_slice(bytes);
    out.extend_from_slice(b"\r\n");
}

/// A reply, for mock servers: strings and blobs as bulk strings, INT as an
/// integer, booleans as `:1`/`:0` and floats as bulk text (as Redis
/// replies to RESP2 clients), `()` as the nil bulk, arrays as arrays,
/// `#{simple: "OK"}` as `+OK` and `#{error: "ERR x"}` as `-ERR x`.
pub(crate) fn encode_value(value: &Dynamic, out: &mut Vec<u8>) -> Result<(), ProtocolError> {
    let start = out.len();
    let result = encode_at(value, 0, 0, out);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn encode_at(
    value: &Dynamic,
    index: usize,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<(), ProtocolError> {
    // A script's values may nest far deeper than any reply should.
    if depth > MAX_DEPTH {
        return Err(ProtocolError::RespTooDeep { max: MAX_DEPTH });
    }
    if value.is_unit() {
        out.extend_from_slice(b"$-1\r\n");
    } else if let Ok(n) = value.as_int() {
        let _ = write!(out, ":{n}\r\n");
    } else if let Ok(b) = value.as_bool() {
        let _ = write!(out, ":{}\r\n", INT::from(b));
    } else if let Some(items) = value.read_lock::<Array>() {
        let _ = write!(out, "*{}\r\n", items.len());
        for (index, item) in items.iter().enumerate() {
            encode_at(item, index, depth + 1, out)?;
        }
    } else if let Some(map) = value.read_lock::<Map>() {
        let (kind, what, text) = match (map.len(), map.get("simple"), map.get("error")) {
            (1, Some(text), None) => (b'+', "a simple string", text),
            (1, None, Some(text)) => (b'-', "an error", text),
            _ => {
                return Err(ProtocolError::RespValue {
                    index,
                    type_name: "a map other than #{simple: text} or #{error: text}",
                });
            }
        };
        let text = match text.as_immutable_string_ref() {
            Ok(text) => text.as_bytes().to_vec(),
            Err(_) => number_text(text).unwrap_or_default().into_bytes(),
        };
        if text.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err(ProtocolError::RespLineValue {
                what,
                text: quote(&text),
            });
        }
        out.push(kind);
        out.extend_from_slice(&text);
        out.extend_from_slice(b"\r\n");
    } else if !scalar_bulk(value, out) {
        return Err(ProtocolError::RespValue {
            index,
            type_name: value.type_name(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn len(buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        frame_len(buf, MAX)
    }

    /// Every strict prefix is incomplete, the whole is exactly its length,
    /// and bytes after it do not change that.
    fn frames_exactly(encoded: &[u8]) {
        for cut in 0..encoded.len() {
            assert_eq!(
                len(&encoded[..cut]),
                Ok(None),
                "prefix {cut} of {encoded:?}"
            );
        }
        assert_eq!(len(encoded), Ok(Some(encoded.len())), "{encoded:?}");
        let mut more = encoded.to_vec();
        more.extend_from_slice(b"+next\r\n");
        assert_eq!(len(&more), Ok(Some(encoded.len())));
    }

    #[test]
    fn every_type_frames_byte_by_byte() {
        for encoded in [
            &b"+OK\r\n"[..],
            b"+\r\n",
            b"-ERR unknown command 'x'\r\n",
            b":0\r\n",
            b":-42\r\n",
            b"$0\r\n\r\n",
            b"$-1\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"$4\r\n\r\n\r\n\r\n",
            b"*2\r\n$1\r\na\r\n*2\r\n:1\r\n*0\r\n",
            b"_\r\n",
            b"#t\r\n",
            b",3.25\r\n",
            b",-inf\r\n",
            b"(123456789012345678901234567890\r\n",
            b"!9\r\nERR boom!\r\n",
            b"=8\r\ntxt:some\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n*1\r\n:2\r\n",
            b"~1\r\n+x\r\n",
            b">2\r\n+message\r\n$2\r\nhi\r\n",
        ] {
            frames_exactly(encoded);
        }
    }

    #[test]
    fn crlf_inside_a_bulk_value_is_data() {
        let encoded = b"*2\r\n$6\r\n\r\n*1\r\n\r\n$3\r\n:1\r\r\n";
        frames_exactly(encoded);
        let value = decode(encoded).unwrap().into_array().unwrap();
        assert_eq!(value[0].to_string(), "\r\n*1\r\n");
        assert_eq!(value[1].to_string(), ":1\r");
    }

    #[test]
    fn malformed_input_is_an_error_not_a_wait() {
        let cases: [(&[u8], &str); 12] = [
            (
                b"?x\r\n",
                r#"RESP: "?" is not a RESP type byte (one of + - : $ * _ # , ( ! = % ~ >)"#,
            ),
            (b":12a\r\n", r#"RESP: bad integer in ":12a\r\n""#),
            (b":\r\n", r#"RESP: bad integer in ":\r\n""#),
            (b"$-2\r\n", r#"RESP: bad length in "$-2\r\n""#),
            (b"!-1\r\n", r#"RESP: bad length in "!-1\r\n""#),
            (b"*x\r\n", r#"RESP: bad length in "*x\r\n""#),
            (b"+OK\n", r#"RESP: a line must end with \r\n: "+OK\n""#),
            (
                b"$2\r\nabc\r\n",
                r#"RESP: a bulk value of 2 bytes is not followed by \r\n: "c\r""#,
            ),
            (b"#x\r\n", r##"RESP: bad boolean in "#x\r\n""##),
            (b",1.2.3\r\n", r#"RESP: bad double in ",1.2.3\r\n""#),
            (b"_x\r\n", r#"RESP: bad null in "_x\r\n""#),
            (
                &[b'$'; 70],
                "RESP: bad length or number (no line end) in \"$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$$\"…",
            ),
        ];
        for (input, message) in cases {
            let error = len(input).expect_err(&format!("{input:?}"));
            assert_eq!(error.to_string(), message, "{input:?}");
        }
    }

    #[test]
    fn huge_announced_lengths_fail_at_once() {
        assert_eq!(
            len(b"$9999999999\r\nab"),
            Err(ProtocolError::TooLarge {
                protocol: "RESP",
                size: 10_000_000_014,
                max: MAX
            })
        );
        assert!(matches!(
            len(b"$18446744073709551615\r\n"),
            Err(ProtocolError::TooLarge { .. })
        ));
        assert!(matches!(
            len(b"*99999999999\r\n"),
            Err(ProtocolError::TooLarge { .. })
        ));
        assert!(matches!(
            len(b"%18446744073709551615\r\n"),
            Err(ProtocolError::RespNumber { .. })
        ));
        // A simple string with no end, past the limit.
        assert!(matches!(
            frame_len(&[b'+'; 100], 50),
            Err(ProtocolError::TooLarge { .. })
        ));
        assert_eq!(frame_len(&[b'+'; 49], 50), Ok(None));
        // The limit holds whole values, not more.
        assert_eq!(frame_len(b"$3\r\nabc\r\n", 9), Ok(Some(9)));
        assert!(frame_len(b"$3\r\nabc\r\n", 8).is_err());
    }

    #[test]
    fn a_depth_bomb_is_refused_at_the_limit() {
        let bomb = b"*1\r\n".repeat(100_000);
        assert_eq!(
            len(&bomb),
            Err(ProtocolError::RespTooDeep { max: MAX_DEPTH })
        );
        assert!(decode(&bomb).is_err());
        let mut deepest = b"*1\r\n".repeat(MAX_DEPTH);
        deepest.extend_from_slice(b":1\r\n");
        assert_eq!(len(&deepest), Ok(Some(deepest.len())));
        let mut value = decode(&deepest).unwrap();
        for _ in 0..MAX_DEPTH {
            value = value.into_array().unwrap().remove(0);
        }
        assert_eq!(value.as_int(), Ok(1));
    }

    #[test]
    fn a_large_bulk_in_pieces_is_framed_from_its_header() {
        let mut encoded = b"$1000000\r\n".to_vec();
        encoded.extend(std::iter::repeat_n(b'x', 1_000_000));
        encoded.extend_from_slice(b"\r\n");
        for cut in (0..encoded.len()).step_by(4096) {
            assert_eq!(len(&encoded[..cut]), Ok(None));
        }
        assert_eq!(len(&encoded), Ok(Some(encoded.len())));
    }

    #[test]
    fn decode_gives_script_values() {
        assert_eq!(decode(b"+OK\r\n").unwrap().to_string(), "OK");
        let error = decode(b"-ERR no\r\n").unwrap().cast::<Map>();
        assert_eq!(error["error"].to_string(), "ERR no");
        assert_eq!(decode(b":-7\r\n").unwrap().as_int(), Ok(-7));
        assert!(decode(b"$-1\r\n").unwrap().is_unit());
        assert!(decode(b"*-1\r\n").unwrap().is_unit());
        assert!(decode(b"_\r\n").unwrap().is_unit());
        assert_eq!(decode(b"#f\r\n").unwrap().as_bool(), Ok(false));
        assert_eq!(decode(b",1.5\r\n").unwrap().as_float(), Ok(1.5));
        assert_eq!(decode(b"=8\r\ntxt:some\r\n").unwrap().to_string(), "some");
        let blob = decode(b"$3\r\n\xff\x00\x01\r\n").unwrap();
        assert_eq!(blob.into_blob().unwrap(), vec![0xff, 0, 1]);
        let map = decode(b"%2\r\n+a\r\n:1\r\n:2\r\n+two\r\n")
            .unwrap()
            .cast::<Map>();
        assert_eq!(map["a"].as_int(), Ok(1));
        assert_eq!(map["2"].to_string(), "two");
        assert_eq!(
            decode(b"*1\r\n:1\r\n+extra\r\n").err(),
            Some(ProtocolError::Trailing {
                protocol: "RESP",
                extra: 8,
                near: r#""+extra\r\n""#.into()
            })
        );
        assert_eq!(
            decode(b"*2\r\n:1\r\n").err(),
            Some(ProtocolError::Incomplete {
                protocol: "RESP",
                have: 8
            })
        );
        assert!(decode(b"").is_err());
    }

    #[test]
    fn count_values_counts_every_level() {
        assert_eq!(count_values(b":1\r\n"), Ok(1));
        assert_eq!(count_values(b"*2\r\n*1\r\n:1\r\n$-1\r\n"), Ok(4));
    }

    #[test]
    fn encode_writes_bulk_strings_that_frame_and_decode_back() {
        let args: Array = vec![
            "SET".into(),
            Dynamic::from_blob(b"k\r\n\xff".to_vec()),
            Dynamic::from_int(-3),
            Dynamic::from_float(1.5),
            Dynamic::from_bool(true),
            Dynamic::from_char('é'),
            "".into(),
        ];
        let mut out = Vec::new();
        encode(&args, &mut out).unwrap();
        assert_eq!(
            out,
            b"*7\r\n$3\r\nSET\r\n$4\r\nk\r\n\xff\r\n$2\r\n-3\r\n$3\r\n1.5\r\n$4\r\ntrue\r\n$2\r\n\xc3\xa9\r\n$0\r\n\r\n"
        );
        frames_exactly(&out);
        let back = decode(&out).unwrap().into_array().unwrap();
        assert_eq!(back[1].clone().into_blob().unwrap(), b"k\r\n\xff");
        assert_eq!(back[2].to_string(), "-3");

        let mut out = b"kept".to_vec();
        let error = encode(&vec!["GET".into(), Dynamic::UNIT], &mut out).unwrap_err();
        assert_eq!(
            error.to_string(),
            "RESP: item 1 is (), which has no RESP form here"
        );
        assert_eq!(out, b"kept");
    }

    #[test]
    fn encode_value_writes_replies() {
        let mut simple = Map::new();
        simple.insert("simple".into(), "OK".into());
        let reply: Array = vec![
            Dynamic::from_map(simple),
            Dynamic::from_int(5),
            Dynamic::UNIT,
            Dynamic::from_bool(false),
            Dynamic::from_array(vec!["a\r\n".into()]),
        ];
        let mut out = Vec::new();
        encode_value(&Dynamic::from_array(reply), &mut out).unwrap();
        assert_eq!(
            out,
            b"*5\r\n+OK\r\n:5\r\n$-1\r\n:0\r\n*1\r\n$3\r\na\r\n\r\n"
        );
        frames_exactly(&out);

        let mut error = Map::new();
        error.insert("error".into(), "ERR a\r\nb".into());
        let mut out = Vec::new();
        assert_eq!(
            encode_value(&Dynamic::from_map(error), &mut out)
                .unwrap_err()
                .to_string(),
            r#"RESP: an error cannot contain \r or \n: "ERR a\r\nb""#
        );
        assert!(out.is_empty());

        let mut deep = Dynamic::from_int(1);
        for _ in 0..1000 {
            deep = Dynamic::from_array(vec![deep]);
        }
        assert_eq!(
            encode_value(&deep, &mut out),
            Err(ProtocolError::RespTooDeep { max: MAX_DEPTH })
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        /// Any RESP value, encoded.
        fn encoded() -> impl Strategy<Value = Vec<u8>> {
            let bytes = || proptest::collection::vec(any::<u8>(), 0..40);
            let line = || "[a-zA-Z0-9 :$*\\-]{0,20}";
            let leaf = prop_oneof![
                line().prop_map(|s| format!("+{s}\r\n").into_bytes()),
                line().prop_map(|s| format!("-{s}\r\n").into_bytes()),
                any::<i64>().prop_map(|n| format!(":{n}\r\n").into_bytes()),
                bytes().prop_map(|b| {
                    let mut out = Vec::new();
                    bulk(&mut out, &b);
                    out
                }),
                Just(b"$-1\r\n".to_vec()),
                Just(b"*-1\r\n".to_vec()),
                Just(b"_\r\n".to_vec()),
                any::<f64>().prop_map(|x| format!(",{x:e}\r\n").into_bytes()),
            ];
            leaf.prop_recursive(6, 64, 8, |inner| {
                (
                    prop_oneof![Just('*'), Just('~'), Just('>'), Just('%')],
                    proptest::collection::vec(inner, 0..8),
                )
                    .prop_map(|(kind, mut items)| {
                        if kind == '%' && items.len() % 2 == 1 {
                            items.pop();
                        }
                        let count = if kind == '%' {
                            items.len() / 2
                        } else {
                            items.len()
                        };
                        let mut out = format!("{kind}{count}\r\n").into_bytes();
                        items.iter().for_each(|item| out.extend_from_slice(item));
                        out
                    })
            })
        }

        proptest! {
            #[test]
            fn frame_len_waits_for_every_prefix_and_ends_at_the_end(encoded in encoded()) {
                for cut in 0..encoded.len() {
                    prop_assert_eq!(frame_len(&encoded[..cut], MAX), Ok(None));
                }
                prop_assert_eq!(frame_len(&encoded, MAX), Ok(Some(encoded.len())));
                prop_assert!(decode(&encoded).is_ok());
            }

            #[test]
            fn any_bytes_give_an_answer_without_panicking(
                bytes in proptest::collection::vec(
                    prop_oneof![Just(b'\r'), Just(b'\n'), Just(b'*'), Just(b'$'), Just(b'1'), any::<u8>()],
                    0..64,
                )
            ) {
                let _ = frame_len(&bytes, 32);
                let _ = decode(&bytes);
            }

            #[test]
            fn commands_decode_to_their_arguments(
                args in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..30), 0..10)
            ) {
                let array: Array = args.iter().map(|a| Dynamic::from_blob(a.clone())).collect();
                let mut out = Vec::new();
                encode(&array, &mut out).unwrap();
                let back = decode(&out).unwrap().into_array().unwrap();
                prop_assert_eq!(back.len(), args.len());
                for (value, arg) in back.into_iter().zip(&args) {
                    prop_assert_eq!(&crate::message::to_bytes(value)[..], &arg[..]);
                }
            }
        }
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    /// Fed byte by byte through one `Resume`, a value is found exactly
    /// when it is whole, and the walk never goes back to the start.
    #[test]
    fn resuming_finds_the_value_when_whole_and_keeps_its_place() {
        let mut value = b"*3\r\n$5\r\nhe\r\nl\r\n*2\r\n:1\r\n$-1\r\n+OK\r\n".to_vec();
        let whole = value.len();
        value.extend_from_slice(b"+next\r\n");
        let mut resume = Resume::default();
        let mut furthest = 0;
        for end in 0..whole {
            assert_eq!(
                frame_len_resuming(&value[..end], 1024, &mut resume),
                Ok(None)
            );
            assert!(resume.pos >= furthest, "went back at {end}");
            furthest = resume.pos;
        }
        assert!(furthest > whole / 2, "it kept no place: {furthest}");
        assert_eq!(
            frame_len_resuming(&value, 1024, &mut resume),
            Ok(Some(whole))
        );
        // Found: it starts afresh for the next value.
        assert_eq!(resume.pos, 0);
        assert_eq!(frame_len(&value[whole..], 1024), Ok(Some(7)));
    }
}
