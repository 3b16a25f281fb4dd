//! Reports of test runs, for people and for machines.

pub mod events; // --json: one event per line
