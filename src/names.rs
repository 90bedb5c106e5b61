//! Snapshot names: one rule, in the base layer, since both the configuration (its
//! `snapshot_name`) and the store (whose paths are made of names) hold it.

use anyhow::Result;

use crate::exit::{Code, fail};

/// Snapshot names: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`, so a name is always one plain
/// path component (no traversal, no hidden files).
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(fail(
            Code::Usage,
            format!(
                "invalid snapshot name {name:?}: use 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ))
    }
}
