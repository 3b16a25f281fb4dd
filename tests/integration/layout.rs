//! The code a message runs through is linked together at the front of the
//! binary (`link/hot-text.ld`, see `build.rs`). This checks that the section
//! is there and that it holds the functions of each kind of server's hot
//! path: a function renamed so that no pattern matches it any more fails
//! here, the cue to run `link/hot_text.py` again.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64")
))]

use std::process::Command;

use crate::support::BIN;

/// Mangled-name stems (the symbol's path without Rust's hash) of functions
/// every message of some server runs: the hook call and Rhai's function
/// call (all scripted servers), the TCP and TLS connection loop, rustls's
/// record processing, the UDP loop, and the proxy's copy of each direction.
const HOT: &[&str] = &[
    "_ZN9tcpscript6server5hooks15ConnectionHooks4call",
    "14call_script_fn17h",
    "_ZN9tcpscript6server7handler8exchange28_",
    "19process_new_packets17h",
    "_ZN9tcpscript6server3udp5serve28_",
    "_ZN9tcpscript5proxy10connection5carry28_",
];

fn run(tool: &str, args: &[&str]) -> String {
    let output = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool} (binutils) is needed for this test: {e}"));
    assert!(output.status.success(), "{tool} {args:?} failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn the_hot_path_is_linked_together() {
    if std::env::var_os("TCPSCRIPT_NO_HOT_TEXT").is_some() {
        return;
    }
    // `  [15] .text.hot  PROGBITS  0000000000245da0 244da0 04c1bb ...`
    let sections = run("readelf", &["-SW", BIN]);
    let line = sections
        .lines()
        .find(|line| line.contains(" .text.hot "))
        .unwrap_or_else(|| panic!("no .text.hot section in {BIN}:\n{sections}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    let at = fields.iter().position(|f| *f == ".text.hot").unwrap();
    let start = u64::from_str_radix(fields[at + 2], 16).unwrap();
    let size = u64::from_str_radix(fields[at + 4], 16).unwrap();
    assert!(size > 0, "{line}");
    // The placement counts cache lines from the section's start.
    assert_eq!(start % 64, 0, "{line}");
    let symbols = run("nm", &[BIN]);
    for stem in HOT {
        let addresses: Vec<u64> = symbols
            .lines()
            .filter(|line| line.contains(stem))
            .filter_map(|line| u64::from_str_radix(line.split_whitespace().next()?, 16).ok())
            .collect();
        assert!(!addresses.is_empty(), "no function {stem}* in {BIN}");
        assert!(
            addresses.iter().any(|a| (start..start + size).contains(a)),
            "no {stem}* inside .text.hot ({start:#x}, {size:#x} bytes): \
             run link/hot_text.py again (see README, Code layout)"
        );
    }
}
