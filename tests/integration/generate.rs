//! `tcpscript completions SHELL` parsed by that shell (where it is
//! installed; bash always), `tcpscript man` rendered by man(1) without a
//! warning, and `--version`.

use std::path::Path;
use std::process::{Command, Output};

use crate::support::tcpscript;

fn installed(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|o| o.status.success())
}

/// `tcpscript ARGS` written to `dir/name`.
fn generate(dir: &Path, name: &str, args: &[&str]) -> String {
    let output = tcpscript().args(args).output().unwrap();
    assert!(output.status.success(), "tcpscript {args:?}: {output:?}");
    assert!(output.stderr.is_empty(), "{output:?}");
    let path = dir.join(name);
    std::fs::write(&path, &output.stdout).unwrap();
    path.display().to_string()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[track_caller]
fn assert_parses(shell: &str, args: &[&str]) -> Output {
    let output = Command::new(shell).args(args).output().unwrap();
    assert!(
        output.status.success() && output.stderr.is_empty(),
        "{shell} {args:?}: {}\n{}",
        output.status,
        text(&output.stderr)
    );
    output
}

#[test]
fn bash_completion_parses_and_completes_commands() {
    let dir = tempfile::tempdir().unwrap();
    let file = generate(dir.path(), "tcpscript.bash", &["completions", "bash"]);
    assert_parses("bash", &["-n", &file]);
    // Sourced and asked, as bash asks it after `tcpscript se<TAB>`.
    let script = format!(
        "source {file}; COMP_WORDS=(tcpscript se); COMP_CWORD=1; \
         COMP_LINE='tcpscript se'; COMP_POINT=12; _tcpscript tcpscript se tcpscript; \
         printf '%s\\n' \"${{COMPREPLY[@]}}\""
    );
    let output = assert_parses("bash", &["-c", &script]);
    assert_eq!(text(&output.stdout), "server\n");
}

#[test]
fn zsh_completion_parses() {
    if !installed("zsh") {
        eprintln!("zsh is not installed: its completion is not parsed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = generate(dir.path(), "_tcpscript", &["completions", "zsh"]);
    assert_parses("zsh", &["-n", &file]);
}

#[test]
fn fish_completion_parses() {
    if !installed("fish") {
        eprintln!("fish is not installed: its completion is not parsed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = generate(dir.path(), "tcpscript.fish", &["completions", "fish"]);
    assert_parses("fish", &["--no-execute", &file]);
}

#[test]
fn powershell_completion_parses() {
    if !installed("pwsh") {
        eprintln!("pwsh is not installed: its completion is not parsed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let file = generate(dir.path(), "tcpscript.ps1", &["completions", "powershell"]);
    // Parsing only: the tokens and errors of the file, errors printed.
    let check = format!(
        "$e = $null; [void][System.Management.Automation.Language.Parser]::ParseFile('{file}', [ref]$null, [ref]$e); \
         if ($e.Count) {{ $e | Out-String | Write-Error; exit 1 }}"
    );
    assert_parses("pwsh", &["-NoProfile", "-Command", &check]);
}

#[test]
fn completions_for_an_unknown_shell_is_a_usage_error() {
    tcpscript()
        .args(["completions", "tcsh"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("invalid value 'tcsh'"));
}

/// Every page: tcpscript(1) and one per command.
#[test]
fn man_pages_render_without_warnings() {
    assert!(
        installed("man"),
        "man is not installed (.ci/run installs man-db)"
    );
    let dir = tempfile::tempdir().unwrap();
    for command in [
        "",
        "server",
        "client",
        "test",
        "check",
        "proxy",
        "merge",
        "completions",
        "man",
    ] {
        let mut args = vec!["man"];
        let mut name = "tcpscript".to_string();
        if !command.is_empty() {
            args.push(command);
            name = format!("tcpscript-{command}");
        }
        let page = generate(dir.path(), &format!("{name}.1"), &args);
        let output = Command::new("man")
            .args(["--warnings", "-l", &page])
            .env("MANWIDTH", "80")
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        assert!(output.status.success(), "man {page}: {output:?}");
        assert_eq!(text(&output.stderr), "", "warnings rendering {name}(1)");
        let rendered = text(&output.stdout);
        assert!(rendered.contains(&name), "{rendered}");
    }
}

#[test]
fn the_man_page_lists_the_commands() {
    let output = tcpscript().arg("man").output().unwrap();
    let page = text(&output.stdout);
    assert!(page.starts_with(".ie \\n(.g"), "{page}");
    assert!(page.contains(".TH tcpscript 1"), "{page}");
    for command in [
        "server",
        "client",
        "test",
        "check",
        "proxy",
        "merge",
        "completions",
        "man",
    ] {
        assert!(
            page.contains(&format!("tcpscript\\-{command}(1)")),
            "{command}"
        );
    }
}

#[test]
fn man_for_an_unknown_command_names_the_commands() {
    tcpscript()
        .args(["man", "serve"])
        .assert()
        .code(2)
        .stdout("")
        .stderr(predicates::str::contains(
            "no command `serve`; the commands are server, client, test, check, proxy, merge, completions, man",
        ));
}

#[test]
fn version_names_the_package_version() {
    let output = tcpscript().arg("--version").output().unwrap();
    assert!(output.status.success());
    let line = text(&output.stdout);
    // `tcpscript 0.1.0`, then `(1a2b3c4 2026-11-25)` when built from git.
    let expected = format!("tcpscript {}", env!("CARGO_PKG_VERSION"));
    assert!(line.starts_with(&expected), "{line}");
    assert_eq!(line.lines().count(), 1, "{line}");
}
