//! Integration tests: the real binary over real loopback sockets.

mod check;
mod client;
mod diagnostics;
mod hostile;
mod interop;
mod load;
mod manual;
mod record;
mod runner;
mod scripts;
mod server;
mod stack;
mod support;
