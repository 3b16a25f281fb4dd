//! Integration tests: the real binary over real loopback sockets.

mod check;
mod client;
mod interop;
mod manual;
mod record;
mod server;
mod support;
