//! The pair's shared secret: reading it, writing a fresh one, comparing in constant time.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::RngCore;

/// Read a secret file: its content, trimmed; at least 16 characters.
pub fn read_secret(path: &Path) -> Result<String, String> {
    let text =
        std::fs::read_to_string(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let secret = text.trim().to_string();
    if secret.len() < 16 {
        return Err(format!(
            "{}: the secret must be at least 16 characters (try `standin init-secret`)",
            path.display()
        ));
    }
    if secret.bytes().any(|byte| !byte.is_ascii_graphic()) {
        return Err(format!(
            "{}: the secret must be printable ASCII without spaces",
            path.display()
        ));
    }
    if let Ok(metadata) = std::fs::metadata(path) {
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(file = %path.display(), "secret file is readable by other users; chmod 600 it");
        }
    }
    Ok(secret)
}

/// Write 32 random bytes, hex-encoded, to a new file with mode 0600.
pub fn init_secret(path: &Path, overwrite: bool) -> std::io::Result<()> {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let text: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).mode(0o600);
    if overwrite {
        options.create(true).truncate(true);
    } else {
        options.create_new(true);
    }
    let mut file = options.open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    writeln!(file, "{text}")?;
    file.sync_all()
}

/// A random secret nobody knows (for a service that must refuse every caller).
pub fn unguessable() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Compare two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    let difference = left
        .iter()
        .zip(right)
        .fold(0u8, |accumulated, (a, b)| accumulated | (a ^ b));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_secret_writes_a_private_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pair.secret");
        init_secret(&path, false).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let secret = read_secret(&path).unwrap();
        assert_eq!(secret.len(), 64);
        assert!(
            init_secret(&path, false).is_err(),
            "an existing secret is not overwritten"
        );
        init_secret(&path, true).unwrap();
        assert_ne!(read_secret(&path).unwrap(), secret);
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
