//! Codecs for the protocols people most often test by hand: RESP (Redis),
//! HTTP/1.1 and SMTP-style multi-line replies.
//!
//! Everything here works on byte slices and does no I/O, so the same code
//! frames a stream (the `*_len` functions: `Ok(None)` until a whole message
//! has arrived), parses one message for a script, and builds one to send.
//! The bytes come from a peer that may be broken or hostile, so no input
//! makes these functions panic, recurse without bound, or allocate more
//! than a small multiple of the input: announced lengths are checked
//! against a `max` before anything is waited for or allocated.

pub(crate) mod http;
pub(crate) mod resp;
pub(crate) mod smtp;

use rhai::{Array, Blob, Dynamic, Engine, INT, Map, NativeCallContext};

use crate::engine::{Failure, NativeResult};
use crate::message;

/// What was wrong with a peer's bytes (or, when encoding, with a script's
/// value). Peer bytes quoted in a message are escaped and cut short by
/// [`quote`], so they can neither flood nor drive a terminal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ProtocolError {
    #[error("{protocol}: the message would be at least {size} bytes, more than the limit of {max}")]
    TooLarge {
        protocol: &'static str,
        size: usize,
        max: usize,
    },
    #[error("{protocol}: the message does not end within its {have} bytes")]
    Incomplete { protocol: &'static str, have: usize },
    #[error("{protocol}: {extra} bytes after the end of the message: {near}")]
    Trailing {
        protocol: &'static str,
        extra: usize,
        near: String,
    },
    #[error("RESP: {found} is not a RESP type byte (one of + - : $ * _ # , ( ! = % ~ >)")]
    RespType { found: String },
    #[error("RESP: bad {what} in {line}")]
    RespNumber { what: &'static str, line: String },
    #[error("RESP: a line must end with \\r\\n: {line}")]
    RespLineEnd { line: String },
    #[error("RESP: a bulk value of {len} bytes is not followed by \\r\\n: {near}")]
    RespBulkEnd { len: usize, near: String },
    #[error("RESP: arrays nested more than {max} deep")]
    RespTooDeep { max: usize },
    #[error("RESP: item {index} is {type_name}, which has no RESP form here")]
    RespValue {
        index: usize,
        type_name: &'static str,
    },
    #[error("RESP: {what} cannot contain \\r or \\n: {text}")]
    RespLineValue { what: &'static str, text: String },
    #[error("HTTP: the head (start line and headers) is over {max} bytes")]
    HttpHeadTooLarge { max: usize },
    #[error("HTTP: more than {max} header fields")]
    HttpTooManyHeaders { max: usize },
    #[error("HTTP: bad {what}: {line}")]
    HttpLine { what: &'static str, line: String },
    #[error("HTTP: bad Content-Length: {value}")]
    HttpContentLength { value: String },
    #[error(
        "HTTP: Transfer-Encoding {value} in a request, where only chunked can say where the body ends"
    )]
    HttpTransferEncoding { value: String },
    #[error("HTTP: bad chunk {what}: {near}")]
    HttpChunk { what: &'static str, near: String },
    #[error(
        "SMTP: a reply line must start with a three-digit code and then '-', ' ' or the line end: {line}"
    )]
    SmtpLine { line: String },
    #[error("SMTP: a reply line is over {max} bytes: {line}")]
    SmtpLineTooLong { max: usize, line: String },
    #[error("SMTP: reply code {then} in the middle of a {first} reply: {line}")]
    SmtpCodeChanged {
        first: String,
        then: String,
        line: String,
    },
    #[error("SMTP: reply text is not UTF-8: {line}")]
    SmtpText { line: String },
}

/// Longest stretch of peer bytes quoted in an error.
const QUOTED: usize = 48;

/// `bytes` as an error shows them: escaped, at most [`QUOTED`] bytes.
pub(crate) fn quote(bytes: &[u8]) -> String {
    let shown = message::head(bytes, QUOTED);
    let mut text = message::display(shown);
    if shown.len() < bytes.len() {
        text.push('…');
    }
    text
}

/// Fails with [`ProtocolError::TooLarge`] when `end` is past `max`.
fn within(protocol: &'static str, end: usize, max: usize) -> Result<(), ProtocolError> {
    if end > max {
        return Err(ProtocolError::TooLarge {
            protocol,
            size: end,
            max,
        });
    }
    Ok(())
}

/// The whole of `bytes` as one message, given its framing function's answer.
fn whole(protocol: &'static str, bytes: &[u8], len: Option<usize>) -> Result<(), ProtocolError> {
    match len {
        None => Err(ProtocolError::Incomplete {
            protocol,
            have: bytes.len(),
        }),
        Some(len) if len < bytes.len() => Err(ProtocolError::Trailing {
            protocol,
            extra: bytes.len() - len,
            near: quote(&bytes[len..]),
        }),
        Some(_) => Ok(()),
    }
}

/// Where the `\n` ending the line that starts at `start` is, or `None`
/// until it arrives. A line still open `cap` bytes on is `too_long` (given
/// the bytes so far); one that would run past `max`, the whole message's
/// limit, is too large.
pub(crate) fn line_end(
    buf: &[u8],
    start: usize,
    cap: usize,
    max: usize,
    protocol: &'static str,
    too_long: impl FnOnce(&[u8]) -> ProtocolError,
) -> Result<Option<usize>, ProtocolError> {
    let limit = start.saturating_add(cap).min(max);
    // Past `max` already (limit < start) searches nothing.
    let searched = buf.get(start..buf.len().min(limit)).unwrap_or_default();
    match memchr::memchr(b'\n', searched) {
        Some(at) => Ok(Some(start + at)),
        None if buf.len() < limit => Ok(None),
        None if limit == max => Err(ProtocolError::TooLarge {
            protocol,
            size: max + 1,
            max,
        }),
        None => Err(too_long(searched)),
    }
}

/// The script functions: pure, so the same in client and server scripts.
///
/// ```text
/// send_raw(resp(["SET", "k", blob]));          resp_decode(msg)  // "OK", 42, (), [..], #{error}
/// send_raw(http_request("GET", "/", "host"));  http_parse_response(msg).status
/// let req = http_parse(msg);                   send_raw(http_response(200, #{"X": 1}, body))
/// send(smtp_reply(250, ["mx", "8BITMIME"]));   smtp_parse(msg).lines
/// ```
pub(crate) fn register(engine: &mut Engine) {
    engine
        .register_fn("resp", |args: Array| -> NativeResult<Blob> {
            let mut out = Vec::new();
            resp::encode(&args, &mut out).map_err(|e| script("resp", &e))?;
            Ok(out)
        })
        .register_fn("resp_reply", |value: Dynamic| -> NativeResult<Blob> {
            let mut out = Vec::new();
            resp::encode_value(&value, &mut out).map_err(|e| script("resp_reply", &e))?;
            Ok(out)
        })
        .register_fn(
            "resp_decode",
            |ctx: NativeCallContext, msg: Dynamic| -> NativeResult<Dynamic> {
                let bytes = bytes_of("resp_decode", msg)?;
                decode_resp("resp_decode", &ctx, &bytes)
            },
        )
        .register_fn("http_parse", |msg: Dynamic| -> NativeResult<Map> {
            let bytes = bytes_of("http_parse", msg)?;
            http::parse_request(&bytes).map_err(|e| peer("http_parse", &e))
        })
        .register_fn("http_parse_response", |msg: Dynamic| -> NativeResult<Map> {
            let bytes = bytes_of("http_parse_response", msg)?;
            http::parse_response(&bytes).map_err(|e| peer("http_parse_response", &e))
        })
        .register_fn("http_response", |status: INT| -> NativeResult<Blob> {
            http_response(status, &Map::new(), Dynamic::from(""))
        })
        .register_fn(
            "http_response",
            |status: INT, body: Dynamic| -> NativeResult<Blob> {
                http_response(status, &Map::new(), body)
            },
        )
        .register_fn(
            "http_response",
            |status: INT, headers: Map, body: Dynamic| -> NativeResult<Blob> {
                http_response(status, &headers, body)
            },
        )
        .register_fn(
            "http_request",
            |method: &str, path: &str, host: &str| -> NativeResult<Blob> {
                http_request(method, path, host, &Map::new(), Dynamic::from(""))
            },
        )
        .register_fn(
            "http_request",
            |method: &str, path: &str, host: &str, headers: Map, body: Dynamic| {
                http_request(method, path, host, &headers, body)
            },
        )
        .register_fn(
            "smtp_reply",
            |code: INT, text: &str| -> NativeResult<String> {
                smtp_reply(code, &[text.to_string()])
            },
        )
        .register_fn(
            "smtp_reply",
            |code: INT, lines: Array| -> NativeResult<String> {
                let lines: Vec<String> = lines.iter().map(crate::stack::display).collect();
                smtp_reply(code, &lines)
            },
        )
        .register_fn("smtp_parse", |msg: Dynamic| -> NativeResult<Map> {
            let bytes = bytes_of("smtp_parse", msg)?;
            smtp::parse_reply(&bytes).map_err(|e| peer("smtp_parse", &e))
        });
}

/// A whole RESP value for a script. The count comes from a pass over the
/// headers alone, so a reply of a million empty values is refused before a
/// million values are built.
pub(crate) fn decode_resp(
    function: &str,
    ctx: &NativeCallContext,
    bytes: &[u8],
) -> NativeResult<Dynamic> {
    let values = resp::count_values(bytes).map_err(|e| peer(function, &e))?;
    let limit = ctx.engine().max_array_size();
    if limit > 0 && values > limit {
        return Err(Failure::script(format!(
            "{function}(): {values} values is more than the array limit of {limit}"
        ))
        .into());
    }
    resp::decode(bytes).map_err(|e| peer(function, &e))
}

/// A peer's bytes that do not parse: a wrong reply, like a failed `expect`.
pub(crate) fn peer(function: &str, error: &ProtocolError) -> Box<rhai::EvalAltResult> {
    Failure::expectation(format!("{function}(): {error}")).into()
}

/// A script value that cannot be encoded: a misused API.
fn script(function: &str, error: &ProtocolError) -> Box<rhai::EvalAltResult> {
    Failure::script(format!("{function}(): {error}")).into()
}

/// A message as bytes, a string or a blob as `recv()` gives them, without
/// copying: messages may be megabytes.
fn bytes_of(function: &str, msg: Dynamic) -> NativeResult<bytes::Bytes> {
    if msg.is_string() || msg.is_blob() {
        return Ok(message::to_bytes(msg));
    }
    Err(Failure::script(format!(
        "{function}(): expects a message (a string or a blob), not {}",
        msg.type_name()
    ))
    .into())
}

/// Status codes are three digits on the wire.
fn status_code(function: &str, status: INT) -> NativeResult<INT> {
    if (100..=999).contains(&status) {
        return Ok(status);
    }
    Err(Failure::script(format!(
        "{function}(): {status} is not a three-digit code (100 to 999)"
    ))
    .into())
}

fn http_response(status: INT, headers: &Map, body: Dynamic) -> NativeResult<Blob> {
    let status = status_code("http_response", status)?;
    Ok(http::build_response(
        status,
        headers,
        &message::to_bytes(body),
    ))
}

pub(crate) fn http_request(
    method: &str,
    path: &str,
    host: &str,
    headers: &Map,
    body: Dynamic,
) -> NativeResult<Blob> {
    // Spaces or line ends here would make a different request line than
    // the script meant; header values are left alone, so that a script
    // can still send a malformed header on purpose.
    for (what, text) in [("method", method), ("path", path), ("host", host)] {
        if text.is_empty() || text.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(Failure::script(format!(
                "http_request(): the {what} {text:?} must be non-empty, without spaces or line ends"
            ))
            .into());
        }
    }
    Ok(http::build_request(
        method,
        path,
        host,
        headers,
        &message::to_bytes(body),
    ))
}

fn smtp_reply(code: INT, lines: &[String]) -> NativeResult<String> {
    let code = status_code("smtp_reply", code)?;
    let reply = smtp::build_reply(code, lines);
    // Built from strings and digits only.
    Ok(String::from_utf8(reply).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use rhai::{EvalAltResult, Scope};

    use crate::engine::{self, Failure, FailureKind, Limits, Params};

    fn engine() -> rhai::Engine {
        engine::new_engine(&Limits::default(), Params::default(), None)
    }

    fn eval<T: rhai::Variant + Clone>(script: &str) -> T {
        engine()
            .eval_with_scope::<T>(&mut Scope::new(), script)
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// The failure `script` ends with: its kind and message.
    fn failure(script: &str) -> (FailureKind, String) {
        let error = engine()
            .eval_with_scope::<rhai::Dynamic>(&mut Scope::new(), script)
            .expect_err(script);
        match *error {
            EvalAltResult::ErrorRuntime(value, _) if value.is::<Failure>() => {
                let failure = value.cast::<Failure>();
                (failure.kind, failure.message)
            }
            other => panic!("{script}: not a Failure: {other}"),
        }
    }

    #[test]
    fn resp_encodes_a_command_and_decodes_a_reply() {
        assert_eq!(
            eval::<rhai::Blob>(r#"resp(["SET", "k", blob(2, 0xff), 42])"#),
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xff\xff\r\n$2\r\n42\r\n"
        );
        assert_eq!(
            eval::<String>(
                r#"let r = resp_decode("*2\r\n$4\r\na\r\nb\r\n:7\r\n"); `${r[0]}|${r[1]}`"#
            ),
            "a\r\nb|7"
        );
        assert!(eval::<bool>(r#"resp_decode("$-1\r\n") == ()"#));
        assert_eq!(
            eval::<String>(r#"resp_decode("-ERR wrong\r\n").error"#),
            "ERR wrong"
        );
        assert_eq!(
            eval::<rhai::Blob>(r#"resp_reply([#{simple: "OK"}, 3, (), #{error: "ERR x"}])"#),
            b"*4\r\n+OK\r\n:3\r\n$-1\r\n-ERR x\r\n"
        );
    }

    #[test]
    fn resp_decode_refuses_bad_replies_as_wrong_replies() {
        let (kind, message) = failure(r#"resp_decode("$5\r\nab")"#);
        assert_eq!(kind, FailureKind::Expectation);
        assert_eq!(
            message,
            "resp_decode(): RESP: the message does not end within its 6 bytes"
        );
        let (kind, message) = failure(r#"resp_decode(":1\r\n:2\r\n")"#);
        assert_eq!(kind, FailureKind::Expectation);
        assert_eq!(
            message,
            r#"resp_decode(): RESP: 4 bytes after the end of the message: ":2\r\n""#
        );
        let (kind, message) = failure(r#"resp([[1]])"#);
        assert_eq!(kind, FailureKind::Script);
        assert_eq!(
            message,
            "resp(): RESP: item 0 is array, which has no RESP form here"
        );
        let (kind, _) = failure("resp_decode(42)");
        assert_eq!(kind, FailureKind::Script);
    }

    #[test]
    fn resp_decode_counts_values_against_the_array_limit_first() {
        let limits = Limits {
            max_array_size: 10,
            ..Limits::default()
        };
        let engine = engine::new_engine(&limits, Params::default(), None);
        let mut scope = Scope::new();
        scope.push("msg", format!("*11\r\n{}", ":1\r\n".repeat(11)));
        let error = engine
            .eval_with_scope::<rhai::Dynamic>(&mut scope, "resp_decode(msg)")
            .expect_err("11 values");
        match *error {
            EvalAltResult::ErrorRuntime(value, _) => assert_eq!(
                value.cast::<Failure>().message,
                "resp_decode(): 12 values is more than the array limit of 10"
            ),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn hostile_messages_fail_as_wrong_replies() {
        let engine = engine();
        for (msg, message) in [
            (
                "*1\r\n".repeat(100_000),
                "resp_decode(): RESP: arrays nested more than 64 deep",
            ),
            (
                "$99999999999\r\nab".to_string(),
                "resp_decode(): RESP: the message does not end within its 16 bytes",
            ),
        ] {
            let mut scope = Scope::new();
            scope.push("msg", msg);
            let error = engine
                .eval_with_scope::<rhai::Dynamic>(&mut scope, "resp_decode(msg)")
                .expect_err(message);
            match *error {
                EvalAltResult::ErrorRuntime(value, _) => {
                    let failure = value.cast::<Failure>();
                    assert_eq!(failure.kind, FailureKind::Expectation);
                    assert_eq!(failure.message, message);
                }
                other => panic!("{other}"),
            }
        }
        let mut scope = Scope::new();
        scope.push(
            "msg",
            format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(70_000)),
        );
        let error = engine
            .eval_with_scope::<rhai::Dynamic>(&mut scope, "http_parse(msg)")
            .expect_err("long head");
        assert!(error.to_string().contains("Failure"), "{error}");
    }

    #[test]
    fn a_binary_body_goes_through_exactly() {
        let mut scope = Scope::new();
        // Under the engine's blob limit of 100,000 items, which is not
        // this module's to lift.
        let body: Vec<u8> = (0..=255).cycle().take(90_000).collect();
        scope.push("body", body.clone());
        let back = engine()
            .eval_with_scope::<rhai::Blob>(
                &mut scope,
                r#"let r = http_parse_response(http_response(200, #{"Content-Type": "application/octet-stream"}, body));
                   assert(r.headers["content-length"] == "90000");
                   r.body"#,
            )
            .unwrap();
        assert_eq!(back, body);
        assert_eq!(
            eval::<String>(
                r#"let r = http_parse("GET / HTTP/1.1\r\nHOST: h\r\n\r\n"); r.headers.host"#
            ),
            "h"
        );
        let (kind, message) = failure(r#"resp_reply(#{a: 1})"#);
        assert_eq!(kind, FailureKind::Script);
        assert_eq!(
            message,
            "resp_reply(): RESP: item 0 is a map other than #{simple: text} or #{error: text}, which has no RESP form here"
        );
    }

    #[test]
    fn http_helpers_build_and_parse_both_directions() {
        assert_eq!(
            eval::<rhai::Blob>(r#"http_request("GET", "/x", "example.com")"#),
            b"GET /x HTTP/1.1\r\nHost: example.com\r\n\r\n"
        );
        assert_eq!(
            eval::<rhai::Blob>(r#"http_response(404)"#),
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        );
        assert_eq!(
            eval::<String>(
                r#"let r = http_parse_response(http_response(200, #{"X-A": 1}, "hi"));
                   `${r.status} ${r.reason} ${r.headers["x-a"]} ${r.body}`"#
            ),
            "200 OK 1 hi"
        );
        assert_eq!(
            eval::<String>(
                r#"let r = http_parse(http_request("POST", "/p", "h", #{}, "abc"));
                   `${r.method} ${r.path} ${r.version} ${r.headers["content-length"]} ${r.body}`"#
            ),
            "POST /p HTTP/1.1 3 abc"
        );
        let (kind, message) = failure(r#"http_response(42)"#);
        assert_eq!(kind, FailureKind::Script);
        assert_eq!(
            message,
            "http_response(): 42 is not a three-digit code (100 to 999)"
        );
        let (kind, _) = failure(r#"http_request("GET", "/a b", "h")"#);
        assert_eq!(kind, FailureKind::Script);
        let (kind, message) = failure(r#"http_parse("GET / HTTP/1.1\r\n")"#);
        assert_eq!(kind, FailureKind::Expectation);
        assert_eq!(
            message,
            "http_parse(): HTTP: the message does not end within its 16 bytes"
        );
    }

    #[test]
    fn smtp_helpers_build_and_parse() {
        assert_eq!(
            eval::<String>(r#"smtp_reply(250, ["mx", "PIPELINING", "8BITMIME"])"#),
            "250-mx\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        );
        assert_eq!(
            eval::<String>(r#"smtp_reply(354, "go ahead")"#),
            "354 go ahead\r\n"
        );
        assert_eq!(
            eval::<String>(
                r#"let r = smtp_parse(smtp_reply(250, "a\nb")); `${r.code}:${r.lines.len()}:${r.text}`"#
            ),
            "250:2:a\nb"
        );
        let (kind, _) = failure(r#"smtp_reply(1000, "x")"#);
        assert_eq!(kind, FailureKind::Script);
    }
}
