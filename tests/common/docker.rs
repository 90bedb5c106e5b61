//! Containers on a real docker engine for the tests that need them: a sample environment
//! whose node directories are bind-mounted into running containers. Needs a running dockerd
//! and the local image scripts/setup.sh builds; without them the tests fail rather than skip.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use assert_cmd::assert::OutputAssertExt;

use super::Env;

const MB: u64 = 1 << 20;
pub const IMAGE: &str = "stagesnap-test:busybox";
pub const DATA_PATH: &str = "/opt/cellframe-node/var";
/// A node that appends to its log five times a second, as a real node logs all the time.
pub const TICKER: &str =
    "while true; do echo tick >> /opt/cellframe-node/var/log/cellframe-node.log; sleep 0.2; done";

/// `docker args…`, which must succeed; its stdout.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run docker ({e}); these tests need docker: run scripts/setup.sh")
        });
    let ran = out
        .assert()
        .append_context("docker", format!("{args:?}"))
        .append_context(
            "needs",
            format!("a running dockerd and the {IMAGE} image: run scripts/setup.sh"),
        )
        .success();
    super::texts(&ran).0
}

/// A sample environment whose node directories are bind-mounted into running containers,
/// one per node, removed when dropped (also when a test fails).
pub struct Net {
    pub env: Env,
    pub names: Vec<String>,
    /// What each node container runs (`sh -c`).
    node: String,
}

impl Net {
    pub fn start(nodes: u32) -> Net {
        Net::running(nodes, TICKER)
    }

    /// [`Net::start`] with containers running `node` (`sh -c`) instead of [`TICKER`].
    pub fn running(nodes: u32, node: &str) -> Net {
        Net::start_with(Env::sample(nodes, 2 * MB), nodes, node)
    }

    /// `nodes` containers over `env`'s node directories, each running `sh -c node`.
    pub fn start_with(env: Env, nodes: u32, node: &str) -> Net {
        // The temporary directory's random name keeps parallel tests' containers apart.
        let prefix = format!("ssnap-{}", env.root.file_name().unwrap().to_string_lossy());
        env.set("container_name", &format!("{prefix}-{{n}}"));
        let mut net = Net {
            env,
            names: Vec::new(),
            node: node.to_string(),
        };
        for n in 1..=nodes {
            net.names.push(format!("{prefix}-{n}"));
            net.run(n as usize - 1, &[]);
        }
        // Let every node write its first ticks.
        std::thread::sleep(Duration::from_millis(500));
        net
    }

    /// `docker run`s the container of node `i` (from 0), with `extra` arguments before the
    /// image, in place of the one there may be.
    pub fn run(&self, i: usize, extra: &[&str]) {
        let name = &self.names[i];
        let _ = Command::new("docker").args(["rm", "-f", name]).output();
        let mount = format!(
            "{}:{DATA_PATH}",
            self.env.data().join(format!("node{}", i + 1)).display()
        );
        let mut args = vec!["run", "-d", "--init", "--name", name, "-v", &mount];
        args.extend(extra);
        args.extend([IMAGE, "sh", "-c", &self.node]);
        docker(&args);
    }

    pub fn state(&self, name: &str) -> String {
        docker(&["inspect", "--format", "{{.State.Status}}", name])
            .trim()
            .to_string()
    }

    pub fn states(&self) -> Vec<String> {
        self.names.iter().map(|n| self.state(n)).collect()
    }

    pub fn started_at(&self) -> Vec<String> {
        self.names
            .iter()
            .map(|n| {
                docker(&["inspect", "--format", "{{.State.StartedAt}}", n])
                    .trim()
                    .to_string()
            })
            .collect()
    }

    /// `sh -c script` inside container `name`, in the node's data directory.
    pub fn exec(&self, name: &str, script: &str) -> String {
        docker(&[
            "exec",
            name,
            "sh",
            "-c",
            &format!("cd {DATA_PATH} && {script}"),
        ])
    }

    pub fn snapshot_node(&self, snapshot: &str, n: usize) -> PathBuf {
        self.env
            .snapshots()
            .join(snapshot)
            .join("payload/data")
            .join(format!("node{}", n + 1))
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        let mut args = vec!["rm", "-f"];
        args.extend(self.names.iter().map(String::as_str));
        let _ = Command::new("docker").args(&args).output();
    }
}
