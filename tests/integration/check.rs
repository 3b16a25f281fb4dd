//! `tcpscript check`: compile only.

use predicates::str::contains;

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
