//! HTTP/1.1 messages: where one ends in a stream, what it says, and
//! building one.
//!
//! ```text
//! POST /items HTTP/1.1\r\n          start line
//! Host: example.com\r\n             header fields, up to an empty line
//! Transfer-Encoding: chunked\r\n
//! \r\n
//! 5;ext=1\r\nhello\r\n0\r\n\r\n     body: Content-Length bytes, chunks,
//!                                   or (responses only) up to the close
//! ```
//!
//! Lines may end in a bare `\n`, as most servers accept. What RFC 9112
//! lets a recipient refuse is refused, since those are the ambiguities
//! request smuggling is made of: folded header lines, whitespace between
//! a field name and its colon, Content-Length values that disagree, and a
//! request body whose end only a coding other than chunked would know.

use std::collections::BTreeMap;
use std::io::Write;

use rhai::{Dynamic, INT, Map};

use super::{ProtocolError, quote, whole, within};
use crate::message::{to_bytes, to_dynamic};

const PROTOCOL: &str = "HTTP";

/// Largest head (start line and header fields): servers commonly refuse
/// beyond 8 to 64 KiB, and a head that never ends must not be waited for.
pub(crate) const MAX_HEAD: usize = 64 * 1024;

/// Most header fields in one head (and trailer fields after chunks).
pub(crate) const MAX_HEADERS: usize = 128;

/// Longest chunk-size line, extensions included.
const MAX_CHUNK_LINE: usize = 4096;

/// The start line and header fields of a message, as they are.
struct Head<'a> {
    start: &'a [u8],
    fields: Vec<(&'a [u8], &'a [u8])>,
    /// Just after the empty line that ends the head.
    len: usize,
}

/// How the body after a head is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Body {
    Length(usize),
    Chunked,
    /// Up to the close of the connection (responses only).
    Close,
}

/// The length of the first complete request at the front of `buf`, body
/// included; `None` until it has all arrived.
pub(crate) fn request_len(buf: &[u8], max: usize) -> Result<Option<usize>, ProtocolError> {
    request_len_resuming(buf, max, &mut Resume::default())
}

/// Where a chunked body not yet whole had got to: the chunks already
/// complete need no second look when more bytes arrive, so a body of many
/// small chunks trickling in is walked once, not once per read.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Resume {
    /// Where the next chunk's size line starts; 0 before the body.
    chunk: usize,
}

/// [`request_len`] carrying on from `resume`, the state a previous call
/// on the same buffer (grown since) left; reset it once a request is taken.
pub(crate) fn request_len_resuming(
    buf: &[u8],
    max: usize,
    resume: &mut Resume,
) -> Result<Option<usize>, ProtocolError> {
    let found = message_len(buf, max, resume, |head| {
        request_line(head.start)?;
        Ok(Some(body_of(head, true)?))
    });
    if !matches!(found, Ok(None)) {
        *resume = Resume::default();
    }
    found
}

/// The length of the message at the front of `buf`: `body` says, from its
/// head, how its body is delimited (`None`: it has none).
fn message_len(
    buf: &[u8],
    max: usize,
    resume: &mut Resume,
    body: impl FnOnce(&Head) -> Result<Option<Body>, ProtocolError>,
) -> Result<Option<usize>, ProtocolError> {
    let Some(head) = head(buf, max)? else {
        return Ok(None);
    };
    match body(&head)? {
        None => Ok(Some(head.len)),
        Some(Body::Chunked) => {
            resume.chunk = resume.chunk.max(head.len);
            chunks(buf, &mut resume.chunk, max, |_| {})
        }
        Some(body) => body_end(buf, &head, body, false, max),
    }
}

/// The length of the first complete response at the front of `buf`. A
/// response delimited by the close is complete only at `eof`, and is then
/// all of `buf`. Replies to HEAD (`head_request`), and 1xx, 204 and 304
/// replies, end with their head whatever their fields say.
pub(crate) fn response_len(
    buf: &[u8],
    eof: bool,
    max: usize,
    head_request: bool,
) -> Result<Option<usize>, ProtocolError> {
    response_len_resuming(buf, eof, max, head_request, &mut Resume::default())
}

/// [`response_len`] carrying on from `resume`, as [`request_len_resuming`].
pub(crate) fn response_len_resuming(
    buf: &[u8],
    eof: bool,
    max: usize,
    head_request: bool,
    resume: &mut Resume,
) -> Result<Option<usize>, ProtocolError> {
    let found = message_len(buf, max, resume, |head| {
        let (_, status, _) = status_line(head.start)?;
        if head_request || bodiless(status) {
            return Ok(None);
        }
        Ok(Some(body_of(head, false)?))
    });
    let found = match found {
        // Delimited by the close: whole only then.
        Ok(None) if eof => match head(buf, max)? {
            Some(head) if matches!(body_of(&head, false), Ok(Body::Close)) => {
                within(PROTOCOL, buf.len(), max)?;
                Ok(Some(buf.len()))
            }
            _ => Ok(None),
        },
        found => found,
    };
    if !matches!(found, Ok(None)) {
        *resume = Resume::default();
    }
    found
}

/// Statuses whose responses never have a body.
fn bodiless(status: INT) -> bool {
    (100..200).contains(&status) || status == 204 || status == 304
}

/// Where the body that starts after `head` ends, if it has arrived.
fn body_end(
    buf: &[u8],
    head: &Head,
    body: Body,
    eof: bool,
    max: usize,
) -> Result<Option<usize>, ProtocolError> {
    match body {
        Body::Length(n) => {
            let end = head.len.saturating_add(n);
            within(PROTOCOL, end, max)?;
            Ok((buf.len() >= end).then_some(end))
        }
        Body::Chunked => chunks(buf, &mut head.len.clone(), max, |_| {}),
        Body::Close => {
            within(PROTOCOL, buf.len(), max)?;
            Ok(eof.then_some(buf.len()))
        }
    }
}

/// A request as a script sees it:
/// `#{method, path, version, headers, body}`, header names lower-cased.
pub(crate) fn parse_request(bytes: &[u8]) -> Result<Map, ProtocolError> {
    whole(PROTOCOL, bytes, request_len(bytes, usize::MAX)?)?;
    let head = head(bytes, usize::MAX)?.ok_or_else(|| incomplete(bytes))?;
    let line = request_line(head.start)?;
    let body = body_bytes(bytes, &head, body_of(&head, true)?)?;
    let mut map = Map::new();
    map.insert("method".into(), to_dynamic(line.method));
    map.insert("path".into(), to_dynamic(line.target));
    map.insert("version".into(), to_dynamic(line.version));
    map.insert("headers".into(), Dynamic::from_map(headers(&head)));
    map.insert("body".into(), to_dynamic(&body));
    Ok(map)
}

/// A response as a script sees it:
/// `#{status, reason, version, headers, body}`. Bytes that end with the
/// head are taken as a bodiless reply (to HEAD, say) whatever its
/// Content-Length; a body with neither length nor chunks runs to the end.
pub(crate) fn parse_response(bytes: &[u8]) -> Result<Map, ProtocolError> {
    let head = head(bytes, usize::MAX)?.ok_or_else(|| incomplete(bytes))?;
    let (version, status, reason) = status_line(head.start)?;
    let no_body = bytes.len() == head.len || bodiless(status);
    whole(
        PROTOCOL,
        bytes,
        response_len(bytes, true, usize::MAX, no_body)?,
    )?;
    let body = if no_body {
        Vec::new()
    } else {
        body_bytes(bytes, &head, body_of(&head, false)?)?
    };
    let mut map = Map::new();
    map.insert("status".into(), Dynamic::from_int(status));
    map.insert("reason".into(), to_dynamic(reason));
    map.insert("version".into(), to_dynamic(version));
    map.insert("headers".into(), Dynamic::from_map(headers(&head)));
    map.insert("body".into(), to_dynamic(&body));
    Ok(map)
}

fn incomplete(bytes: &[u8]) -> ProtocolError {
    ProtocolError::Incomplete {
        protocol: PROTOCOL,
        have: bytes.len(),
    }
}

/// The body of a message known to be whole, de-chunked.
fn body_bytes(bytes: &[u8], head: &Head, body: Body) -> Result<Vec<u8>, ProtocolError> {
    let rest = bytes.get(head.len..).unwrap_or_default();
    Ok(match body {
        Body::Length(n) => rest.get(..n).ok_or_else(|| incomplete(bytes))?.to_vec(),
        Body::Close => rest.to_vec(),
        Body::Chunked => {
            let mut body = Vec::new();
            chunks(bytes, &mut head.len.clone(), usize::MAX, |data| {
                body.extend_from_slice(data);
            })?;
            body
        }
    })
}

/// Header fields by lower-cased name; a repeated field's values joined
/// with ", ", as RFC 9110 allows for all but Set-Cookie.
fn headers(head: &Head) -> Map {
    let mut joined: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, value) in &head.fields {
        let name = String::from_utf8_lossy(name).to_ascii_lowercase();
        let entry = joined.entry(name).or_default();
        if !entry.is_empty() {
            entry.extend_from_slice(b", ");
        }
        entry.extend_from_slice(value);
    }
    joined
        .into_iter()
        .map(|(name, value)| (name.into(), to_dynamic(&value)))
        .collect()
}

/// The head at the front of `buf`, checked line by line, or `None` until
/// its empty line arrives. Empty lines before a start line are skipped, as
/// RFC 9112 asks of servers (some clients send a CRLF after a body).
fn head(buf: &[u8], max: usize) -> Result<Option<Head<'_>>, ProtocolError> {
    let limit = MAX_HEAD.min(max);
    let mut pos = 0;
    let mut start: Option<&[u8]> = None;
    let mut fields = Vec::new();
    loop {
        let Some((line, next)) = line_at(buf, pos, limit)? else {
            return Ok(None);
        };
        pos = next;
        match start {
            None if line.is_empty() => {}
            None => start = Some(line),
            Some(start) if line.is_empty() => {
                return Ok(Some(Head {
                    start,
                    fields,
                    len: pos,
                }));
            }
            Some(_) => {
                if fields.len() == MAX_HEADERS {
                    return Err(ProtocolError::HttpTooManyHeaders { max: MAX_HEADERS });
                }
                fields.push(field(line)?);
            }
        }
    }
}

/// The line at `pos` (its `\r\n` or `\n` dropped) and where the next one
/// starts; `None` if it has not ended yet and still may within `limit`.
fn line_at(buf: &[u8], pos: usize, limit: usize) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    let searched = buf.get(pos..buf.len().min(limit)).unwrap_or_default();
    match memchr::memchr(b'\n', searched) {
        Some(at) => {
            let line = &searched[..at];
            Ok(Some((
                line.strip_suffix(b"\r").unwrap_or(line),
                pos + at + 1,
            )))
        }
        None if buf.len() < limit => Ok(None),
        None => Err(ProtocolError::HttpHeadTooLarge { max: limit }),
    }
}

/// `Name: value`, the value without the whitespace around it.
fn field(line: &[u8]) -> Result<(&[u8], &[u8]), ProtocolError> {
    let bad = |what| ProtocolError::HttpLine {
        what,
        line: quote(line),
    };
    if line.starts_with(b" ") || line.starts_with(b"\t") {
        return Err(bad("header line (folded lines are not accepted)"));
    }
    let colon = memchr::memchr(b':', line).ok_or_else(|| bad("header line (no colon)"))?;
    let name = &line[..colon];
    if name.is_empty() || !name.iter().copied().all(is_token) {
        return Err(bad("header name"));
    }
    let value = line[colon + 1..].trim_ascii();
    if value.iter().any(|&b| b == 0 || b == b'\r') {
        return Err(bad("header value (NUL or CR inside)"));
    }
    Ok((name, value))
}

/// A `tchar` of RFC 9110: what names and methods are made of.
fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn version_ok(version: &[u8]) -> bool {
    matches!(version, [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
        if major.is_ascii_digit() && minor.is_ascii_digit())
}

/// The parts of `METHOD target HTTP/1.1`.
struct RequestLine<'a> {
    method: &'a [u8],
    target: &'a [u8],
    version: &'a [u8],
}

fn request_line(line: &[u8]) -> Result<RequestLine<'_>, ProtocolError> {
    let bad = || ProtocolError::HttpLine {
        what: "request line (expected METHOD /path HTTP/1.1)",
        line: quote(line),
    };
    let mut parts = line.split(|&b| b == b' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    let target_ok = !target.is_empty()
        && std::str::from_utf8(target).is_ok_and(|t| !t.chars().any(char::is_control));
    if method.is_empty() || !method.iter().copied().all(is_token) || !target_ok {
        return Err(bad());
    }
    if !version_ok(version) {
        return Err(bad());
    }
    Ok(RequestLine {
        method,
        target,
        version,
    })
}

/// `HTTP/1.1 200 OK`; the reason may be empty, and so may the space
/// before it.
fn status_line(line: &[u8]) -> Result<(&[u8], INT, &[u8]), ProtocolError> {
    let bad = || ProtocolError::HttpLine {
        what: "status line (expected HTTP/1.1 200 Reason)",
        line: quote(line),
    };
    let (version, rest) = line.split_at_checked(8).ok_or_else(bad)?;
    let rest = rest.strip_prefix(b" ").ok_or_else(bad)?;
    let (code, rest) = rest.split_at_checked(3).ok_or_else(bad)?;
    if !version_ok(version) || !code.iter().all(u8::is_ascii_digit) {
        return Err(bad());
    }
    let reason = match rest {
        [] => rest,
        [b' ', reason @ ..] => reason,
        _ => return Err(bad()),
    };
    let status = code.iter().fold(0, |n, &d| n * 10 + INT::from(d - b'0'));
    Ok((version, status, reason))
}

/// How the body is delimited, from the head's fields (RFC 9112 §6.3).
fn body_of(head: &Head, request: bool) -> Result<Body, ProtocolError> {
    let values = |wanted: &'static str| {
        head.fields
            .iter()
            .filter(move |(name, _)| name.eq_ignore_ascii_case(wanted.as_bytes()))
            .flat_map(|(_, value)| value.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
    };
    // Transfer-Encoding wins over Content-Length.
    if let Some(last) = values("transfer-encoding").rfind(|v| !v.is_empty()) {
        if last.eq_ignore_ascii_case(b"chunked") {
            return Ok(Body::Chunked);
        }
        if request {
            return Err(ProtocolError::HttpTransferEncoding { value: quote(last) });
        }
        return Ok(Body::Close);
    }
    let mut length = None;
    for value in values("content-length") {
        let bad = || ProtocolError::HttpContentLength {
            value: quote(value),
        };
        let n: usize = std::str::from_utf8(value)
            .ok()
            .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(bad)?
            .parse()
            // More digits than any usize: no limit could hold it.
            .unwrap_or(usize::MAX);
        if length.is_some_and(|known| known != n) {
            return Err(bad());
        }
        length = Some(n);
    }
    Ok(match length {
        Some(n) => Body::Length(n),
        None if request => Body::Length(0),
        None => Body::Close,
    })
}

/// Walks a chunked body starting at `pos`, handing each chunk's data to
/// `data`: the position after the last chunk and the trailer fields, or
/// `None` if they have not all arrived. Chunk data is skipped by its
/// size, never scanned.
fn chunks(
    buf: &[u8],
    resume: &mut usize,
    max: usize,
    mut data: impl FnMut(&[u8]),
) -> Result<Option<usize>, ProtocolError> {
    // `resume` stays at the size line of the first chunk not yet whole.
    loop {
        let pos = *resume;
        let limit = pos.saturating_add(MAX_CHUNK_LINE).min(max);
        let Some((line, next)) = chunk_line(buf, pos, limit, max)? else {
            return Ok(None);
        };
        let size = chunk_size(line)?;
        if size == 0 {
            return trailers(buf, next, max);
        }
        let end = next.saturating_add(size);
        within(PROTOCOL, end.saturating_add(2), max)?;
        let (Some(chunk), Some(after)) = (buf.get(next..end), buf.get(end..)) else {
            return Ok(None);
        };
        *resume = match after {
            [b'\r', b'\n', ..] => end + 2,
            [b'\n', ..] => end + 1,
            [] | [b'\r'] => return Ok(None),
            _ => {
                return Err(ProtocolError::HttpChunk {
                    what: "end (chunk data must be followed by \\r\\n)",
                    near: quote(after),
                });
            }
        };
        data(chunk);
    }
}

/// A line of the chunked framing, refused when longer than `limit` allows.
fn chunk_line(
    buf: &[u8],
    pos: usize,
    limit: usize,
    max: usize,
) -> Result<Option<(&[u8], usize)>, ProtocolError> {
    match line_at(buf, pos, limit) {
        Err(_) if limit == max => Err(ProtocolError::TooLarge {
            protocol: PROTOCOL,
            size: max + 1,
            max,
        }),
        Err(_) => Err(ProtocolError::HttpChunk {
            what: "line (too long)",
            near: quote(buf.get(pos..).unwrap_or_default()),
        }),
        ok => ok,
    }
}

/// `1a;name=value`: the size in hex, extensions ignored.
fn chunk_size(line: &[u8]) -> Result<usize, ProtocolError> {
    let digits = line
        .split(|&b| b == b';')
        .next()
        .unwrap_or_default()
        .trim_ascii();
    let bad = || ProtocolError::HttpChunk {
        what: "size",
        near: quote(line),
    };
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(bad());
    }
    let digits = std::str::from_utf8(digits).map_err(|_| bad())?;
    let size = u64::from_str_radix(digits, 16).map_err(|_| bad())?;
    // Past usize is past any limit.
    Ok(usize::try_from(size).unwrap_or(usize::MAX))
}

/// The trailer fields after the last chunk, up to their empty line.
fn trailers(buf: &[u8], mut pos: usize, max: usize) -> Result<Option<usize>, ProtocolError> {
    for _ in 0..=MAX_HEADERS {
        let limit = pos.saturating_add(MAX_CHUNK_LINE).min(max);
        let Some((line, next)) = chunk_line(buf, pos, limit, max)? else {
            return Ok(None);
        };
        if line.is_empty() {
            return Ok(Some(next));
        }
        field(line)?;
        pos = next;
    }
    Err(ProtocolError::HttpTooManyHeaders { max: MAX_HEADERS })
}

/// Whether `headers` has a field `name`, whatever its case.
fn has(headers: &Map, name: &str) -> bool {
    headers.keys().any(|key| key.eq_ignore_ascii_case(name))
}

/// `Name: value` lines for each field; an array value gives one line per
/// item (several Set-Cookie fields, say). Values go as they are, so a
/// script may send a malformed field on purpose.
fn write_fields(out: &mut Vec<u8>, headers: &Map, skip: &str) {
    for (name, value) in headers {
        if name.eq_ignore_ascii_case(skip) {
            continue;
        }
        let values = match value.read_lock::<rhai::Array>() {
            Some(items) => items.clone(),
            None => vec![value.clone()],
        };
        for value in values {
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(&to_bytes(value));
            out.extend_from_slice(b"\r\n");
        }
    }
}

/// A request: the request line, `Host` and `Content-Length` unless the
/// headers give them (the length when there is a body, or the method is
/// one that expects one), the headers, the body.
pub(crate) fn build_request(
    method: &str,
    path: &str,
    host: &str,
    headers: &Map,
    body: &[u8],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + body.len());
    let _ = write!(out, "{method} {path} HTTP/1.1\r\n");
    if !has(headers, "host") {
        let _ = write!(out, "Host: {host}\r\n");
    }
    write_fields(&mut out, headers, "");
    let expects_body = ["POST", "PUT", "PATCH"]
        .iter()
        .any(|m| m.eq_ignore_ascii_case(method));
    if (!body.is_empty() || expects_body)
        && !has(headers, "content-length")
        && !has(headers, "transfer-encoding")
    {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// A response: the status line with its standard reason, the headers,
/// and always the exact Content-Length (any given one is replaced), except
/// where HTTP forbids one (1xx, 204) or the headers give a
/// Transfer-Encoding.
pub(crate) fn build_response(status: INT, headers: &Map, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + body.len());
    let _ = write!(out, "HTTP/1.1 {status} {}\r\n", reason(status));
    write_fields(&mut out, headers, "content-length");
    if !(100..200).contains(&status) && status != 204 && !has(headers, "transfer-encoding") {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The reason phrase RFC 9110 gives a status ("" for others).
pub(crate) fn reason(status: INT) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        205 => "Reset Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        406 => "Not Acceptable",
        408 => "Request Timeout",
        409 => "Conflict",
        410 => "Gone",
        411 => "Length Required",
        412 => "Precondition Failed",
        413 => "Content Too Large",
        414 => "URI Too Long",
        415 => "Unsupported Media Type",
        416 => "Range Not Satisfiable",
        417 => "Expectation Failed",
        421 => "Misdirected Request",
        422 => "Unprocessable Content",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    /// Every strict prefix of `message` is incomplete and the whole is
    /// exactly its length, with or without a next message behind it.
    fn request_frames_exactly(message: &[u8]) {
        for cut in 0..message.len() {
            assert_eq!(
                request_len(&message[..cut], MAX),
                Ok(None),
                "prefix {cut} of {:?}",
                String::from_utf8_lossy(message)
            );
        }
        assert_eq!(request_len(message, MAX), Ok(Some(message.len())));
        let mut two = message.to_vec();
        two.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        assert_eq!(request_len(&two, MAX), Ok(Some(message.len())));
    }

    fn response_frames_exactly(message: &[u8], head_request: bool) {
        for cut in 0..message.len() {
            assert_eq!(
                response_len(&message[..cut], false, MAX, head_request),
                Ok(None),
                "prefix {cut}"
            );
        }
        assert_eq!(
            response_len(message, false, MAX, head_request),
            Ok(Some(message.len()))
        );
    }

    fn text(map: &Map, key: &str) -> String {
        map[key].to_string()
    }

    fn header(map: &Map, name: &str) -> String {
        map["headers"].read_lock::<Map>().unwrap()[name].to_string()
    }

    #[test]
    fn requests_frame_byte_by_byte() {
        request_frames_exactly(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
        request_frames_exactly(b"GET / HTTP/1.0\n\n");
        request_frames_exactly(b"\r\nGET / HTTP/1.1\r\n\r\n");
        request_frames_exactly(b"POST /x HTTP/1.1\r\nContent-Length: 6\r\n\r\n\r\n\r\n\xff\x00");
        request_frames_exactly(
            b"POST /x HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 99\r\n\r\n\
              5;name=\"v\";x\r\nhel\r\n\r\n1\r\n!\r\n0;last\r\nExpires: never\r\nX-T: 1\r\n\r\n",
        );
        request_frames_exactly(b"POST /x HTTP/1.1\nTransfer-Encoding: chunked\n\n3\nabc\n0\n\n");
        request_frames_exactly(b"PUT /x HTTP/1.1\r\nContent-Length: 0, 0\r\n\r\n");
    }

    #[test]
    fn responses_frame_by_length_chunks_or_close() {
        response_frames_exactly(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", false);
        response_frames_exactly(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
            false,
        );
        response_frames_exactly(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        response_frames_exactly(
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
            false,
        );
        response_frames_exactly(b"HTTP/1.1 100 Continue\r\n\r\n", false);
        response_frames_exactly(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true);
        response_frames_exactly(b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false);

        let close = b"HTTP/1.0 200 OK\r\nServer: x\r\n\r\nall of this";
        assert_eq!(response_len(close, false, MAX, false), Ok(None));
        assert_eq!(response_len(close, true, MAX, false), Ok(Some(close.len())));
        let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxyz";
        assert_eq!(response_len(gzip, false, MAX, false), Ok(None));
        assert_eq!(response_len(gzip, true, MAX, false), Ok(Some(gzip.len())));
        assert!(matches!(
            response_len(close, false, 35, false),
            Err(ProtocolError::TooLarge { .. })
        ));
    }

    #[test]
    fn malformed_heads_are_refused() {
        let cases: [(&[u8], &str); 12] = [
            (
                b"GET /\r\n\r\n",
                r#"HTTP: bad request line (expected METHOD /path HTTP/1.1): "GET /""#,
            ),
            (
                b"GET / HTTP/1.1 x\r\n\r\n",
                r#"HTTP: bad request line (expected METHOD /path HTTP/1.1): "GET / HTTP/1.1 x""#,
            ),
            (
                b"G(T / HTTP/1.1\r\n\r\n",
                r#"HTTP: bad request line (expected METHOD /path HTTP/1.1): "G(T / HTTP/1.1""#,
            ),
            (
                b"GET / HTTQ/1.1\r\n\r\n",
                r#"HTTP: bad request line (expected METHOD /path HTTP/1.1): "GET / HTTQ/1.1""#,
            ),
            (
                b"GET / HTTP/1.1\r\nHost a\r\n\r\n",
                r#"HTTP: bad header line (no colon): "Host a""#,
            ),
            (
                b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                r#"HTTP: bad header name: "Host : a""#,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n",
                r#"HTTP: bad header line (folded lines are not accepted): " c""#,
            ),
            (
                b"GET / HTTP/1.1\r\nA: b\rc\r\n\r\n",
                r#"HTTP: bad header value (NUL or CR inside): "A: b\rc""#,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                r#"HTTP: bad Content-Length: "2""#,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
                r#"HTTP: bad Content-Length: "-1""#,
            ),
            (
                b"POST / HTTP/1.1\r\nContent-Length: +1\r\n\r\n",
                r#"HTTP: bad Content-Length: "+1""#,
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
                r#"HTTP: Transfer-Encoding "gzip" in a request, where only chunked can say where the body ends"#,
            ),
        ];
        for (input, message) in cases {
            let error = request_len(input, MAX).expect_err(&String::from_utf8_lossy(input));
            assert_eq!(error.to_string(), message);
        }
        for (input, message) in [
            (
                &b"HTTP/1.1 20 OK\r\n\r\n"[..],
                r#"HTTP: bad status line (expected HTTP/1.1 200 Reason): "HTTP/1.1 20 OK""#,
            ),
            (
                b"HTTP/1.1 200OK\r\n\r\n",
                r#"HTTP: bad status line (expected HTTP/1.1 200 Reason): "HTTP/1.1 200OK""#,
            ),
            (
                b"ICY 200 OK\r\n\r\n",
                r#"HTTP: bad status line (expected HTTP/1.1 200 Reason): "ICY 200 OK""#,
            ),
        ] {
            let error = response_len(input, true, MAX, false).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
    }

    #[test]
    fn malformed_chunks_are_refused() {
        let chunked = |body: &[u8]| {
            let mut message = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            message.extend_from_slice(body);
            request_len(&message, MAX).map_err(|e| e.to_string())
        };
        assert_eq!(
            chunked(b"x\r\n"),
            Err(r#"HTTP: bad chunk size: "x""#.into())
        );
        assert_eq!(chunked(b"\r\n"), Err(r#"HTTP: bad chunk size: """#.into()));
        assert_eq!(
            chunked(b"1ffffffffffffffff\r\n"),
            Err(r#"HTTP: bad chunk size: "1ffffffffffffffff""#.into())
        );
        assert_eq!(
            chunked(b"3\r\nabcd"),
            Err(r#"HTTP: bad chunk end (chunk data must be followed by \r\n): "d""#.into())
        );
        assert_eq!(
            chunked(b"0\r\nbad trailer\r\n\r\n"),
            Err(r#"HTTP: bad header line (no colon): "bad trailer""#.into())
        );
        assert!(
            chunked(b"ffffffff\r\nab")
                .unwrap_err()
                .contains("more than the limit")
        );
        assert!(
            chunked(&[b'1'; 5000])
                .unwrap_err()
                .contains("line (too long)")
        );
        assert_eq!(chunked(b"3\r\nab"), Ok(None));
        assert_eq!(chunked(b"3\r\nabc\r"), Ok(None));
    }

    #[test]
    fn sizes_are_bounded() {
        let huge = b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\nab";
        assert!(matches!(
            request_len(huge, MAX),
            Err(ProtocolError::TooLarge { .. })
        ));
        let mut long = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long.resize(MAX_HEAD + 10, b'a');
        assert_eq!(
            request_len(&long, MAX),
            Err(ProtocolError::HttpHeadTooLarge { max: MAX_HEAD })
        );
        assert_eq!(request_len(&long[..MAX_HEAD - 1], MAX), Ok(None));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            many.extend_from_slice(b"A: b\r\n");
        }
        assert_eq!(
            request_len(&many, MAX),
            Err(ProtocolError::HttpTooManyHeaders { max: MAX_HEADERS })
        );
        // The limit holds whole messages, not more.
        let exact = b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\nab";
        assert_eq!(request_len(exact, exact.len()), Ok(Some(exact.len())));
        assert!(request_len(exact, exact.len() - 1).is_err());
        let mut endless = b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        for _ in 0..=MAX_HEADERS {
            endless.extend_from_slice(b"A: b\r\n");
        }
        assert!(matches!(
            request_len(&endless, MAX),
            Err(ProtocolError::HttpTooManyHeaders { .. })
        ));
    }

    #[test]
    fn parse_request_gives_fields_and_the_decoded_body() {
        let request = parse_request(
            b"POST /up?x=1 HTTP/1.1\r\nHost: h\r\nX-Tag: a\r\nx-tag:b \r\nTransfer-Encoding: chunked\r\n\r\n\
              2;e=1\r\n\xff\x00\r\n3\r\n\r\n\n\r\n0\r\nT: 1\r\n\r\n",
        )
        .unwrap();
        assert_eq!(text(&request, "method"), "POST");
        assert_eq!(text(&request, "path"), "/up?x=1");
        assert_eq!(text(&request, "version"), "HTTP/1.1");
        assert_eq!(header(&request, "host"), "h");
        assert_eq!(header(&request, "x-tag"), "a, b");
        assert_eq!(
            request["body"].clone().into_blob().unwrap(),
            b"\xff\x00\r\n\n"
        );
        let request = parse_request(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(text(&request, "body"), "");
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\n\r\nGET"),
            Err(ProtocolError::Trailing { extra: 3, .. })
        ));
        assert!(matches!(
            parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nab"),
            Err(ProtocolError::Incomplete { .. })
        ));
    }

    #[test]
    fn parse_response_reads_each_kind_of_body() {
        let response = parse_response(
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\nnope",
        )
        .unwrap();
        assert_eq!(response["status"].as_int(), Ok(404));
        assert_eq!(text(&response, "reason"), "Not Found");
        assert_eq!(header(&response, "content-type"), "text/plain");
        assert_eq!(text(&response, "body"), "nope");
        let chunked = parse_response(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!(text(&chunked, "body"), "Wikipedia");
        let closed = parse_response(b"HTTP/1.0 200 OK\r\n\r\nuntil the end\r\n").unwrap();
        assert_eq!(text(&closed, "body"), "until the end\r\n");
        assert_eq!(text(&closed, "version"), "HTTP/1.0");
        let to_head = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n").unwrap();
        assert_eq!(text(&to_head, "body"), "");
        let bare = parse_response(b"HTTP/1.1 599\r\n\r\n").unwrap();
        assert_eq!(text(&bare, "reason"), "");
        assert!(matches!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nabc"),
            Err(ProtocolError::Trailing { extra: 1, .. })
        ));
    }

    #[test]
    fn build_request_fills_in_host_and_length() {
        assert_eq!(
            build_request("GET", "/", "example.com:8080", &Map::new(), b""),
            b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"
        );
        assert_eq!(
            build_request("post", "/", "h", &Map::new(), b""),
            b"post / HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"
        );
        let mut headers = Map::new();
        headers.insert("HOST".into(), "given".into());
        headers.insert("Accept".into(), "*/*".into());
        headers.insert("X-N".into(), Dynamic::from_int(7));
        let request = build_request("PUT", "/k", "h", &headers, b"\x00\xff");
        assert_eq!(
            request,
            b"PUT /k HTTP/1.1\r\nAccept: */*\r\nHOST: given\r\nX-N: 7\r\nContent-Length: 2\r\n\r\n\x00\xff"
        );
        request_frames_exactly(&request);
        let mut chunked = Map::new();
        chunked.insert("Transfer-Encoding".into(), "chunked".into());
        let request = build_request("POST", "/", "h", &chunked, b"1\r\na\r\n0\r\n\r\n");
        request_frames_exactly(&request);
    }

    #[test]
    fn build_response_always_has_the_exact_length() {
        assert_eq!(
            build_response(200, &Map::new(), b"hi"),
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
        );
        let mut headers = Map::new();
        headers.insert("content-length".into(), "999".into());
        headers.insert(
            "Set-Cookie".into(),
            Dynamic::from_array(vec!["a=1".into(), "b=2".into()]),
        );
        let response = build_response(201, &headers, b"\r\n\r\n");
        assert_eq!(
            response,
            b"HTTP/1.1 201 Created\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\nContent-Length: 4\r\n\r\n\r\n\r\n"
        );
        response_frames_exactly(&response, false);
        assert_eq!(
            build_response(204, &Map::new(), b""),
            b"HTTP/1.1 204 No Content\r\n\r\n"
        );
        assert_eq!(
            build_response(599, &Map::new(), b""),
            b"HTTP/1.1 599 \r\nContent-Length: 0\r\n\r\n"
        );
    }

    mod properties {
        use proptest::prelude::*;

        use super::*;

        proptest! {
            #[test]
            fn a_chunked_body_in_any_pieces_frames_and_decodes_back(
                body in proptest::collection::vec(any::<u8>(), 0..200),
                cuts in proptest::collection::vec(1_usize..50, 0..10),
            ) {
                let mut message = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                let mut rest = &body[..];
                for cut in cuts {
                    let (chunk, after) = rest.split_at(cut.min(rest.len()));
                    if chunk.is_empty() {
                        break;
                    }
                    message.extend_from_slice(format!("{:x};e=1\r\n", chunk.len()).as_bytes());
                    message.extend_from_slice(chunk);
                    message.extend_from_slice(b"\r\n");
                    rest = after;
                }
                if !rest.is_empty() {
                    message.extend_from_slice(format!("{:X}\r\n", rest.len()).as_bytes());
                    message.extend_from_slice(rest);
                    message.extend_from_slice(b"\r\n");
                }
                message.extend_from_slice(b"0\r\n\r\n");
                for cut in 0..message.len() {
                    prop_assert_eq!(request_len(&message[..cut], MAX), Ok(None));
                }
                prop_assert_eq!(request_len(&message, MAX), Ok(Some(message.len())));
                let parsed = parse_request(&message).unwrap();
                prop_assert_eq!(&to_bytes(parsed["body"].clone())[..], &body[..]);
            }

            #[test]
            fn a_built_response_frames_and_parses_back(
                status in 200_i64..600,
                body in proptest::collection::vec(any::<u8>(), 0..200),
            ) {
                // Their bodies are not theirs to have.
                prop_assume!(status != 204 && status != 304);
                let response = build_response(status, &Map::new(), &body);
                prop_assert_eq!(response_len(&response, false, MAX, false), Ok(Some(response.len())));
                let parsed = parse_response(&response).unwrap();
                prop_assert_eq!(parsed["status"].as_int(), Ok(status));
                prop_assert_eq!(&to_bytes(parsed["body"].clone())[..], &body[..]);
            }

            #[test]
            fn any_bytes_give_an_answer_without_panicking(
                bytes in proptest::collection::vec(
                    prop_oneof![Just(b'\r'), Just(b'\n'), Just(b':'), Just(b' '), Just(b'0'), any::<u8>()],
                    0..80,
                ),
                eof: bool,
            ) {
                let mut request = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
                request.extend_from_slice(&bytes);
                let _ = request_len(&request, 64);
                let _ = parse_request(&request);
                let _ = request_len(&bytes, 64);
                let _ = response_len(&bytes, eof, 64, false);
                let _ = parse_response(&bytes);
            }
        }
    }
}

#[cfg(test)]
mod resume_tests {
    use super::*;

    #[test]
    fn resuming_walks_a_chunked_body_once() {
        let mut request = b"POST /up HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..50 {
            request.extend_from_slice(b"3;x=y\r\nabc\r\n");
        }
        request.extend_from_slice(b"0\r\nTrailer: t\r\n\r\n");
        let mut resume = Resume::default();
        let mut furthest = 0;
        for end in 0..request.len() {
            assert_eq!(
                request_len_resuming(&request[..end], 1 << 20, &mut resume),
                Ok(None)
            );
            assert!(resume.chunk >= furthest, "went back at {end}");
            furthest = resume.chunk;
        }
        assert!(furthest > request.len() / 2, "it kept no place: {furthest}");
        assert_eq!(
            request_len_resuming(&request, 1 << 20, &mut resume),
            Ok(Some(request.len()))
        );
        assert_eq!(resume.chunk, 0);
    }
}
