//! `stagesnap doctor`: can the configured mode run here, and if not, why not.

use anyhow::Result;
use serde::Serialize;

use super::load_config;
use crate::choices::Choice;
use crate::cli::GlobalArgs;
use crate::config::{Config, Isolation, RestoreFallback};
use crate::docker::{self, Docker, State};
use crate::exit::{Code, code_of, one_line};
use crate::modes::{Mode, ModeContext, Status};
use crate::output::{Report, table};
use crate::store::Store;
use crate::sys::dir_writable;
use crate::tools::DOCKER;
use crate::tree::{Live, first_unwritable, free_bytes, human_bytes};

#[derive(Debug, Serialize)]
struct Check {
    check: String,
    status: Status,
    detail: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    hint: String,
}

#[derive(Default)]
struct Checks {
    list: Vec<Check>,
    missing_tool: bool,
}

impl Checks {
    fn add(
        &mut self,
        check: &str,
        status: Status,
        detail: impl Into<String>,
        hint: impl Into<String>,
    ) {
        self.list.push(Check {
            check: check.to_string(),
            status,
            detail: detail.into(),
            hint: hint.into(),
        });
    }

    fn code(&self) -> Code {
        if self.missing_tool {
            Code::MissingDependency
        } else if self.list.iter().any(|c| c.status == Status::Fail) {
            Code::Failure
        } else {
            Code::Ok
        }
    }
}

#[derive(Serialize)]
struct Doctor {
    ok: bool,
    checks: Vec<Check>,
}

pub fn run(g: &GlobalArgs) -> Result<Report> {
    let mut checks = Checks::default();
    match load_config(g) {
        Ok(cfg) => {
            checks.add(
                "config",
                Status::Ok,
                format!("{} ({})", cfg.file.display(), cfg.file_source),
                "",
            );
            check_environment(&cfg, &mut checks);
        }
        Err(e) => checks.add(
            "config",
            Status::Fail,
            one_line(&e),
            "fix the config file, or point --config at the right one",
        ),
    }
    let code = checks.code();
    let rows: Vec<Vec<String>> = checks
        .list
        .iter()
        .map(|c| {
            let status = format!("{:?}", c.status).to_lowercase();
            let detail = if c.hint.is_empty() {
                c.detail.clone()
            } else {
                format!("{} (hint: {})", c.detail, c.hint)
            };
            vec![status, c.check.clone(), detail]
        })
        .collect();
    let text = table(&["STATUS", "CHECK", "DETAIL"], &rows);
    let doc = Doctor {
        ok: code == Code::Ok,
        checks: checks.list,
    };
    Ok(Report::new("doctor", &doc, text).with_code(code))
}

fn check_environment(cfg: &Config, checks: &mut Checks) {
    let Isolation::Mode(kind) = cfg.settings.mode else {
        checks.add("mode", Status::Ok, cfg.settings.mode.name(), "");
        return;
    };
    checks.add("mode", Status::Ok, kind.name(), "");
    let mode = crate::modes::implementation(kind, cfg);
    let mut found = Vec::new();
    for tool in mode.tools() {
        match tool
            .require(kind.name())
            .and_then(|f| f.describe().map(|detail| (f, detail)))
        {
            Ok((f, detail)) => {
                checks.add(tool.program, Status::Ok, detail, "");
                found.push(f);
            }
            Err(e) => {
                checks.missing_tool |= code_of(&e) == Code::MissingDependency;
                let msg = one_line(&e);
                let (detail, hint) = msg.split_once('\n').unwrap_or((&msg, ""));
                checks.add(tool.program, Status::Fail, detail, hint);
            }
        }
    }
    check_docker(cfg, mode.as_ref(), checks);
    let live = cfg.live();
    if found.len() == mode.tools().len() {
        let ctx = ModeContext::new(cfg, &live, &found, &crate::ops::Quiesced);
        for f in mode.doctor(&ctx) {
            checks.add(&f.check, f.status, f.detail, f.hint);
        }
    }
    if live.cache_dir.is_dir() {
        checks.add(
            "cache_dir",
            Status::Ok,
            live.cache_dir.display().to_string(),
            "",
        );
    } else {
        checks.add(
            "cache_dir",
            Status::Fail,
            format!("{} does not exist", live.cache_dir.display()),
            "start the environment, or fix [paths] cache_dir",
        );
    }
    for rel in &live.include {
        let path = live.path(rel);
        let name = format!("include {}", rel.display());
        if !path.exists() {
            checks.add(
                &name,
                Status::Fail,
                format!("{} does not exist", path.display()),
                "start the environment, or fix include",
            );
            continue;
        }
        let one = Live {
            cache_dir: live.cache_dir.clone(),
            include: vec![rel.clone()],
        };
        let nodes = one.nodes();
        checks.add(
            &name,
            Status::Ok,
            format!(
                "{}; nodes: {}",
                path.display(),
                if nodes.is_empty() {
                    "none".into()
                } else {
                    nodes.join(" ")
                }
            ),
            "",
        );
        match first_unwritable(&path) {
            None => checks.add(&format!("writable {}", rel.display()), Status::Ok, "this user can rewrite every entry", ""),
            Some(p) => checks.add(
                &format!("writable {}", rel.display()),
                Status::Fail,
                format!("{} is not writable by this user", p.display()),
                "container data is usually root-owned: run stagesnap as root or as the data's owner",
            ),
        }
    }
    let dir: &std::path::Path = &cfg.settings.snapshots_dir;
    match live.check_store_outside(dir) {
        Err(e) => checks.add(
            "snapshots_dir",
            Status::Fail,
            one_line(&e),
            "set snapshots_dir outside the included paths",
        ),
        Ok(()) => {
            let mut existing = dir;
            while !existing.exists() {
                existing = existing.parent().unwrap_or(std::path::Path::new("/"));
            }
            if dir_writable(existing) {
                let note = if existing == dir {
                    String::new()
                } else {
                    " (will be created)".into()
                };
                checks.add(
                    "snapshots_dir",
                    Status::Ok,
                    format!("{}{note}", dir.display()),
                    "",
                );
            } else {
                checks.add(
                    "snapshots_dir",
                    Status::Fail,
                    format!("{} is not writable", existing.display()),
                    "fix its permissions or choose another snapshots_dir",
                );
            }
        }
    }
    let (snapshots, unreadable) = Store::new(&cfg.settings.snapshots_dir)
        .list()
        .unwrap_or_default();
    for u in unreadable {
        checks.add(
            &format!("snapshot {}", u.name),
            Status::Warn,
            u.problem,
            format!("stagesnap delete {}", u.name),
        );
    }
    let needed = match snapshots.first() {
        Some(newest) => newest.meta.stored_bytes,
        None => live.totals().map(|t| t.allocated).unwrap_or(0),
    };
    match free_bytes(dir) {
        Ok(free) if free >= needed => checks.add(
            "free space",
            Status::Ok,
            format!(
                "{} free, a snapshot needs about {}",
                human_bytes(free),
                human_bytes(needed)
            ),
            "",
        ),
        Ok(free) => checks.add(
            "free space",
            Status::Warn,
            format!(
                "{} free, a snapshot needs about {}",
                human_bytes(free),
                human_bytes(needed)
            ),
            "free space or move snapshots_dir",
        ),
        Err(e) => checks.add("free space", Status::Warn, one_line(&e), ""),
    }
}

/// Docker CLI and daemon versions and each node container. Problems fail the check when the
/// configuration needs docker, and are warnings otherwise.
fn check_docker(cfg: &Config, mode: &dyn Mode, checks: &mut Checks) {
    let needed = crate::ops::docker_needed_by(cfg, mode, true);
    let bad = if needed.is_some() {
        Status::Fail
    } else {
        Status::Warn
    };
    let found = match DOCKER
        .require_for(needed.as_deref().unwrap_or("doctor"))
        .and_then(|f| f.describe().map(|detail| (f, detail)))
    {
        Ok((found, detail)) => {
            // A mode that drives docker had its CLI reported with the mode's tools.
            if !mode.tools().contains(&DOCKER) {
                let why = needed
                    .as_deref()
                    .unwrap_or("not needed by this configuration");
                checks.add("docker", Status::Ok, format!("{detail} ({why})"), "");
            }
            found
        }
        Err(e) => {
            if needed.is_some() && !mode.tools().contains(&DOCKER) {
                checks.missing_tool = true;
                let msg = one_line(&e);
                let (detail, hint) = msg.split_once('\n').unwrap_or((&msg, ""));
                checks.add("docker", Status::Fail, detail, hint);
            }
            return;
        }
    };
    let docker = Docker::new(found);
    match docker.server_version() {
        Ok(version) => checks.add(
            "docker daemon",
            Status::Ok,
            format!("{version} at {}", docker::socket()),
            "",
        ),
        Err(e) => {
            checks.missing_tool |= needed.is_some();
            checks.add("docker daemon", bad, one_line(&e), "");
            return;
        }
    }
    let nodes = match docker::node_containers(cfg) {
        Ok(nodes) => nodes,
        Err(e) => {
            checks.add(
                "containers",
                bad,
                one_line(&e),
                "fix container_name or containers",
            );
            return;
        }
    };
    let names: Vec<String> = nodes.iter().map(|n| n.container.clone()).collect();
    let states = match docker.states(&names) {
        Ok(states) => states,
        Err(e) => {
            checks.add("containers", bad, one_line(&e), "");
            return;
        }
    };
    // The recreate cleanup, as mode or as fallback, runs inside the containers; quiescing
    // only passes over a container that is missing or mounts elsewhere.
    let need_running = mode.tools().contains(&DOCKER)
        || cfg.settings.restore_fallback == RestoreFallback::Recreate;
    let bad_container = if need_running {
        Status::Fail
    } else {
        Status::Warn
    };
    let data_path = &cfg.settings.container_data_path;
    let existing: Vec<String> = names
        .iter()
        .zip(&states)
        .filter(|(_, s)| **s != State::Missing)
        .map(|(n, _)| n.clone())
        .collect();
    let mut mounts = match docker.mount_sources(&existing, data_path) {
        Ok(sources) => sources.into_iter().map(Ok).collect(),
        Err(e) => vec![Err(one_line(&e)); existing.len()],
    }
    .into_iter();
    for (node, state) in nodes.iter().zip(states) {
        let check = format!("container {}", node.container);
        let status = match &state {
            State::Running => Status::Ok,
            State::Missing => bad_container,
            _ if need_running => bad_container,
            _ => Status::Ok,
        };
        let mount = match &state {
            State::Missing => None,
            _ => mounts.next(),
        };
        let live = cfg.settings.cache_dir.join(&node.node);
        let (status, mounts) = match mount {
            None => (status, String::new()),
            Some(Ok(Some(src))) if crate::tree::resolve(&src) == crate::tree::resolve(&live) => {
                (status, format!("; mounts it at {data_path}"))
            }
            Some(Ok(Some(src))) => (
                Status::Warn.max(status),
                format!(
                    "; mounts {} at {data_path}, not the node directory",
                    src.display()
                ),
            ),
            Some(Ok(None)) => (
                bad_container.max(status),
                format!("; mounts nothing at {data_path} (container_data_path)"),
            ),
            Some(Err(e)) => (Status::Warn.max(status), format!("; {e}")),
        };
        let hint = match (&state, status) {
            (_, Status::Ok) => "",
            (State::Missing, _) => "start the environment, or fix container_name / containers",
            (State::Running, _) => "fix container_data_path, container_name or containers",
            _ => "start the environment: recreate needs running containers",
        };
        checks.add(
            &check,
            status,
            format!("node {}: {}{mounts}", node.node, state.describe()),
            hint,
        );
    }
}
