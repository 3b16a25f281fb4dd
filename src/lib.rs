//! tcpscript: drive TCP clients and servers from Rhai scripts.

pub mod check; // `tcpscript check`: compile scripts, run nothing
pub mod cli; // command-line flags and their translation into options
pub mod client; // scripted client: a conversation run top to bottom
pub mod connection; // blocking framed connection used by clients and manual mode
pub mod diagnostic; // rustc-like error reports pointing into scripts
pub mod engine; // Rhai engine set-up, compilation, common functions, error mapping
pub mod error; // error kinds and the exit-code table
pub mod framing; // what one message is: line, raw, delim, len
pub mod hooks; // server scripts: per-connection state and hook calls
pub mod load; // load mode: many virtual users running a conversation in a loop
pub mod manual; // manual mode: the tutorial's programs on stdin
pub mod message; // bytes <-> script values, and how messages are displayed
pub mod record; // --record: a manual session written down as a script that replays it
pub mod report; // test reports: JSON events, JUnit, TAP, GitHub annotations
pub mod room; // what a server's connections share: the roster and the shared store
pub mod runner; // `tcpscript test`: client scripts as test cases, with reports
pub mod server; // scripted server: accept loop and connection tasks
pub mod transcript; // the `> sent` / `< received` record of a conversation
