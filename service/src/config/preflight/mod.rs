//! The checks a node makes before it starts anything, on the files and places its
//! config names: the secrets (readable, private, hard to guess, the agents' not the
//! pair's), the TLS files (readable, valid, the key the certificate's), the folder,
//! the data_dir (present and writable, or creatable), the hooks (a program found and
//! executable) and a warning for a non-loopback `listen` without TLS. `serve` runs
//! them (and refuses to start, exit 2, on a failure), `check-config` prints them, a
//! SIGHUP runs them on the new config before anything of it is used.
//!
//! `check-config` adds what only makes sense without starting: whether a node holds
//! the data_dir's lock now (`lock_finding`) and whether the ports can be bound
//! (`port_findings`); `serve` takes the lock and binds the ports itself.

use std::ffi::CString;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::config::Config;

mod hook;
mod tls;

pub use hook::check_hook;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Ok,
    /// The node starts, but something is worth the operator's attention.
    Warn,
    /// The node would not start (or would start useless).
    Fail,
}

impl Level {
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        }
    }
}

/// One check's outcome: the config key it is about and what was found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    pub level: Level,
    pub key: &'static str,
    pub message: String,
}

impl Finding {
    fn new(level: Level, key: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            level,
            key,
            message: message.into(),
        }
    }
}

/// Whether the checks may create what is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `serve`: data_dir is created when missing.
    Serve,
    /// `check-config`, a reload: nothing is created (a probe file in an existing
    /// data_dir is written and removed at once).
    Check,
}

/// Every finding, and the secrets as read (for `serve` to use: read once, checked).
#[derive(Debug, Default)]
pub struct Preflight {
    pub findings: Vec<Finding>,
    pub secret: Option<String>,
    pub agent_secret: Option<String>,
}

impl Preflight {
    /// The first failure, if any.
    pub fn failure(&self) -> Option<&Finding> {
        self.findings
            .iter()
            .find(|finding| finding.level == Level::Fail)
    }

    pub fn warnings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .filter(|finding| finding.level == Level::Warn)
    }
}

/// Run every check on `config`'s files and places.
pub fn run(config: &Config, mode: Mode) -> Preflight {
    let mut report = Preflight::default();
    let pair = check_secret(
        &mut report.findings,
        "secret_file",
        &config.secret_file,
        config.allow_readable_secret_files,
    );
    report.secret = pair.clone();
    if let Some(file) = &config.agent_secret_file {
        let agent = check_secret(
            &mut report.findings,
            "agent_secret_file",
            file,
            config.allow_readable_secret_files,
        );
        if let Some(agent) = &agent {
            let same_content = pair.as_ref().is_some_and(|pair| {
                crate::wire::secret::constant_time_eq(agent.as_bytes(), pair.as_bytes())
            });
            if *file == config.secret_file || same_content {
                // Terminal servers hold the agent secret: with the pair's, they could
                // pull everything, write users and promote.
                report.findings.push(Finding::new(Level::Fail, "agent_secret_file", "is the pair's secret (the same file or the same content): terminal servers would hold the pair secret; make a separate one with `standin init-secret`"));
            } else {
                report.findings.push(Finding::new(
                    Level::Ok,
                    "agent_secret_file",
                    "not the pair's secret",
                ));
            }
        }
        report.agent_secret = agent;
    }
    match &config.tls {
        Some(tls) => tls::check_tls(&mut report.findings, tls),
        None if !config.listen.ip().is_loopback() => report.findings.push(Finding::new(
            Level::Warn,
            "listen",
            format!("{} is not a loopback address and there is no TLS: the pair secret and every file's content cross the network in clear; set tls_cert_file, tls_key_file and tls_ca_file (`standin tls init`) unless this network is trusted", config.listen),
        )),
        None => report.findings.push(Finding::new(
            Level::Ok,
            "listen",
            format!("{} (loopback; no TLS)", config.listen),
        )),
    }
    check_folder(&mut report.findings, &config.folder);
    check_data_dir(&mut report.findings, &config.data_dir, mode);
    for (key, command) in [
        ("on_promote", &config.on_promote),
        ("on_demote", &config.on_demote),
    ] {
        if let Some(command) = command {
            report.findings.push(check_hook(key, command));
        }
    }
    report
}

/// Read and check one secret file; its content when usable.
fn check_secret(
    findings: &mut Vec<Finding>,
    key: &'static str,
    file: &Path,
    allow_readable: bool,
) -> Option<String> {
    let secret = match crate::wire::secret::read_secret(file) {
        Ok(secret) => secret,
        Err(reason) => {
            findings.push(Finding::new(Level::Fail, key, reason));
            return None;
        }
    };
    match crate::wire::secret::check_private(file, allow_readable) {
        Err(reason) => {
            findings.push(Finding::new(Level::Fail, key, reason));
            None
        }
        Ok(Some(warning)) => {
            findings.push(Finding::new(Level::Warn, key, warning));
            Some(secret)
        }
        Ok(None) => {
            findings.push(Finding::new(
                Level::Ok,
                key,
                format!(
                    "{}: private, about {:.0} bits",
                    file.display(),
                    crate::wire::secret::entropy_bits(&secret)
                ),
            ));
            Some(secret)
        }
    }
}

/// `access(2)` for this process's real ids.
pub(crate) fn can_access(path: &Path, mode: libc::c_int) -> bool {
    let Ok(path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path that lives for the call.
    unsafe { libc::access(path.as_ptr(), mode) == 0 }
}

fn check_folder(findings: &mut Vec<Finding>, folder: &Path) {
    if !can_access(folder, libc::R_OK | libc::X_OK) {
        findings.push(Finding::new(
            Level::Fail,
            "folder",
            format!("{} cannot be read by this user", folder.display()),
        ));
    } else if !can_access(folder, libc::W_OK) {
        findings.push(Finding::new(
            Level::Warn,
            "folder",
            format!(
                "{} cannot be written by this user: as a passive this node could not apply changes",
                folder.display()
            ),
        ));
    } else {
        findings.push(Finding::new(
            Level::Ok,
            "folder",
            format!("{}: a directory, readable and writable", folder.display()),
        ));
    }
}

/// data_dir: present and writable (a probe file), or — in `Check` mode — missing
/// under a directory where it can be created; `Serve` creates it.
fn check_data_dir(findings: &mut Vec<Finding>, data_dir: &Path, mode: Mode) {
    let missing = !data_dir.exists();
    if missing && mode == Mode::Check {
        let mut ancestor = data_dir.parent();
        while let Some(dir) = ancestor {
            if dir.exists() {
                break;
            }
            ancestor = dir.parent();
        }
        let finding = match ancestor {
            Some(dir) if dir.is_dir() && can_access(dir, libc::W_OK | libc::X_OK) => Finding::new(
                Level::Ok,
                "data_dir",
                format!("{} is missing; serve will create it", data_dir.display()),
            ),
            Some(dir) => Finding::new(
                Level::Fail,
                "data_dir",
                format!(
                    "cannot create {}: {} is not a directory this user can write",
                    data_dir.display(),
                    dir.display()
                ),
            ),
            None => Finding::new(
                Level::Fail,
                "data_dir",
                format!("cannot create {}", data_dir.display()),
            ),
        };
        findings.push(finding);
        return;
    }
    if missing {
        if let Err(error) = std::fs::create_dir_all(data_dir) {
            findings.push(Finding::new(
                Level::Fail,
                "data_dir",
                format!("cannot create {}: {error}", data_dir.display()),
            ));
            return;
        }
    }
    if !data_dir.is_dir() {
        findings.push(Finding::new(
            Level::Fail,
            "data_dir",
            format!("{} is not a directory", data_dir.display()),
        ));
        return;
    }
    let probe = data_dir.join(format!(".standin-write-probe-{}", std::process::id()));
    match std::fs::write(&probe, b"probe").and_then(|()| std::fs::remove_file(&probe)) {
        Ok(()) => findings.push(Finding::new(
            Level::Ok,
            "data_dir",
            format!("{}: writable", data_dir.display()),
        )),
        Err(error) => findings.push(Finding::new(
            Level::Fail,
            "data_dir",
            format!("{} cannot be written: {error}", data_dir.display()),
        )),
    }
}

/// Whether a node holds data_dir's lock now. Not a failure unless `require_free`
/// (the node must be stopped); said either way.
pub fn lock_finding(data_dir: &Path, require_free: bool) -> (Finding, bool) {
    match crate::node::data_dir_lock::DataDirLock::holder(data_dir) {
        Ok(None) => (
            Finding::new(Level::Ok, "data_dir", "no node is running on it"),
            false,
        ),
        Ok(Some(holder)) => {
            let who = if holder.is_empty() {
                "a running standin serve".to_string()
            } else {
                format!("a running standin serve (pid {holder})")
            };
            let level = if require_free {
                Level::Fail
            } else {
                Level::Warn
            };
            (
                Finding::new(
                    level,
                    "data_dir",
                    format!("is locked by {who}: a second serve on it would stop at once"),
                ),
                true,
            )
        }
        Err(error) => (
            Finding::new(
                Level::Warn,
                "data_dir",
                format!("cannot tell whether a node runs on it: {error:#}"),
            ),
            false,
        ),
    }
}

/// Whether `listen` and `http_listen` can be bound now (each is bound and released at
/// once). When a node runs on this data_dir its own ports are taken, which is no
/// failure.
pub fn port_findings(config: &Config, node_running: bool) -> Vec<Finding> {
    let mut findings = Vec::new();
    let ports: [(&'static str, Option<SocketAddr>); 2] = [
        ("listen", Some(config.listen)),
        ("http_listen", config.http_listen),
    ];
    for (key, address) in ports {
        let Some(address) = address else { continue };
        let finding = match std::net::TcpListener::bind(address) {
            Ok(_) => Finding::new(Level::Ok, key, format!("{address} can be bound")),
            Err(error) if node_running && error.kind() == std::io::ErrorKind::AddrInUse => {
                Finding::new(
                    Level::Warn,
                    key,
                    format!(
                        "{address} is in use (by the node running on this data_dir, presumably)"
                    ),
                )
            }
            Err(error) => Finding::new(
                Level::Fail,
                key,
                format!("{address} cannot be bound: {error}"),
            ),
        };
        findings.push(finding);
    }
    findings
}
