//! `standin agent-key add|list|remove`: the per-agent keys of a node's
//! `agent_keys_dir` (see `agent_keys`). `add` prints where it wrote the key and what
//! to copy where; every change needs both nodes to have the same keys and a restart.

use std::path::{Path, PathBuf};

use clap::Subcommand;

use super::Failure;
use crate::site::agent_keys;

#[derive(Debug, Subcommand)]
pub enum AgentKeyCommand {
    /// Write a fresh key for the agent NAME (mode 0600) and say what to copy where.
    Add {
        name: String,
        /// The nodes' agent_keys_dir.
        #[arg(long, default_value = agent_keys::DEFAULT_DIR)]
        dir: PathBuf,
        /// Replace an existing key (the agent and the other node need the new one).
        #[arg(long)]
        force: bool,
    },
    /// List the keys: each agent's name, a fingerprint (compare it on the other node)
    /// and the file's mode.
    List {
        #[arg(long, default_value = agent_keys::DEFAULT_DIR)]
        dir: PathBuf,
    },
    /// Remove the agent NAME's key: its reports and votes no longer count (after a
    /// restart; do it on both nodes).
    Remove {
        name: String,
        #[arg(long, default_value = agent_keys::DEFAULT_DIR)]
        dir: PathBuf,
    },
}

pub fn run(command: AgentKeyCommand) -> Result<u8, Failure> {
    match command {
        AgentKeyCommand::Add { name, dir, force } => add(&name, &dir, force),
        AgentKeyCommand::List { dir } => list(&dir),
        AgentKeyCommand::Remove { name, dir } => remove(&name, &dir),
    }
}

fn check_name(name: &str) -> Result<(), Failure> {
    crate::site::check_name(name).map_err(|error| {
        Failure::usage(format!(
            "{error} (an agent's name: letters, digits, - _ ., at most 64)"
        ))
    })
}

fn add(name: &str, dir: &Path, force: bool) -> Result<u8, Failure> {
    check_name(name)?;
    let path = agent_keys::add(dir, name, force).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::usage(format!(
                "{} exists; use --force to replace it (the agent and the other node then need the new key)",
                agent_keys::key_path(dir, name).display()
            ))
        } else {
            Failure::failed(format!("{}: {error}", dir.display()))
        }
    })?;
    println!("wrote {} (mode 0600)", path.display());
    println!(
        "copy it, keeping it private (mode 0600, root-owned):\n  \
         - to the other node, as {} (both nodes need the same keys);\n  \
         - to the terminal server {name}, as /etc/standin/agent.key: its agent runs with \
         --key-file /etc/standin/agent.key (STANDIN_AGENT_KEY_FILE).\n\
         Both nodes' configs need agent_keys_dir = \"{}\"; restart them to take the key.",
        path.display(),
        dir.display()
    );
    Ok(0)
}

fn list(dir: &Path) -> Result<u8, Failure> {
    use std::os::unix::fs::PermissionsExt;
    let files = agent_keys::key_files(dir).map_err(Failure::failed)?;
    let mut problems = 0;
    for (name, path) in files {
        let mode = std::fs::metadata(&path)
            .map(|metadata| format!("{:o}", metadata.permissions().mode() & 0o777))
            .unwrap_or_else(|_| "?".to_string());
        let key = crate::site::check_name(&name)
            .map_err(|error| error.to_string())
            .and_then(|()| agent_keys::AgentKey::read(&path, false));
        match key {
            Ok(key) => println!("{name}  {}  {mode}", key.short_fingerprint()),
            Err(reason) => {
                problems += 1;
                println!("{name}  refused: {reason}");
            }
        }
    }
    if problems > 0 {
        return Err(Failure::failed(format!(
            "{problems} key file(s) a node would refuse"
        )));
    }
    Ok(0)
}

fn remove(name: &str, dir: &Path) -> Result<u8, Failure> {
    check_name(name)?;
    let path = agent_keys::key_path(dir, name);
    std::fs::remove_file(&path)
        .map_err(|error| Failure::failed(format!("{}: {error}", path.display())))?;
    println!(
        "removed {}; remove it from the other node too, then restart both",
        path.display()
    );
    Ok(0)
}
