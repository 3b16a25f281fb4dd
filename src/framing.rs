//! What one message is on the wire: the codec shared by server and client.
//!
//! A [`Decoder`] turns a growing byte buffer into messages and an encoder
//! wraps outgoing messages, for every framing in [`Framing`]. It does no I/O,
//! so the async server and the blocking client feed it the same way.

use std::fmt;
use std::str::FromStr;

use bytes::{Buf, Bytes, BytesMut};
use thiserror::Error;

use crate::protocols::{ProtocolError, http, resp};

/// How the byte stream is cut into messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Bytes up to `\n`, a trailing `\r` dropped; sends add `\n`.
    Line,
    /// Whatever one read returns is one message; sends add nothing.
    Raw,
    /// Bytes up to the delimiter, which is removed; sends append it.
    Delim(Vec<u8>),
    /// A big- or little-endian length prefix of 1, 2 or 4 bytes.
    Len { width: LenWidth, big_endian: bool },
    /// Every message is exactly this many bytes (`bytes:N`): the data
    /// blocks of protocols that announce a size first (memcached, RESP).
    /// Sends add nothing.
    Fixed(usize),
    /// One whole RESP (Redis) value, nested arrays and all; sends add nothing.
    Resp,
    /// One whole HTTP/1.1 request or response, head and body (by
    /// Content-Length, chunked, or to the close); sends add nothing.
    Http,
}

/// Width of a length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LenWidth {
    U8,
    U16,
    U32,
}

impl LenWidth {
    fn bytes(self) -> usize {
        match self {
            LenWidth::U8 => 1,
            LenWidth::U16 => 2,
            LenWidth::U32 => 4,
        }
    }

    /// How the framing is named on the command line.
    pub(crate) fn framing_name(self) -> &'static str {
        match self {
            LenWidth::U8 => "len:u8",
            LenWidth::U16 => "len:u16",
            LenWidth::U32 => "len:u32",
        }
    }

    pub(crate) fn max_len(self) -> u64 {
        match self {
            LenWidth::U8 => u8::MAX as u64,
            LenWidth::U16 => u16::MAX as u64,
            LenWidth::U32 => u32::MAX as u64,
        }
    }
}

/// Why a stream could not be framed. Each ends only the connection it came from.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    #[error("message of {size} bytes is larger than --max-frame ({max} bytes)")]
    TooLarge { size: usize, max: usize },
    #[error("connection closed in the middle of a message ({pending} bytes pending)")]
    Truncated { pending: usize },
    #[error("message of {size} bytes does not fit a {width}-byte length prefix")]
    TooLongForPrefix { size: usize, width: usize },
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
    /// UDP: a datagram larger than --max-frame arrived. It is refused
    /// whole: cut to the limit it would read as a different message.
    #[error(
        "a datagram of {size} bytes arrived, larger than --max-frame ({max} bytes): refused whole, not cut"
    )]
    DatagramTooLarge { size: usize, max: usize },
    /// UDP: a message that would not fit one datagram.
    #[error("a datagram of {size} bytes is larger than {limit}: not sent")]
    DatagramTooLong { size: usize, limit: DatagramLimit },
    /// UDP with a framing: a datagram whose last record is incomplete.
    /// Records never continue in the next datagram.
    #[error("a datagram ended in the middle of a message ({pending} bytes left over)")]
    DatagramCut { pending: usize },
}

/// The largest UDP payload over IPv4: 65,535 less the IP and UDP headers.
pub(crate) const MAX_DATAGRAM: usize = 65_507;

/// What bounds a datagram sent: --max-frame when it is the smaller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DatagramLimit {
    pub(crate) max: usize,
}

impl DatagramLimit {
    pub(crate) fn new(max_frame: usize) -> Self {
        DatagramLimit {
            max: max_frame.min(MAX_DATAGRAM),
        }
    }

    /// `Err` when `size` bytes cannot go out as one datagram.
    pub(crate) fn check(self, size: usize) -> Result<(), FrameError> {
        if size > self.max {
            return Err(FrameError::DatagramTooLong { size, limit: self });
        }
        Ok(())
    }
}

impl fmt::Display for DatagramLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.max < MAX_DATAGRAM {
            write!(f, "--max-frame ({} bytes)", self.max)
        } else {
            write!(
                f,
                "the most one UDP datagram carries ({MAX_DATAGRAM} bytes)"
            )
        }
    }
}

/// Where the messages of one datagram lie in it, appended to `records`:
/// the whole of it with `raw` framing (an empty datagram is an empty
/// message), else the records `framing` cuts out of it, the datagram's end
/// ending the last one as a close would. Records never continue in the
/// next datagram. On an error, the records before it are still there.
pub(crate) fn datagram_records(
    framing: &Framing,
    max_frame: usize,
    datagram: &[u8],
    scratch: &mut BytesMut,
    records: &mut Vec<std::ops::Range<usize>>,
) -> Result<(), FrameError> {
    if datagram.len() > max_frame {
        return Err(FrameError::DatagramTooLarge {
            size: datagram.len(),
            max: max_frame,
        });
    }
    if *framing == Framing::Raw {
        records.push(0..datagram.len());
        return Ok(());
    }
    scratch.clear();
    scratch.extend_from_slice(datagram);
    let mut decoder = Decoder::new(framing.clone(), max_frame);
    let mut offset = 0;
    loop {
        let frame = match decoder.last_frame(scratch) {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(FrameError::Truncated { pending }) => {
                return Err(FrameError::DatagramCut { pending });
            }
            Err(e) => return Err(e),
        };
        records.push(offset + frame.start..offset + frame.end);
        offset += frame.consumed;
        frame.consume(scratch);
    }
}

impl FromStr for Framing {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (kind, rest) = match text.split_once(':') {
            Some((kind, rest)) => (kind, Some(rest)),
            None => (text, None),
        };
        match (kind, rest) {
            ("line", None) => Ok(Framing::Line),
            ("resp", None) => Ok(Framing::Resp),
            ("http", None) => Ok(Framing::Http),
            ("raw", None) => Ok(Framing::Raw),
            ("delim", Some(seq)) => {
                let delimiter = unescape(seq)?;
                if delimiter.is_empty() {
                    return Err("delim: needs a non-empty delimiter, e.g. delim:\\r\\n".into());
                }
                Ok(Framing::Delim(delimiter))
            }
            ("len", Some(spec)) => {
                let (width, order) = match spec.split_once(':') {
                    Some((width, order)) => (width, Some(order)),
                    None => (spec, None),
                };
                let width = match width {
                    "u8" => LenWidth::U8,
                    "u16" => LenWidth::U16,
                    "u32" => LenWidth::U32,
                    other => {
                        return Err(format!(
                            "unknown length width `{other}`: use u8, u16 or u32"
                        ));
                    }
                };
                let big_endian = match order {
                    None | Some("be") => true,
                    Some("le") => false,
                    Some(other) => {
                        return Err(format!("unknown byte order `{other}`: use be or le"));
                    }
                };
                Ok(Framing::Len { width, big_endian })
            }
            ("bytes", Some(size)) => match size.parse::<usize>() {
                Ok(0) => Err("bytes:0 is empty: a message needs at least 1 byte".into()),
                Ok(size) => Ok(Framing::Fixed(size)),
                Err(_) => Err(format!("`{text}` needs a size in bytes, e.g. bytes:16")),
            },
            _ => Err(format!(
                "unknown framing `{text}`: use line, raw, delim:SEQ, len:u8|u16|u32[:be|le], bytes:N, resp or http"
            )),
        }
    }
}

impl fmt::Display for Framing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Framing::Line => f.write_str("line"),
            Framing::Raw => f.write_str("raw"),
            Framing::Delim(seq) => write!(f, "delim:{}", escape(seq)),
            Framing::Len { width, big_endian } => {
                let width = match width {
                    LenWidth::U8 => "u8",
                    LenWidth::U16 => "u16",
                    LenWidth::U32 => "u32",
                };
                write!(f, "len:{width}:{}", if *big_endian { "be" } else { "le" })
            }
            Framing::Fixed(size) => write!(f, "bytes:{size}"),
            Framing::Resp => f.write_str("resp"),
            Framing::Http => f.write_str("http"),
        }
    }
}

impl Framing {
    /// Refuses a framing whose every message is larger than `max_frame`
    /// (`bytes:N` past `--max-frame`): it could never deliver one.
    pub(crate) fn check_max_frame(&self, max_frame: usize) -> Result<(), String> {
        match self {
            Framing::Fixed(size) if *size > max_frame => Err(format!(
                "{self}: messages of {size} bytes are larger than --max-frame ({max_frame} bytes)"
            )),
            _ => Ok(()),
        }
    }
}

/// Turns `\r`, `\n`, `\t`, `\0`, `\\` and `\xNN` into bytes.
fn unescape(text: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut bytes = text.bytes();
    while let Some(b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        match bytes.next() {
            Some(b'r') => out.push(b'\r'),
            Some(b'n') => out.push(b'\n'),
            Some(b't') => out.push(b'\t'),
            Some(b'0') => out.push(0),
            Some(b'\\') => out.push(b'\\'),
            Some(b'x') => {
                let hex: Vec<u8> = bytes.by_ref().take(2).collect();
                let value = std::str::from_utf8(&hex)
                    .ok()
                    .filter(|h| h.len() == 2)
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| format!("bad escape in `{text}`: \\x needs two hex digits"))?;
                out.push(value);
            }
            Some(other) => {
                return Err(format!(
                    "bad escape `\\{}` in `{text}`: use \\r \\n \\t \\0 \\\\ or \\xNN",
                    other as char
                ));
            }
            None => return Err(format!("`{text}` ends with a lone backslash")),
        }
    }
    Ok(out)
}

fn escape(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        match b {
            b'\r' => out.push_str("\\r"),
            b'\n' => out.push_str("\\n"),
            b'\t' => out.push_str("\\t"),
            0 => out.push_str("\\0"),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}

/// Where one message lies at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Frame {
    /// The message is `buf[start..end]`; before it, a length prefix.
    pub(crate) start: usize,
    pub(crate) end: usize,
    /// Bytes the message takes in the buffer, framing included.
    pub(crate) consumed: usize,
}

impl Frame {
    fn whole(len: usize) -> Self {
        Frame {
            start: 0,
            end: len,
            consumed: len,
        }
    }

    /// The message's bytes in `buf`.
    pub(crate) fn message<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.start..self.end]
    }

    /// Drops the message and its framing from the front of `buf`.
    pub(crate) fn consume(&self, buf: &mut BytesMut) {
        buf.advance(self.consumed);
    }

    /// Removes the message from `buf` as shared bytes of its own.
    fn take(&self, buf: &mut BytesMut) -> Bytes {
        let mut message = buf.split_to(self.consumed);
        message.truncate(self.end);
        message.advance(self.start);
        message.freeze()
    }
}

/// Cuts messages out of a byte buffer. One per connection: it remembers how
/// far it already searched so a long message arriving in pieces is scanned once.
#[derive(Debug, Clone)]
pub(crate) struct Decoder {
    framing: Framing,
    max_frame: usize,
    /// Bytes at the front of the buffer already known to hold no delimiter.
    scanned: usize,
    /// How far the `resp` and `http` framings got through a message not
    /// yet whole, so that each read does not parse it all again. Boxed,
    /// and only for them: every idle connection holds a decoder.
    progress: Option<Box<Progress>>,
}

#[derive(Debug, Clone, Default)]
struct Progress {
    resp: resp::Resume,
    http: http::Resume,
}

impl Decoder {
    pub(crate) fn new(framing: Framing, max_frame: usize) -> Self {
        Decoder {
            framing,
            max_frame,
            scanned: 0,
            progress: None,
        }
    }

    /// Cuts the rest of the stream with `framing`. The buffer is kept as it
    /// is: what already arrived is the start of the next message.
    pub(crate) fn reframe(&mut self, framing: Framing) {
        self.framing = framing;
        self.reset();
    }

    /// Forgets how far it searched: the front of the buffer was taken by
    /// something else (a stream read).
    pub(crate) fn reset(&mut self) {
        self.scanned = 0;
        if let Some(progress) = &mut self.progress {
            **progress = Progress::default();
        }
    }

    fn progress(&mut self) -> &mut Progress {
        self.progress.get_or_insert_default()
    }

    /// The next complete message in `buf`, removing it from `buf`.
    pub(crate) fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        Ok(self.next_frame(buf)?.map(|frame| frame.take(buf)))
    }

    /// What is left in `buf` once the peer has closed its side: the last
    /// line or delimited message may lack its terminator, as with `nc`.
    pub(crate) fn decode_eof(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, FrameError> {
        Ok(self.last_frame(buf)?.map(|frame| frame.take(buf)))
    }

    /// Where the next complete message in `buf` lies, leaving `buf` as it
    /// is: a server hands the bytes to its hook straight from the buffer,
    /// then drops them with [`Frame::consume`].
    pub(crate) fn next_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        match &self.framing {
            // What arrived, at most --max-frame of it: a client or server
            // reads no more than that at once, and a proxy, which reads
            // 64 KiB, cuts the same way (the rest is the next message).
            Framing::Raw => {
                if buf.is_empty() {
                    return Ok(None);
                }
                Ok(Some(Frame::whole(buf.len().min(self.max_frame))))
            }
            Framing::Line => {
                // A `\r` before the `\n` is framing, not message: a line of
                // exactly --max-frame bytes may end in `\r\n`.
                let Some(end) = find(&mut self.scanned, self.max_frame, buf, b"\n", 1)? else {
                    return Ok(None);
                };
                let text_end = if end > 0 && buf[end - 1] == b'\r' {
                    end - 1
                } else {
                    end
                };
                check_size(text_end, self.max_frame)?;
                Ok(Some(Frame {
                    start: 0,
                    end: text_end,
                    consumed: end + 1,
                }))
            }
            Framing::Delim(delimiter) => {
                let slack = delimiter.len() - 1;
                let Some(end) = find(&mut self.scanned, self.max_frame, buf, delimiter, slack)?
                else {
                    return Ok(None);
                };
                check_size(end, self.max_frame)?;
                Ok(Some(Frame {
                    start: 0,
                    end,
                    consumed: end + delimiter.len(),
                }))
            }
            Framing::Len { width, big_endian } => {
                let prefix = width.bytes();
                if buf.len() < prefix {
                    return Ok(None);
                }
                let mut raw = [0u8; 8];
                let len = if *big_endian {
                    raw[8 - prefix..].copy_from_slice(&buf[..prefix]);
                    u64::from_be_bytes(raw)
                } else {
                    raw[..prefix].copy_from_slice(&buf[..prefix]);
                    u64::from_le_bytes(raw)
                };
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > self.max_frame {
                    return Err(FrameError::TooLarge {
                        size: len,
                        max: self.max_frame,
                    });
                }
                // Nothing is reserved for what the prefix promises: memory
                // follows the bytes that actually arrive.
                if buf.len() < prefix + len {
                    return Ok(None);
                }
                Ok(Some(Frame {
                    start: prefix,
                    end: prefix + len,
                    consumed: prefix + len,
                }))
            }
            Framing::Fixed(size) => {
                check_size(*size, self.max_frame)?;
                Ok((buf.len() >= *size).then(|| Frame::whole(*size)))
            }
            Framing::Resp => {
                let max = self.max_frame;
                let resume = &mut self.progress().resp;
                Ok(resp::frame_len_resuming(buf, max, resume)?.map(Frame::whole))
            }
            Framing::Http => {
                let max = self.max_frame;
                let resume = &mut self.progress().http;
                Ok(http_len(buf, false, max, resume)?.map(Frame::whole))
            }
        }
    }

    /// Like [`Decoder::next_frame`], once the peer has closed its side.
    pub(crate) fn last_frame(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        if let Some(frame) = self.next_frame(buf)? {
            return Ok(Some(frame));
        }
        if buf.is_empty() {
            return Ok(None);
        }
        self.reset();
        match &self.framing {
            Framing::Line => {
                let mut frame = Frame::whole(buf.len());
                if buf.last() == Some(&b'\r') {
                    frame.end -= 1;
                }
                Ok(Some(frame))
            }
            Framing::Delim(_) | Framing::Raw => Ok(Some(Frame::whole(buf.len()))),
            // A response without a length ends with the close.
            Framing::Http
                if http_len(buf, true, self.max_frame, &mut http::Resume::default())?.is_some() =>
            {
                Ok(Some(Frame::whole(buf.len())))
            }
            Framing::Len { .. } | Framing::Fixed(_) | Framing::Resp | Framing::Http => {
                let pending = buf.len();
                buf.clear();
                Err(FrameError::Truncated { pending })
            }
        }
    }
}

/// The length of the HTTP message at the front of `buf`: a response if it
/// starts like one, else a request, so one framing serves both roles.
fn http_len(
    buf: &[u8],
    eof: bool,
    max: usize,
    resume: &mut http::Resume,
) -> Result<Option<usize>, ProtocolError> {
    if buf.starts_with(b"HTTP/") {
        http::response_len_resuming(buf, eof, max, false, resume)
    } else if b"HTTP/".starts_with(&buf[..buf.len().min(5)]) && !eof {
        // Too little to tell yet.
        Ok(None)
    } else {
        http::request_len_resuming(buf, max, resume)
    }
}

/// Position of `delimiter` in `buf`, searching only bytes not `scanned`
/// before. Without one, `buf` is too large once even its last `slack` bytes
/// being framing (the start of a delimiter, a `\r`) would leave a message
/// over `max_frame`.
fn find(
    scanned: &mut usize,
    max_frame: usize,
    buf: &BytesMut,
    delimiter: &[u8],
    slack: usize,
) -> Result<Option<usize>, FrameError> {
    // Nothing new since the last search (an emptied buffer, most often:
    // a connection looks once more after each message it takes).
    if buf.len() <= *scanned {
        return Ok(None);
    }
    let start = scanned.saturating_sub(delimiter.len() - 1);
    let found = if delimiter.len() == 1 {
        memchr::memchr(delimiter[0], &buf[start..])
    } else {
        memchr::memmem::find(&buf[start..], delimiter)
    };
    match found {
        Some(offset) => {
            *scanned = 0;
            Ok(Some(start + offset))
        }
        None => {
            *scanned = buf.len();
            check_size(buf.len().saturating_sub(slack), max_frame)?;
            Ok(None)
        }
    }
}

fn check_size(size: usize, max_frame: usize) -> Result<(), FrameError> {
    if size > max_frame {
        return Err(FrameError::TooLarge {
            size,
            max: max_frame,
        });
    }
    Ok(())
}

/// Appends `message`, framed, to `out`.
pub(crate) fn encode(
    framing: &Framing,
    message: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), FrameError> {
    match framing {
        Framing::Line => {
            out.extend_from_slice(message);
            out.push(b'\n');
        }
        Framing::Raw => out.extend_from_slice(message),
        Framing::Delim(delimiter) => {
            out.extend_from_slice(message);
            out.extend_from_slice(delimiter);
        }
        Framing::Len { width, big_endian } => {
            let prefix = width.bytes();
            if message.len() as u64 > width.max_len() {
                return Err(FrameError::TooLongForPrefix {
                    size: message.len(),
                    width: prefix,
                });
            }
            let len = message.len() as u64;
            if *big_endian {
                out.extend_from_slice(&len.to_be_bytes()[8 - prefix..]);
            } else {
                out.extend_from_slice(&len.to_le_bytes()[..prefix]);
            }
            out.extend_from_slice(message);
        }
        // These say how much to read; a send is already whole.
        Framing::Fixed(_) | Framing::Resp | Framing::Http => out.extend_from_slice(message),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(framing: &str, datagram: &[u8]) -> Result<Vec<&'static str>, FrameError> {
        let framing: Framing = framing.parse().unwrap();
        let mut ranges = Vec::new();
        datagram_records(&framing, 100, datagram, &mut BytesMut::new(), &mut ranges)?;
        Ok(ranges
            .into_iter()
            .map(|r| &*String::from_utf8(datagram[r].to_vec()).unwrap().leak())
            .collect())
    }

    #[test]
    fn a_raw_datagram_is_one_message_even_empty() {
        assert_eq!(records("raw", b"a\nb"), Ok(vec!["a\nb"]));
        assert_eq!(records("raw", b""), Ok(vec![""]));
    }

    #[test]
    fn records_packed_in_a_datagram_lie_where_they_are() {
        assert_eq!(
            records("len:u16", b"\x00\x02ab\x00\x00\x00\x01c"),
            Ok(vec!["ab", "", "c"])
        );
        assert_eq!(records("line", b"a\r\nbc\nd"), Ok(vec!["a", "bc", "d"]));
        assert_eq!(records("line", b""), Ok(vec![]));
    }

    #[test]
    fn a_record_cut_by_the_datagram_end_is_an_error() {
        assert_eq!(
            records("len:u16", b"\x00\x01a\x00\x05ab"),
            Err(FrameError::DatagramCut { pending: 4 })
        );
    }

    #[test]
    fn a_datagram_over_max_frame_is_refused_whole() {
        assert_eq!(
            records("raw", &[b'x'; 101]),
            Err(FrameError::DatagramTooLarge {
                size: 101,
                max: 100
            })
        );
    }

    const DEFAULT_MAX_FRAME: usize = 1024 * 1024;

    fn decode_all(framing: &str, input: &[u8]) -> Vec<Vec<u8>> {
        let mut decoder = Decoder::new(framing.parse().unwrap(), DEFAULT_MAX_FRAME);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(m) = decoder.decode(&mut buf).unwrap() {
            out.push(m.to_vec());
        }
        if let Some(m) = decoder.decode_eof(&mut buf).unwrap() {
            out.push(m.to_vec());
        }
        out
    }

    #[test]
    fn line_drops_cr_and_keeps_last_unterminated_line() {
        assert_eq!(
            decode_all("line", b"a\r\nb\n\nc"),
            vec![b"a".to_vec(), b"b".to_vec(), b"".to_vec(), b"c".to_vec()]
        );
    }

    #[test]
    fn delim_with_escapes() {
        assert_eq!(
            decode_all(
                "delim:\\r\\n\\r\\n",
                b"GET /\r\nHost: x\r\n\r\nnext\r\n\r\n"
            ),
            vec![b"GET /\r\nHost: x".to_vec(), b"next".to_vec()]
        );
        assert_eq!(
            decode_all("delim:\\0", b"a\0b\0"),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert_eq!(
            decode_all("delim:\\xff", b"a\xffb"),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
    }

    #[test]
    fn length_prefixes_both_orders() {
        assert_eq!(
            decode_all("len:u16", b"\x00\x02hi\x00\x00"),
            vec![b"hi".to_vec(), b"".to_vec()]
        );
        assert_eq!(
            decode_all("len:u32:le", b"\x01\x00\x00\x00z"),
            vec![b"z".to_vec()]
        );
        let mut out = Vec::new();
        encode(&"len:u16:le".parse().unwrap(), b"abc", &mut out).unwrap();
        assert_eq!(out, b"\x03\x00abc");
    }

    #[test]
    fn truncated_length_frame_is_an_error_at_eof() {
        let mut decoder = Decoder::new("len:u8".parse().unwrap(), 100);
        let mut buf = BytesMut::from(&b"\x05ab"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(
            decoder.decode_eof(&mut buf),
            Err(FrameError::Truncated { pending: 3 })
        );
    }

    #[test]
    fn oversized_frames_are_refused_before_they_are_buffered() {
        let mut decoder = Decoder::new(Framing::Line, 4);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge { .. })
        ));
        let mut decoder = Decoder::new("len:u32".parse().unwrap(), 4);
        let mut buf = BytesMut::from(&b"\x00\x00\x10\x00"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge { size: 4096, .. })
        ));
    }

    #[test]
    fn a_line_of_exactly_max_frame_bytes_may_end_in_crlf() {
        let mut decoder = Decoder::new(Framing::Line, 4);
        let mut buf = BytesMut::from(&b"abcd\r"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"\n");
        assert_eq!(
            decoder.decode(&mut buf).unwrap().as_deref(),
            Some(&b"abcd"[..])
        );
        let mut buf = BytesMut::from(&b"abcde\r\n"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge { size: 5, .. })
        ));
        let mut decoder = Decoder::new(Framing::Delim(b"\r\n\r\n".to_vec()), 4);
        let mut buf = BytesMut::from(&b"abcd\r\n\r"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        buf.extend_from_slice(b"\n");
        assert_eq!(
            decoder.decode(&mut buf).unwrap().as_deref(),
            Some(&b"abcd"[..])
        );
    }

    #[test]
    fn a_promised_length_reserves_nothing() {
        let mut decoder = Decoder::new("len:u32".parse().unwrap(), 1 << 20);
        let mut buf = BytesMut::from(&b"\x00\x10\x00\x00ab"[..]);
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert!(buf.capacity() < 1024, "reserved {}", buf.capacity());
    }

    #[test]
    fn parse_and_display_round_trip() {
        for text in [
            "line",
            "raw",
            "delim:\\r\\n",
            "len:u8:be",
            "len:u32:le",
            "delim:\\x01\\0",
            "bytes:16",
        ] {
            assert_eq!(text.parse::<Framing>().unwrap().to_string(), text);
        }
        assert!("len:u64".parse::<Framing>().is_err());
        assert!("delim:".parse::<Framing>().is_err());
        assert!("delim:\\q".parse::<Framing>().is_err());
        assert!("nope".parse::<Framing>().is_err());
    }

    #[test]
    fn fixed_size_messages_and_their_errors() {
        assert_eq!(
            decode_all("bytes:3", b"abcdef\r\n\x00"),
            vec![b"abc".to_vec(), b"def".to_vec(), b"\r\n\x00".to_vec()]
        );
        let mut decoder = Decoder::new("bytes:4".parse().unwrap(), 100);
        let mut buf = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap().as_deref(),
            Some(&b"abcd"[..])
        );
        assert_eq!(decoder.decode(&mut buf), Ok(None));
        assert_eq!(
            decoder.decode_eof(&mut buf),
            Err(FrameError::Truncated { pending: 2 })
        );
        // Sends add nothing, whatever their size.
        let mut out = Vec::new();
        encode(&Framing::Fixed(4), b"abc", &mut out).unwrap();
        encode(&Framing::Fixed(4), b"abcdef", &mut out).unwrap();
        assert_eq!(out, b"abcabcdef");
        for bad in ["bytes:0", "bytes:", "bytes:-1", "bytes:x", "bytes"] {
            assert!(bad.parse::<Framing>().is_err(), "{bad}");
        }
        assert!(Framing::Fixed(8).check_max_frame(8).is_ok());
        let too_big = Framing::Fixed(9).check_max_frame(8).unwrap_err();
        assert!(
            too_big.contains("larger than --max-frame (8 bytes)"),
            "{too_big}"
        );
        // A decoder given such a framing anyway refuses, never waits for ever.
        let mut decoder = Decoder::new(Framing::Fixed(9), 8);
        let mut buf = BytesMut::from(&b"abc"[..]);
        assert!(matches!(
            decoder.decode(&mut buf),
            Err(FrameError::TooLarge { size: 9, max: 8 })
        ));
    }

    #[test]
    fn reframing_keeps_the_buffered_bytes() {
        let mut decoder = Decoder::new(Framing::Line, 100);
        let mut buf = BytesMut::from(&b"set k 5\r\nab\r\ncd\r\nget k\r\n"[..]);
        assert_eq!(
            decoder.decode(&mut buf).unwrap().as_deref(),
            Some(&b"set k 5"[..])
        );
        decoder.reframe(Framing::Fixed(7));
        assert_eq!(
            decoder.decode(&mut buf).unwrap().as_deref(),
            Some(&b"ab\r\ncd\r"[..])
        );
        decoder.reframe("delim:\\n".parse().unwrap());
        assert_eq!(decoder.decode(&mut buf).unwrap().as_deref(), Some(&b""[..]));
        assert_eq!(
            decoder.decode(&mut buf).unwrap().as_deref(),
            Some(&b"get k\r"[..])
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// A framing and messages it can carry unambiguously.
        fn framed_messages() -> impl Strategy<Value = (Framing, Vec<Vec<u8>>)> {
            let bytes = || proptest::collection::vec(any::<u8>(), 0..300);
            prop_oneof![
                proptest::collection::vec(bytes(), 0..20).prop_map(|ms| {
                    let ms = ms
                        .into_iter()
                        .map(|mut m| {
                            // A line never holds \n, and a trailing \r is framing.
                            m.retain(|&b| b != b'\n');
                            while m.last() == Some(&b'\r') {
                                m.pop();
                            }
                            m
                        })
                        .collect();
                    (Framing::Line, ms)
                }),
                (
                    proptest::collection::vec(any::<u8>(), 1..4),
                    proptest::collection::vec(bytes(), 0..20)
                )
                    .prop_map(|(delimiter, ms)| {
                        // Keep only messages whose first delimiter is their own.
                        let ms = ms
                            .into_iter()
                            .filter(|m| {
                                let mut framed = m.clone();
                                framed.extend_from_slice(&delimiter);
                                memchr::memmem::find(&framed, &delimiter) == Some(m.len())
                            })
                            .collect();
                        (Framing::Delim(delimiter), ms)
                    }),
                (
                    prop_oneof![Just(LenWidth::U8), Just(LenWidth::U16), Just(LenWidth::U32)],
                    any::<bool>(),
                    proptest::collection::vec(
                        proptest::collection::vec(any::<u8>(), 0..255),
                        0..20
                    )
                )
                    .prop_map(|(width, big_endian, ms)| (Framing::Len { width, big_endian }, ms)),
                (1usize..40, proptest::collection::vec(any::<u8>(), 0..800)).prop_map(
                    |(size, bytes)| {
                        let ms = bytes.chunks_exact(size).map(<[u8]>::to_vec).collect();
                        (Framing::Fixed(size), ms)
                    }
                ),
            ]
        }

        /// Feeds `stream` to a decoder in pieces cut at `cuts`.
        fn decode_in_pieces(framing: &Framing, stream: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
            let mut decoder = Decoder::new(framing.clone(), DEFAULT_MAX_FRAME);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            let mut points: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
            points.push(stream.len());
            points.sort_unstable();
            let mut start = 0;
            for end in points {
                buf.extend_from_slice(&stream[start..end]);
                start = end;
                while let Some(m) = decoder.decode(&mut buf).unwrap() {
                    out.push(m.to_vec());
                }
            }
            while let Some(m) = decoder.decode_eof(&mut buf).unwrap() {
                out.push(m.to_vec());
            }
            out
        }

        proptest! {
            #[test]
            fn encode_then_decode_is_identity_however_the_stream_is_cut(
                (framing, messages) in framed_messages(),
                cuts in proptest::collection::vec(any::<usize>(), 0..30),
            ) {
                let mut stream = Vec::new();
                for m in &messages {
                    encode(&framing, m, &mut stream).unwrap();
                }
                prop_assert_eq!(decode_in_pieces(&framing, &stream, &cuts), messages.clone());
                // Coalesced into one piece, too.
                prop_assert_eq!(decode_in_pieces(&framing, &stream, &[]), messages);
            }

            #[test]
            fn raw_delivers_every_byte_in_order(
                stream in proptest::collection::vec(any::<u8>(), 0..2000),
                cuts in proptest::collection::vec(any::<usize>(), 0..30),
            ) {
                let pieces = decode_in_pieces(&Framing::Raw, &stream, &cuts);
                prop_assert!(pieces.iter().all(|p| !p.is_empty()));
                prop_assert_eq!(pieces.concat(), stream);
            }

            #[test]
            fn garbage_never_panics_and_frames_stay_bounded(
                stream in proptest::collection::vec(any::<u8>(), 0..2000),
                framing in prop_oneof![
                    Just("line"), Just("raw"), Just("delim:\\r\\n"), Just("len:u32"), Just("len:u16:le"),
                    Just("bytes:7"), Just("bytes:65")
                ],
            ) {
                let mut decoder = Decoder::new(framing.parse().unwrap(), 64);
                let mut buf = BytesMut::from(&stream[..]);
                loop {
                    match decoder.decode(&mut buf) {
                        Ok(Some(m)) => prop_assert!(m.len() <= 64),
                        Ok(None) => break,
                        Err(FrameError::TooLarge { .. }) => break,
                        Err(other) => prop_assert!(false, "unexpected {other}"),
                    }
                }
            }
        }
    }
}
