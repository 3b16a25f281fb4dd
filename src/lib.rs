//! tcpscript: drive TCP clients and servers from Rhai scripts.

mod builtins; // Rhai built-ins that check sizes before allocating, not after
mod check; // `tcpscript check`: compile scripts, run nothing
pub mod cli; // command-line flags and their translation into options
mod client; // scripted client: a conversation run top to bottom, over blocking connections
mod console; // stdout and stderr lines through bounded queues: output never blocks a worker
mod diagnostic; // rustc-like error reports pointing into scripts
mod engine; // Rhai engine set-up, compilation, common functions, error mapping
pub mod error; // error kinds and the exit-code table
mod framing; // what one message is: line, raw, delim, len, bytes, resp, http
mod generate; // `tcpscript completions` and `tcpscript man`, from the clap definitions
mod load; // load mode: many virtual users running a conversation in a loop
mod manual; // manual mode: the tutorial's programs on stdin
mod memory; // memory in bytes: the counting allocator, footprints, the server's budget
mod message; // bytes <-> script values, and how messages are displayed
mod net; // addresses, listening sockets, the open-file limit
mod patterns; // regular expression literals checked when a script compiles
mod protocols; // RESP, HTTP/1.1 and SMTP replies: framing, parsing, building, and their script functions
mod proxy; // `tcpscript proxy`: a client and its upstream joined, with toxiproxy's faults on demand
mod record; // --record: a manual session written down as a script that replays it
mod report; // test reports: JSON events, JUnit, TAP, GitHub annotations
mod runner; // `tcpscript test`: client scripts as test cases, with reports
mod server; // scripted server: listener, connections, hooks, shared room and store
mod stack; // the native stack under script code: sized threads, a depth check, no recursion over data
mod tls; // TLS on rustls: configurations from flags, throwaway certificates, failures in one line
mod transcript; // the `> sent` / `< received` record of a conversation
