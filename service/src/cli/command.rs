//! The command line's shape: `Cli`, the global options, `Target` (which node a client
//! command talks to) and the `Command` enum of every subcommand with its arguments, as
//! clap parses them (the man page and completions are generated from it). What each
//! command does is in `mod.rs` (dispatch) and the subcommands' modules.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use super::{agent_key, quarantine, site};
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
