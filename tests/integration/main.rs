//! Integration tests: the real binary over real loopback sockets.

mod check;
mod client;
mod hostile;
mod interop;
mod manual;
mod scripts;
mod server;
mod support;
