//! `NodeSpec`: what one node is, named field by field, and writing its config.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::process::{Launch, NodeProcess};
use crate::{free_port, Error, LIMIT};

/// The `standin` binary cargo built beside the running test or benchmark: the
/// executable's folder, or its parent for a test in `deps/`.
pub fn standin_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the running executable's path");
    let mut dir = exe
        .parent()
        .expect("a folder for the executable")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("standin")
}

/// `standin init-secret path` unless `path` exists.
pub fn init_secret(binary: &Path, path: &Path) -> Result<(), Error> {
    if path.exists() {
        return Ok(());
    }
    let status = Command::new(binary)
        .arg("init-secret")
        .arg(path)
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        return Err(format!("standin init-secret {} failed: {status}", path.display()).into());
    }
    Ok(())
}

/// One node to configure under a root folder: `{root}/{name}.toml`, `{name}-data`,
/// `{name}.log`, the folder `{name}-folder` unless given, the pair's secret
/// `{root}/pair.secret` (made on first use), free ports unless given.
#[derive(Clone, Debug)]
pub struct NodeSpec {
    pub(crate) binary: PathBuf,
    pub(crate) name: String,
    pub(crate) role: String,
    pub(crate) folder: Option<PathBuf>,
    pub(crate) peer: Option<u16>,
    pub(crate) period: Option<f64>,
    pub(crate) extra: String,
    pub(crate) ports: Option<(u16, u16)>,
    pub(crate) launch: Launch,
}

impl NodeSpec {
    /// A node `name` in `role` ("active" or "passive"), run from `standin_binary()`.
    pub fn new(name: &str, role: &str) -> NodeSpec {
        NodeSpec {
            binary: standin_binary(),
            name: name.to_string(),
            role: role.to_string(),
            folder: None,
            peer: None,
            period: None,
            extra: String::new(),
            ports: None,
            launch: Launch {
                log_level: "info".to_string(),
                start_limit: LIMIT,
                taken_port_retries: 0,
                env: Vec::new(),
            },
        }
    }

    /// Run this `standin` binary.
    pub fn binary(mut self, binary: &Path) -> NodeSpec {
        self.binary = binary.to_path_buf();
        self
    }

    /// Replicate this folder (made when missing).
    pub fn folder(mut self, folder: &Path) -> NodeSpec {
        self.folder = Some(folder.to_path_buf());
        self
    }

    /// The peer's gRPC port on 127.0.0.1 (`peer_url`; https when the extra lines name
    /// a TLS certificate).
    pub fn peer(mut self, grpc: u16) -> NodeSpec {
        self.peer = Some(grpc);
        self
    }

    /// `peer` when there is one.
    pub fn peer_opt(mut self, grpc: Option<u16>) -> NodeSpec {
        self.peer = grpc;
        self
    }

    /// `replication_period = seconds`.
    pub fn period(mut self, seconds: f64) -> NodeSpec {
        self.period = Some(seconds);
        self
    }

    /// Config lines (TOML) appended after the generated ones.
    pub fn extra(mut self, lines: &str) -> NodeSpec {
        self.extra.push_str(lines);
        if !self.extra.is_empty() && !self.extra.ends_with('\n') {
            self.extra.push('\n');
        }
        self
    }

    /// Listen on these (gRPC, HTTP) ports, so that a pair can name each other as
    /// peers before either runs.
    pub fn ports(mut self, ports: (u16, u16)) -> NodeSpec {
        self.ports = Some(ports);
        self
    }

    /// `STANDIN_LOG` for the process ("info" unless set).
    pub fn log_level(mut self, level: &str) -> NodeSpec {
        self.launch.log_level = level.to_string();
        self
    }

    /// How long `start` waits for the node to answer (`LIMIT` unless set).
    pub fn start_limit(mut self, limit: Duration) -> NodeSpec {
        self.launch.start_limit = limit;
        self
    }

    /// A port chosen free can be taken before the node binds it: start again on the
    /// same ports (its peer already names them) up to `retries` times, each with a
    /// fresh log. None unless set: a test sees the node's exit at once.
    pub fn retry_taken_ports(mut self, retries: u32) -> NodeSpec {
        self.launch.taken_port_retries = retries;
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> NodeSpec {
        self.launch.env.push((key.to_string(), value.to_string()));
        self
    }

    /// Write the config (and the pair's secret) under `root`; not started.
    pub fn try_configure(self, root: &Path) -> Result<NodeProcess, Error> {
        let name = &self.name;
        let folder = self
            .folder
            .clone()
            .unwrap_or_else(|| root.join(format!("{name}-folder")));
        let data_dir = root.join(format!("{name}-data"));
        std::fs::create_dir_all(&folder)?;
        let secret = root.join("pair.secret");
        init_secret(&self.binary, &secret)?;
        let (grpc, http) = self.ports.unwrap_or_else(|| (free_port(), free_port()));
        let scheme = if self.extra.contains("tls_cert_file") {
            "https"
        } else {
            "http"
        };
        let peer = self
            .peer
            .map(|port| format!("peer_url = \"{scheme}://127.0.0.1:{port}\"\n"))
            .unwrap_or_default();
        let period = self
            .period
            .map(|seconds| format!("replication_period = {seconds}\n"))
            .unwrap_or_default();
        let config = root.join(format!("{name}.toml"));
        std::fs::write(
            &config,
            format!(
                "node_name = \"{name}\"\nfolder = \"{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\nrole = \"{}\"\n{peer}{period}secret_file = \"{}\"\n{}\n",
                folder.display(),
                data_dir.display(),
                self.role,
                secret.display(),
                self.extra,
            ),
        )?;
        Ok(NodeProcess::new(
            self.binary,
            self.name.clone(),
            folder,
            data_dir,
            config,
            (grpc, http),
            root.join(format!("{name}.log")),
            self.launch,
        ))
    }

    /// `try_configure`, panicking on failure (tests).
    pub fn configure(self, root: &Path) -> NodeProcess {
        let name = self.name.clone();
        self.try_configure(root)
            .unwrap_or_else(|error| panic!("configuring {name}: {error}"))
    }

    /// Configure and start (benchmarks): the running node.
    pub fn try_start(self, root: &Path) -> Result<NodeProcess, Error> {
        let mut node = self.try_configure(root)?;
        node.try_start()?;
        Ok(node)
    }
}

#[cfg(test)]
mod tests {
    use super::NodeSpec;

    #[test]
    fn the_config_names_what_the_spec_says_and_the_extra_lines_last() {
        let root = tempfile::tempdir().unwrap();
        // The secret exists: no binary is run.
        std::fs::write(root.path().join("pair.secret"), "x").unwrap();
        let node = NodeSpec::new("beta", "passive")
            .peer(4000)
            .period(0.0)
            .ports((5000, 5001))
            .extra("failover_after_ms = 1500")
            .configure(root.path());
        let text = std::fs::read_to_string(&node.config).unwrap();
        for line in [
            "node_name = \"beta\"",
            "role = \"passive\"",
            "listen = \"127.0.0.1:5000\"",
            "http_listen = \"127.0.0.1:5001\"",
            "peer_url = \"http://127.0.0.1:4000\"",
            "replication_period = 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
        assert!(text.trim_end().ends_with("failover_after_ms = 1500"));
        assert_eq!((node.grpc, node.http), (5000, 5001));
        assert!(node.folder.ends_with("beta-folder") && node.folder.is_dir());
    }
}
