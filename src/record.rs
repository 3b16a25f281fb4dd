//! `--record FILE`: a manual session written down as a script that replays
//! it. A client session becomes a conversation that sends what was typed and
//! asserts what came back; a server session becomes an `on_message` hook
//! that answers each message as the person did.
//!
//! A recording has to pass again tomorrow, so it never depends on timing,
//! and received values that look variable (numbers, timestamps, ids, hex)
//! become patterns. The file is rewritten whole after every exchange
//! (through a temporary file and a rename), so a session cut short by
//! Ctrl-C leaves a complete script of everything up to its last exchange.

mod client_script;
mod generalise;
mod literal;
mod server_script;

use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;

pub(crate) use client_script::ClientRecording;
pub(crate) use literal::rhai_string;
pub(crate) use server_script::ServerRecording;

use crate::error::Error;
use crate::framing::Framing;
use crate::transcript::Verbosity;

/// `--record FILE` and `--record-exact`.
#[derive(Debug, Clone)]
pub(crate) struct RecordOptions {
    pub(crate) path: PathBuf,
    /// Assert and match every value literally: no patterns.
    pub(crate) exact: bool,
    /// The TLS flags of a session over TLS, for the replay command.
    pub(crate) tls: Option<String>,
    /// A client session over UDP (`client --udp`).
    pub(crate) udp: bool,
}

/// The opening comment every recording has: what, when, where, and how to
/// run it again.
#[derive(Debug, Clone)]
struct Header {
    /// The recording's path as the user wrote it.
    file: String,
    started: SystemTime,
    /// The session's TLS flags: the replay needs them too.
    tls: Option<String>,
    /// A session over UDP: the replay needs `--udp`.
    udp: bool,
    /// The command that recorded it, when not the role's own (`proxy`).
    by: Option<&'static str>,
}

impl Header {
    fn push(&self, out: &mut String, role: &str, place: &str, replay: &str) {
        let udp = if self.udp { " --udp" } else { "" };
        let tls = self
            .tls
            .as_deref()
            .map(|f| format!(" {f}"))
            .unwrap_or_default();
        let flags = format!("{udp}{tls}");
        out.push_str(&format!(
            "// Recorded by `tcpscript {} --record` on {},\n// {place}.\n// Replay: {replay}{flags}\n",
            self.by.unwrap_or(role),
            humantime::format_rfc3339_seconds(self.started)
        ));
        if self.tls.is_some() {
            // What was recorded is the plaintext inside TLS: a replay
            // without the flags would speak it in the clear.
            out.push_str(
                "// Recorded over TLS: this is the conversation inside it, which the replay\n\
                 // speaks over TLS again with the flags above.\n",
            );
        }
        if self.udp {
            let reply = if role == "server" {
                "sent back"
            } else {
                "that came back"
            };
            out.push_str(&format!(
                "// Recorded over UDP: each message is one datagram, each reply the\n\
                 // datagram {reply}.\n",
            ));
        }
        out.push_str("//\n");
    }
}

/// `arg` as one word of a shell command line: quoted when it has to be.
pub(crate) fn shell_word(arg: &str) -> String {
    let plain = |c: char| c.is_ascii_alphanumeric() || "_-./:=@%+,".contains(c);
    if !arg.is_empty() && arg.chars().all(plain) {
        return arg.to_string();
    }
    format!("'{}'", arg.replace('\'', "'\\''"))
}

/// `const FRAMING` when the session did not use the default `line`.
fn push_framing(out: &mut String, framing: &Framing) {
    if *framing != Framing::Line {
        out.push_str(&format!(
            "\n// The framing in use when recording (--framing overrides it).\nconst FRAMING = {};\n",
            rhai_string(&framing.to_string())
        ));
    }
}

/// The recording's file. Every save writes a temporary file beside it and
/// renames it into place, so the file is always a whole script.
#[derive(Debug)]
struct RecordFile {
    path: PathBuf,
    temp: PathBuf,
    /// A save already failed and said so: say it once.
    warned: bool,
}

impl RecordFile {
    /// Checks, before the session starts, that the recording can be
    /// written: a mistyped folder should not cost a whole session.
    fn create(path: &Path) -> Result<Self, Error> {
        let refuse =
            |why: String| Error::Usage(format!("cannot record to `{}`: {why}", path.display()));
        let Some(name) = path.file_name() else {
            return Err(refuse("not a file name".into()));
        };
        if path.is_dir() {
            return Err(refuse("it is a folder".into()));
        }
        if path.exists() {
            OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| refuse(e.to_string()))?;
        }
        let folder = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let temp = folder.join(format!(
            ".{}.{}.tmp",
            name.to_string_lossy(),
            std::process::id()
        ));
        File::create(&temp).map_err(|e| refuse(e.to_string()))?;
        Ok(RecordFile {
            path: path.to_path_buf(),
            temp,
            warned: false,
        })
    }

    fn write(&self, text: &str) -> io::Result<()> {
        fs::write(&self.temp, text)?;
        fs::rename(&self.temp, &self.path)
    }

    /// A save during the session: a failure is reported once and the
    /// session goes on; the last save reports it as the command's error.
    fn checkpoint(&mut self, text: &str) {
        if let Err(e) = self.write(text)
            && !self.warned
        {
            self.warned = true;
            crate::console::err(&format!(
                "warning: cannot write {}: {e}",
                self.path.display()
            ));
        }
    }

    fn finish(&self, text: &str, exchanges: usize, verbosity: Verbosity) -> Result<(), Error> {
        self.write(text).map_err(|source| Error::WriteFile {
            path: self.path.display().to_string(),
            source,
        })?;
        if verbosity >= Verbosity::Normal {
            crate::console::err(&format!(
                "recorded {exchanges} exchange{} to {}",
                if exchanges == 1 { "" } else { "s" },
                self.path.display()
            ));
        }
        Ok(())
    }
}

impl Drop for RecordFile {
    fn drop(&mut self) {
        // Left behind only if a save failed half-way, or nothing was saved.
        let _ = fs::remove_file(&self.temp);
    }
}

/// Records a manual client session into its file.
#[derive(Debug)]
pub(crate) struct ClientRecorder {
    file: RecordFile,
    recording: ClientRecording,
}

impl ClientRecorder {
    pub(crate) fn start(
        options: &RecordOptions,
        connect: &str,
        framing: &Framing,
    ) -> Result<Self, Error> {
        Ok(ClientRecorder {
            file: RecordFile::create(&options.path)?,
            recording: ClientRecording::new(
                options.path.display().to_string(),
                SystemTime::now(),
                connect,
                framing.clone(),
                options.exact,
            )
            .over_tls(options.tls.clone())
            .over_udp(options.udp),
        })
    }

    pub(crate) fn connected(&mut self, peer: SocketAddr) {
        self.recording.connected(peer.to_string());
        self.checkpoint();
    }

    /// Recorded by `tcpscript proxy --record`, between a client and an upstream.
    pub(crate) fn by_proxy(mut self) -> Self {
        self.recording.header_mut().by = Some("proxy");
        self
    }

    pub(crate) fn sent(&mut self, message: &[u8]) {
        self.recording.sent(message);
    }

    pub(crate) fn received(&mut self, message: Bytes) {
        self.recording.received(message);
    }

    pub(crate) fn input_ended(&mut self) {
        self.recording.input_ended();
    }

    pub(crate) fn closed(&mut self) {
        self.recording.closed();
    }

    pub(crate) fn failed(&mut self, error: &str) {
        self.recording.failed(error.to_string());
    }

    pub(crate) fn checkpoint(&mut self) {
        self.file.checkpoint(&self.recording.script());
    }

    pub(crate) fn finish(self, verbosity: Verbosity) -> Result<(), Error> {
        self.file.finish(
            &self.recording.script(),
            self.recording.exchanges(),
            verbosity,
        )
    }
}

/// Records a manual server session into its file.
#[derive(Debug)]
pub(crate) struct ServerRecorder {
    file: RecordFile,
    recording: ServerRecording,
}

impl ServerRecorder {
    pub(crate) fn start(
        options: &RecordOptions,
        listen: &str,
        framing: &Framing,
    ) -> Result<Self, Error> {
        Ok(ServerRecorder {
            file: RecordFile::create(&options.path)?,
            recording: ServerRecording::new(
                options.path.display().to_string(),
                SystemTime::now(),
                listen,
                framing.clone(),
                options.exact,
            )
            .over_tls(options.tls.clone())
            .over_udp(options.udp),
        })
    }

    /// Recorded by `tcpscript proxy --record`, between a client and an upstream.
    pub(crate) fn by_proxy(mut self) -> Self {
        self.recording.header_mut().by = Some("proxy");
        self
    }

    pub(crate) fn listening(&mut self, local: SocketAddr) {
        self.recording.listening(local.to_string());
        self.file.checkpoint(&self.recording.script());
    }

    pub(crate) fn connected(&mut self, peer: SocketAddr) {
        self.recording.connected(peer.to_string());
    }

    pub(crate) fn message(&mut self, message: &[u8]) {
        self.recording.message(message);
    }

    /// `server --udp`: a datagram from `peer`, whose message follows.
    pub(crate) fn datagram_from(&mut self, peer: SocketAddr) {
        self.recording.datagram_from(peer.to_string());
    }

    pub(crate) fn replied(&mut self, reply: &str) {
        self.recording.replied(reply);
        self.file.checkpoint(&self.recording.script());
    }

    pub(crate) fn finish(self, verbosity: Verbosity) -> Result<(), Error> {
        self.file.finish(
            &self.recording.script(),
            self.recording.exchanges(),
            verbosity,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shell_words_are_quoted_when_they_must_be() {
        assert_eq!(shell_word("certs/ca.pem"), "certs/ca.pem");
        assert_eq!(shell_word("my ca.pem"), "'my ca.pem'");
        assert_eq!(shell_word("it's"), "'it'\\''s'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn an_unwritable_place_is_refused_before_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no/such/folder/x.rhai");
        let err = RecordFile::create(&missing).unwrap_err();
        assert!(matches!(err, Error::Usage(_)), "{err}");
        let err = RecordFile::create(dir.path()).unwrap_err();
        assert!(err.to_string().contains("folder"), "{err}");
    }

    #[test]
    fn saves_replace_the_file_whole_and_leave_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.rhai");
        fs::write(&path, "old").unwrap();
        let file = RecordFile::create(&path).unwrap();
        file.write("first").unwrap();
        file.write("second").unwrap();
        drop(file);
        assert_eq!(fs::read_to_string(&path).unwrap(), "second");
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
