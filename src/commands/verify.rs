//! `stagesnap verify`: read stored snapshots back and check them against their manifests.

use anyhow::Result;

use super::open;
use crate::cli::{GlobalArgs, VerifyArgs};
use crate::exit::Code;
use crate::output::{Report, table};

/// Problems listed per snapshot in the text output; `--json` has them all.
const SHOWN: usize = 20;

pub fn run(g: &GlobalArgs, args: &VerifyArgs) -> Result<Report> {
    let v = open(g)?.verify(&args.names, args.all)?;
    let results = &v.snapshots;
    let damaged = results.iter().filter(|r| !r.ok).count();
    let mut text = if results.is_empty() {
        format!("no snapshots in {}\n", v.store.display())
    } else {
        let rows: Vec<Vec<String>> = results
            .iter()
            .map(|r| {
                vec![
                    r.name.clone(),
                    r.mode.clone(),
                    if r.ok {
                        "ok".into()
                    } else {
                        format!("DAMAGED ({} problems)", r.verified.problems.len())
                    },
                    r.verified.checked.clone(),
                ]
            })
            .collect();
        table(&["NAME", "MODE", "RESULT", "CHECKED"], &rows)
    };
    for r in results.iter().filter(|r| !r.ok) {
        text.push_str(&format!("\n{}:\n", r.name));
        for p in r.verified.problems.iter().take(SHOWN) {
            text.push_str(&format!("  {p}\n"));
        }
        if r.verified.problems.len() > SHOWN {
            text.push_str(&format!(
                "  … {} more (see --json)\n",
                r.verified.problems.len() - SHOWN
            ));
        }
    }
    if damaged > 0 {
        text.push_str(&format!(
            "\n{damaged} snapshot(s) damaged: delete them with `stagesnap delete NAME` and create them again\n"
        ));
    }
    let report = Report::new("verify", &v, text);
    Ok(if damaged > 0 {
        report.with_code(Code::Failure)
    } else {
        report
    })
}
