//! stagesnap: snapshot and restore the on-disk state of multi-node test networks.
//!
//! The binary in `main.rs` only parses arguments and maps errors to exit codes;
//! everything else lives here so integration tests can reuse it.

pub mod capture;
pub mod cli;
pub mod commands;
pub mod config;
pub mod delta;
pub mod docker;
pub mod exit;
pub mod fingerprint;
pub mod ini;
pub mod legacy;
pub mod manifest;
pub mod modes;
pub mod output;
pub mod parallel;
pub mod progress;
pub mod quiesce;
pub mod signals;
pub mod store;
pub mod sys;
pub mod testhook;
pub mod tools;
pub mod tree;
