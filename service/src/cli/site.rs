//! `standin user add`, `standin app publish`, `standin login`: the user site from the
//! command line. Records are written into the folder of the node the config names,
//! which must be the authoritative one (capture records them; they replicate).

use std::io::BufRead;
use std::path::PathBuf;

use clap::Subcommand;
use standin_proto::v1 as wire;
use standin_proto::v1::site_client::SiteClient;

use super::{resolve, Failure, Target};

#[derive(Subcommand, Debug)]
pub enum UserCommand {
    /// Add a user (or set a new password), hashed with argon2id.
    Add {
        #[command(flatten)]
        target: Target,
        name: String,
        /// Read the password from this file instead of asking for it.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AppCommand {
    /// Publish (or replace) an application.
    Publish {
        #[command(flatten)]
        target: Target,
        name: String,
        #[arg(long)]
        command: String,
        /// Users allowed to run it (comma-separated; default: every user).
        #[arg(long, default_value = "")]
        users: String,
    },
}

fn read_password(file: Option<PathBuf>) -> Result<String, Failure> {
    let text = match file {
        Some(path) => std::fs::read_to_string(&path)
            .map_err(|error| Failure::usage(format!("{}: {error}", path.display())))?,
        None => {
            eprint!("password: ");
            let line =
                read_line_without_echo().map_err(|error| Failure::usage(error.to_string()))?;
            eprintln!();
            line
        }
    };
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(Failure::usage("an empty password"));
    }
    Ok(password)
}

/// One line from stdin; on a terminal, without echoing it.
fn read_line_without_echo() -> std::io::Result<String> {
    use std::os::fd::AsRawFd;
    let stdin = std::io::stdin();
    let fd = stdin.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it or fails (not a terminal).
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    let on_terminal = unsafe { libc::tcgetattr(fd, &mut saved) } == 0;
    if on_terminal {
        let mut quiet = saved;
        quiet.c_lflag &= !libc::ECHO;
        // SAFETY: setting attributes we just read, with echo off.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let result = stdin.lock().read_line(&mut line);
    if on_terminal {
        // SAFETY: restoring the attributes read above.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    }
    result.map(|_| line)
}

/// The node's folder, refusing a node that is not authoritative (its folder follows
/// the active and a record written there would be overwritten).
async fn authoritative_folder(target: &Target) -> Result<PathBuf, Failure> {
    let resolved = resolve(target)?;
    let config = resolved
        .config
        .clone()
        .ok_or_else(|| Failure::usage("needs --config (the node's folder)"))?;
    let status = super::status::fetch(&resolved.url, &resolved.secret, resolved.channel()?).await?;
    if status.role != "active" {
        return Err(Failure::failed(format!(
            "{} is {}; run this on the active node ({})",
            status.node, status.role, status.peer_url
        )));
    }
    Ok(config.folder)
}

pub async fn user(command: UserCommand) -> Result<u8, Failure> {
    match command {
        UserCommand::Add {
            target,
            name,
            password_file,
        } => {
            crate::site::check_name(&name).map_err(|error| Failure::usage(error.to_string()))?;
            let folder = authoritative_folder(&target).await?;
            let password = read_password(password_file)?;
            crate::site::add_user(&folder, &name, &password).map_err(|error| match error {
                crate::site::SiteError::WeakPassword => Failure::usage(error.to_string()),
                _ => Failure::failed(error.to_string()),
            })?;
            println!("added user {name} (users/{name}.toml)");
            Ok(0)
        }
    }
}

pub async fn app(command: AppCommand) -> Result<u8, Failure> {
    match command {
        AppCommand::Publish {
            target,
            name,
            command,
            users,
        } => {
            let folder = authoritative_folder(&target).await?;
            let users: Vec<String> = users
                .split(',')
                .map(str::trim)
                .filter(|user| !user.is_empty())
                .map(str::to_string)
                .collect();
            crate::site::publish_app(&folder, &name, &command, users)
                .map_err(|error| Failure::usage(error.to_string()))?;
            println!("published {name} (apps/{name}.toml)");
            Ok(0)
        }
    }
}

/// Try the servers in order; a non-authoritative node names the active, which is
/// tried next (at most once each).
pub async fn login(
    servers: &str,
    user: &str,
    app: &str,
    password_file: Option<PathBuf>,
) -> Result<u8, Failure> {
    let mut queue: std::collections::VecDeque<String> = servers
        .split(';')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(str::to_string)
        .collect();
    if queue.is_empty() {
        return Err(Failure::usage("--servers needs at least one address"));
    }
    let password = read_password(password_file)?;
    let mut tried = std::collections::HashSet::new();
    let mut reasons = Vec::new();
    while let Some(url) = queue.pop_front() {
        if !tried.insert(url.clone()) || tried.len() > 8 {
            continue;
        }
        crate::config::check_url(&url).map_err(Failure::usage)?;
        let channel = crate::wire::client::channel(&url, None).map_err(Failure::usage)?;
        let mut client = SiteClient::new(channel);
        let request = wire::LoginRequest {
            user: user.as_bytes().to_vec(),
            password: password.as_bytes().to_vec(),
            app: app.as_bytes().to_vec(),
        };
        match client.login(request).await {
            Ok(reply) => {
                let reply = reply.into_inner();
                println!(
                    "connect to {} ({}) session {}{}",
                    reply.terminal_server,
                    reply.address,
                    reply.session_id,
                    if reply.app.is_empty() {
                        String::new()
                    } else {
                        format!(" to run {} ({})", reply.app, reply.command)
                    }
                );
                println!("logged in on {url}");
                return Ok(0);
            }
            Err(status) if status.code() == tonic::Code::FailedPrecondition => {
                let active = status
                    .metadata()
                    .get("standin-active")
                    .and_then(|value| value.to_str().ok())
                    .map(str::to_string);
                eprintln!("{url}: {}", status.message());
                if let Some(active) = active {
                    queue.push_front(active);
                }
            }
            Err(status)
                if matches!(
                    status.code(),
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Unknown
                ) && !status.message().contains("terminal server") =>
            {
                eprintln!("{url}: unreachable ({})", status.message());
                reasons.push(format!("{url}: unreachable"));
            }
            Err(status) => return Err(Failure::failed(format!("{url}: {}", status.message()))),
        }
    }
    Err(Failure::failed(format!(
        "no server let you log in ({})",
        reasons.join("; ")
    )))
}
