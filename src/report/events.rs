//! `--json`: one JSON object per line, for machines. Every event has
//! `time` (seconds since the run began), `test` and `event`.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Map, Value, json};

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

/// A message as JSON: `{"text": ...}` when it reads as text, else `{"hex": ...}`.
pub(crate) fn message_fields(bytes: &[u8]) -> Map<String, Value> {
    let mut fields = Map::new();
    match std::str::from_utf8(bytes) {
        Ok(text) => fields.insert("text".into(), json!(text)),
        Err(_) => fields.insert("hex".into(), json!(crate::message::hex(bytes))),
    };
    fields
}
