//! `tcpscript check`: compile only.

use predicates::str::contains;

use crate::bad_input::{TOO_LARGE, fifo, not_a_script, too_large};
use crate::support::{script, shipped, tcpscript};

#[test]
fn shipped_scripts_compile() {
    tcpscript()
        .args([
            "check",
            &shipped("reply.rhai"),
            &shipped("conversation.rhai"),
        ])
        .assert()
        .success()
        .stderr(contains("ok: ").count(2));
}

#[test]
fn every_broken_script_is_reported_with_its_position() {
    let good = script("let x = 1;\n");
    let bad = script("let x = 1;\nlet y = (2;\n");
    tcpscript()
        .args(["check", good.path(), bad.path()])
        .assert()
        .code(3)
        .stderr(contains(format!("--> {}:2:", bad.path())))
        .stderr(contains("2 | let y = (2;"))
        .stderr(contains("1 of 2 scripts failed to check"));
}

#[test]
fn a_missing_script_is_a_usage_error() {
    tcpscript()
        .args(["check", "/nonexistent.rhai"])
        .assert()
        .code(2)
        .stderr(contains("cannot read `/nonexistent.rhai`"));
    tcpscript().arg("check").assert().code(2);
}

/// `tcpscript check PATH` refuses it as a script: a usage error.
fn refused(path: &str, problem: &str) {
    tcpscript()
        .args(["check", path])
        .assert()
        .code(2)
        .stderr(contains(not_a_script(path, problem)))
        .stderr(contains("1 of 1 scripts failed to check"));
}

#[test]
fn a_device_is_not_read() {
    refused("/dev/zero", "it is a character device, not a regular file");
}

#[test]
fn a_fifo_is_not_opened() {
    let (_dir, path) = fifo("pipe.rhai");
    refused(&path, "it is a FIFO (named pipe), not a regular file");
}

#[test]
fn a_directory_is_not_a_script() {
    let dir = tempfile::tempdir().unwrap();
    refused(
        dir.path().to_str().unwrap(),
        "it is a directory, not a regular file",
    );
}

#[test]
fn a_script_over_the_size_limit_is_not_compiled() {
    let large = too_large("large.rhai");
    refused(large.path(), TOO_LARGE);
}
