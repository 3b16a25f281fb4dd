//! Messages between the wire and scripts: bytes in, Rhai values out, and the
//! reverse, without ever altering a byte.
//!
//! A message that is valid UTF-8 reaches a script as a string; any other
//! message arrives as a `Blob`, so binary data is never replaced by U+FFFD.

use std::borrow::Cow;

use bytes::Bytes;
use rhai::{Blob, Dynamic, ImmutableString};

/// The value a script sees for `bytes`.
pub(crate) fn to_dynamic(bytes: &[u8]) -> Dynamic {
    match std::str::from_utf8(bytes) {
        // Straight into Rhai's string type: short messages stay inline,
        // with no intermediate `String`.
        Ok(text) => Dynamic::from(ImmutableString::from(text)),
        Err(_) => Dynamic::from_blob(bytes.to_vec()),
    }
}

/// Largest string kept between messages for [`to_dynamic_reusing`]: an
/// idle connection should not pin a big message's memory, and for big
/// messages the allocation is small beside the copying anyway.
const KEEP_TEXT_CAPACITY: usize = 512;

/// Like [`to_dynamic`], but writes a text message into `spare` when the
/// script kept no reference to the previous one, so a connection's stream
/// of messages reuses one allocation instead of making two per message.
pub(crate) fn to_dynamic_reusing(bytes: &[u8], spare: &mut ImmutableString) -> Dynamic {
    let Some(text) = as_utf8(bytes) else {
        return Dynamic::from_blob(bytes.to_vec());
    };
    if text.len() > KEEP_TEXT_CAPACITY {
        return Dynamic::from(ImmutableString::from(text));
    }
    match spare.get_mut() {
        // Rhai's strings keep their heap buffer when shortened, but
        // `push_str` reallocates a heap string on every call, even to the
        // size it has: a message no longer than the last is copied over it.
        Some(reused) if reused.len() >= text.len() && reused.is_char_boundary(text.len()) => {
            reused.truncate(text.len());
            // SAFETY: every byte of the string is replaced by the bytes of
            // `text`, a whole `str` of the same length, so it stays UTF-8.
            unsafe { reused.as_bytes_mut() }.copy_from_slice(text.as_bytes());
        }
        Some(reused) => {
            reused.truncate(0);
            reused.push_str(text);
        }
        None => *spare = ImmutableString::from(text),
    }
    Dynamic::from(spare.clone())
}

/// `bytes` as text if they are UTF-8. Most messages are ASCII, which a
/// word-at-a-time check proves in a fraction of what full validation costs.
fn as_utf8(bytes: &[u8]) -> Option<&str> {
    if bytes.is_ascii() {
        // SAFETY: ASCII is UTF-8.
        return Some(unsafe { std::str::from_utf8_unchecked(bytes) });
    }
    std::str::from_utf8(bytes).ok()
}

/// A message a script sends, kept as the script's own string or bytes:
/// sending it copies the bytes once, straight into the connection's
/// write buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outgoing {
    Text(ImmutableString),
    Bytes(Bytes),
}

impl Outgoing {
    /// Strings and blobs as they are; other values by their printed form.
    pub(crate) fn from_value(value: Dynamic) -> Self {
        if value.is_string() {
            return Outgoing::Text(value.into_immutable_string().unwrap_or_default());
        }
        Outgoing::Bytes(to_bytes(value))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        match self {
            Outgoing::Text(text) => text.as_bytes(),
            Outgoing::Bytes(bytes) => bytes,
        }
    }
}

impl From<&str> for Outgoing {
    fn from(text: &str) -> Self {
        Outgoing::Text(text.into())
    }
}

/// Lets `Bytes` share a script's string instead of copying it.
struct StringBytes(ImmutableString);

impl AsRef<[u8]> for StringBytes {
    fn as_ref(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

/// The bytes to send for a script value: strings as UTF-8, blobs as they
/// are, anything else (numbers, booleans) as its printed form.
pub(crate) fn to_bytes(value: Dynamic) -> Bytes {
    if value.is_string() {
        let text = value.into_immutable_string().unwrap_or_default();
        return Bytes::from_owner(StringBytes(text));
    }
    if value.is_blob() {
        return Bytes::from(value.into_blob().unwrap_or_default());
    }
    Bytes::from(crate::stack::display(&value).into_bytes())
}

/// Lowercase hex digits, two per byte.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut out, b| {
            let _ = write!(out, "{b:02x}");
            out
        })
}

/// Bytes from hex digits; whitespace between byte pairs is allowed.
pub(crate) fn unhex(text: &str) -> Result<Blob, String> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    if !digits.len().is_multiple_of(2) {
        return Err(format!("unhex: odd number of hex digits in {text:?}"));
    }
    digits
        .chunks(2)
        .map(|pair| {
            std::str::from_utf8(pair)
                .ok()
                .and_then(|p| u8::from_str_radix(p, 16).ok())
                .ok_or_else(|| format!("unhex: {text:?} is not hex"))
        })
        .collect()
}

/// The text of a message when it reads as text: valid UTF-8 without
/// control characters other than tab, CR and LF. Anything else is shown
/// as hex, which is how people read binary protocols.
fn as_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let readable = text
        .chars()
        .all(|c| !c.is_control() || matches!(c, '\t' | '\r' | '\n'));
    readable.then_some(text)
}

/// Whether a message reads as text (see [`display`]).
pub(crate) fn is_text(bytes: &[u8]) -> bool {
    as_text(bytes).is_some()
}

/// The hex view, whatever the bytes: used for both sides of a comparison
/// as soon as either one is binary, so they line up.
pub(crate) fn display_hex(bytes: &[u8]) -> String {
    format!("<{}: {}>", byte_count(bytes.len()), spaced_hex(bytes))
}

/// How a message is shown to a person: text quoted with escapes, binary as hex.
pub(crate) fn display(bytes: &[u8]) -> String {
    match as_text(bytes) {
        Some(text) => format!("{text:?}"),
        None => format!("<{}: {}>", byte_count(bytes.len()), spaced_hex(bytes)),
    }
}

/// How a script value is shown in an expected/actual comparison.
pub(crate) fn display_value(value: &Dynamic) -> String {
    if let Ok(text) = value.as_immutable_string_ref() {
        return display(text.as_bytes());
    }
    if let Some(blob) = value.read_lock::<Blob>() {
        return display(&blob);
    }
    if value.is_unit() {
        return "()".into();
    }
    crate::stack::debug(value)
}

/// The transcript form: text as it is (control characters escaped), binary as hex.
pub(crate) fn display_line(bytes: &[u8]) -> String {
    match as_text(bytes) {
        Some(text) => escape_controls(text).into_owned(),
        None => format!("<{}: {}>", byte_count(bytes.len()), spaced_hex(bytes)),
    }
}

/// The first `max` bytes of a message, backing off to the start of a
/// character cut in half, so a text message still reads as text.
pub(crate) fn head(bytes: &[u8], max: usize) -> &[u8] {
    if bytes.len() <= max {
        return bytes;
    }
    let head = &bytes[..max];
    match std::str::from_utf8(head) {
        Err(e) if e.error_len().is_none() => &head[..e.valid_up_to()],
        _ => head,
    }
}

/// `text` safe for a terminal or a one-line report: control characters
/// (ESC, BEL, NUL, CR, LF, C1 codes...) written as Rust escapes, so a
/// peer's bytes can neither drive the terminal nor forge a line.
pub(crate) fn escape_controls(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_debug());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// `1 byte`, `12 bytes`.
pub(crate) fn byte_count(n: usize) -> String {
    if n == 1 {
        "1 byte".into()
    } else {
        format!("{n} bytes")
    }
}

fn spaced_hex(bytes: &[u8]) -> String {
    const SHOWN: usize = 64;
    let mut out: Vec<String> = bytes
        .iter()
        .take(SHOWN)
        .map(|b| format!("{b:02x}"))
        .collect();
    if bytes.len() > SHOWN {
        out.push("…".into());
    }
    out.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_utf8_becomes_a_blob_and_back_unchanged() {
        let bytes = b"\xff\x00abc\xc3";
        let value = to_dynamic(bytes);
        assert!(value.is_blob());
        assert_eq!(&to_bytes(value)[..], bytes);
        assert!(to_dynamic("你好".as_bytes()).is_string());
    }

    #[test]
    fn a_reused_string_is_never_one_the_script_still_holds() {
        let mut spare = ImmutableString::new();
        let first = to_dynamic_reusing(b"first message, long enough to be boxed", &mut spare);
        // The script kept `first` (stored it in a variable, say).
        let second = to_dynamic_reusing(b"second", &mut spare);
        assert_eq!(first.to_string(), "first message, long enough to be boxed");
        assert_eq!(second.to_string(), "second");
        drop((first, second));
        let third = to_dynamic_reusing(b"third", &mut spare);
        assert_eq!(third.to_string(), "third");
        assert!(to_dynamic_reusing(b"\xff", &mut spare).is_blob());
    }

    #[test]
    fn a_reused_string_takes_each_message_whole_whatever_its_length() {
        let mut spare = ImmutableString::new();
        let messages: [&[u8]; 7] = [
            "naïve café, long enough to live on the heap".as_bytes(),
            b"naive cafe, long enough to live on the heap",
            // Shorter, cut where the string before had a character's middle.
            "na".as_bytes(),
            "ïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïïï".as_bytes(),
            "aïïïïïïïïïïïïïïïïïïïïïïïïïïïïïï".as_bytes(),
            b"",
            b"short",
        ];
        for message in messages {
            let value = to_dynamic_reusing(message, &mut spare);
            assert_eq!(value.into_immutable_string().unwrap().as_bytes(), message);
        }
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape_controls("plain"), "plain");
        assert_eq!(
            escape_controls("\u{1b}]0;TITLE\u{7}\u{1b}[2J\r\n\0\u{9b}"),
            "\\u{1b}]0;TITLE\\u{7}\\u{1b}[2J\\r\\n\\0\\u{9b}"
        );
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(hex(b"\x01\xab"), "01ab");
        assert_eq!(unhex("01 AB").unwrap(), vec![1, 0xab]);
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
    }
}
