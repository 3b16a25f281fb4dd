//! `--json`: one JSON object per line, for machines. Every event has
//! `time` (seconds since the run began), `test` and `event`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use super::diagnostic_of;
use crate::error::{Error, exit};

/// Bytes of a message that its `sent` or `received` event carries as
/// `text` or `hex`; `len` is always the whole length. An event stream
/// is for following a conversation, not a copy of every byte.
pub(crate) const EVENT_HEAD: usize = 4096;

/// Where events go, shared by every test of a run.
#[derive(Clone)]
pub(crate) struct Events {
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    start: Instant,
}

impl Events {
    pub(crate) fn to_stdout() -> Self {
        Self::to_writer(Box::new(std::io::stdout()))
    }

    pub(crate) fn to_writer(out: Box<dyn Write + Send>) -> Self {
        Events {
            out: Arc::new(Mutex::new(out)),
            start: Instant::now(),
        }
    }

    /// The events of one test case.
    pub(crate) fn for_test(&self, test: &str) -> TestEvents {
        TestEvents {
            events: self.clone(),
            test: test.into(),
        }
    }

    fn emit(&self, test: &str, event: &str, fields: Value) {
        let mut object = Map::new();
        object.insert("time".into(), json!(self.start.elapsed().as_secs_f64()));
        object.insert("test".into(), json!(test));
        object.insert("event".into(), json!(event));
        if let Value::Object(fields) = fields {
            object.extend(fields);
        }
        let line = Value::Object(object).to_string();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        // A closed stdout must not stop the run; the exit code still tells.
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Events tagged with one test's name.
#[derive(Clone)]
pub(crate) struct TestEvents {
    events: Events,
    test: Arc<str>,
}

impl TestEvents {
    /// Emits `event` with the given fields (a JSON object).
    pub(crate) fn emit(&self, event: &str, fields: Value) {
        self.events.emit(&self.test, event, fields);
    }
}

/// A message as JSON: `{"text": ...}` when it reads as text, else
/// `{"hex": ...}`, each of at most [`EVENT_HEAD`] bytes of it, and its
/// whole length as `len`.
pub(crate) fn message_fields(bytes: &[u8]) -> Map<String, Value> {
    let mut fields = Map::new();
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let head = crate::message::head(text.as_bytes(), EVENT_HEAD);
            // A head cut on a character boundary of valid UTF-8 is valid.
            let head = std::str::from_utf8(head).unwrap_or_default();
            fields.insert("text".into(), json!(head))
        }
        Err(_) => fields.insert(
            "hex".into(),
            json!(crate::message::hex(&bytes[..bytes.len().min(EVENT_HEAD)])),
        ),
    };
    fields.insert("len".into(), json!(bytes.len()));
    fields
}

/// The fields of the `result` event that ends a conversation, the same
/// for `client --json` and `test --json`: `status`, `duration`, and for
/// a failure `exit_code`, `message` and, when known, `file`, `line`,
/// `column`, `expected`, `actual`.
pub(crate) fn result_event(error: Option<&Error>, duration: Duration) -> Value {
    let status = match error {
        None => "passed",
        Some(error) if error.exit_code() == exit::FAILED => "failed",
        Some(_) => "error",
    };
    let mut fields = json!({
        "status": status,
        "duration": duration.as_secs_f64(),
    });
    if let Some(error) = error {
        let diagnostic = diagnostic_of(error);
        fields["exit_code"] = json!(error.exit_code());
        fields["message"] = json!(diagnostic.message);
        if let Some(location) = &diagnostic.location {
            fields["file"] = json!(location.file);
            fields["line"] = json!(location.line);
            fields["column"] = json!(location.column);
        }
        if let Some(expected) = &diagnostic.expected {
            fields["expected"] = json!(expected);
        }
        if let Some(actual) = &diagnostic.actual {
            fields["actual"] = json!(actual);
        }
    }
    fields
}
