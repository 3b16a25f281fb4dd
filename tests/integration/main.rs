//! Integration tests: the real binary over real loopback sockets.

mod bad_input;
mod binary;
mod builtins;
mod check;
mod client;
mod diagnostics;
mod hostile;
mod interop;
mod isolation;
mod load;
mod manual;
mod memory;
mod protocols;
mod protocols_http_smtp;
mod record;
mod runner;
mod scripts;
mod server;
mod sharing;
mod shutdown;
mod stack;
mod streams;
mod support;
mod tls_client;
mod tls_commands;
mod tls_server;
