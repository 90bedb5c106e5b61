//! A small docker client on top of the docker CLI (run through [`crate::tools`]): the daemon
//! check, container states and mounts, pause/unpause, stop/kill/start, exec; and the mapping
//! from node directories to the containers that mount them. Pause, stop, kill, start and the
//! wait for running again go straight to the daemon's unix socket when the CLI would use one:
//! one HTTP request costs about a millisecond, one CLI process per container ~40 ms of CPU.
//! A stop also watches the container's cgroup ([`crate::cgroup`]) when the daemon is local,
//! to tell when the data is free long before docker answers.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::io::Errno;
use serde::Deserialize;

use crate::cgroup::Cgroup;
use crate::config::Config;
use crate::exit::{Code, code_of, fail, one_line};
use crate::tools::{DOCKER, Found};

/// A node directory (`data/node1`) and the container that mounts it.
#[derive(Debug, Clone)]
pub struct NodeContainer {
    pub node: String,
    pub container: String,
}

/// Every node directory under `cache_dir/data` with its container: from `containers` when
/// set (then every node must be listed), else `container_name` rendered per node.
pub fn node_containers(cfg: &Config) -> Result<Vec<NodeContainer>> {
    let mut data = cfg.live();
    data.include = vec![PathBuf::from("data")];
    let listed: Vec<(&str, &str)> = cfg
        .settings
        .containers
        .iter()
        .map(|item| item.split_once(':').expect("validated as node:container"))
        .collect();
    data.nodes()
        .into_iter()
        .map(|node| {
            let dir_name = node.rsplit('/').next().unwrap_or(&node);
            let container = if listed.is_empty() {
                crate::config::render(&cfg.settings.container_name, dir_name)
                    .map_err(|why| fail(Code::Usage, format!("container_name: {why}")))?
            } else {
                let (_, name) = listed.iter().find(|(n, _)| *n == dir_name).ok_or_else(|| {
                    fail(
                        Code::Usage,
                        format!(
                            "node directory {node} is not in containers = {}; add {dir_name}:CONTAINER",
                            cfg.settings.containers.join(" ")
                        ),
                    )
                })?;
                name.to_string()
            };
            Ok(NodeContainer { node, container })
        })
        .collect()
}

/// A container's state as `docker ps` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Missing,
    Running,
    Paused,
    /// exited, created, restarting, dead, removing
    Other(String),
}

impl State {
    pub fn describe(&self) -> &str {
        match self {
            State::Missing => "does not exist",
            State::Running => "running",
            State::Paused => "paused",
            State::Other(s) => s,
        }
    }
}

#[derive(Debug, Deserialize)]
struct Mount {
    #[serde(rename = "Source")]
    source: PathBuf,
    #[serde(rename = "Destination")]
    destination: String,
}

/// The docker CLI, once located; [`Docker::connect`] also proves the daemon answers.
pub struct Docker {
    cli: Found,
    /// The daemon's unix socket, when the CLI would talk to one.
    api: Option<PathBuf>,
}

/// What a restore waits for once it has started the node containers again.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Also until each container that defines a HEALTHCHECK reports healthy.
    pub healthy: bool,
    pub timeout: Duration,
}

impl Wait {
    /// `wait_healthy` and `start_timeout`.
    pub fn from_config(cfg: &Config) -> Wait {
        Wait {
            healthy: cfg.settings.wait_healthy,
            timeout: Duration::from_secs(cfg.settings.start_timeout.into()),
        }
    }
}

impl Docker {
    pub fn new(cli: Found) -> Docker {
        Docker {
            cli,
            api: unix_socket(),
        }
    }

    /// Locates the CLI (exit 3 with the install hint) and checks the daemon answers (exit 3
    /// naming the socket). `needed_by` says why, e.g. `quiesce = pause is set`.
    pub fn connect(needed_by: &str) -> Result<Docker> {
        let docker = Docker::new(DOCKER.require_for(needed_by)?);
        docker.server_version()?;
        Ok(docker)
    }

    /// The CLI if it is installed, without a word and without asking the daemon: for
    /// warnings that docker is not needed for.
    pub fn installed() -> Option<Docker> {
        DOCKER.require_for("probe").ok().map(Docker::new)
    }

    /// The daemon's version; exit 3 naming the socket when it does not answer.
    pub fn server_version(&self) -> Result<String> {
        let out = self
            .cli
            .run(
                ["version", "--format", "{{.Server.Version}}"],
                "asking the docker daemon for its version",
            )
            .map_err(|e| {
                if code_of(&e) == Code::Interrupted {
                    return e;
                }
                fail(
                    Code::MissingDependency,
                    format!(
                        "cannot reach the docker daemon at {}: {}; the docker daemon must be running and this user allowed to use its socket: start it (sudo systemctl start docker, or sudo dockerd) or fix DOCKER_HOST",
                        socket(),
                        one_line(&e).trim_end_matches(['.', '?'])
                    ),
                )
            })?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The state of each named container, in order (one listing for all). Finishes even
    /// after Ctrl-C, as bringing containers back relies on it.
    pub fn states(&self, names: &[String]) -> Result<Vec<State>> {
        Ok(states_among(&self.listing()?, names))
    }

    /// Every container, as `docker ps --all` lists it.
    fn listing(&self) -> Result<Vec<Listed>> {
        if let Some(socket) = &self.api {
            return list_via(socket, REQUEST_TIMEOUT).map_err(|e| {
                fail(
                    Code::Failure,
                    format!("cannot list the containers at {}: {e}", socket.display()),
                )
            });
        }
        let out = self.cli.run_to_end(
            [
                "ps",
                "--all",
                "--no-trunc",
                "--format",
                "{{.Names}}\t{{.State}}\t{{.Status}}",
            ],
            "listing containers",
        )?;
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let mut fields = l.splitn(3, '\t');
                Some(Listed {
                    // A container linked under several names lists them comma-separated.
                    names: fields.next()?.split(',').map(str::to_string).collect(),
                    state: fields.next()?.to_string(),
                    status: fields.next().unwrap_or_default().to_string(),
                })
            })
            .collect())
    }

    /// For each (existing) container, the host directory it mounts at `destination`, or None
    /// when nothing is mounted there; one `docker inspect` for all.
    pub fn mount_sources(
        &self,
        containers: &[String],
        destination: &str,
    ) -> Result<Vec<Option<PathBuf>>> {
        let mut args = vec!["container", "inspect", "--format", "{{json .Mounts}}"];
        args.extend(containers.iter().map(String::as_str));
        let out = self
            .cli
            .run(&args, "inspecting the node containers' mounts")?;
        let wanted = destination.trim_end_matches('/');
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .zip(containers)
            .map(|(line, container)| {
                let mounts: Vec<Mount> = serde_json::from_str(line)
                    .with_context(|| format!("unexpected mounts of container {container}"))?;
                Ok(mounts
                    .into_iter()
                    .find(|m| m.destination.trim_end_matches('/') == wanted)
                    .map(|m| m.source))
            })
            .collect()
    }

    pub fn pause(&self, names: &[String]) -> Result<()> {
        joined(self.each("pause", "container_paused", names, false))
    }

    /// Uninterruptible: it undoes a pause.
    pub fn unpause(&self, names: &[String]) -> Result<()> {
        joined(self.each("unpause", "container_unpaused", names, true))
    }

    /// Stops the containers: gracefully (`docker stop`: SIGTERM, SIGKILL after docker's
    /// grace period) or, with `kill`, at once (SIGKILL). Either way docker answers once the
    /// container has stopped, so its processes have let go of the data: `on_stopped` is told
    /// of each then.
    ///
    /// Where the container's cgroup is found on this host, `on_stopped` is told as soon as no
    /// process is left in it, before docker answers: the daemon still tears down the
    /// container's network and mounts then (~0.4 s for seven at once), and the data may be
    /// written meanwhile. `on_answered` is told once docker has answered, as it does only once
    /// it considers the container stopped: a start from then on is never the no-op a start of
    /// a running container is.
    pub fn stop(
        &self,
        names: &[String],
        kill: bool,
        on_stopped: &(dyn Fn(&str) + Sync),
        on_answered: &(dyn Fn(&str) + Sync),
    ) -> Result<()> {
        let verb = if kill { "kill" } else { "stop" };
        joined(concurrently(names, |name| {
            let cgroup = self.cgroup(name);
            tracing::debug!(
                name = %name,
                watch = if cgroup.is_some() { "cgroup" } else { "daemon" },
                cgroup = %cgroup.as_ref().map_or(Path::new("-"), Cgroup::dir).display(),
                "stop_watched: {name} counts as stopped once {}",
                if cgroup.is_some() { "its cgroup is empty" } else { "docker says so" }
            );
            let started = Instant::now();
            let answered = AtomicBool::new(false);
            let (acted, emptied) = std::thread::scope(|s| {
                let request = s.spawn(|| {
                    let acted = self.act(verb, name, false);
                    answered.store(true, Ordering::Release);
                    acted
                });
                let emptied = cgroup.is_some_and(|cgroup| {
                    while !answered.load(Ordering::Acquire) {
                        // An unreadable group proves nothing: docker's answer decides then.
                        if !cgroup.populated().unwrap_or(true) {
                            let seconds = format!("{:.3}", started.elapsed().as_secs_f64());
                            tracing::debug!(name = %name, %seconds, "container_processes_gone");
                            on_stopped(name);
                            return true;
                        }
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    false
                });
                (
                    request.join().expect("a docker request does not panic"),
                    emptied,
                )
            });
            acted?;
            done(name, verb, "container_stopped", started);
            if !emptied {
                on_stopped(name);
            }
            on_answered(name);
            Ok(())
        }))
    }

    /// The cgroup of a running container, when the daemon is local (its unix socket) and the
    /// container's cgroup is found here; None otherwise.
    fn cgroup(&self, name: &str) -> Option<Cgroup> {
        #[derive(Deserialize)]
        struct Inspected {
            #[serde(rename = "Id")]
            id: String,
            #[serde(rename = "State")]
            state: Running,
        }
        #[derive(Deserialize)]
        struct Running {
            #[serde(rename = "Pid")]
            pid: u32,
        }
        let socket = self.api.as_ref()?;
        let (status, body) = http(
            socket,
            "GET",
            &format!("/containers/{name}/json"),
            REQUEST_TIMEOUT,
        )
        .ok()?;
        let inspected: Inspected = serde_json::from_slice(&body).ok()?;
        if status != 200 || inspected.state.pid == 0 || inspected.id.len() < 12 {
            return None;
        }
        Cgroup::of(inspected.state.pid, &inspected.id)
    }

    /// `docker start name`; uninterruptible, as it undoes a stop.
    pub fn start(&self, name: &str) -> Result<()> {
        let started = Instant::now();
        self.act("start", name, true)?;
        done(name, "start", "container_started", started);
        Ok(())
    }

    /// Starts the containers all at once, then waits until each runs (those the caller has
    /// started already too, given with how their start went) and, with `wait.healthy`, until
    /// each that has a HEALTHCHECK is healthy; uninterruptible, as it undoes a stop. One that
    /// cannot start, stops again or is not up within `wait.timeout` fails it (exit 1, naming
    /// it), once the others run.
    pub fn start_running(
        &self,
        names: &[String],
        started_already: Vec<(String, Result<()>)>,
        wait: Wait,
    ) -> Result<()> {
        let started = Instant::now();
        let mut failed = Vec::new();
        let mut pending = Vec::new();
        let starts = concurrently(names, |name| self.start(name));
        for (name, result) in names.iter().cloned().zip(starts).chain(started_already) {
            match result {
                Ok(()) => pending.push(name),
                Err(e) => failed.push(format!(
                    "container {name} did not start again ({})",
                    one_line(&e)
                )),
            }
        }
        while !pending.is_empty() {
            let listing = self.listing()?;
            let late = started.elapsed() >= wait.timeout;
            let mut waiting = Vec::new();
            for name in pending {
                let Some(now) = listing.iter().find(|c| c.names.contains(&name)) else {
                    failed.push(format!("container {name} no longer exists"));
                    continue;
                };
                let health = now.health();
                let up = now.state == "running"
                    && (!wait.healthy || matches!(health, None | Some("healthy")));
                if up {
                    let seconds = format!("{:.3}", started.elapsed().as_secs_f64());
                    tracing::info!(name = %name, health = health.unwrap_or("none"), %seconds, "container_running");
                } else if matches!(now.state.as_str(), "exited" | "dead") {
                    failed.push(format!(
                        "container {name} stopped again right after docker start ({}); see `docker logs {name}`",
                        now.status
                    ));
                } else if late {
                    failed.push(format!(
                        "container {name} is not {} {} s after docker start ({}); see `docker logs {name}`, or raise start_timeout",
                        if wait.healthy { "running and healthy" } else { "running" },
                        wait.timeout.as_secs(),
                        now.status
                    ));
                } else {
                    waiting.push(name);
                }
            }
            pending = waiting;
            if !pending.is_empty() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        if failed.is_empty() {
            return Ok(());
        }
        Err(fail(
            Code::Failure,
            format!(
                "{}; the other node containers run. Fix it, then `docker start` it",
                failed.join("; ")
            ),
        ))
    }

    /// `docker exec container args…`, without a shell on the host: arguments reach the
    /// container's program exactly as given.
    pub fn exec(&self, container: &str, args: &[&str], what: &str) -> Result<Output> {
        self.cli.run(["exec", container].iter().chain(args), what)
    }

    /// `docker VERB name` for every container at once (the CLI itself would start or pause
    /// several one after another), logging `event` for each; `to_end` ignores Ctrl-C.
    fn each(&self, verb: &str, event: &str, names: &[String], to_end: bool) -> Vec<Result<()>> {
        concurrently(names, |name| {
            let started = Instant::now();
            self.act(verb, name, to_end)?;
            done(name, verb, event, started);
            Ok(())
        })
    }

    /// `docker VERB name`, as one request to the daemon's socket when there is one.
    fn act(&self, verb: &str, name: &str, to_end: bool) -> Result<()> {
        let what = format!("running docker {verb} {name}");
        let Some(socket) = &self.api else {
            if to_end {
                self.cli.run_to_end([verb, name], &what)?;
            } else {
                self.cli.run([verb, name], &what)?;
            }
            return Ok(());
        };
        let (status, body) = http(
            socket,
            "POST",
            &format!("/containers/{name}/{verb}"),
            REQUEST_TIMEOUT,
        )
        .map_err(|e| {
            fail(
                Code::Failure,
                format!(
                    "cannot reach the docker daemon at {} while {what}: {e}",
                    socket.display()
                ),
            )
        })?;
        if !to_end {
            crate::signals::check()?;
        }
        // 304: already so (started, stopped).
        if (200..300).contains(&status) || status == 304 {
            return Ok(());
        }
        #[derive(Deserialize)]
        struct Refusal {
            message: String,
        }
        let why = serde_json::from_slice::<Refusal>(&body).map_or_else(
            |_| String::from_utf8_lossy(&body).into_owned(),
            |r| r.message,
        );
        Err(fail(
            Code::Failure,
            format!(
                "the docker daemon refused (HTTP {status}) while {what}: {}",
                why.trim()
            ),
        ))
    }
}

/// Logs `event` for `docker VERB name`, begun at `started`.
fn done(name: &str, verb: &str, event: &str, started: Instant) {
    let seconds = format!("{:.3}", started.elapsed().as_secs_f64());
    tracing::info!(name = %name, verb, %seconds, "{event}");
}

/// One error for the results of [`Docker::each`]: the interruption if there was one, else
/// every failure.
fn joined(results: Vec<Result<()>>) -> Result<()> {
    let mut failed: Vec<anyhow::Error> = results.into_iter().filter_map(Result::err).collect();
    match failed.len() {
        0 => Ok(()),
        1 => Err(failed.remove(0)),
        _ => match failed.iter().position(|e| code_of(e) == Code::Interrupted) {
            Some(i) => Err(failed.remove(i)),
            None => Err(fail(
                Code::Failure,
                failed.iter().map(one_line).collect::<Vec<_>>().join("; "),
            )),
        },
    }
}

/// `f` for every item, each in its own thread: per-container docker calls cost round
/// trips to the daemon, not local work, so they overlap well. Results come in item order.
pub fn concurrently<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Vec<Result<R>> {
    std::thread::scope(|scope| {
        let f = &f;
        let threads: Vec<_> = items
            .iter()
            .map(|item| scope.spawn(move || f(item)))
            .collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("docker worker thread panicked"))
            .collect()
    })
}

/// The daemon socket the CLI uses, for messages.
pub fn socket() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => format!("{host} (from DOCKER_HOST)"),
        _ => "unix:///var/run/docker.sock (the default; DOCKER_HOST is not set)".into(),
    }
}

/// How long a request to the daemon may take: a stop waits up to docker's 10 s grace period.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// One container as `docker ps --all` (or `GET /containers/json?all=1`) lists it.
#[derive(Deserialize)]
struct Listed {
    #[serde(rename = "Names")]
    names: Vec<String>,
    /// running, paused, exited…
    #[serde(rename = "State")]
    state: String,
    /// `Up 3 seconds (health: starting)`, `Exited (137) 2 seconds ago`…
    #[serde(rename = "Status")]
    status: String,
}

impl Listed {
    /// healthy, unhealthy or starting; None without a HEALTHCHECK.
    fn health(&self) -> Option<&str> {
        let (_, health) = self.status.rsplit_once('(')?;
        let health = health.strip_suffix(')')?;
        Some(health.strip_prefix("health: ").unwrap_or(health))
            .filter(|h| matches!(*h, "healthy" | "unhealthy" | "starting"))
    }
}

/// The state of each of `names` among the containers docker listed.
fn states_among(known: &[Listed], names: &[String]) -> Vec<State> {
    names
        .iter()
        .map(|name| match known.iter().find(|c| c.names.contains(name)) {
            None => State::Missing,
            Some(c) => match c.state.as_str() {
                "running" => State::Running,
                "paused" => State::Paused,
                other => State::Other(other.to_string()),
            },
        })
        .collect()
}

/// The daemon's unix socket as the CLI would find it; None when `DOCKER_HOST` names
/// something else (tcp://, ssh://), which only the CLI speaks.
fn unix_socket() -> Option<PathBuf> {
    match std::env::var("DOCKER_HOST") {
        Ok(host) if !host.is_empty() => host.strip_prefix("unix://").map(PathBuf::from),
        _ => Some(PathBuf::from("/var/run/docker.sock")),
    }
}

/// What the daemon's socket says of the node containers, for quiet probes.
pub enum SocketAnswer {
    States(Vec<State>),
    /// Nothing listens at the unix socket: the CLI would not reach a daemon either.
    NoDaemon,
    /// `DOCKER_HOST` is not a unix socket, or the answer was not understood: the CLI may know.
    AskCli,
}

/// [`Docker::states`] asked of the daemon's own socket: about a millisecond, where starting
/// the CLI twice costs ~0.1 s of every restore.
pub fn states_via_socket(names: &[String]) -> SocketAnswer {
    let Some(socket) = unix_socket() else {
        return SocketAnswer::AskCli;
    };
    match list_via(&socket, Duration::from_secs(5)) {
        Ok(listing) => SocketAnswer::States(states_among(&listing, names)),
        Err(e)
            if matches!(
                Errno::from_io_error(&e),
                Some(Errno::NOENT | Errno::CONNREFUSED | Errno::NOTDIR)
            ) =>
        {
            SocketAnswer::NoDaemon
        }
        Err(_) => SocketAnswer::AskCli,
    }
}

/// `GET /containers/json?all=1`: every container, names without docker's leading `/`.
fn list_via(socket: &Path, timeout: Duration) -> std::io::Result<Vec<Listed>> {
    let (status, body) = http(socket, "GET", "/containers/json?all=1", timeout)?;
    if status != 200 {
        return Err(std::io::Error::other(format!("HTTP {status}")));
    }
    let mut listing: Vec<Listed> = serde_json::from_slice(&body)?;
    for c in &mut listing {
        for n in &mut c.names {
            *n = n.trim_start_matches('/').to_string();
        }
    }
    Ok(listing)
}

/// One HTTP request without a body to the daemon at `socket`: its status and body.
fn http(
    socket: &Path,
    method: &str,
    path: &str,
    timeout: Duration,
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(timeout))?;
    // HTTP/1.0: the daemon answers with the whole body and closes, never chunked.
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n"
    )?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply)?;
    let unexpected = || std::io::Error::other("unexpected answer from the docker daemon");
    let split = reply
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(unexpected)?;
    let status = std::str::from_utf8(&reply[..split])
        .ok()
        .and_then(|head| head.split(' ').nth(1)?.parse().ok())
        .ok_or_else(unexpected)?;
    Ok((status, reply.split_off(split + 4)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_from_the_listed_status() {
        let listed = |status: &str| Listed {
            names: vec!["n".into()],
            state: "running".into(),
            status: status.into(),
        };
        assert_eq!(
            listed("Up 3 seconds (health: starting)").health(),
            Some("starting")
        );
        assert_eq!(listed("Up 2 minutes (healthy)").health(), Some("healthy"));
        assert_eq!(
            listed("Up 2 minutes (unhealthy)").health(),
            Some("unhealthy")
        );
        assert_eq!(listed("Up 2 minutes").health(), None);
        assert_eq!(listed("Exited (137) 2 seconds ago").health(), None);
        assert_eq!(listed("Up 5 seconds (Paused)").health(), None);
    }
}
