//! Quiescing the node containers around a create or restore (`quiesce = none | pause | stop`),
//! so a snapshot never captures a database mid-write and a restore is not overwritten by
//! the nodes. Containers that were not running are left as they were; the others are
//! unpaused or started again on every way out: success, failure, panic and Ctrl-C.

use std::fmt;

use anyhow::Result;

use crate::config::Config;
use crate::docker::{self, Docker, SocketAnswer, State, node_containers};
use crate::exit::one_line;
use crate::modes::Mode;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Create,
    Restore,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Create => "create",
            Op::Restore => "restore",
        })
    }
}

/// Runs `f` (a mode's create or restore) with the node containers quiesced as configured.
/// `docker` is the client connected up front; it is None only when the configuration does
/// not need docker (then a running container is only worth a warning).
pub fn around<T>(
    cfg: &Config,
    docker: Option<&Docker>,
    mode: &dyn Mode,
    op: Op,
    f: impl FnOnce() -> Result<T>,
) -> Result<T> {
    let how = cfg.text("quiesce");
    if !mode.writes_live_data() {
        if how != "none" {
            tracing::info!(
                mode = mode.kind().name(),
                quiesce = how,
                "quiesce_skipped: {} works inside running containers",
                mode.kind().name()
            );
        }
        return f();
    }
    if how == "none" {
        // The probe behind the warning asks the docker daemon, which takes longer than a
        // restore with nothing to do: it runs beside the work.
        return std::thread::scope(|s| {
            s.spawn(|| warn_running(cfg, docker, op));
            f()
        });
    }
    let docker = docker.expect("quiesce needs docker, connected before any work");
    let running = running_nodes(cfg, docker)?;
    let held = if how == "pause" {
        if op == Op::Restore {
            tracing::warn!(
                "quiesce_pause_restore: paused node processes keep the files they had open and go on with them after the restore; quiesce = stop restarts them and is the safe choice"
            );
        }
        Held::pause(docker, running)?
    } else {
        Held::stop(docker, running)?
    };
    let result = f();
    match (result, held.end()) {
        (Ok(value), Ok(())) => Ok(value),
        (Ok(_), Err(undo)) => Err(undo),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(undo)) => {
            tracing::error!(error = %one_line(&undo), "quiesce_undo_failed");
            Err(e)
        }
    }
}

/// Containers this run paused or stopped. [`Held::end`] brings them back and reports
/// failures; dropped without it (an error or a panic on the way), it brings them back and logs.
pub struct Held<'a> {
    docker: &'a Docker,
    names: Vec<String>,
    stopped: bool,
    ended: bool,
}

impl<'a> Held<'a> {
    pub fn pause(docker: &'a Docker, names: Vec<String>) -> Result<Held<'a>> {
        Self::hold(docker, names, false)
    }

    pub fn stop(docker: &'a Docker, names: Vec<String>) -> Result<Held<'a>> {
        Self::hold(docker, names, true)
    }

    /// Held before docker is asked, so a pause or stop that fails (or is interrupted) half
    /// way is undone as well.
    fn hold(docker: &'a Docker, names: Vec<String>, stopped: bool) -> Result<Held<'a>> {
        let held = Held {
            docker,
            names,
            stopped,
            ended: false,
        };
        if stopped {
            docker.stop(&held.names)?;
        } else {
            docker.pause(&held.names)?;
        }
        Ok(held)
    }

    pub fn end(mut self) -> Result<()> {
        self.ended = true;
        self.release()
    }

    fn release(&self) -> Result<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        if self.stopped {
            return self.docker.start_running(&self.names);
        }
        // Only those still paused: unpausing a running container is an error.
        let states = self.docker.states(&self.names)?;
        let paused: Vec<String> = self
            .names
            .iter()
            .zip(states)
            .filter(|(_, s)| *s == State::Paused)
            .map(|(n, _)| n.clone())
            .collect();
        self.docker.unpause(&paused)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        if !self.ended
            && let Err(e) = self.release()
        {
            let verb = if self.stopped { "start" } else { "unpause" };
            tracing::error!(
                error = %one_line(&e),
                "containers_left_{}: run `docker {verb} {}`",
                if self.stopped { "stopped" } else { "paused" },
                self.names.join(" ")
            );
        }
    }
}

/// The node containers running now; the others are left as they are.
fn running_nodes(cfg: &Config, docker: &Docker) -> Result<Vec<String>> {
    let nodes = node_containers(cfg)?;
    let names: Vec<String> = nodes.iter().map(|n| n.container.clone()).collect();
    let states = docker.states(&names)?;
    let mut running = Vec::new();
    for (node, state) in nodes.iter().zip(states) {
        match state {
            State::Running => running.push(node.container.clone()),
            State::Missing => tracing::warn!(
                name = %node.container,
                node = %node.node,
                "container_missing: container {} of node {} does not exist, so nothing quiesces it; check container_name / containers",
                node.container,
                node.node
            ),
            other => {
                tracing::info!(name = %node.container, state = other.describe(), "container_left_as_is")
            }
        }
    }
    Ok(running)
}

/// Without quiescing, one warning when node containers run during the operation. Probes
/// docker quietly: plain filesystem use must not depend on it.
fn warn_running(cfg: &Config, docker: Option<&Docker>, op: Op) {
    let Ok(nodes) = node_containers(cfg) else {
        return;
    };
    let names: Vec<String> = nodes.iter().map(|n| n.container.clone()).collect();
    let asked = match docker {
        Some(d) => d.states(&names),
        None => match docker::states_via_socket(&names) {
            SocketAnswer::States(states) => Ok(states),
            SocketAnswer::NoDaemon => return,
            SocketAnswer::AskCli => match Docker::installed() {
                Some(d) => d.states(&names),
                None => return,
            },
        },
    };
    let states = match asked {
        Ok(states) => states,
        Err(e) => {
            tracing::debug!(error = %one_line(&e), "docker_unavailable");
            return;
        }
    };
    let running: Vec<&str> = names
        .iter()
        .zip(states)
        .filter(|(_, s)| *s == State::Running)
        .map(|(n, _)| n.as_str())
        .collect();
    if !running.is_empty() {
        let risk = match op {
            Op::Create => "the snapshot may capture files mid-write",
            Op::Restore => "the nodes keep their open files and may overwrite restored data",
        };
        tracing::warn!(
            containers = %running.join(" "),
            "containers_running: {} node containers run during {op} and quiesce = none; {risk}. Set quiesce = stop (or pause)",
            running.len()
        );
    }
}
