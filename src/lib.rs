//! stagesnap: snapshot and restore the on-disk state of multi-node test networks.
//!
//! The binary in `main.rs` only parses arguments and maps errors to exit codes; everything
//! else lives here. Modules are `pub` only where `main.rs` or an integration test uses them,
//! so the compiler finds what nothing calls.

// The layers, bottom to top: a module uses only its own layer and those below, which
// scripts/layers.py checks in CI (ARCHITECTURE.md draws them).
// layer base: exit sys signals parallel span choices names testhook ini tools tree observe cgroup writers
// layer engine: manifest delta
// layer config: config capture fingerprint
// layer store: store legacy retention docker remote
// layer modes: modes
// layer ops: ops quiesce
// layer top: cli commands output progress

pub(crate) mod capture;
pub(crate) mod cgroup;
pub(crate) mod choices;
pub mod cli;
pub mod commands;
pub(crate) mod config;
pub(crate) mod delta;
pub(crate) mod docker;
pub mod exit;
pub(crate) mod fingerprint;
pub mod ini;
pub(crate) mod legacy;
pub(crate) mod manifest;
pub(crate) mod modes;
pub(crate) mod names;
pub(crate) mod observe;
pub(crate) mod ops;
pub mod output;
pub(crate) mod parallel;
pub mod progress;
pub(crate) mod quiesce;
pub(crate) mod remote;
pub(crate) mod retention;
pub mod signals;
pub(crate) mod span;
pub(crate) mod store;
pub(crate) mod sys;
pub(crate) mod testhook;
pub(crate) mod tools;
pub(crate) mod tree;
pub(crate) mod writers;
