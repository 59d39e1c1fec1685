//! Per-agent keys: each terminal server's agent has a key of its own, and a node
//! believes a report (its load, its witness vote) only for the name whose key signed
//! it. The keys are node-local configuration, never replicated data: a directory
//! (`agent_keys_dir`, e.g. /etc/standin/agent-keys) holding one file per agent,
//! `NAME.key`, 64 hex digits (32 random bytes), mode 0600, copied to both nodes and to
//! that one terminal server. `standin agent-key add|list|remove` manage it.
//!
//! The MAC is blake3 in its keyed mode (a PRF by design, so no HMAC construction is
//! needed) over a fixed domain string and the report's encoded bytes.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

/// Where `standin agent-key` writes by default (and what the examples configure).
pub const DEFAULT_DIR: &str = "/etc/standin/agent-keys";
/// The file name suffix of a key.
const SUFFIX: &str = ".key";
/// What a MAC covers before the report's bytes (so a key's MAC of anything else can
/// never pass for a report's).
const MAC_DOMAIN: &[u8] = b"standin.v1 LoadReport MAC\0";
const FINGERPRINT_CONTEXT: &str = "standin 2025 agent key fingerprint v1";

/// One agent's key. Its `Debug` shows the fingerprint only.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentKey([u8; 32]);

impl std::fmt::Debug for AgentKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(formatter, "AgentKey({})", self.short_fingerprint())
    }
}

impl AgentKey {
    /// A fresh random key.
    pub fn generate() -> AgentKey {
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        AgentKey(bytes)
    }

    /// The key in its file's form: 64 hex digits.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    /// Parse a key file's text (64 hex digits, surrounding whitespace ignored).
    pub fn parse(text: &str) -> Result<AgentKey, String> {
        let text = text.trim();
        if text.len() != 64 || !text.bytes().all(|byte| byte.is_ascii_hexdigit()) {
            return Err(
                "not an agent key (64 hex digits, as `standin agent-key add` writes)".to_string(),
            );
        }
        let mut bytes = [0u8; 32];
        for (index, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&text[2 * index..2 * index + 2], 16)
                .map_err(|error| error.to_string())?;
        }
        if bytes.iter().all(|byte| *byte == bytes[0]) {
            return Err(
                "the key is one byte repeated: make a real one with `standin agent-key add`"
                    .to_string(),
            );
        }
        Ok(AgentKey(bytes))
    }

    /// Read a key file (the agent's `--key-file`, or one of a node's keys): refused when
    /// users other than its owner can read it, unless `allow_readable`.
    pub fn read(path: &Path, allow_readable: bool) -> Result<AgentKey, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        let key =
            AgentKey::parse(&text).map_err(|reason| format!("{}: {reason}", path.display()))?;
        crate::wire::secret::check_private(path, allow_readable)?;
        Ok(key)
    }

    /// The MAC of a report's bytes under this key.
    pub fn mac(&self, body: &[u8]) -> [u8; 32] {
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(MAC_DOMAIN);
        hasher.update(body);
        *hasher.finalize().as_bytes()
    }

    /// Whether `mac` is this key's MAC of `body` (compared in constant time).
    pub fn verify(&self, body: &[u8], mac: &[u8]) -> bool {
        let Ok(mac) = <[u8; 32]>::try_from(mac) else {
            return false;
        };
        let mut hasher = blake3::Hasher::new_keyed(&self.0);
        hasher.update(MAC_DOMAIN);
        hasher.update(body);
        hasher.finalize() == blake3::Hash::from_bytes(mac)
    }

    /// A one-way fingerprint: tells keys apart (the voter-set hash, `agent-key list`)
    /// without revealing them.
    pub fn fingerprint(&self) -> [u8; 32] {
        blake3::derive_key(FINGERPRINT_CONTEXT, &self.0)
    }

    /// The fingerprint's first 8 bytes in hex, for people.
    pub fn short_fingerprint(&self) -> String {
        self.fingerprint()[..8]
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }
}

/// A node's agent keys, by agent name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentKeys {
    pub dir: PathBuf,
    keys: BTreeMap<String, AgentKey>,
}

impl AgentKeys {
    /// Read every `NAME.key` of `dir`. Refused: a key readable by group or others
    /// (unless `allow_readable`), a bad name or key, two names with one key (its
    /// holder could speak as both). Other files are ignored.
    pub fn load(dir: &Path, allow_readable: bool) -> Result<AgentKeys, String> {
        let mut keys = BTreeMap::new();
        for (name, path) in key_files(dir)? {
            crate::site::check_name(&name)
                .map_err(|error| format!("{}: {error}", path.display()))?;
            let key = AgentKey::read(&path, allow_readable)?;
            keys.insert(name, key);
        }
        let mut seen: BTreeMap<[u8; 32], &str> = BTreeMap::new();
        for (name, key) in &keys {
            if let Some(other) = seen.insert(key.fingerprint(), name) {
                return Err(format!("{other} and {name} have the same key: whoever holds it could report as both; give each agent its own (`standin agent-key add {name} --force`)"));
            }
        }
        Ok(AgentKeys {
            dir: dir.to_path_buf(),
            keys,
        })
    }

    /// Keys from names and values (tests).
    pub fn from_keys(keys: impl IntoIterator<Item = (String, AgentKey)>) -> AgentKeys {
        AgentKeys {
            dir: PathBuf::new(),
            keys: keys.into_iter().collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<&AgentKey> {
        self.keys.get(name)
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.keys.keys()
    }
}

/// The `(name, path)` of every `NAME.key` in `dir`, sorted by name.
pub fn key_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, String> {
    let entries = std::fs::read_dir(dir).map_err(|error| format!("{}: {error}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| format!("{}: {error}", dir.display()))?;
        let file_name = entry.file_name();
        let Some(name) = file_name
            .to_str()
            .and_then(|file_name| file_name.strip_suffix(SUFFIX))
        else {
            continue;
        };
        files.push((name.to_string(), entry.path()));
    }
    files.sort();
    Ok(files)
}

/// The file of `name`'s key in `dir`.
pub fn key_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}{SUFFIX}"))
}

/// Write a fresh key for `name` into `dir` (created with mode 0700 when missing), mode
/// 0600; an existing key is replaced only with `overwrite`. Returns the file.
pub fn add(dir: &Path, name: &str, overwrite: bool) -> std::io::Result<PathBuf> {
    if !dir.is_dir() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let path = key_path(dir, name);
    let key = AgentKey::generate();
    // Written under a temporary name and renamed, so a node never reads half a key.
    let temporary = dir.join(format!(".{name}{SUFFIX}.writing"));
    let _ = std::fs::remove_file(&temporary);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{}", key.to_hex())?;
    file.sync_all()?;
    drop(file);
    let placed = if overwrite {
        std::fs::rename(&temporary, &path)
    } else {
        // A hard link fails when the name exists: no race with another writer.
        std::fs::hard_link(&temporary, &path)
    };
    let _ = std::fs::remove_file(&temporary);
    placed?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_signs_and_only_it_verifies() {
        let one = AgentKey::generate();
        let other = AgentKey::generate();
        let mac = one.mac(b"report");
        assert!(one.verify(b"report", &mac));
        assert!(!one.verify(b"report!", &mac));
        assert!(!other.verify(b"report", &mac));
        assert!(!one.verify(b"report", &mac[..31]));
        assert_eq!(AgentKey::parse(&one.to_hex()).unwrap(), one);
        assert_ne!(one.fingerprint(), other.fingerprint());
        assert!(!format!("{one:?}").contains(&one.to_hex()));
    }

    #[test]
    fn bad_keys_are_refused() {
        for text in [
            "",
            "abc",
            &"0".repeat(64),
            &"g".repeat(64),
            &"ab".repeat(33),
        ] {
            assert!(AgentKey::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn add_writes_private_files_once_and_load_reads_them() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("agent-keys");
        let ts1 = add(&dir, "ts1", false).unwrap();
        add(&dir, "ts2", false).unwrap();
        assert_eq!(
            std::fs::metadata(&ts1).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let first = std::fs::read_to_string(&ts1).unwrap();
        let error = add(&dir, "ts1", false).unwrap_err();
        assert_eq!(error.kind(), std::io::ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&ts1).unwrap(), first);
        add(&dir, "ts1", true).unwrap();
        assert_ne!(std::fs::read_to_string(&ts1).unwrap(), first);
        std::fs::write(dir.join("README"), "not a key").unwrap();
        let keys = AgentKeys::load(&dir, false).unwrap();
        assert_eq!(keys.names().collect::<Vec<_>>(), ["ts1", "ts2"]);

        // Readable by others, two names sharing a key, a bad name: refused.
        std::fs::set_permissions(&ts1, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(AgentKeys::load(&dir, false)
            .unwrap_err()
            .contains("mode 644"));
        assert!(AgentKeys::load(&dir, true).is_ok());
        std::fs::set_permissions(&ts1, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::copy(&ts1, dir.join("ts3.key")).unwrap();
        assert!(AgentKeys::load(&dir, false)
            .unwrap_err()
            .contains("the same key"));
        std::fs::remove_file(dir.join("ts3.key")).unwrap();
        add(&dir, ".hidden", false).unwrap();
        assert!(AgentKeys::load(&dir, false).is_err());
    }
}
