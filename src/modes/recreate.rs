//! `recreate`: nothing is stored. A snapshot is metadata only; a restore removes what suites
//! create (`recreate_paths`) inside each node's running container, keeping everything else
//! (certificates in lib/ca), then restarts the containers so the nodes drop the state they
//! hold in memory. Files outside recreate_paths keep whatever the suites left in them.

use std::path::Path;

use anyhow::Result;

use super::{Containers, Mode, ModeContext, ModeKind, Restoration};
use crate::config::{Config, Kind, SECTION, Spec};
use crate::delta::RestoreStats;
use crate::docker::{Docker, State, Wait, concurrently, node_containers};
use crate::exit::{Code, code_of, fail, one_line};
use crate::manifest::Manifest;
use crate::store::Snapshot;
use crate::tools::{DOCKER, Tool};
use crate::tree::resolve;

const PATHS: Spec = Spec {
    key: "recreate_paths",
    section: SECTION,
    default: "lib/wallet/*.dwallet lib/global_db/* lib/network/*/*/* log/*.log",
    kind: Kind::Globs,
};

const RESTART: Spec = Spec {
    key: "recreate_restart",
    section: SECTION,
    default: "true",
    kind: Kind::Bool,
};

/// The recreate settings, in the order `stagesnap config` lists them.
pub const SETTINGS: &[Spec] = &[PATHS, RESTART];

/// The mode with its settings, typed once from the configuration.
pub struct Recreate {
    /// Globs relative to container_data_path, removed by the cleanup.
    paths: Vec<String>,
    /// Whether the cleanup restarts the containers.
    restart: bool,
}

/// Run by `sh -c` in the container as `SCRIPT sh DATA_PATH PATTERN…`. The patterns arrive as
/// arguments, never as script text, so no quoting can go wrong; with IFS empty an unquoted
/// `$pattern` is not split but still glob-expanded by the container's shell. Prints each
/// path it removed; a pattern matching nothing is left as is and skipped.
const CLEANUP: &str = r#"cd -- "$1" || exit 1
shift
IFS=
for pattern in "$@"; do
  for path in $pattern; do
    if [ -e "$path" ] || [ -L "$path" ]; then
      rm -rf -- "$path" || exit 1
      printf '%s\n' "$path"
    fi
  done
done"#;

impl Mode for Recreate {
    fn kind(&self) -> ModeKind {
        ModeKind::Recreate
    }

    fn tools(&self) -> &'static [Tool] {
        &[DOCKER]
    }

    fn writes_live_data(&self) -> bool {
        false
    }

    fn restarts_containers(&self) -> bool {
        self.restart
    }

    fn create(&self, _: &ModeContext, _: &Path) -> Result<serde_json::Value> {
        Ok(serde_json::Value::Null)
    }

    /// Its snapshots hold no data, so a pulled one would not be restored as pulled.
    fn takes_pulled(&self) -> Result<()> {
        Err(fail(
            Code::Usage,
            "recreate mode keeps no data in its snapshots, so it cannot take a pulled one; set mode = filesystem, squashfs or reflink to pull snapshots",
        ))
    }

    fn verify(&self, _: &ModeContext, _: &Snapshot) -> Result<()> {
        Ok(())
    }

    fn restore(
        &self,
        ctx: &ModeContext,
        _: &Snapshot,
        _: Option<&Manifest>,
    ) -> Result<Restoration> {
        let docker = Docker::new(ctx.tool(DOCKER).clone());
        ctx.changing()?;
        Ok(RestoreStats {
            entries_deleted: self.clean(&docker, ctx.cfg, ctx.containers)?,
            ..RestoreStats::default()
        }
        .into())
    }
}

impl Recreate {
    pub fn new(cfg: &Config) -> Recreate {
        Recreate {
            paths: cfg.value(&PATHS).list(),
            restart: cfg.value(&RESTART).flag(),
        }
    }

    /// The recreate cleanup in every node container, then (`recreate_restart`) their restart.
    /// Checks every container first, so a missing or stopped one fails before anything is removed.
    /// Also the `restore_fallback = recreate` path. Returns the number of entries removed.
    pub fn clean(&self, docker: &Docker, cfg: &Config, containers: &dyn Containers) -> Result<u64> {
        let nodes = node_containers(cfg)?;
        if nodes.is_empty() {
            return Err(fail(
                Code::Failure,
                format!(
                    "recreate found no node directories in {}; nothing was cleaned",
                    cfg.settings.cache_dir.join("data").display()
                ),
            ));
        }
        let names: Vec<String> = nodes.iter().map(|n| n.container.clone()).collect();
        let states = docker.states(&names)?;
        if let Some((node, state)) = nodes
            .iter()
            .zip(&states)
            .find(|(_, s)| **s != State::Running)
        {
            let why = match state {
                State::Missing => {
                    "does not exist (check container_name / containers, or start the environment)"
                        .to_string()
                }
                State::Paused => format!("is paused (docker unpause {})", node.container),
                other => format!(
                    "is {}, not running (docker start {})",
                    other.describe(),
                    node.container
                ),
            };
            return Err(fail(
                Code::Failure,
                format!(
                    "container {} (node {}) {why}; recreate cleans inside running containers, so nothing was cleaned. Restore again once it runs",
                    node.container, node.node
                ),
            ));
        }
        let data_path = &cfg.settings.container_data_path;
        let sources = docker.mount_sources(&names, data_path)?;
        for (node, source) in nodes.iter().zip(sources) {
            let live = cfg.settings.cache_dir.join(&node.node);
            match source {
                None => {
                    return Err(fail(
                        Code::Failure,
                        format!(
                            "container {} mounts nothing at {data_path}, so a cleanup there would not touch node {}; nothing was cleaned. Fix container_data_path or the container's volume",
                            node.container, node.node
                        ),
                    ));
                }
                // Only a warning: behind a remote daemon or docker-in-docker the paths differ.
                Some(source) if resolve(&source) != resolve(&live) => tracing::warn!(
                    name = %node.container,
                    source = %source.display(),
                    node = %live.display(),
                    "container_mount_mismatch: container {} mounts {} at {data_path}, not the node directory; check container_name / containers",
                    node.container,
                    source.display()
                ),
                Some(_) => {}
            }
        }

        let mut args = vec!["sh", "-c", CLEANUP, "sh", data_path];
        args.extend(self.paths.iter().map(String::as_str));
        let results = concurrently(&nodes, |node| {
            let out = docker.exec(
                &node.container,
                &args,
                &format!(
                    "removing recreate_paths under {data_path} in container {} (node {})",
                    node.container, node.node
                ),
            )?;
            let removed = String::from_utf8_lossy(&out.stdout).lines().count() as u64;
            tracing::info!(name = %node.container, node = %node.node, removed, "container_cleaned");
            Ok(removed)
        });
        let mut removed = 0;
        let mut failed = Vec::new();
        for (node, result) in nodes.iter().zip(results) {
            match result {
                Ok(n) => removed += n,
                Err(e) if code_of(&e) == Code::Interrupted => return Err(e),
                Err(e) => failed.push(format!("{}: {}", node.container, one_line(&e))),
            }
        }
        if !failed.is_empty() {
            return Err(fail(
                Code::Failure,
                format!(
                    "recreate cleanup failed in {} of {} containers ({}); the others were cleaned but not restarted. Fix the cause and restore again",
                    failed.len(),
                    nodes.len(),
                    failed.join("; ")
                ),
            ));
        }
        if self.restart {
            // Stopped in parallel, then started and waited for; started again on any way out.
            containers.restart(docker, names, Wait::from_config(cfg))?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_paths_are_the_four_globs() {
        let cfg = crate::config::load_text("", &[], &[], &super::super::settings()).unwrap();
        let recreate = Recreate::new(&cfg);
        assert_eq!(recreate.paths.len(), 4);
        assert!(recreate.restart);
    }
}
