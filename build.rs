//! `tcpscript --version` names the commit it was built from, when it was
//! built from a git checkout of this repository: `tcpscript 0.1.0 (1a2b3c4
//! 2026-11-25)`. Anywhere else (a crates.io package, a source archive, no
//! `git` on PATH) it is the version alone.

use std::path::Path;
use std::process::Command;

fn main() {
    // Without a git checkout nothing else is watched; this keeps Cargo
    // from rerunning the script whenever any file of the package changes.
    println!("cargo:rerun-if-changed=build.rs");
    let version = env!("CARGO_PKG_VERSION");
    let full = match commit() {
        Some(commit) => format!("{version} ({commit})"),
        None => version.to_string(),
    };
    println!("cargo:rustc-env=TCPSCRIPT_VERSION={full}");
    vendored_rhai();
}

/// `cfg(vendored_rhai)` when the build uses this repository's patched Rhai
/// (`vendor/rhai`, through `[patch.crates-io]`), which adds what the hook
/// calls use (`EvalContext::call_script_fn_def`). A packaged crate leaves
/// `vendor/` out and Cargo drops the patch with it, so it builds against
/// Rhai as published and calls hooks by name.
fn vendored_rhai() {
    println!("cargo::rustc-check-cfg=cfg(vendored_rhai)");
    let Ok(manifest_dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    if Path::new(&manifest_dir)
        .join("vendor/rhai/Cargo.toml")
        .is_file()
    {
        println!("cargo:rustc-cfg=vendored_rhai");
    }
}

/// `1a2b3c4 2026-11-25`, the short hash and commit date of HEAD, if this
/// crate's folder is the top of a git work tree. Also asks Cargo to run
/// this again when HEAD moves.
fn commit() -> Option<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    // The packaged crate is unpacked under target/package/, inside this
    // repository's work tree: without this check its build would report the
    // commit of whatever checkout it happens to sit in.
    let top = git(&manifest_dir, &["rev-parse", "--show-toplevel"])?;
    let same =
        Path::new(&top).canonicalize().ok()? == Path::new(&manifest_dir).canonicalize().ok()?;
    if !same {
        return None;
    }
    // HEAD, and the branch it names: a commit moves the branch, a checkout
    // moves HEAD. `--git-path` finds both in a linked worktree too, where
    // `.git` is a file. A packed ref has no file of its own; then only HEAD
    // is watched (a path that does not exist would rerun this every build).
    let mut watched = vec![git(&manifest_dir, &["rev-parse", "--git-path", "HEAD"])?];
    if let Some(branch) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.extend(git(&manifest_dir, &["rev-parse", "--git-path", &branch]));
    }
    for path in watched {
        let path = Path::new(&manifest_dir).join(path);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    git(&manifest_dir, &["log", "-1", "--format=%h %cs"])
}

/// One line of `git ARGS` run in `dir`, or `None` if git is missing or fails.
fn git(dir: &str, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let line = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !line.is_empty()).then_some(line)
}
