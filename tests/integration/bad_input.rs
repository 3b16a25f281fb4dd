//! Bad input on the command line is a usage error (exit 2) that names what
//! is wrong, never a panic, a hang, or a server that starts and then fails
//! every connection.

use std::path::Path;

use predicates::str::contains;

use crate::support::{closed_port, script, script_named, tcpscript};

/// A client script that would run, against a port nothing listens on.
const CONVERSATION: &str = "send(\"hi\");\nrecv();\n";
const ECHO: &str = "fn on_message(m) { m }\n";

/// `tcpscript ARGS...` must exit 2, and say which flag is wrong.
fn refused(args: &[&str], flag: &str) {
    tcpscript()
        .args(args)
        .assert()
        .code(2)
        .stderr(contains("invalid value"))
        .stderr(contains(flag));
}

/// `tcpscript client CONVERSATION --connect <closed> FLAGS...` must be refused.
fn client_refused(flags: &[&str], flag: &str) {
    let conversation = script(CONVERSATION);
    let port = closed_port().to_string();
    let mut args = vec!["client", conversation.path(), "--connect", &port];
    args.extend_from_slice(flags);
    refused(&args, flag);
}

/// `tcpscript server ECHO --listen 127.0.0.1:0 FLAGS...` must be refused,
/// not start.
fn server_refused(flags: &[&str], flag: &str) {
    let echo = script(ECHO);
    let mut args = vec!["server", echo.path(), "--listen", "127.0.0.1:0"];
    args.extend_from_slice(flags);
    refused(&args, flag);
}

/// `tcpscript test --server ECHO CONVERSATION FLAGS...` must be refused.
fn test_refused(flags: &[&str], flag: &str) {
    let echo = script(ECHO);
    let conversation = script(CONVERSATION);
    let mut args = vec!["test", "--server", echo.path(), conversation.path()];
    args.extend_from_slice(flags);
    refused(&args, flag);
}

#[test]
fn a_timeout_past_the_clock() {
    client_refused(&["--timeout", "1e30"], "--timeout");
}

#[test]
fn a_timeout_of_zero() {
    client_refused(&["--timeout", "0"], "--timeout");
}

#[test]
fn a_connect_retry_past_the_clock() {
    let port = closed_port().to_string();
    refused(
        &["client", "--connect", &port, "--connect-retry", "1e19"],
        "--connect-retry",
    );
}

#[test]
fn a_hook_timeout_past_the_clock() {
    server_refused(&["--hook-timeout", "1e19"], "--hook-timeout");
}

#[test]
fn a_hook_timeout_of_zero() {
    test_refused(&["--hook-timeout", "0"], "--hook-timeout");
}

#[test]
fn an_idle_timeout_past_the_clock() {
    server_refused(&["--idle-timeout", "1e19"], "--idle-timeout");
}

#[test]
fn an_idle_timeout_of_zero() {
    test_refused(&["--idle-timeout", "0"], "--idle-timeout");
}

#[test]
fn a_load_duration_past_the_clock() {
    client_refused(&["--duration", "1e30"], "--duration");
}

#[test]
fn a_load_duration_of_zero() {
    client_refused(&["--duration", "0"], "--duration");
}

#[test]
fn a_rate_too_small_to_schedule() {
    client_refused(&["--iterations", "2", "--rate", "1e-300"], "--rate");
}

#[test]
fn a_rate_past_the_bound() {
    client_refused(&["--iterations", "2", "--rate", "2000000"], "--rate");
}

#[test]
fn a_concurrency_of_zero() {
    client_refused(
        &["--iterations", "1", "--concurrency", "0"],
        "--concurrency",
    );
}

#[test]
fn a_concurrency_past_the_bound() {
    client_refused(
        &["--iterations", "1", "--concurrency", "10001"],
        "--concurrency",
    );
}

#[test]
fn zero_iterations() {
    client_refused(&["--iterations", "0"], "--iterations");
}

#[test]
fn zero_jobs() {
    test_refused(&["-j", "0"], "--jobs");
}

#[test]
fn jobs_past_the_bound() {
    test_refused(&["-j", "1001"], "--jobs");
}

#[test]
fn a_max_frame_past_the_bound() {
    client_refused(&["--max-frame", "2GiB"], "--max-frame");
}

/// A FIFO named `name` in a fresh folder; opening it blocks until a writer
/// comes, so reading it must never be tried.
pub(crate) fn fifo(name: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(name);
    let c_path = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path; mkfifo only creates the file.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    (dir, path.to_str().unwrap().to_string())
}

/// A valid script (comments) of 2 MiB, past the 1 MiB limit.
pub(crate) fn too_large(name: &str) -> crate::support::Script {
    let line = "// a script this large is a mistake, not a conversation\n";
    let mut source = line.repeat((2 << 20) / line.len() + 1);
    source.truncate(2 << 20);
    script_named(name, &source)
}

/// The refusal for a script at `path`, which `problem` describes.
pub(crate) fn not_a_script(path: &str, problem: &str) -> String {
    format!("cannot use `{path}` as a script: {problem}")
}

const DEVICE: &str = "it is a character device, not a regular file";
const FIFO: &str = "it is a FIFO (named pipe), not a regular file";
const DIRECTORY: &str = "it is a directory, not a regular file";
pub(crate) const TOO_LARGE: &str = "it is 2097152 bytes, more than the limit of 1048576 bytes";

/// `tcpscript client PATH` against a closed port: refused before connecting.
fn client_script_refused(path: &str, problem: &str) {
    let port = closed_port().to_string();
    tcpscript()
        .args(["client", path, "--connect", &port])
        .assert()
        .code(2)
        .stderr(contains(not_a_script(path, problem)));
}

/// `tcpscript server PATH`: refused before listening.
fn server_script_refused(path: &str, problem: &str) {
    tcpscript()
        .args(["server", path, "--listen", "127.0.0.1:0"])
        .assert()
        .code(2)
        .stderr(contains(not_a_script(path, problem)));
}

#[test]
fn a_client_script_that_is_a_device() {
    client_script_refused("/dev/zero", DEVICE);
}

#[test]
fn a_client_script_that_is_a_fifo() {
    let (_dir, path) = fifo("pipe.rhai");
    client_script_refused(&path, FIFO);
}

#[test]
fn a_client_script_that_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    client_script_refused(dir.path().to_str().unwrap(), DIRECTORY);
}

#[test]
fn a_client_script_too_large() {
    let large = too_large("large.rhai");
    client_script_refused(large.path(), TOO_LARGE);
}

#[test]
fn a_server_script_that_is_a_device() {
    server_script_refused("/dev/zero", DEVICE);
}

#[test]
fn a_server_script_that_is_a_fifo() {
    let (_dir, path) = fifo("pipe.rhai");
    server_script_refused(&path, FIFO);
}

#[test]
fn a_server_script_that_is_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    server_script_refused(dir.path().to_str().unwrap(), DIRECTORY);
}

#[test]
fn a_server_script_too_large() {
    let large = too_large("large.rhai");
    server_script_refused(large.path(), TOO_LARGE);
}

#[test]
fn a_test_case_in_a_folder_too_large() {
    let large = too_large("large.rhai");
    let folder = Path::new(large.path()).parent().unwrap().to_str().unwrap();
    let port = closed_port().to_string();
    tcpscript()
        .args(["test", "--connect", &port, folder])
        .assert()
        .code(2)
        .stderr(contains(not_a_script(large.path(), TOO_LARGE)));
}

#[test]
fn an_import_of_a_fifo() {
    let (dir, _pipe) = fifo("pipe.rhai");
    let server = dir.path().join("server.rhai");
    std::fs::write(&server, "import \"pipe\" as p;\nfn on_message(m) { m }\n").unwrap();
    tcpscript()
        .args([
            "server",
            server.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .assert()
        .code(2)
        .stderr(contains(format!("pipe.rhai` as a script: {FIFO}")));
}

#[test]
fn an_import_too_large() {
    let large = too_large("large.rhai");
    let folder = Path::new(large.path()).parent().unwrap();
    let server = folder.join("server.rhai");
    std::fs::write(&server, "import \"large\" as l;\nfn on_message(m) { m }\n").unwrap();
    tcpscript()
        .args([
            "server",
            server.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
        ])
        .assert()
        .code(2)
        .stderr(contains(format!("large.rhai` as a script: {TOO_LARGE}")));
}

#[test]
fn a_junit_report_that_cannot_be_written() {
    let echo = script(ECHO);
    let conversation = script(CONVERSATION);
    let report = "/nonexistent/folder/report.xml";
    tcpscript()
        .args(["test", "--server", echo.path(), conversation.path()])
        .args(["--junit", report])
        .assert()
        .code(2)
        .stderr(contains(format!("cannot write `{report}`")));
}

#[test]
fn the_system_refusing_a_file_handle_is_a_system_error() {
    use std::os::unix::process::CommandExt;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut client = std::process::Command::new(crate::support::BIN);
    client.args(["client", "--connect", &port]);
    // Room for stdin, stdout, stderr and the socket, not for a second
    // handle on the socket for the thread that reads it.
    // SAFETY: setrlimit is async-signal-safe, and only the child is limited.
    unsafe {
        client.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 4,
                rlim_max: 4,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    assert_cmd::Command::from_std(client)
        .write_stdin("")
        .timeout(crate::support::PATIENCE)
        .assert()
        .code(5)
        .stderr(contains(
            "cannot share the socket with the reader thread: Too many open files",
        ));
}
