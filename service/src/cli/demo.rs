//! `standin demo`: a local pair in a temp dir, on free loopback ports. It publishes a
//! file on the active, shows it appear on the passive, shows both nodes' status and
//! verification; then kills the active, shows the passive take over within
//! `failover_after_ms`, publishes a change on the new active, restarts the old one,
//! which rejoins, catches up and (preferred, with `auto_failback`) takes over again;
//! then stops everything and removes the directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

use super::Failure;
use crate::servers::cluster_server::status_from_wire;

const WAIT_LIMIT: Duration = Duration::from_secs(60);
const REPLICATION_PERIOD_S: u64 = 1;
const HEARTBEAT_INTERVAL_MS: u64 = 200;
const FAILOVER_AFTER_MS: u64 = 2_000;

struct DemoNode {
    name: &'static str,
    folder: PathBuf,
    config: PathBuf,
    grpc: u16,
    http: u16,
    log: PathBuf,
    child: Option<Child>,
}

fn free_port() -> Result<u16, Failure> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|error| Failure::failed(format!("no free port: {error}")))?;
    listener
        .local_addr()
        .map(|address| address.port())
        .map_err(|error| Failure::failed(error.to_string()))
}

fn io(context: &str) -> impl Fn(std::io::Error) -> Failure + '_ {
    move |error| Failure::failed(format!("{context}: {error}"))
}

impl DemoNode {
    fn create(
        root: &Path,
        name: &'static str,
        role: &str,
        peer_grpc: Option<u16>,
        secret: &Path,
    ) -> Result<DemoNode, Failure> {
        let folder = root.join(format!("{name}-folder"));
        std::fs::create_dir_all(&folder).map_err(io("create folder"))?;
        let (grpc, http) = (free_port()?, free_port()?);
        let config = root.join(format!("{name}.toml"));
        let peer = peer_grpc
            .map(|port| format!("peer_url = \"http://127.0.0.1:{port}\"\n"))
            .unwrap_or_default();
        let text = format!(
            "node_name = \"{name}\"\nfolder = \"{}\"\ndata_dir = \"{}\"\nlisten = \"127.0.0.1:{grpc}\"\nhttp_listen = \"127.0.0.1:{http}\"\nrole = \"{role}\"\n{peer}replication_period = {REPLICATION_PERIOD_S}\nheartbeat_interval_ms = {HEARTBEAT_INTERVAL_MS}\nfailover_after_ms = {FAILOVER_AFTER_MS}\nsecret_file = \"{}\"\n",
            folder.display(),
            root.join(format!("{name}-data")).display(),
            secret.display()
        );
        std::fs::write(&config, text).map_err(io("write config"))?;
        Ok(DemoNode {
            name,
            folder,
            config,
            grpc,
            http,
            log: root.join(format!("{name}.log")),
            child: None,
        })
    }

    fn start(&mut self) -> Result<(), Failure> {
        let exe = std::env::current_exe().map_err(io("find the standin binary"))?;
        let log = std::fs::File::create(&self.log).map_err(io("create log"))?;
        let child = Command::new(exe)
            .arg("serve")
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .map_err(io("start standin serve"))?;
        self.child = Some(child);
        Ok(())
    }

    async fn wait_healthy(&self) -> Result<(), Failure> {
        let started = Instant::now();
        while started.elapsed() < WAIT_LIMIT {
            // Up once its HTTP server answers (`/healthz` says 503 until it has a role).
            if http_get(self.http, "/healthz").await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(Failure::failed(format!(
            "{} did not start; see {}",
            self.name,
            self.log.display()
        )))
    }

    fn append_config(&self, lines: &str) -> Result<(), Failure> {
        let mut text = std::fs::read_to_string(&self.config).map_err(io("read config"))?;
        text.push_str(lines);
        std::fs::write(&self.config, text).map_err(io("write config"))
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Wait until `/active` says 200 (`active`) or not.
    async fn wait_active(&self, active: bool, what: &str) -> Result<(), Failure> {
        let started = Instant::now();
        while started.elapsed() < WAIT_LIMIT {
            let answer = http_get(self.http, "/active")
                .await
                .ok()
                .map(|(status, _)| status == 200);
            if answer == Some(active) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(Failure::failed(format!(
            "timed out waiting for {what}; see {}",
            self.log.display()
        )))
    }

    async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                // SAFETY: sending SIGTERM to our own child process.
                unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
    }
}

/// A minimal HTTP/1.1 GET on 127.0.0.1 (status code and body).
pub async fn http_get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

pub async fn run(keep: bool) -> Result<(), Failure> {
    let work = tempfile::Builder::new()
        .prefix("standin-demo-")
        .tempdir()
        .map_err(io("create a temp dir"))?;
    let root = work.path().to_path_buf();
    println!("standin demo in {}", root.display());
    let secret = root.join("pair.secret");
    crate::wire::secret::init_secret(&secret, false).map_err(io("write the pair secret"))?;

    let mut alpha = DemoNode::create(&root, "alpha", "active", None, &secret)?;
    let mut beta = DemoNode::create(&root, "beta", "passive", Some(alpha.grpc), &secret)?;
    // alpha is the preferred node and takes over again once back (auto_failback);
    // both heartbeat each other, and fail over after FAILOVER_AFTER_MS of silence.
    alpha.append_config(&format!(
        "peer_url = \"http://127.0.0.1:{}\"\npreferred = true\nauto_failback = true\n",
        beta.grpc
    ))?;
    let outcome = async {
        alpha.start()?;
        beta.start()?;
        alpha.wait_healthy().await?;
        beta.wait_healthy().await?;
        println!("started alpha (active, grpc {}) and beta (passive, grpc {}), replication_period = {REPLICATION_PERIOD_S} s", alpha.grpc, beta.grpc);
        show_active(&alpha, &beta).await;

        // Publish an application on the active, as an administrator would.
        let published = Instant::now();
        let apps = alpha.folder.join("apps");
        std::fs::create_dir_all(&apps).map_err(io("create apps/"))?;
        let record = "command = \"notepad.exe\"\nusers = [\"alice\", \"bob\"]\n";
        std::fs::write(apps.join("notepad.toml"), record).map_err(io("publish apps/notepad.toml"))?;
        println!("published apps/notepad.toml on alpha");
        let replica = beta.folder.join("apps/notepad.toml");
        loop {
            if std::fs::read_to_string(&replica).is_ok_and(|text| text == record) {
                break;
            }
            if published.elapsed() > WAIT_LIMIT {
                return Err(Failure::failed(format!("the file did not reach beta; see {} and {}", alpha.log.display(), beta.log.display())));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("beta has apps/notepad.toml after {:.2} s\n", published.elapsed().as_secs_f64());

        let secret_text = crate::wire::secret::read_secret(&secret).map_err(Failure::failed)?;
        // The file is visible before beta's log records the batch (its durability
        // point): wait for beta's head to reach alpha's, then show both.
        let alpha_head = node_status(&alpha, &secret_text).await?.head_seq;
        while node_status(&beta, &secret_text).await?.head_seq < alpha_head {
            if published.elapsed() > WAIT_LIMIT {
                return Err(Failure::failed("beta's log did not reach alpha's head"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut statuses = Vec::new();
        for node in [&alpha, &beta] {
            let url = format!("http://127.0.0.1:{}", node.grpc);
            let channel = crate::wire::client::channel(&url, None).map_err(Failure::failed)?;
            let mut client = crate::wire::client::cluster(channel, &secret_text).map_err(Failure::failed)?;
            statuses.push(node_status(node, &secret_text).await?);
            let verify = client
                .verify(standin_proto::v1::VerifyRequest {})
                .await
                .map_err(|status| Failure::failed(format!("{}: {}", node.name, status.message())))?
                .into_inner();
            println!(
                "verify {}: {}",
                node.name,
                if verify.matches { "ok, the folder matches the log head".to_string() } else { format!("MISMATCH at {}", verify.first_difference_path) }
            );
        }
        println!();
        print!("{}", super::status::render_table(&statuses));

        // The takeover: the active dies.
        println!("\nkilling alpha (SIGKILL) ...");
        alpha.kill().await;
        let killed = Instant::now();
        beta.wait_active(true, "beta to take over").await?;
        println!(
            "beta took over {:.2} s after alpha died (failover_after_ms = {FAILOVER_AFTER_MS}); GET /active on beta: 200",
            killed.elapsed().as_secs_f64()
        );
        let record = "command = \"calc.exe\"\nusers = [\"carol\"]\n";
        std::fs::write(beta.folder.join("apps/calc.toml"), record).map_err(io("publish apps/calc.toml"))?;
        println!("published apps/calc.toml on beta, the new active");

        // The old active comes back: it rejoins, catches up and, being preferred with
        // auto_failback, takes over again.
        println!("restarting alpha ...");
        alpha.start()?;
        alpha.wait_healthy().await?;
        let back = Instant::now();
        alpha.wait_active(true, "alpha to take over again").await?;
        beta.wait_active(false, "beta to step down").await?;
        while std::fs::read_to_string(alpha.folder.join("apps/calc.toml")).ok().as_deref() != Some(record) {
            if back.elapsed() > WAIT_LIMIT {
                return Err(Failure::failed("alpha did not get beta's change"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        println!("alpha rejoined, caught up (it has apps/calc.toml) and took over again after {:.2} s", back.elapsed().as_secs_f64());
        let alpha_head = node_status(&alpha, &secret_text).await?.head_seq;
        while node_status(&beta, &secret_text).await?.head_seq < alpha_head {
            if back.elapsed() > WAIT_LIMIT {
                return Err(Failure::failed("beta did not follow alpha"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        show_active(&alpha, &beta).await;
        let statuses = vec![node_status(&alpha, &secret_text).await?, node_status(&beta, &secret_text).await?];
        println!();
        print!("{}", super::status::render_table(&statuses));
        Ok(())
    }
    .await;
    alpha.stop().await;
    beta.stop().await;
    if keep {
        println!("\nkept {}", work.keep().display());
    } else {
        println!("\nstopped both nodes and removed the demo directory");
    }
    outcome
}

async fn node_status(node: &DemoNode, secret: &str) -> Result<crate::node::NodeStatus, Failure> {
    let url = format!("http://127.0.0.1:{}", node.grpc);
    let channel = crate::wire::client::channel(&url, None).map_err(Failure::failed)?;
    let mut client = crate::wire::client::cluster(channel, secret).map_err(Failure::failed)?;
    let status = client
        .status(standin_proto::v1::StatusRequest {})
        .await
        .map_err(|status| Failure::failed(format!("{}: {}", node.name, status.message())))?;
    Ok(status_from_wire(status.get_ref()))
}

async fn show_active(alpha: &DemoNode, beta: &DemoNode) {
    for node in [alpha, beta] {
        if let Ok((status, body)) = http_get(node.http, "/active").await {
            println!("GET /active on {}: {status} {}", node.name, body.trim());
        }
    }
}
