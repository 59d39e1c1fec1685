//! The `standin` command line: argument parsing and dispatch. Each subcommand lives in
//! its own module; `main` maps failures to exit codes: 1 for a failed check or
//! operation (or a node that cannot be reached), 2 for a bad config or usage, 3 for a
//! command the node refused (it does not apply now; nothing was changed).

pub mod agent_key;
pub mod check_config;
pub mod demo;
pub mod drill;
pub mod failover_ack;
pub mod generate;
pub mod init_secret;
pub mod inspect;
pub mod quarantine;
pub mod site;
pub mod status;
pub mod tls;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError};
use crate::logging::LogFormat;

/// The environment and files, at the end of `standin --help` and of the man page.
const AFTER_LONG_HELP: &str = "\
Environment: STANDIN_CONFIG, the config file of client commands and serve (default \
/etc/standin/standin.toml); STANDIN_LOG, the log filter (default \"info\", e.g. \"debug\" \
or \"info,standin=debug\"); STANDIN_LOG_FORMAT, text or json (as --log-format); \
STANDIN_AGENT_*, the options of `standin agent`.

Files: /etc/standin/standin.toml, a node's config (examples: \
/etc/standin/active.toml.example, /etc/standin/passive.toml.example); \
/etc/standin/agent.env, the agent's options (standin-agent.service; example: \
agent.env.example); /etc/standin/pair.secret and /etc/standin/agent.secret (made by \
`standin init-secret`); /etc/standin/agent-keys, the per-agent keys (made by `standin \
agent-key add`); /var/lib/standin, the data_dir of the examples.";

#[derive(Parser, Debug)]
#[command(
    name = "standin",
    version,
    about = "A warm-standby pair for a server's state folder",
    after_long_help = AFTER_LONG_HELP
)]
pub struct Cli {
    /// Log lines as text or as one JSON object per line (on stderr; the filter is
    /// STANDIN_LOG, e.g. "debug" or "info,standin=debug").
    #[arg(
        long,
        global = true,
        env = "STANDIN_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

/// How a client command finds its node: a config file, or a URL and a secret file.
#[derive(clap::Args, Debug, Clone)]
pub struct Target {
    /// The node's config file (its `listen` address and `secret_file` are used).
    #[arg(
        long,
        env = "STANDIN_CONFIG",
        default_value = "/etc/standin/standin.toml"
    )]
    pub config: PathBuf,
    /// Talk to this node instead (e.g. http://beta:7600); needs --secret-file.
    #[arg(long)]
    pub url: Option<String>,
    #[arg(long)]
    pub secret_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run a node.
    ///
    /// SIGHUP reloads the config (`systemctl reload standin`): on_promote, on_demote
    /// and log_filter take effect at once; other changed keys are logged as needing a
    /// restart; a config that fails its checks is not used. SIGHUP never ends a node.
    Serve {
        #[arg(
            long,
            env = "STANDIN_CONFIG",
            default_value = "/etc/standin/standin.toml"
        )]
        config: PathBuf,
    },
    /// Check a node's config as `serve` does at start, starting nothing.
    ///
    /// The keys, the secrets (private, hard to guess, the agents' not the pair's), the
    /// TLS files, folder and data_dir, the hooks, whether a node runs on the data_dir,
    /// the ports; with --peer, whether the peer answers. One line per check (ok, warn
    /// or FAIL, and the key). Exit 0 when serve would start, 2 when it would not, 1
    /// when it would but --peer got no answer.
    CheckConfig {
        /// The config file.
        #[arg(env = "STANDIN_CONFIG", default_value = "/etc/standin/standin.toml")]
        file: PathBuf,
        /// Also ask the peer (peer_url, with the pair secret) whether it answers.
        #[arg(long)]
        peer: bool,
        /// How long --peer waits for the peer's answer, in milliseconds.
        #[arg(long, default_value_t = 5000)]
        peer_deadline_ms: u64,
        /// The node must be stopped: a node running on the data_dir is a failure
        /// (without it, that is only said).
        #[arg(long)]
        stopped: bool,
    },
    /// Show both nodes of the pair side by side: role, epoch, head, what each sees of
    /// the other, lag. A node that does not answer is shown as unreachable.
    Status {
        #[command(flatten)]
        target: Target,
        /// The other node of the pair (default: the config's peer_url, or the peer
        /// the node names).
        #[arg(long)]
        peer_url: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Rehearse a failover, changing nothing: is the passive reachable and caught up,
    /// what would a failover now lose (events, seconds), how long would it take with
    /// this config, are the hooks present and executable, does every agent report to
    /// both nodes, could the authority decide (witness majority, voter sets, etcd).
    ///
    /// Asks both nodes (the config's peer_url, or --peer-url). One line per check (ok,
    /// warn or FAIL, and why). Exit 0 only when a failover now would succeed without
    /// loss, 1 otherwise.
    Drill {
        #[command(flatten)]
        target: Target,
        /// The other node of the pair (default: the config's peer_url, or the peer
        /// the node names).
        #[arg(long)]
        peer_url: Option<String>,
    },
    /// Acknowledge the last failover's report ("last failover: …" in status), so it
    /// is no longer shown (on both nodes: the peer is told too, and learns it through
    /// the heartbeats anyway). Refused (exit 3) when there is none.
    FailoverAck {
        #[command(flatten)]
        target: Target,
        /// The other node of the pair (default: the config's peer_url).
        #[arg(long)]
        peer_url: Option<String>,
        /// Only if the last failover is that of this epoch (default: whichever it is).
        #[arg(long, default_value_t = 0)]
        epoch: u64,
    },
    /// Check that the folder matches the log head (exit 0) or name the first
    /// differing path (exit 1).
    Verify {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// List events of a node's log, a page at a time.
    Log {
        #[command(flatten)]
        target: Target,
        /// Start after this seq.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Events per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        json: bool,
    },
    /// Promote this passive node now (it makes a last pull first). Refused while the
    /// active answers, unless --force.
    Promote {
        #[command(flatten)]
        target: Target,
        /// The operator knows the active is dead: promote even if it seems to answer.
        /// Changes it recorded since the last pull go to its quarantine when it rejoins.
        #[arg(long)]
        force: bool,
    },
    /// Hand authority from the active to the passive without losing anything (run
    /// against the active).
    Switchover {
        #[command(flatten)]
        target: Target,
    },
    /// Users of the site (their records live in the folder and replicate).
    User {
        #[command(subcommand)]
        command: site::UserCommand,
    },
    /// Published applications.
    App {
        #[command(subcommand)]
        command: site::AppCommand,
    },
    /// Log in: try the servers in order, follow the redirect to the authoritative
    /// node, and print where to connect.
    Login {
        /// `;`-separated gRPC addresses, e.g. "http://a:7600;http://b:7600".
        #[arg(long)]
        servers: String,
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "")]
        app: String,
        /// Read the password from this file instead of asking for it.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Report this terminal server's load to every node of the dispatch list. Every
    /// option can also come from its environment variable (standin-agent.service reads
    /// them from /etc/standin/agent.env).
    Agent {
        /// This terminal server's name (as listed in the nodes' witness_agents).
        #[arg(long, env = "STANDIN_AGENT_NAME")]
        name: String,
        /// `;`-separated gRPC addresses of both nodes (the seed's DispatchURL).
        #[arg(long, env = "STANDIN_AGENT_DISPATCH_URL")]
        dispatch_url: String,
        /// The agents' shared secret (the nodes' agent_secret_file; only while the
        /// nodes have no per-agent keys).
        #[arg(
            long,
            env = "STANDIN_AGENT_SECRET_FILE",
            required_unless_present = "key_file",
            conflicts_with = "key_file"
        )]
        secret_file: Option<PathBuf>,
        /// This agent's own key (`standin agent-key add NAME` on a node): every report
        /// is signed with it.
        #[arg(long, env = "STANDIN_AGENT_KEY_FILE")]
        key_file: Option<PathBuf>,
        /// How often to report (the witness needs at least a third of the nodes'
        /// witness_window_ms: 833 ms with the defaults).
        #[arg(long, env = "STANDIN_AGENT_INTERVAL_MS", default_value_t = 500)]
        interval_ms: u64,
        /// Where users connect to this server (default: NAME:3389).
        #[arg(long, env = "STANDIN_AGENT_ADDRESS")]
        address: Option<String>,
        /// Applications this server runs (comma-separated; default: all).
        #[arg(long, env = "STANDIN_AGENT_APPS", default_value = "")]
        apps: String,
        /// A command printing the number of sessions (e.g. "who | wc -l").
        #[arg(long, env = "STANDIN_AGENT_SESSIONS_COMMAND")]
        sessions_command: Option<String>,
    },
    /// What a rejoin kept aside: list, show, restore.
    Quarantine {
        #[command(subcommand)]
        command: quarantine::QuarantineCommand,
    },
    /// Per-agent keys of a node's agent_keys_dir: add, list, remove.
    AgentKey {
        #[command(subcommand)]
        command: agent_key::AgentKeyCommand,
    },
    /// Write a fresh shared secret (mode 0600) to FILE, creating its directory (mode
    /// 0750) when missing.
    InitSecret {
        file: PathBuf,
        /// Replace an existing file.
        #[arg(long)]
        force: bool,
    },
    /// TLS for the pair: `tls init DIR --node alpha=HOST --node beta=HOST`.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// Start a local pair, replicate a change, show both nodes, clean up.
    Demo {
        /// Keep the demo's directory instead of removing it.
        #[arg(long)]
        keep: bool,
    },
}

/// `standin tls …`.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Write a CA of the pair's own and a certificate and key per node into DIR.
    Init {
        dir: PathBuf,
        /// A node and the host names or addresses its peer reaches it by:
        /// NAME=HOST[,HOST…] (repeat for each node).
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// Replace existing files.
        #[arg(long)]
        force: bool,
    },
}

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }

    pub fn failed(message: impl Into<String>) -> Failure {
        Failure {
            code: 1,
            message: message.into(),
        }
    }

    /// The node said no: the command does not apply in its current state.
    pub fn refused(message: impl Into<String>) -> Failure {
        Failure {
            code: 3,
            message: message.into(),
        }
    }
}

/// A failed call to the node at `url`, as an operator should read it: a refusal
/// (`FAILED_PRECONDITION`) exits 3 with the node's reason; an answer that is HTTP but
/// not gRPC names the likely mistake (the HTTP port given for the gRPC one).
pub fn rpc_failure(url: &str, status: &tonic::Status) -> Failure {
    if status.code() == tonic::Code::FailedPrecondition {
        return Failure::refused(format!("{url} refused: {}", status.message()));
    }
    if status.message().contains("grpc-status header missing") {
        return Failure::failed(format!(
            "{url} answers HTTP but not gRPC: this looks like a node's HTTP port (http_listen); give its gRPC address (listen) instead"
        ));
    }
    Failure::failed(format!("{url}: {:?}: {}", status.code(), status.message()))
}

impl From<ConfigError> for Failure {
    fn from(error: ConfigError) -> Failure {
        Failure::usage(error.to_string())
    }
}

impl From<anyhow::Error> for Failure {
    fn from(error: anyhow::Error) -> Failure {
        Failure::failed(format!("{error:#}"))
    }
}

pub fn main() -> ExitCode {
    // `standin generate ...` (packaging only) has a parser of its own, so that it
    // appears in no help, man page or completion.
    if std::env::args_os()
        .nth(1)
        .is_some_and(|arg| arg == "generate")
    {
        return match generate::run(generate::GenerateCli::parse_from(
            std::env::args_os().skip(1),
        )) {
            Ok(code) => ExitCode::from(code),
            Err(failure) => {
                eprintln!("error: {}", failure.message);
                ExitCode::from(failure.code)
            }
        };
    }
    let cli = Cli::parse();
    // A command that prints ends quietly when its reader goes away (`standin log |
    // head`), as Unix tools do, rather than panicking on the closed pipe. SIGPIPE
    // itself stays ignored: these commands also talk to nodes, and a vectored write
    // to a socket the other end closed would raise it and kill the command without
    // a word (seen: `status` with its peer behind a cut link).
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info);
    }));
    crate::logging::init(cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the runtime: {error}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(run(cli.command));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("error: {}", failure.message);
            ExitCode::from(failure.code)
        }
    }
}

async fn run(command: Command) -> Result<u8, Failure> {
    match command {
        Command::Serve { config } => {
            // First: from here on a SIGHUP reloads the config instead of ending the
            // process (its default action).
            let hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
                .map_err(|error| Failure::failed(format!("cannot catch SIGHUP: {error}")))?;
            let start = crate::serve::prepare(&config).map_err(Failure::usage)?;
            crate::serve::run(start, hangups, crate::serve::shutdown_signal()).await?;
            Ok(0)
        }
        Command::Status {
            target,
            peer_url,
            json,
        } => status::run(&target, peer_url.as_deref(), json).await,
        Command::CheckConfig {
            file,
            peer,
            peer_deadline_ms,
            stopped,
        } => {
            check_config::run(
                &file,
                &check_config::Options {
                    peer,
                    peer_deadline: std::time::Duration::from_millis(peer_deadline_ms),
                    require_stopped: stopped,
                },
            )
            .await
        }
        Command::Drill { target, peer_url } => drill::run(&target, peer_url.as_deref()).await,
        Command::FailoverAck {
            target,
            peer_url,
            epoch,
        } => failover_ack::run(&target, peer_url.as_deref(), epoch).await,
        Command::Verify { target, json } => inspect::verify(&target, json).await,
        Command::Log {
            target,
            after,
            limit,
            json,
        } => inspect::log(&target, after, limit, json).await,
        Command::Tls {
            command: TlsCommand::Init { dir, nodes, force },
        } => tls::init(&dir, &nodes, force),
        Command::InitSecret { file, force } => init_secret::run(&file, force),
        Command::AgentKey { command } => agent_key::run(command),
        Command::Demo { keep } => demo::run(keep).await.map(|()| 0),
        Command::Promote { target, force } => {
            role_command(&target, RoleRequest::Promote { force }).await
        }
        Command::Switchover { target } => role_command(&target, RoleRequest::Switchover).await,
        Command::Quarantine { command } => quarantine::run(command).await,
        Command::User { command } => site::user(command).await,
        Command::App { command } => site::app(command).await,
        Command::Login {
            servers,
            user,
            app,
            password_file,
        } => site::login(&servers, &user, &app, password_file).await,
        Command::Agent {
            name,
            dispatch_url,
            secret_file,
            key_file,
            interval_ms,
            address,
            apps,
            sessions_command,
        } => {
            crate::site::check_name(&name).map_err(|error| Failure::usage(error.to_string()))?;
            let urls: Vec<String> = dispatch_url
                .split(';')
                .map(str::trim)
                .filter(|url| !url.is_empty())
                .map(str::to_string)
                .collect();
            if urls.is_empty() {
                return Err(Failure::usage("--dispatch-url needs at least one address"));
            }
            for url in &urls {
                crate::config::check_url(url).map_err(Failure::usage)?;
            }
            if interval_ms < 100 {
                return Err(Failure::usage("--interval-ms must be at least 100"));
            }
            let credential = match (key_file, secret_file) {
                (Some(file), _) => crate::agent::Credential::Key(
                    crate::agent_keys::AgentKey::read(&file, false).map_err(Failure::usage)?,
                ),
                (None, Some(file)) => crate::agent::Credential::Shared(
                    crate::secret::read_secret(&file).map_err(Failure::usage)?,
                ),
                (None, None) => {
                    return Err(Failure::usage("--key-file (or --secret-file) is needed"))
                }
            };
            let settings = crate::agent::AgentSettings {
                address: address.unwrap_or_else(|| format!("{name}:3389")),
                name,
                urls,
                credential,
                interval: std::time::Duration::from_millis(interval_ms),
                apps: apps
                    .split(',')
                    .map(str::trim)
                    .filter(|app| !app.is_empty())
                    .map(str::to_string)
                    .collect(),
                sessions_command,
            };
            crate::agent::run(settings, crate::serve::shutdown_signal()).await;
            Ok(0)
        }
    }
}

/// The URL, TLS files and secret a client command uses.
pub struct Resolved {
    pub url: String,
    pub secret: String,
    pub config: Option<Config>,
}

pub fn resolve(target: &Target) -> Result<Resolved, Failure> {
    match (&target.url, &target.secret_file) {
        (Some(url), Some(secret_file)) => {
            crate::config::check_url(url).map_err(Failure::usage)?;
            let secret = crate::secret::read_secret(secret_file).map_err(Failure::usage)?;
            Ok(Resolved {
                url: url.clone(),
                secret,
                config: None,
            })
        }
        (Some(_), None) => Err(Failure::usage("--url needs --secret-file")),
        (None, _) => {
            let config = Config::load_for_client(&target.config)?;
            let secret = crate::secret::read_secret(&config.secret_file).map_err(Failure::usage)?;
            Ok(Resolved {
                url: config.local_url(),
                secret,
                config: Some(config),
            })
        }
    }
}

impl Resolved {
    pub fn channel(&self) -> Result<tonic::transport::Channel, Failure> {
        crate::client::channel(
            &self.url,
            self.config.as_ref().and_then(|config| config.tls.as_ref()),
        )
        .map_err(Failure::usage)
    }
}

enum RoleRequest {
    Promote { force: bool },
    Switchover,
}

/// Ask a node to promote itself or to hand over, and print what it says.
async fn role_command(target: &Target, request: RoleRequest) -> Result<u8, Failure> {
    let resolved = resolve(target)?;
    let mut client =
        crate::client::cluster(resolved.channel()?, &resolved.secret).map_err(Failure::usage)?;
    let reply = match request {
        RoleRequest::Promote { force } => {
            if force {
                eprintln!("warning: forcing a promotion; if the other node is still recording, what it records from now on will be quarantined when it rejoins");
            }
            client.promote(standin_proto::v1::PromoteRequest { force }).await
        }
        RoleRequest::Switchover => client.switchover(standin_proto::v1::SwitchoverRequest {}).await,
    }
    .map_err(|status| rpc_failure(&resolved.url, &status))?
    .into_inner();
    println!("{}: {} (now {})", resolved.url, reply.message, reply.role);
    Ok(0)
}
