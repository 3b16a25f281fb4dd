//! Helpers shared by the integration tests: the binary, temporary scripts,
//! processes whose output is watched line by line (never slept on), and a
//! plain `std::net` line client that tcpscript did not write.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Longest any test waits for something that should happen at once.
pub const PATIENCE: Duration = Duration::from_secs(15);

pub const BIN: &str = env!("CARGO_BIN_EXE_tcpscript");

/// `tcpscript ARGS...` as an assert_cmd command, with colour off.
pub fn tcpscript() -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(BIN);
    cmd.env_remove("GITHUB_ACTIONS").timeout(PATIENCE);
    cmd
}

pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn shipped(name: &str) -> String {
    repo_path("scripts").join(name).display().to_string()
}

/// A loopback port nothing listens on: bound, read, and released, so a
/// connect to it is refused.
pub fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A script written to a temporary folder, removed when dropped.
pub struct Script {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Script {
    pub fn path(&self) -> &str {
        self.path.to_str().unwrap()
    }
}

pub fn script(source: &str) -> Script {
    script_named("test.rhai", source)
}

pub fn script_named(name: &str, source: &str) -> Script {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    std::fs::write(&path, source).unwrap();
    Script { _dir: dir, path }
}

/// Text a child process has written so far, with a way to wait for more.
#[derive(Clone, Default)]
struct Captured(Arc<(Mutex<String>, Condvar)>);

impl Captured {
    fn follow(self, mut source: impl Read + Send + 'static) {
        thread::spawn(move || {
            let mut chunk = [0u8; 4096];
            loop {
                let n = match read_some(&mut source, &mut chunk) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let (text, changed) = &*self.0;
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&chunk[..n]));
                changed.notify_all();
            }
        });
    }

    fn text(&self) -> String {
        self.0.0.lock().unwrap().clone()
    }

    /// Waits until the text contains `needle`; returns everything so far.
    fn wait_for(&self, needle: &str, what: &str) -> String {
        self.wait_until(
            |text| text.contains(needle),
            &format!("{what} never showed {needle:?}"),
        )
    }

    fn wait_until(&self, done: impl Fn(&str) -> bool, failure: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        let (text, changed) = &*self.0;
        let mut guard = text.lock().unwrap();
        while !done(&guard) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "{failure}; it showed:\n{guard}");
            guard = changed.wait_timeout(guard, left).unwrap().0;
        }
        guard.clone()
    }
}

/// Resident memory of a process, in bytes.
#[derive(Debug, Clone, Copy)]
pub struct Memory {
    pub rss: u64,
    pub peak: u64,
}

pub const MIB: u64 = 1024 * 1024;

/// Raises this test process's open-file limit for tests that open
/// thousands of connections; panics if it cannot reach `wanted`.
pub fn allow_open_files(wanted: u64) {
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    assert!(
        limit >= wanted,
        "the open-file limit here is {limit}: {wanted} files cannot be opened (raise `ulimit -n`)"
    );
}

/// A background process (a server, usually); killed when dropped.
pub struct Running {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Captured,
    stderr: Captured,
    /// The port from its `listening on IP:PORT` line, when it printed one.
    pub port: u16,
}

impl Running {
    /// Starts `command` with piped stdio; `input` is written to its stdin.
    pub fn start(mut command: Command, input: Option<&str>) -> Running {
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("GITHUB_ACTIONS");
        let mut child = command.spawn().expect("spawn");
        let mut stdin = child.stdin.take();
        if let Some(input) = input {
            let mut pipe = stdin.take().unwrap();
            pipe.write_all(input.as_bytes()).unwrap();
        }
        let stdout = Captured::default();
        stdout.clone().follow(child.stdout.take().unwrap());
        let stderr = Captured::default();
        stderr.clone().follow(child.stderr.take().unwrap());
        Running {
            child,
            stdin,
            stdout,
            stderr,
            port: 0,
        }
    }

    /// Starts it and waits for `listening on 127.0.0.1:PORT`.
    pub fn listening(command: Command, input: Option<&str>) -> Running {
        let mut running = Running::start(command, input);
        running.port = running.wait_listening();
        running
    }

    fn wait_listening(&self) -> u16 {
        let complete_line = |text: &str| {
            text.split_once("listening on ")
                .is_some_and(|(_, rest)| rest.contains('\n'))
        };
        let text = self
            .stderr
            .wait_until(complete_line, "the server never printed `listening on`");
        let line = text.lines().find(|l| l.contains("listening on ")).unwrap();
        line.rsplit(':').next().unwrap().trim().parse().unwrap()
    }

    /// `tcpscript server ARGS --listen 127.0.0.1:0`, once it is listening.
    pub fn server(args: &[&str]) -> Running {
        Running::server_with_input(args, None)
    }

    pub fn server_with_input(args: &[&str], input: Option<&str>) -> Running {
        let mut command = Command::new(BIN);
        command
            .arg("server")
            .args(args)
            .args(["--listen", "127.0.0.1:0"]);
        Running::listening(command, input)
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The process id, to read its memory figures from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The process's resident memory now (`VmRSS`) and at its peak
    /// (`VmHWM`), in bytes, from `/proc`.
    pub fn memory(&self) -> Memory {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the process is running");
        let field = |name: &str| -> u64 {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no {name} in /proc status"));
            let kib: u64 = line[name.len()..]
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse()
                .unwrap();
            kib * 1024
        };
        Memory {
            rss: field("VmRSS:"),
            peak: field("VmHWM:"),
        }
    }

    /// A server whose stdout pipe nobody reads: the pipe is handed to the
    /// caller, who may leave it full or drop it (closing it).
    pub fn server_with_unread_stdout(args: &[&str]) -> (Running, std::process::ChildStdout) {
        let mut command = Command::new(BIN);
        command
            .arg("server")
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env_remove("GITHUB_ACTIONS");
        let mut child = command.spawn().expect("spawn");
        let pipe = child.stdout.take().unwrap();
        let stdin = child.stdin.take();
        let stderr = Captured::default();
        stderr.clone().follow(child.stderr.take().unwrap());
        let mut running = Running {
            child,
            stdin,
            stdout: Captured::default(),
            stderr,
            port: 0,
        };
        running.port = running.wait_listening();
        (running, pipe)
    }

    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    pub fn stdout(&self) -> String {
        self.stdout.text()
    }

    pub fn wait_stderr(&self, needle: &str) -> String {
        self.stderr.wait_for(needle, "stderr")
    }

    /// Waits until stderr shows `needle` at least `count` times.
    pub fn wait_stderr_count(&self, needle: &str, count: usize) -> String {
        self.stderr.wait_until(
            |text| text.matches(needle).count() >= count,
            &format!("stderr never showed {needle:?} {count} times"),
        )
    }

    pub fn wait_stdout(&self, needle: &str) -> String {
        self.stdout.wait_for(needle, "stdout")
    }

    /// Closes its stdin, when it was started without `input`.
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Writes to its stdin, when it was started without `input`.
    pub fn write_stdin(&mut self, text: &str) {
        let pipe = self.stdin.as_mut().expect("stdin still open");
        pipe.write_all(text.as_bytes()).unwrap();
        pipe.flush().unwrap();
    }

    pub fn send_signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to end by itself.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "process did not exit; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the output threads to see the end of the output.
    pub fn wait_output_closed(&mut self) {
        let _ = self.wait_exit();
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A peer tcpscript did not write: `std::net`, one line per message.
pub struct LineClient {
    reader: BufReader<TcpStream>,
}

impl LineClient {
    pub fn connect(port: u16) -> LineClient {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(PATIENCE)).unwrap();
        LineClient {
            reader: BufReader::new(stream),
        }
    }

    pub fn stream(&self) -> &TcpStream {
        self.reader.get_ref()
    }

    pub fn send(&mut self, line: &str) {
        self.reader
            .get_mut()
            .write_all(format!("{line}\n").as_bytes())
            .unwrap();
    }

    /// The next line without its newline; `None` at end of stream.
    pub fn recv(&mut self) -> Option<String> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(line.trim_end_matches('\n').to_string()),
            Err(e) => panic!("read failed: {e}"),
        }
    }

    pub fn exchange(&mut self, line: &str) -> String {
        self.send(line);
        self.recv().expect("a reply, not a close")
    }

    /// Asserts that the server closes the connection (end of stream, or a reset).
    pub fn expect_closed(&mut self) {
        let mut rest = Vec::new();
        match self.reader.read_to_end(&mut rest) {
            Ok(_) => assert!(rest.is_empty(), "expected a close, got {rest:?}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        }
    }
}

/// A CA and a leaf certificate it signed, made with openssl in `dir`:
/// `(ca.pem, cert.pem, key.pem)`, named `{name}-ca.pem`, `{name}.pem` and
/// `{name}.key`. `extensions` are the leaf's, one per line
/// (`subjectAltName=IP:127.0.0.1`, `extendedKeyUsage=clientAuth`).
pub fn openssl_identity(dir: &Path, name: &str, extensions: &str) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    std::fs::write(
        dir.join("req.cnf"),
        "[req]\ndistinguished_name = dn\n[dn]\n",
    )
    .unwrap();
    let ext = format!("{name}-ext.cnf");
    std::fs::write(
        dir.join(&ext),
        format!("basicConstraints=CA:FALSE\n{extensions}\n"),
    )
    .unwrap();
    let (ca, ca_key) = (format!("{name}-ca.pem"), format!("{name}-ca.key"));
    let (cert, key, csr) = (
        format!("{name}.pem"),
        format!("{name}.key"),
        format!("{name}.csr"),
    );
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];
    let mut make_ca = vec!["req", "-x509", "-config", "req.cnf", "-nodes", "-days", "2"];
    make_ca.extend(ec);
    make_ca.extend(["-keyout", &ca_key, "-out", &ca]);
    let ca_subject = format!("/CN=tcpscript test {name} CA");
    make_ca.extend(["-subj", &ca_subject]);
    make_ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    make_ca.extend(["-addext", "keyUsage=critical,keyCertSign"]);
    run(&make_ca);
    let subject = format!("/CN={name}");
    let mut make_csr = vec!["req", "-config", "req.cnf", "-nodes"];
    make_csr.extend(ec);
    make_csr.extend(["-keyout", &key, "-out", &csr, "-subj", &subject]);
    run(&make_csr);
    run(&[
        "x509",
        "-req",
        "-in",
        &csr,
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &ext,
        "-out",
        &cert,
    ]);
    (dir.join(ca), dir.join(cert), dir.join(key))
}

/// `read`, retried when a signal interrupts it: once a test has waited on
/// a child with a timeout, a SIGCHLD handler is installed for the whole
/// test process, and a child's exit then interrupts any read under
/// SO_RCVTIMEO (which SA_RESTART does not restart).
pub fn read_some(mut from: impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match from.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
