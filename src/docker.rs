//! A small docker client on top of the docker CLI (run through [`crate::tools`]): the daemon
//! check, container states and mounts, pause/unpause, stop/start, exec; and the mapping from
//! node directories to the containers that mount them.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Deserialize;

use crate::config::Config;
use crate::exit::{Code, code_of, fail, one_line};
use crate::modes::Mode;
use crate::tools::{DOCKER, Found};
use crate::tree::Live;

/// How long a started container may take to be reported running.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Docker's rule for container names (`[a-zA-Z0-9][a-zA-Z0-9_.-]*`).
pub fn valid_name(name: &str) -> bool {
    name.as_bytes()
        .first()
        .is_some_and(u8::is_ascii_alphanumeric)
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

/// `template` with `{node}` replaced by the node directory's name and `{n}` by its trailing number.
pub fn render(template: &str, node: &str) -> Result<String, String> {
    let digits = node.len() - node.trim_end_matches(|c: char| c.is_ascii_digit()).len();
    let n = &node[node.len() - digits..];
    if n.is_empty() && template.contains("{n}") {
        return Err(format!(
            "node directory {node} has no number for {{n}}; use {{node}} or list containers = {node}:NAME"
        ));
    }
    Ok(template.replace("{node}", node).replace("{n}", n))
}

/// Why this configuration needs docker for a create (or, with `restore`, a restore):
/// `recreate mode selected`, `quiesce = stop is set`…; None when it does not.
pub fn needed_by(cfg: &Config, mode: &dyn Mode, restore: bool) -> Option<String> {
    if mode.tools().contains(&DOCKER) {
        Some(format!("{} mode selected", mode.kind().name()))
    } else if cfg.text("quiesce") != "none" {
        Some(format!("quiesce = {} is set", cfg.text("quiesce")))
    } else if restore && cfg.text("restore_fallback") != "none" {
        Some(format!(
            "restore_fallback = {} is set",
            cfg.text("restore_fallback")
        ))
    } else {
        None
    }
}

/// A node directory (`data/node1`) and the container that mounts it.
#[derive(Debug, Clone)]
pub struct NodeContainer {
    pub node: String,
    pub container: String,
}

/// Every node directory under `cache_dir/data` with its container: from `containers` when
/// set (then every node must be listed), else `container_name` rendered per node.
pub fn node_containers(cfg: &Config) -> Result<Vec<NodeContainer>> {
    let mut data = Live::from_config(cfg);
    data.include = vec![PathBuf::from("data")];
    let listed: Vec<(&str, &str)> = cfg
        .list("containers")
        .iter()
        .map(|item| item.split_once(':').expect("validated as node:container"))
        .collect();
    data.nodes()
        .into_iter()
        .map(|node| {
            let dir_name = node.rsplit('/').next().unwrap_or(&node);
            let container = if listed.is_empty() {
                render(cfg.text("container_name"), dir_name)
                    .map_err(|why| fail(Code::Usage, format!("container_name: {why}")))?
            } else {
                let (_, name) = listed.iter().find(|(n, _)| *n == dir_name).ok_or_else(|| {
                    fail(
                        Code::Usage,
                        format!(
                            "node directory {node} is not in containers = {}; add {dir_name}:CONTAINER",
                            cfg.list("containers").join(" ")
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
}

impl Docker {
    pub fn new(cli: Found) -> Docker {
        Docker { cli }
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

    /// The state of each named container, in order (one `docker ps` for all). Finishes even
    /// after Ctrl-C, as bringing containers back relies on it.
    pub fn states(&self, names: &[String]) -> Result<Vec<State>> {
        let out = self.cli.run_to_end(
            [
                "ps",
                "--all",
                "--no-trunc",
                "--format",
                "{{.Names}}\t{{.State}}",
            ],
            "listing containers",
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        let known: Vec<(&str, &str)> = text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            // A container linked under several names lists them comma-separated.
            .flat_map(|(names, state)| names.split(',').map(move |n| (n, state)))
            .collect();
        Ok(states_among(&known, names))
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
        self.each("pause", "container_paused", names, false)
    }

    /// Uninterruptible: it undoes a pause.
    pub fn unpause(&self, names: &[String]) -> Result<()> {
        self.each("unpause", "container_unpaused", names, true)
    }

    pub fn stop(&self, names: &[String]) -> Result<()> {
        self.each("stop", "container_stopped", names, false)
    }

    /// Starts the containers and waits until each runs; uninterruptible, as it undoes a stop.
    /// A container seen stopped again (a stop still finishing when it was started) is started
    /// again until it stays up or the timeout passes.
    pub fn start_running(&self, names: &[String]) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut pending = names.to_vec();
        loop {
            self.each("start", "container_started", &pending, true)?;
            let states = self.states(&pending)?;
            let down: Vec<(String, State)> = pending
                .iter()
                .cloned()
                .zip(states)
                .filter(|(_, s)| *s != State::Running)
                .collect();
            if down.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let (name, state) = &down[0];
                return Err(fail(
                    Code::Failure,
                    format!(
                        "container {name} did not stay running after docker start ({}); see `docker logs {name}`",
                        state.describe()
                    ),
                ));
            }
            pending = down.into_iter().map(|(n, _)| n).collect();
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// `docker exec container args…`, without a shell on the host: arguments reach the
    /// container's program exactly as given.
    pub fn exec(&self, container: &str, args: &[&str], what: &str) -> Result<Output> {
        self.cli.run(["exec", container].iter().chain(args), what)
    }

    /// `docker VERB name` for every container at once (the CLI itself would start or pause
    /// several one after another), logging `event` for each; `to_end` ignores Ctrl-C.
    fn each(&self, verb: &str, event: &str, names: &[String], to_end: bool) -> Result<()> {
        let results = concurrently(names, |name| {
            let started = Instant::now();
            let what = format!("running docker {verb} {name}");
            if to_end {
                self.cli.run_to_end([verb, name], &what)?;
            } else {
                self.cli.run([verb, name], &what)?;
            }
            let seconds = format!("{:.3}", started.elapsed().as_secs_f64());
            tracing::info!(name = %name, %seconds, "{event}");
            Ok(())
        });
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

/// The state of each of `names` among the `(name, state)` pairs docker listed.
fn states_among(known: &[(&str, &str)], names: &[String]) -> Vec<State> {
    names
        .iter()
        .map(
            |name| match known.iter().find(|(n, _)| n == name).map(|(_, s)| *s) {
                None => State::Missing,
                Some("running") => State::Running,
                Some("paused") => State::Paused,
                Some(other) => State::Other(other.to_string()),
            },
        )
        .collect()
}

/// What the daemon's socket says of the node containers, for quiet probes.
pub enum SocketAnswer {
    States(Vec<State>),
    /// Nothing listens at the unix socket: the CLI would not reach a daemon either.
    NoDaemon,
    /// `DOCKER_HOST` is not a unix socket, or the answer was not understood: the CLI may know.
    AskCli,
}

/// [`Docker::states`] asked of the daemon's own socket (`GET /containers/json`): about a
/// millisecond, where starting the CLI twice costs ~0.1 s of every restore.
pub fn states_via_socket(names: &[String]) -> SocketAnswer {
    let socket = match std::env::var("DOCKER_HOST") {
        Ok(host) => match host.strip_prefix("unix://") {
            Some(path) => path.to_string(),
            None => return SocketAnswer::AskCli,
        },
        Err(_) => "/var/run/docker.sock".to_string(),
    };
    let stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ECONNREFUSED | libc::ENOTDIR)
            ) =>
        {
            return SocketAnswer::NoDaemon;
        }
        Err(_) => return SocketAnswer::AskCli,
    };
    ask(stream, names).map_or(SocketAnswer::AskCli, SocketAnswer::States)
}

/// The states the daemon at `stream` lists for `names`; None when its answer is not understood.
fn ask(mut stream: std::os::unix::net::UnixStream, names: &[String]) -> Option<Vec<State>> {
    use std::io::{Read, Write};
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    // HTTP/1.0: the daemon answers with the whole body and closes, never chunked.
    stream
        .write_all(b"GET /containers/json?all=1 HTTP/1.0\r\nHost: docker\r\n\r\n")
        .ok()?;
    let mut reply = Vec::new();
    stream.read_to_end(&mut reply).ok()?;
    let split = reply.windows(4).position(|w| w == b"\r\n\r\n")?;
    if !reply.starts_with(b"HTTP/1.0 200") && !reply.starts_with(b"HTTP/1.1 200") {
        return None;
    }
    #[derive(Deserialize)]
    struct Listed {
        #[serde(rename = "Names")]
        names: Vec<String>,
        #[serde(rename = "State")]
        state: String,
    }
    let listed: Vec<Listed> = serde_json::from_slice(&reply[split + 4..]).ok()?;
    let known: Vec<(&str, &str)> = listed
        .iter()
        .flat_map(|c| {
            c.names
                .iter()
                .map(move |n| (n.trim_start_matches('/'), c.state.as_str()))
        })
        .collect();
    Some(states_among(&known, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_templates() {
        assert_eq!(
            render("cellframe-stage-node-{n}", "node12").unwrap(),
            "cellframe-stage-node-12"
        );
        assert_eq!(render("net_{node}", "node3").unwrap(), "net_node3");
        assert!(render("x-{n}", "master").is_err());
        assert_eq!(render("x-{node}", "master").unwrap(), "x-master");
    }

    #[test]
    fn docker_name_rule() {
        for ok in ["a", "cellframe-stage-node-1", "A_b.c-9"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a b", "a/b", "a{n}", "a:b"] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
