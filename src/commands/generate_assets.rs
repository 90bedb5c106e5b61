//! `stagesnap generate-assets --out DIR` (hidden): writes the shell completions
//! (`completions/`) and man pages (`man/`) from the clap definitions. They are committed, and
//! a test fails when they differ from what this writes.
//!
//! clap_complete's scripts complete only what clap knows statically, so each gets a small
//! addition that offers the names of existing snapshots (from `stagesnap complete-names`) for
//! the arguments that name one: positionals called name, names, from or to, and `--snapshot`.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use clap::CommandFactory;
use clap_complete::Shell;
use roff::{Roff, bold, roman};

use crate::cli::{AssetsArgs, Cli};
use crate::exit::{Code, EXCEPTIONS};
use crate::output::Report;

/// Ids of the positionals that name snapshots.
const SNAPSHOT_POSITIONALS: &[&str] = &["name", "names", "from", "to"];
/// Id of the options that name snapshots.
const SNAPSHOT_OPTION: &str = "snapshot";
/// The command that prints the snapshot names.
const NAMES: &str = "stagesnap complete-names 2>/dev/null";

pub fn run(args: &AssetsArgs) -> Result<Report> {
    let cmd = visible();
    let mut written = Vec::new();
    for (shell, file) in [
        (Shell::Bash, "stagesnap.bash"),
        (Shell::Zsh, "_stagesnap"),
        (Shell::Fish, "stagesnap.fish"),
    ] {
        let text = completion(shell, &cmd)?;
        written.push(write(&args.out.join("completions").join(file), &text)?);
    }
    // Built, each subcommand's display name is `stagesnap-<name>`, as man pages are named.
    let pages = std::iter::once(&cmd).chain(cmd.get_subcommands());
    for page in pages {
        let name = page.get_display_name().unwrap_or(page.get_name());
        let bytes = man_page(page.clone(), page.get_name() == cmd.get_name())?;
        written.push(write(
            &args.out.join("man").join(format!("{name}.1")),
            &bytes,
        )?);
    }
    let text = written.iter().map(|p| format!("wrote {p}\n")).collect();
    Ok(Report::new(
        "generate-assets",
        &serde_json::json!({ "files": written }),
        text,
    ))
}

/// The command tree without the hidden commands, which completions should not offer.
fn visible() -> clap::Command {
    let full = Cli::command();
    let mut cmd = clap::Command::new("stagesnap")
        .version(env!("CARGO_PKG_VERSION"))
        .about(full.get_about().cloned().unwrap_or_default())
        .after_help(full.get_after_help().cloned().unwrap_or_default())
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|s| !s.is_hide_set()).cloned())
        // `stagesnap help CMD` is `CMD --help`; it would only need a page of its own.
        .disable_help_subcommand(true);
    cmd.build();
    cmd
}

fn completion(shell: Shell, cmd: &clap::Command) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd.clone(), "stagesnap", &mut out);
    let script = String::from_utf8(out).context("completion script is not UTF-8")?;
    let named: Vec<&str> = cmd
        .get_subcommands()
        .filter(|s| {
            s.get_positionals()
                .any(|a| SNAPSHOT_POSITIONALS.contains(&a.get_id().as_str()))
        })
        .map(|s| s.get_name())
        .collect();
    let option = format!("--{SNAPSHOT_OPTION}");
    let script = match shell {
        Shell::Bash => bash(&script, cmd, &named, &option)?,
        Shell::Zsh => zsh(&script, &option)?,
        _ => fish(&script, cmd, &named),
    };
    Ok(script.into_bytes())
}

/// bash: a wrapper that completes names and leaves the rest to clap's `_stagesnap`.
fn bash(script: &str, cmd: &clap::Command, named: &[&str], option: &str) -> Result<String> {
    let register = "complete -F _stagesnap ";
    ensure!(
        script.contains(register),
        "clap_complete's bash script no longer registers with `{register}`"
    );
    let mut valued: Vec<String> = std::iter::once(cmd)
        .chain(cmd.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .filter(|a| a.get_action().takes_values() && !a.is_positional())
        .flat_map(|a| {
            let long = a.get_long().map(|l| format!("--{l}"));
            let short = a.get_short().map(|s| format!("-{s}"));
            long.into_iter().chain(short)
        })
        .filter(|o| o != option)
        .collect();
    valued.sort();
    valued.dedup();
    let wrapper = format!(
        r#"
# Snapshot names for the arguments that name snapshots (added by stagesnap generate-assets).
_stagesnap_names() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" prev="" sub="" w
    (( COMP_CWORD > 0 )) && prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    for w in "${{COMP_WORDS[@]:1:COMP_CWORD-1}}"; do
        case "$w" in
            {named}) sub="$w"; break ;;
        esac
    done
    case "$prev" in
        {option}) ;;
        {valued}) _stagesnap "$@"; return ;;
        *) if [[ -z "$sub" || "$cur" == -* ]]; then _stagesnap "$@"; return; fi ;;
    esac
    COMPREPLY=($(compgen -W "$({NAMES})" -- "$cur"))
}}
"#,
        named = named.join("|"),
        valued = valued.join("|"),
    );
    Ok(script.replace(register, "complete -F _stagesnap_names ") + &wrapper)
}

/// zsh: the name arguments' completer `_default` becomes `_stagesnap_names`.
fn zsh(script: &str, option: &str) -> Result<String> {
    let mut replaced = 0;
    let mut out: Vec<String> = script
        .lines()
        .map(|line| {
            let spec = line.trim_start_matches('\'').trim_start_matches('*');
            let names_snapshot = SNAPSHOT_POSITIONALS.iter().any(|id| {
                spec.trim_start_matches(':')
                    .starts_with(&format!("{id} -- "))
                    && spec.starts_with(':')
            }) || spec.starts_with(&format!("{option}=["));
            match line.strip_suffix(":_default' \\") {
                Some(head) if names_snapshot => {
                    replaced += 1;
                    format!("{head}:_stagesnap_names' \\")
                }
                _ => line.to_string(),
            }
        })
        .collect();
    ensure!(
        replaced > 0,
        "clap_complete's zsh script has no `:_default` completer left to replace"
    );
    let dispatch = out
        .iter()
        .position(|l| l.starts_with("if [ \"$funcstack[1]\" = \"_stagesnap\" ]"))
        .context("clap_complete's zsh script no longer ends with its funcstack dispatch")?;
    out.insert(
        dispatch,
        format!(
            "# Snapshot names (added by stagesnap generate-assets).\n(( $+functions[_stagesnap_names] )) ||\n_stagesnap_names() {{\n    local -a names\n    names=(${{(f)\"$({NAMES})\"}})\n    compadd -a names\n}}\n"
        ),
    );
    Ok(out.join("\n") + "\n")
}

/// fish: completions add up, so the names are more of them.
fn fish(script: &str, cmd: &clap::Command, named: &[&str]) -> String {
    let with_option: Vec<&str> = cmd
        .get_subcommands()
        .filter(|s| s.get_arguments().any(|a| a.get_id() == SNAPSHOT_OPTION))
        .map(|s| s.get_name())
        .collect();
    format!(
        "{script}\n# Snapshot names (added by stagesnap generate-assets).\ncomplete -c stagesnap -n \"__fish_stagesnap_using_subcommand {}\" -f -a \"({NAMES})\"\ncomplete -c stagesnap -n \"__fish_stagesnap_using_subcommand {}\" -l {SNAPSHOT_OPTION} -x -a \"({NAMES})\"\n",
        named.join(" "),
        with_option.join(" ")
    )
}

/// A man page: clap_mangen's sections, the examples from the after-help text, and on the
/// top page the exit codes.
fn man_page(cmd: clap::Command, top: bool) -> Result<Vec<u8>> {
    let man = clap_mangen::Man::new(cmd.clone())
        .source(format!("stagesnap {}", env!("CARGO_PKG_VERSION")));
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if top {
        man.render_subcommands_section(&mut out)?;
    }
    let mut roff = Roff::new();
    let help = cmd
        .get_after_help()
        .map(|h| h.to_string())
        .unwrap_or_default();
    let examples: Vec<&str> = help
        .lines()
        .filter_map(|l| l.strip_prefix("Example: "))
        .collect();
    if !examples.is_empty() {
        roff.control("SH", ["EXAMPLES"]);
        for example in examples {
            roff.control("PP", [])
                .control("nf", [])
                .text([roman(example)])
                .control("fi", []);
        }
    }
    if top {
        roff.control("SH", ["EXIT STATUS"]);
        for (code, meaning) in Code::TABLE {
            roff.control("TP", [])
                .text([bold(code.as_i32().to_string())])
                .text([roman(*meaning)]);
        }
        roff.control("PP", []).text([roman(EXCEPTIONS)]);
    }
    roff.to_writer(&mut out)?;
    Ok(out)
}

fn write(path: &Path, bytes: &[u8]) -> Result<String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.display().to_string())
}
