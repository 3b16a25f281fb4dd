//! Integration tests: the real binary over real loopback sockets.

mod check;
mod client;
mod interop;
mod hostile;
mod manual;
mod server;
mod support;
