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
    hot_text();
}

/// Links the code a message runs through together at the front of the
/// binary (`link/hot-text.ld`, written by `link/hot_text.py` from profiles),
/// placed so that its cache lines spread evenly over the instruction
/// cache's sets. Spread over the whole binary, they evict one another in a
/// cache of few ways even where they would all fit: on AMD Zen 1 (64 KiB,
/// 4-way) a TLS echo missed it 168 times a message, and 24 laid out
/// (callgrind's simulation; the tokio-rustls floor, 19). ELF linkers (lld,
/// GNU ld) take the script as an addition to their own layout; elsewhere,
/// or with `TCPSCRIPT_NO_HOT_TEXT` set (for a linker that takes no scripts,
/// such as mold), the binary is linked as it comes.
fn hot_text() {
    println!("cargo:rerun-if-changed=link/hot-text.ld");
    println!("cargo:rerun-if-env-changed=TCPSCRIPT_NO_HOT_TEXT");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    if os != "linux"
        || !matches!(arch.as_str(), "x86_64" | "aarch64")
        || std::env::var_os("TCPSCRIPT_NO_HOT_TEXT").is_some()
    {
        return;
    }
    let Ok(manifest_dir) = std::env::var("CARGO_MANIFEST_DIR") else {
        return;
    };
    let script = Path::new(&manifest_dir).join("link/hot-text.ld");
    if script.is_file() {
        println!(
            "cargo:rustc-link-arg-bin=tcpscript=-Wl,-T,{}",
            script.display()
        );
    }
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
