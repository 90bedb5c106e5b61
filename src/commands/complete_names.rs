//! `stagesnap complete-names` (hidden): the snapshot names, one per line, for the shell
//! completions. It never fails: a completion has nothing useful to say about errors.

use anyhow::Result;

use super::open;
use crate::cli::GlobalArgs;
use crate::output::Report;

pub fn run(g: &GlobalArgs) -> Result<Report> {
    let names: Vec<String> = open(g)
        .and_then(|session| {
            let store = session.store();
            let (snapshots, _) = store.list()?;
            // The stage-env harness's too, for `adopt` and `delete`.
            let legacy = crate::legacy::scan(store.dir())?;
            let mut names: Vec<String> = snapshots.into_iter().map(|s| s.meta.name).collect();
            for l in legacy {
                if !names.contains(&l.name) {
                    names.push(l.name);
                }
            }
            Ok(names)
        })
        .unwrap_or_default();
    let text = names.iter().map(|n| format!("{n}\n")).collect();
    Ok(Report::new(
        "complete-names",
        &serde_json::json!({ "names": names }),
        text,
    ))
}
