//! Quiescing the node containers around a create or restore (`quiesce = auto | none | pause |
//! stop`), so a snapshot never captures a database mid-write and a restore is not overwritten
//! by the nodes. Containers that were not running are left as they were; the others are
//! unpaused or started again on every way out: success, failure, panic and Ctrl-C.

use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::config::{Config, Quiesce, RestoreStop};
use crate::docker::{self, Docker, NodeContainer, SocketAnswer, State, Wait, node_containers};
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
    around_timed(cfg, docker, mode, op, f).map(|(value, _)| value)
}

/// [`around`], also saying how long the node containers were held: from the first pause (or
/// stop) asked to the last unpause (or start) done; None when none was quiesced.
pub fn around_timed<T>(
    cfg: &Config,
    docker: Option<&Docker>,
    mode: &dyn Mode,
    op: Op,
    f: impl FnOnce() -> Result<T>,
) -> Result<(T, Option<Duration>)> {
    let unheld = |f: Result<T>| f.map(|value| (value, None));
    let how = cfg.settings.quiesce;
    if !mode.writes_live_data() {
        if how != Quiesce::None {
            tracing::info!(
                mode = mode.kind().name(),
                quiesce = how.name(),
                "quiesce_skipped: {} works inside running containers",
                mode.kind().name()
            );
        }
        return unheld(f());
    }
    if how == Quiesce::None {
        // The probe behind the warning asks the docker daemon, which takes longer than a
        // restore with nothing to do: it runs beside the work.
        return std::thread::scope(|s| {
            s.spawn(|| warn_running(cfg, docker, op));
            unheld(f())
        });
    }
    let installed;
    let (docker, running) = if how == Quiesce::Auto {
        // Quiesces only what runs on a daemon that answers; without one nothing runs.
        let Some((nodes, states)) = probe(cfg, docker) else {
            tracing::debug!("quiesce_auto: no docker daemon answers, so no node container runs");
            return unheld(f());
        };
        let running: Vec<NodeContainer> = nodes
            .into_iter()
            .zip(states)
            .filter(|(_, s)| *s == State::Running)
            .map(|(n, _)| n)
            .collect();
        if running.is_empty() {
            tracing::debug!("quiesce_auto: no node container runs");
            return unheld(f());
        }
        let docker = match docker {
            Some(d) => d,
            None => {
                installed = Docker::installed().ok_or_else(|| {
                    fail(
                        Code::MissingDependency,
                        format!(
                            "node containers {} run and quiesce = auto needs the docker CLI to quiesce them; install it (sudo apt install docker.io) or set quiesce = none",
                            containers(&running).join(" ")
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
    let wait = Wait::from_config(cfg);
    let clock = Instant::now();
    let (result, held, quiesced, worked) = match (how, op) {
        (Quiesce::Pause, _) | (Quiesce::Auto, Op::Create) => {
            if op == Op::Restore {
                tracing::warn!(
                    "quiesce_pause_restore: paused node processes keep the files they had open and go on with them after the restore; quiesce = auto or stop restarts them and is the safe choice"
                );
            }
            let held = Held::pause(docker, containers(&running))?;
            let quiesced = clock.elapsed();
            (f(), held, quiesced, clock.elapsed())
        }
        (_, Op::Create) => {
            let held = Held::stop(docker, containers(&running), wait)?;
            let quiesced = clock.elapsed();
            (f(), held, quiesced, clock.elapsed())
        }
        (_, Op::Restore) => overlapped(
            docker,
            &running,
            cfg.settings.restore_stop == RestoreStop::Kill,
            wait,
            f,
        ),
    };
    let containers = held.names.len();
    let ended = held.end();
    let held_for = clock.elapsed();
    tracing::info!(
        %op,
        containers,
        seconds = crate::tree::seconds(held_for),
        "quiesce_held"
    );
    tracing::debug!(
        %op,
        quiesce = crate::tree::seconds(quiesced),
        work = crate::tree::seconds(worked - quiesced),
        resume = crate::tree::seconds(clock.elapsed() - worked),
        "quiesce_phases"
    );
    match (result, ended) {
        (Ok(value), Ok(())) => Ok((value, (containers > 0).then_some(held_for))),
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

fn containers(nodes: &[NodeContainer]) -> Vec<String> {
    nodes.iter().map(|n| n.container.clone()).collect()
}

/// A restore's stop of the running node containers, run beside the restore itself: the
/// restore begins with each node as soon as its container has stopped ([`next_stopped`]; no
/// process left, which may be before docker answers: see [`Docker::stop`]) while the others
/// still stop, and reads nothing else before every one has ([`all_stopped`]). No container
/// starts before the whole restore is done; then each starts as soon as docker has answered
/// its stop, while docker may still tear down the others. Returns the restore's result (or the
/// stop's error, the cause), the containers to start again (or wait for), how long until every
/// container had stopped and until the restore ended.
fn overlapped<'a, T>(
    docker: &'a Docker,
    running: &[NodeContainer],
    kill: bool,
    wait: Wait,
    f: impl FnOnce() -> Result<T>,
) -> (Result<T>, Held<'a>, Duration, Duration) {
    let mut held = Held::hold(docker, containers(running), Some(wait));
    let stopping = Arc::new(Stopping {
        progress: Mutex::new(Progress {
            stopped: Vec::new(),
            left: running.len(),
            failed: false,
            all_stopped: None,
            answered: Vec::new(),
            over: false,
        }),
        changed: Condvar::new(),
    });
    *lock(&STOPPING) = Some(stopping.clone());
    let started = Instant::now();
    let (stopped, result, worked, early) = std::thread::scope(|s| {
        let stopper = s.spawn(|| {
            let _woken = Ended(&stopping);
            let on_stopped = |container: &str| {
                let node = running.iter().find(|n| n.container == container);
                let mut p = lock(&stopping.progress);
                p.stopped.extend(node.map(|n| n.node.clone()));
                p.left -= 1;
                if p.left == 0 {
                    p.all_stopped = Some(started.elapsed());
                }
                stopping.changed.notify_all();
            };
            let on_answered = |container: &str| {
                lock(&stopping.progress)
                    .answered
                    .push(container.to_string());
                stopping.changed.notify_all();
            };
            docker.stop(&held.names, kill, &on_stopped, &on_answered)
        });
        let result = f();
        let worked = started.elapsed();
        let early = start_answered(docker, &stopping);
        let stopped = stopper.join().expect("the stop does not panic");
        (stopped, result, worked, early)
    });
    *lock(&STOPPING) = None;
    held.started = early;
    let quiesced = lock(&stopping.progress).all_stopped.unwrap_or(worked);
    (stopped.and(result), held, quiesced, worked)
}

/// Starts each container as soon as docker has answered its stop, until the stop is over: the
/// containers started, with how their start went.
fn start_answered(docker: &Docker, stopping: &Stopping) -> Vec<(String, Result<()>)> {
    std::thread::scope(|s| {
        let mut starts = Vec::new();
        loop {
            let mut p = lock(&stopping.progress);
            while p.answered.is_empty() && !p.over {
                p = stopping
                    .changed
                    .wait(p)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let answered = std::mem::take(&mut p.answered);
            let over = p.over;
            drop(p);
            for name in answered {
                let start = s.spawn({
                    let name = name.clone();
                    move || docker.start(&name)
                });
                starts.push((name, start));
            }
            if over {
                break;
            }
        }
        starts
            .into_iter()
            .map(|(name, start)| (name, start.join().expect("a start does not panic")))
            .collect()
    })
}

/// The containers a quiesced restore is stopping, while it runs (one restore at a time).
static STOPPING: Mutex<Option<Arc<Stopping>>> = Mutex::new(None);

struct Stopping {
    progress: Mutex<Progress>,
    changed: Condvar,
}

struct Progress {
    /// Node directories (`data/node1`) whose containers stopped, not yet handed out.
    stopped: Vec<String>,
    /// Containers still stopping.
    left: usize,
    failed: bool,
    /// How long until every container had stopped, from the stop's start.
    all_stopped: Option<Duration>,
    /// Containers docker has answered the stop of, not yet started again.
    answered: Vec<String>,
    /// Docker has answered every stop, or the stop failed.
    over: bool,
}

/// Ends a stop for those waiting on it, however it ends (a panic too): with containers left
/// stopping, as failed.
struct Ended<'a>(&'a Stopping);

impl Drop for Ended<'_> {
    fn drop(&mut self) {
        let mut p = lock(&self.0.progress);
        if p.left > 0 {
            p.failed = true;
        }
        p.over = true;
        self.0.changed.notify_all();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether node containers are being stopped for a restore right now: only then is there
/// anything for [`next_stopped`] to hand out.
pub fn stopping() -> bool {
    lock(&STOPPING).is_some()
}

/// For a restore: a node directory whose quiesced container has stopped and that no caller
/// had yet, waiting for one; None once every container has stopped and every such node was
/// handed out (at once without quiescing). It may be restored at once: no node process holds
/// it any more.
pub fn next_stopped() -> Result<Option<String>> {
    wait_stopped(|p| (!p.stopped.is_empty()).then(|| p.stopped.remove(0)))
}

/// For a restore: waits until every quiesced container has stopped. Nothing of the live data
/// may be read or written before: a running node would change it behind the restore's back.
pub fn all_stopped() -> Result<()> {
    wait_stopped(|_| None::<()>).map(drop)
}

/// Waits until `take` has something, or no container is left stopping (None).
fn wait_stopped<T>(take: impl Fn(&mut Progress) -> Option<T>) -> Result<Option<T>> {
    let Some(stopping) = lock(&STOPPING).clone() else {
        return Ok(None);
    };
    let mut p = lock(&stopping.progress);
    loop {
        if p.failed {
            // The stop's own error is what the restore reports (see `overlapped`).
            return Err(fail(
                Code::Failure,
                "the node containers could not all be stopped",
            ));
        }
        if let Some(taken) = take(&mut p) {
            return Ok(Some(taken));
        }
        if p.left == 0 {
            return Ok(None);
        }
        p = stopping
            .changed
            .wait(p)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

/// Containers this run paused or stopped. [`Held::end`] brings them back and reports
/// failures; dropped without it (an error or a panic on the way), it brings them back and logs.
pub struct Held<'a> {
    docker: &'a Docker,
    names: Vec<String>,
    /// Stopped (then started and waited for so) rather than paused.
    stopped: Option<Wait>,
    /// Those of `names` started again already, with how their start went: waited for alike.
    started: Vec<(String, Result<()>)>,
    ended: bool,
}

impl<'a> Held<'a> {
    pub fn pause(docker: &'a Docker, names: Vec<String>) -> Result<Held<'a>> {
        let held = Self::hold(docker, names, None);
        docker.pause(&held.names)?;
        Ok(held)
    }

    /// Stopped gracefully (`docker stop`); [`Held::end`] starts them and waits as `wait` says.
    pub fn stop(docker: &'a Docker, names: Vec<String>, wait: Wait) -> Result<Held<'a>> {
        let held = Self::hold(docker, names, Some(wait));
        docker.stop(&held.names, false, &|_| {}, &|_| {})?;
        Ok(held)
    }

    /// Held before docker is asked, so a pause or stop that fails (or is interrupted) half
    /// way is undone as well.
    fn hold(docker: &'a Docker, names: Vec<String>, stopped: Option<Wait>) -> Held<'a> {
        Held {
            docker,
            names,
            stopped,
            started: Vec::new(),
            ended: false,
        }
    }

    pub fn end(mut self) -> Result<()> {
        self.ended = true;
        self.release()
    }

    fn release(&mut self) -> Result<()> {
        if self.names.is_empty() {
            return Ok(());
        }
        if let Some(wait) = self.stopped {
            let started = std::mem::take(&mut self.started);
            let left: Vec<String> = (self.names.iter())
                .filter(|n| !started.iter().any(|(s, _)| s == *n))
                .cloned()
                .collect();
            return self.docker.start_running(&left, started, wait);
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
fn running_nodes(cfg: &Config, docker: &Docker) -> Result<Vec<NodeContainer>> {
    let nodes = node_containers(cfg)?;
    let names: Vec<String> = nodes.iter().map(|n| n.container.clone()).collect();
    let states = docker.states(&names)?;
    let mut running = Vec::new();
    for (node, state) in nodes.iter().zip(states) {
        match state {
            State::Running => running.push(node.clone()),
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
fn probe(cfg: &Config, docker: Option<&Docker>) -> Option<(Vec<NodeContainer>, Vec<State>)> {
    let nodes = node_containers(cfg).ok()?;
    let names = containers(&nodes);
    let asked = match docker {
        Some(d) => d.states(&names),
        None => match docker::states_via_socket(&names) {
            SocketAnswer::States(states) => Ok(states),
            SocketAnswer::NoDaemon => return None,
            SocketAnswer::AskCli => Docker::installed()?.states(&names),
        },
    };
    match asked {
        Ok(states) => Some((nodes, states)),
        Err(e) => {
            tracing::debug!(error = %one_line(&e), "docker_unavailable");
            None
        }
    }
}

/// Without quiescing, one warning when node containers run during the operation.
fn warn_running(cfg: &Config, docker: Option<&Docker>, op: Op) {
    let Some((nodes, states)) = probe(cfg, docker) else {
        return;
    };
    let running: Vec<&str> = nodes
        .iter()
        .zip(states)
        .filter(|(_, s)| *s == State::Running)
        .map(|(n, _)| n.container.as_str())
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
