//! The `cadenza` binary's library: the embedded stack (`cadenza up`), the ingest client and
//! the command implementations, kept out of `main.rs` so tests can run them in-process.

pub mod access_file;
pub mod cli;
pub mod commands;
pub mod edge_node;
pub mod ingest;
pub mod stack;
pub mod synth;
pub mod tus_client;
