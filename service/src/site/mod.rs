//! The user site (users, apps, logins: this file), admission of password checks
//! (`login_gate`, `throttle`), the terminal servers' reports (`load_table`) and their
//! `agent`, with its keys (`agent_keys`) and the check of signed reports
//! (`report_auth`).
//!
//! The application-publishing user site: users and applications live in the server
//! folder (so they replicate like everything else); a password check costs the same
//! for a known user, an unknown one and an invalid name (a dummy hash); the app a
//! login asks for is looked up only among the apps that user may run, so an answer
//! never tells whether some file exists. The terminal servers' load is in
//! `load_table`, the admission of password checks in `login_gate`.
//!
//! Files:
//!
//! ```text
//! users/NAME.toml   name = "alice"
//!                   password_hash = "$argon2id$v=19$..."
//! apps/NAME.toml    command = "notepad.exe"
//!                   users = ["alice", "bob"]      # empty: every user
//! ```

pub mod agent;
pub mod agent_keys;
pub mod load_table;
pub mod login_gate;
pub mod report_auth;
pub mod throttle;

use std::path::Path;
use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, SaltString};
use argon2::Argon2;
use rand::RngCore;
use serde::{Deserialize, Serialize};

/// `user add` refuses shorter passwords (in characters).
pub const MIN_PASSWORD_CHARS: usize = 8;
/// A stored hash asking for more memory than this (KiB) is refused, not computed:
/// the folder is data an application may write, and the hashing pool's memory bound
/// assumes it (the default, which `user add` writes, is 19,456 KiB).
pub const MAX_HASH_MEMORY_KIB: u32 = 65_536;
/// ...or more passes, or more lanes, than these.
pub const MAX_HASH_PASSES: u32 = 8;
pub const MAX_HASH_LANES: u32 = 4;

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

/// Why a site operation failed. The messages of `WrongCredentials`,
/// `AppNotAvailable` and `NoTerminalServer` are what a user is told; `File` is for
/// the node's log only (its path is relative to the folder).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SiteError {
    #[error("{0:?} is not a valid name (letters, digits, '.', '-', '_'; at most 64)")]
    BadName(String),
    #[error("invalid user or password")]
    WrongCredentials,
    #[error("the application is not available to this user")]
    AppNotAvailable,
    #[error("no terminal server is up that serves the application")]
    NoTerminalServer,
    #[error("a password needs at least {MIN_PASSWORD_CHARS} characters")]
    WeakPassword,
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
/// Refused: an invalid name, a password shorter than `MIN_PASSWORD_CHARS`.
pub fn add_user(folder: &Path, name: &str, password: &str) -> Result<(), SiteError> {
    check_name(name)?;
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(SiteError::WeakPassword);
    }
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

/// `relative` under `folder`, parsed; None when it does not exist. Errors name the
/// relative path only.
fn read_toml<T: serde::de::DeserializeOwned>(
    folder: &Path,
    relative: &str,
) -> Result<Option<T>, SiteError> {
    let error = |reason: String| SiteError::File {
        path: relative.to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(folder.join(relative)) {
        Ok(text) => text,
        Err(problem) if problem.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(problem) => return Err(error(problem.to_string())),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|problem| error(problem.to_string().trim().to_string()))
}

/// A hash of a password nobody knows, with the parameters `add_user` writes: an
/// unknown user (or an invalid name) is checked against it, so it costs the same.
fn dummy_hash() -> Result<&'static str, SiteError> {
    static DUMMY: OnceLock<Option<String>> = OnceLock::new();
    DUMMY
        .get_or_init(|| {
            let mut secret = [0u8; 32];
            rand::rng().fill_bytes(&mut secret);
            let mut salt = [0u8; 16];
            rand::rng().fill_bytes(&mut salt);
            let salt = SaltString::encode_b64(&salt).ok()?;
            Argon2::default()
                .hash_password(&secret, &salt)
                .ok()
                .map(|hash| hash.to_string())
        })
        .as_deref()
        .ok_or_else(|| SiteError::File {
            path: "(dummy hash)".to_string(),
            reason: "could not compute it".to_string(),
        })
}

/// Compute the dummy hash now (at start), so the first unknown user costs no more.
pub fn prepare() {
    let _ = dummy_hash();
}

/// Refuse a stored hash whose parameters would cost more than the bounds.
fn check_cost(hash: &PasswordHash<'_>, path: &str) -> Result<(), SiteError> {
    let param = |name: &str| hash.params.get_decimal(name).unwrap_or(u32::MAX);
    let (memory, passes, lanes) = (param("m"), param("t"), param("p"));
    if memory > MAX_HASH_MEMORY_KIB || passes > MAX_HASH_PASSES || lanes > MAX_HASH_LANES {
        return Err(SiteError::File {
            path: path.to_string(),
            reason: format!("argon2 parameters m={memory} t={passes} p={lanes} exceed the bounds (m ≤ {MAX_HASH_MEMORY_KIB}, t ≤ {MAX_HASH_PASSES}, p ≤ {MAX_HASH_LANES})"),
        });
    }
    Ok(())
}

thread_local! {
    /// The argon2 memory of this thread's checks, allocated once and reused: a
    /// fresh 19 MiB per check lets the allocator (glibc raises its mmap threshold
    /// after the first) keep freed hashes' memory spread over its arenas.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `password` against a stored hash (what `PasswordVerifier::verify_password`
/// does, in this thread's reused memory); the comparison is constant-time.
fn verify(password: &[u8], hash: &PasswordHash<'_>) -> Result<bool, argon2::password_hash::Error> {
    use argon2::password_hash::Error;
    let algorithm = argon2::Algorithm::try_from(hash.algorithm)?;
    let version = hash
        .version
        .map(argon2::Version::try_from)
        .transpose()
        .map_err(|_| Error::Version)?
        .unwrap_or_default();
    let params = argon2::Params::try_from(hash)?;
    let (Some(salt), Some(expected)) = (hash.salt, hash.hash) else {
        return Err(Error::PhcStringField);
    };
    let mut salt_bytes = [0u8; 64];
    let salt = salt.decode_b64(&mut salt_bytes)?;
    let hasher = Argon2::new(algorithm, version, params.clone());
    let computed = argon2::password_hash::Output::init_with(expected.len(), |out| {
        BLOCKS.with(|blocks| {
            let mut blocks = blocks.borrow_mut();
            let needed = params.block_count();
            if blocks.len() < needed {
                blocks.resize(needed, argon2::Block::default());
            }
            hasher
                .hash_password_into_with_memory(password, salt, out, &mut blocks[..needed])
                .map_err(Error::from)
        })
    })?;
    Ok(computed == expected)
}

/// Check a user's password against `users/NAME.toml` (blocking: one argon2 hash,
/// whether or not the user exists).
pub fn authenticate(folder: &Path, user: &str, password: &str) -> Result<(), SiteError> {
    let relative = format!("users/{user}.toml");
    let record = match check_name(user) {
        Ok(()) => read_toml::<UserRecord>(folder, &relative)?,
        Err(_) => None,
    };
    let (text, known) = match &record {
        Some(record) => (record.password_hash.as_str(), true),
        None => (dummy_hash()?, false),
    };
    let hash = PasswordHash::new(text).map_err(|error| SiteError::File {
        path: relative.clone(),
        reason: format!("password_hash: {error}"),
    })?;
    check_cost(&hash, &relative)?;
    let matches = verify(password.as_bytes(), &hash).map_err(|error| SiteError::File {
        path: relative.clone(),
        reason: format!("password_hash: {error}"),
    })?;
    if matches && known {
        Ok(())
    } else {
        Err(SiteError::WrongCredentials)
    }
}

/// The command of `app` for `user` (empty `app`: none in particular). An app that is
/// not published, not allowed to the user, or not even a valid name answers the same.
pub fn app_command(folder: &Path, user: &str, app: &str) -> Result<String, SiteError> {
    if app.is_empty() {
        return Ok(String::new());
    }
    if check_name(app).is_err() {
        return Err(SiteError::AppNotAvailable);
    }
    applications_for(folder, user)?
        .into_iter()
        .find(|(name, _)| name == app)
        .map(|(_, record)| record.command)
        .ok_or(SiteError::AppNotAvailable)
}

/// The applications `user` may run, by name.
pub fn applications_for(folder: &Path, user: &str) -> Result<Vec<(String, AppRecord)>, SiteError> {
    let listing = match std::fs::read_dir(folder.join("apps")) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => {
            return Err(SiteError::File {
                path: "apps".to_string(),
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
        if let Some(record) = read_toml::<AppRecord>(folder, &format!("apps/{file_name}"))? {
            if record.users.is_empty() || record.users.iter().any(|allowed| allowed == user) {
                out.push((name.to_string(), record));
            }
        }
    }
    out.sort_by(|left, right| left.0.cmp(&right.0));
    Ok(out)
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

    #[test]
    fn users_and_apps_round_trip_and_passwords_are_checked() {
        let folder = tempfile::tempdir().unwrap();
        add_user(folder.path(), "alice", "s3cret-pass").unwrap();
        let text = std::fs::read_to_string(folder.path().join("users/alice.toml")).unwrap();
        assert!(
            text.contains("$argon2id$") && !text.contains("s3cret-pass"),
            "{text}"
        );
        assert_eq!(authenticate(folder.path(), "alice", "s3cret-pass"), Ok(()));
        for (user, password) in [
            ("alice", "wrong"),
            ("nobody", "s3cret-pass"),
            ("../etc/passwd", "x"),
            ("../users/alice", "s3cret-pass"),
        ] {
            assert_eq!(
                authenticate(folder.path(), user, password),
                Err(SiteError::WrongCredentials),
                "{user}"
            );
        }
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
        assert!(add_user(folder.path(), "../x", "long enough").is_err());
    }

    #[test]
    fn verify_agrees_with_argon2s_own_for_other_parameters_and_variants() {
        use argon2::password_hash::PasswordVerifier;
        for (algorithm, version) in [
            (argon2::Algorithm::Argon2id, argon2::Version::V0x13),
            (argon2::Algorithm::Argon2i, argon2::Version::V0x13),
            (argon2::Algorithm::Argon2d, argon2::Version::V0x10),
        ] {
            let params = argon2::Params::new(8_192, 1, 2, Some(24)).unwrap();
            let hasher = Argon2::new(algorithm, version, params);
            let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
            let text = hasher.hash_password(b"right", &salt).unwrap().to_string();
            let hash = PasswordHash::new(&text).unwrap();
            for password in [b"right".as_slice(), b"wrong", b""] {
                assert_eq!(
                    verify(password, &hash).unwrap(),
                    Argon2::default().verify_password(password, &hash).is_ok(),
                    "{text}"
                );
            }
            assert!(verify(b"right", &hash).unwrap());
        }
    }

    #[test]
    fn user_add_refuses_short_passwords() {
        let folder = tempfile::tempdir().unwrap();
        for short in ["", "a", "1234567", "ééééééé"] {
            assert_eq!(
                add_user(folder.path(), "bob", short),
                Err(SiteError::WeakPassword)
            );
        }
        assert!(!folder.path().join("users/bob.toml").exists());
        add_user(folder.path(), "bob", "12345678").unwrap();
    }

    #[test]
    fn names_are_names() {
        for good in ["alice", "ts1", "word.v2", "a-b_c", &"x".repeat(64)] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "../../x",
            "a/b",
            "a\\b",
            "a b",
            "a\0b",
            "ünïcode",
            &"x".repeat(65),
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn an_app_outside_the_apps_folder_answers_like_a_missing_one() {
        let folder = tempfile::tempdir().unwrap();
        publish_app(folder.path(), "word", "winword.exe", vec!["alice".into()]).unwrap();
        publish_app(folder.path(), "secret", "x.exe", vec!["bob".into()]).unwrap();
        // Files that exist, reached by a path: the same answer as a name that does not.
        std::fs::write(folder.path().join("users.toml"), "command = \"x\"\n").unwrap();
        let missing = app_command(folder.path(), "alice", "nothing-here");
        assert_eq!(missing, Err(SiteError::AppNotAvailable));
        for app in [
            "../users",
            "../apps/word",
            "../../../../etc/passwd",
            "secret",
        ] {
            assert_eq!(app_command(folder.path(), "alice", app), missing, "{app}");
        }
        assert_eq!(
            app_command(folder.path(), "alice", "word"),
            Ok("winword.exe".to_string())
        );
        assert_eq!(app_command(folder.path(), "alice", ""), Ok(String::new()));
    }

    #[test]
    fn a_malformed_or_too_costly_user_record_is_an_error_that_names_no_absolute_path() {
        let folder = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(folder.path().join("users")).unwrap();
        std::fs::write(folder.path().join("users/mallory.toml"), "name = [broken").unwrap();
        let error = authenticate(folder.path(), "mallory", "whatever").unwrap_err();
        assert!(matches!(error, SiteError::File { .. }), "{error:?}");
        let text = error.to_string();
        assert!(text.starts_with("users/mallory.toml: "), "{text}");
        assert!(
            !text.contains(&folder.path().display().to_string()),
            "{text}"
        );
        // A hash asking for 4 GiB is refused, not computed.
        std::fs::write(
            folder.path().join("users/greedy.toml"),
            "name = \"greedy\"\npassword_hash = \"$argon2id$v=19$m=4194304,t=2,p=1$c2FsdHNhbHRzYWx0$aGFzaGhhc2hoYXNoaGFzaGhhc2hoYXNoaGFzaGhhc2g\"\n",
        )
        .unwrap();
        let error = authenticate(folder.path(), "greedy", "whatever").unwrap_err();
        assert!(error.to_string().contains("exceed the bounds"), "{error}");
    }
}
