//! The `standin` command line: argument parsing and dispatch. Each subcommand lives in
//! its own module; `main` maps failures to exit codes: 1 for a failed check or
//! operation (or a node that cannot be reached), 2 for a bad config or usage, 3 for a
//! command the node refused (it does not apply now; nothing was changed). The
//! commands and their arguments are declared in `command.rs`.

pub mod agent_key;
pub mod check_config;
mod command;
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

use std::process::ExitCode;

use clap::Parser;

pub use command::{Cli, Command, Target, TlsCommand};

use crate::config::{Config, ConfigError};

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
        Failure::failed(chain_text(&error))
    }
}

/// `error` and its causes, joined by ": ", a cause left out where the text so far
/// already ends with it (the engine's I/O errors name their cause in their own text
/// too: `{error:#}` printed it twice).
fn chain_text(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
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
            let start = crate::node::serve::prepare(&config).map_err(Failure::usage)?;
            crate::node::serve::run(start, hangups, crate::node::serve::shutdown_signal()).await?;
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
                (Some(file), _) => crate::site::agent::Credential::Key(
                    crate::site::agent_keys::AgentKey::read(&file, false)
                        .map_err(Failure::usage)?,
                ),
                (None, Some(file)) => crate::site::agent::Credential::Shared(
                    crate::wire::secret::read_secret(&file).map_err(Failure::usage)?,
                ),
                (None, None) => {
                    return Err(Failure::usage("--key-file (or --secret-file) is needed"))
                }
            };
            let settings = crate::site::agent::AgentSettings {
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
            crate::site::agent::run(settings, crate::node::serve::shutdown_signal()).await;
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
            let secret = crate::wire::secret::read_secret(secret_file).map_err(Failure::usage)?;
            Ok(Resolved {
                url: url.clone(),
                secret,
                config: None,
            })
        }
        (Some(_), None) => Err(Failure::usage("--url needs --secret-file")),
        (None, _) => {
            let config = Config::load_for_client(&target.config)?;
            let secret =
                crate::wire::secret::read_secret(&config.secret_file).map_err(Failure::usage)?;
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
        crate::wire::client::channel(
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
    let mut client = crate::wire::client::cluster(resolved.channel()?, &resolved.secret)
        .map_err(Failure::usage)?;
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

#[cfg(test)]
mod chain_tests {
    #[test]
    fn a_cause_already_in_the_message_is_not_repeated() {
        let io = standin_engine::Error::Io {
            op: "fdatasync",
            path: "/data/db/db".into(),
            source: std::io::Error::from_raw_os_error(libc::EIO),
        };
        let error = anyhow::Error::new(io).context("serve");
        let text = super::chain_text(&error);
        assert_eq!(text.matches("Input/output error").count(), 1, "{text}");
        assert!(text.starts_with("serve: fdatasync /data/db/db: "), "{text}");
        // A cause not in the text is still given.
        let error = anyhow::anyhow!("inner cause").context("outer");
        assert_eq!(super::chain_text(&error), "outer: inner cause");
    }
}
