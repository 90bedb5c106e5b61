//! Quiescing the node containers around a create or restore (`quiesce = auto | none | pause |
//! stop`), so a snapshot never captures a database mid-write and a restore is not overwritten
//! by the nodes. Containers that were not running are left as they were; the others are
//! unpaused or started again on every way out: success, failure, panic and Ctrl-C.

use std::fmt;
use std::time::Instant;

use anyhow::Result;

use crate::config::Config;
use crate::docker::{self, Docker, SocketAnswer, State, Wait, node_containers};
use crate::exit::{Code, code_of, fail, one_line};
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
    let installed;
    let (docker, running) = if how == "auto" {
        // Quiesces only what runs on a daemon that answers; without one nothing runs.
        let Some((names, states)) = probe(cfg, docker) else {
            tracing::info!("quiesce_auto: no docker daemon answers, so no node container runs");
            return f();
        };
        let running: Vec<String> = names
            .into_iter()
            .zip(states)
            .filter(|(_, s)| *s == State::Running)
            .map(|(n, _)| n)
            .collect();
        if running.is_empty() {
            tracing::info!("quiesce_auto: no node container runs");
            return f();
        }
        let docker = match docker {
            Some(d) => d,
            None => {
                installed = Docker::installed().ok_or_else(|| {
                    fail(
                        Code::MissingDependency,
                        format!(
                            "node containers {} run and quiesce = auto needs the docker CLI to quiesce them; install it (sudo apt install docker.io) or set quiesce = none",
                            running.join(" ")
                        ),
                    )
                })?;
                &installed
            }
        };
        (docker, running)
    } else {
        let docker = docker.expect("quiesce needs docker, connected before any work");
        let running = running_nodes(cfg, docker)?;
        (docker, running)
    };
    let clock = Instant::now();
    let held = match (how, op) {
        ("pause", Op::Restore) => {
            tracing::warn!(
                "quiesce_pause_restore: paused node processes keep the files they had open and go on with them after the restore; quiesce = auto or stop restarts them and is the safe choice"
            );
            Held::pause(docker, running)?
        }
        ("pause", _) | ("auto", Op::Create) => Held::pause(docker, running)?,
        (_, Op::Create) => Held::stop(docker, running, false, Wait::from_config(cfg))?,
        (_, Op::Restore) => Held::stop(
            docker,
            running,
            cfg.text("restore_stop") == "kill",
            Wait::from_config(cfg),
        )?,
    };
    let quiesced = clock.elapsed();
    let result = f();
    let worked = clock.elapsed() - quiesced;
    let ended = held.end();
    tracing::debug!(
        %op,
        quiesce = crate::output::seconds(quiesced),
        work = crate::output::seconds(worked),
        resume = crate::output::seconds(clock.elapsed() - quiesced - worked),
        "quiesce_phases"
    );
    match (result, ended) {
        (Ok(value), Ok(())) => Ok(value),
        // What was done stays done: the message says so.
        (Ok(_), Err(undo)) if code_of(&undo) != Code::Interrupted => Err(fail(
            code_of(&undo),
            format!(
                "{op} done, but the node containers did not all come back: {}",
                one_line(&undo)
            ),
        )),
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
    /// Stopped (then started and waited for so) rather than paused.
    stopped: Option<Wait>,
    ended: bool,
}

impl<'a> Held<'a> {
    pub fn pause(docker: &'a Docker, names: Vec<String>) -> Result<Held<'a>> {
        let held = Self::hold(docker, names, None);
        docker.pause(&held.names)?;
        Ok(held)
    }

    /// Stopped gracefully or, with `kill`, killed; [`Held::end`] starts them and waits as
    /// `wait` says.
    pub fn stop(
        docker: &'a Docker,
        names: Vec<String>,
        kill: bool,
        wait: Wait,
    ) -> Result<Held<'a>> {
        let held = Self::hold(docker, names, Some(wait));
        docker.stop(&held.names, kill)?;
        Ok(held)
    }

    /// Held before docker is asked, so a pause or stop that fails (or is interrupted) half
    /// way is undone as well.
    fn hold(docker: &'a Docker, names: Vec<String>, stopped: Option<Wait>) -> Held<'a> {
        Held {
            docker,
            names,
            stopped,
            ended: false,
        }
    }

    pub fn end(mut self) -> Result<()> {
        self.ended = true;
        self.release()
    }

    fn release(&self) -> Result<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        if let Some(wait) = self.stopped {
            return self.docker.start_running(&self.names, wait);
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
            let stopped = self.stopped.is_some();
            let verb = if stopped { "start" } else { "unpause" };
            tracing::error!(
                error = %one_line(&e),
                "containers_left_{}: run `docker {verb} {}`",
                if stopped { "stopped" } else { "paused" },
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

/// The node containers and their states, asked quietly: None when no docker answers (or
/// the containers cannot be named). Plain filesystem use must not depend on docker.
fn probe(cfg: &Config, docker: Option<&Docker>) -> Option<(Vec<String>, Vec<State>)> {
    let names: Vec<String> = node_containers(cfg)
        .ok()?
        .into_iter()
        .map(|n| n.container)
        .collect();
    let asked = match docker {
        Some(d) => d.states(&names),
        None => match docker::states_via_socket(&names) {
            SocketAnswer::States(states) => Ok(states),
            SocketAnswer::NoDaemon => return None,
            SocketAnswer::AskCli => Docker::installed()?.states(&names),
        },
    };
    match asked {
        Ok(states) => Some((names, states)),
        Err(e) => {
            tracing::debug!(error = %one_line(&e), "docker_unavailable");
            None
        }
    }
}

/// Without quiescing, one warning when node containers run during the operation.
fn warn_running(cfg: &Config, docker: Option<&Docker>, op: Op) {
    let Some((names, states)) = probe(cfg, docker) else {
        return;
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
            "containers_running: {} node containers run during {op} and quiesce = none; {risk}. Set quiesce = auto",
            running.len()
        );
    }
}
