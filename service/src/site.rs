//! The application-publishing user site: users and applications live in the server
//! folder (so they replicate like everything else), terminal servers' load lives in
//! memory on both nodes, and a login picks the least-loaded terminal server.
//!
//! Files:
//!
//! ```text
//! users/NAME.toml   name = "alice"
//!                   password_hash = "$argon2id$v=19$..."
//! apps/NAME.toml    command = "notepad.exe"
//!                   users = ["alice", "bob"]      # empty: every user
//! ```
//!
//! Load score (lower is better): `100 × sessions + cpu_percent + memory_percent / 2`,
//! so sessions dominate and CPU breaks ties. A report older than three of its own
//! intervals counts as down and is never chosen.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// A user record.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserRecord {
    pub name: String,
    pub password_hash: String,
}

/// A published application.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRecord {
    pub command: String,
    #[serde(default)]
    pub users: Vec<String>,
}

/// Why a site operation failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SiteError {
    #[error("{0:?} is not a valid name (letters, digits, '.', '-', '_'; at most 64)")]
    BadName(String),
    #[error("wrong user or password")]
    WrongCredentials,
    #[error("application {0:?} is not published")]
    NoSuchApp(String),
    #[error("{user:?} may not run {app:?}")]
    NotAllowed { user: String, app: String },
    #[error("no terminal server is up that serves {0}")]
    NoTerminalServer(String),
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
}

/// Names of users and applications become file names: keep them plain.
pub fn check_name(name: &str) -> Result<(), SiteError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.chars().all(|character| {
            character.is_ascii_alphanumeric() || matches!(character, '.' | '-' | '_')
        });
    if ok {
        Ok(())
    } else {
        Err(SiteError::BadName(name.to_string()))
    }
}

fn write_atomically(path: &Path, text: &str) -> Result<(), SiteError> {
    let error = |reason: std::io::Error| SiteError::File {
        path: path.display().to_string(),
        reason: reason.to_string(),
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(error)?;
    }
    let temporary = path.with_extension("toml.writing");
    std::fs::write(&temporary, text).map_err(error)?;
    std::fs::rename(&temporary, path).map_err(error)
}

/// Add (or replace) a user with an argon2id hash of `password`.
pub fn add_user(folder: &Path, name: &str, password: &str) -> Result<(), SiteError> {
    check_name(name)?;
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|error| SiteError::File {
        path: "salt".to_string(),
        reason: error.to_string(),
    })?;
    let hash = Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|error| SiteError::File {
            path: "password hash".to_string(),
            reason: error.to_string(),
        })?
        .to_string();
    let record = UserRecord {
        name: name.to_string(),
        password_hash: hash,
    };
    let text = toml::to_string(&record).map_err(|error| SiteError::File {
        path: name.to_string(),
        reason: error.to_string(),
    })?;
    write_atomically(&folder.join("users").join(format!("{name}.toml")), &text)
}

/// Publish (or replace) an application.
pub fn publish_app(
    folder: &Path,
    name: &str,
    command: &str,
    users: Vec<String>,
) -> Result<(), SiteError> {
    check_name(name)?;
    for user in &users {
        check_name(user)?;
    }
    let record = AppRecord {
        command: command.to_string(),
        users,
    };
    let text = toml::to_string(&record).map_err(|error| SiteError::File {
        path: name.to_string(),
        reason: error.to_string(),
    })?;
    write_atomically(&folder.join("apps").join(format!("{name}.toml")), &text)
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, SiteError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(SiteError::File {
                path: path.display().to_string(),
                reason: error.to_string(),
            })
        }
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|error| SiteError::File {
            path: path.display().to_string(),
            reason: error.to_string(),
        })
}

/// Check a user's password against `users/NAME.toml`.
pub fn authenticate(folder: &Path, user: &str, password: &str) -> Result<(), SiteError> {
    check_name(user).map_err(|_| SiteError::WrongCredentials)?;
    let Some(record) = read_toml::<UserRecord>(&folder.join("users").join(format!("{user}.toml")))?
    else {
        return Err(SiteError::WrongCredentials);
    };
    let hash = PasswordHash::new(&record.password_hash).map_err(|_| SiteError::WrongCredentials)?;
    Argon2::default()
        .verify_password(password.as_bytes(), &hash)
        .map_err(|_| SiteError::WrongCredentials)
}

/// The applications `user` may run, by name.
pub fn applications_for(folder: &Path, user: &str) -> Result<Vec<(String, AppRecord)>, SiteError> {
    let dir = folder.join("apps");
    let listing = match std::fs::read_dir(&dir) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(SiteError::File {
                path: dir.display().to_string(),
                reason: error.to_string(),
            })
        }
    };
    let mut out = Vec::new();
    for item in listing.flatten() {
        let file_name = item.file_name().to_string_lossy().into_owned();
        let Some(name) = file_name.strip_suffix(".toml") else {
            continue;
        };
        if check_name(name).is_err() {
            continue;
        }
        if let Some(record) = read_toml::<AppRecord>(&item.path())? {
            if record.users.is_empty() || record.users.iter().any(|allowed| allowed == user) {
                out.push((name.to_string(), record));
            }
        }
    }
    out.sort_by(|left, right| left.0.cmp(&right.0));
    Ok(out)
}

/// One terminal server's last report.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    pub name: String,
    pub address: String,
    pub cpu_percent: f64,
    pub memory_percent: f64,
    pub sessions: u32,
    pub apps: Vec<String>,
    pub interval_ms: u64,
    pub reported_at_ms: u64,
}

impl Load {
    pub fn is_down(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.reported_at_ms) > 3 * self.interval_ms.max(1)
    }

    pub fn score(&self) -> f64 {
        100.0 * self.sessions as f64 + self.cpu_percent + self.memory_percent / 2.0
    }

    fn serves(&self, app: &str) -> bool {
        app.is_empty() || self.apps.is_empty() || self.apps.iter().any(|served| served == app)
    }
}

/// The terminal servers' last reports, kept in memory on both nodes.
#[derive(Default)]
pub struct LoadTable {
    servers: Mutex<HashMap<String, Load>>,
}

/// At most this many terminal servers are tracked (a bound on memory).
pub const MAX_TERMINAL_SERVERS: usize = 10_000;

impl LoadTable {
    pub fn report(&self, load: Load) -> Result<(), SiteError> {
        check_name(&load.name)?;
        let mut servers = self
            .servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !servers.contains_key(&load.name) && servers.len() >= MAX_TERMINAL_SERVERS {
            return Err(SiteError::BadName(format!("{} (table full)", load.name)));
        }
        servers.insert(load.name.clone(), load);
        Ok(())
    }

    /// Every server, by name.
    pub fn snapshot(&self) -> Vec<Load> {
        let servers = self
            .servers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut out: Vec<Load> = servers.values().cloned().collect();
        out.sort_by(|left, right| left.name.cmp(&right.name));
        out
    }

    /// The least-loaded server that is up and serves `app`.
    pub fn choose(&self, app: &str, now_ms: u64) -> Result<Load, SiteError> {
        self.snapshot()
            .into_iter()
            .filter(|load| !load.is_down(now_ms) && load.serves(app))
            .min_by(|left, right| {
                left.score()
                    .total_cmp(&right.score())
                    .then_with(|| left.name.cmp(&right.name))
            })
            .ok_or_else(|| {
                SiteError::NoTerminalServer(if app.is_empty() {
                    "any application".to_string()
                } else {
                    app.to_string()
                })
            })
    }
}

/// A fresh session id.
pub fn session_id() -> String {
    let mut bytes = [0u8; 16];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(name: &str, sessions: u32, reported_at_ms: u64, apps: &[&str]) -> Load {
        Load {
            name: name.to_string(),
            address: format!("{name}:3389"),
            cpu_percent: 10.0,
            memory_percent: 20.0,
            sessions,
            apps: apps.iter().map(|app| app.to_string()).collect(),
            interval_ms: 1_000,
            reported_at_ms,
        }
    }

    #[test]
    fn users_and_apps_round_trip_and_passwords_are_checked() {
        let folder = tempfile::tempdir().unwrap();
        add_user(folder.path(), "alice", "s3cret").unwrap();
        let text = std::fs::read_to_string(folder.path().join("users/alice.toml")).unwrap();
        assert!(
            text.contains("$argon2id$") && !text.contains("s3cret"),
            "{text}"
        );
        assert_eq!(authenticate(folder.path(), "alice", "s3cret"), Ok(()));
        assert_eq!(
            authenticate(folder.path(), "alice", "wrong"),
            Err(SiteError::WrongCredentials)
        );
        assert_eq!(
            authenticate(folder.path(), "nobody", "s3cret"),
            Err(SiteError::WrongCredentials)
        );
        assert_eq!(
            authenticate(folder.path(), "../etc/passwd", "x"),
            Err(SiteError::WrongCredentials)
        );
        publish_app(
            folder.path(),
            "word",
            "winword.exe",
            vec!["alice".to_string()],
        )
        .unwrap();
        publish_app(folder.path(), "calc", "calc.exe", vec![]).unwrap();
        let names: Vec<String> = applications_for(folder.path(), "alice")
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, vec!["calc", "word"]);
        let names: Vec<String> = applications_for(folder.path(), "bob")
            .unwrap()
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, vec!["calc"]);
        assert!(add_user(folder.path(), "../x", "p").is_err());
    }

    #[test]
    fn the_least_loaded_live_server_that_serves_the_app_is_chosen() {
        let table = LoadTable::default();
        table.report(load("ts1", 3, 10_000, &[])).unwrap();
        table.report(load("ts2", 1, 10_000, &["word"])).unwrap();
        table.report(load("ts3", 0, 1_000, &[])).unwrap(); // stale: 9 s old, interval 1 s
        assert_eq!(table.choose("word", 10_500).unwrap().name, "ts2");
        assert_eq!(
            table.choose("calc", 10_500).unwrap().name,
            "ts1",
            "ts2 does not serve calc"
        );
        assert!(table
            .snapshot()
            .iter()
            .any(|load| load.name == "ts3" && load.is_down(10_500)));
        assert!(matches!(
            table.choose("calc", 60_000),
            Err(SiteError::NoTerminalServer(_))
        ));
    }
}
