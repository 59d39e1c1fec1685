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
    let bits = entropy_bits(&secret);
    if bits < MIN_ENTROPY_BITS {
        return Err(format!(
            "{}: the secret is too easy to guess (about {bits:.0} bits by its characters' spread; at least {MIN_ENTROPY_BITS:.0} needed: try `standin init-secret`)",
            path.display()
        ));
    }
    Ok(secret)
}

/// The least a secret's estimated entropy may be, in bits.
pub const MIN_ENTROPY_BITS: f64 = 56.0;

/// A secret's entropy estimated from the spread of its characters (Shannon entropy
/// of their frequencies, times its length): 0 for `aaaa…`, 256 for 64 random hex
/// digits. An upper bound for a chosen phrase, so only a floor.
pub fn entropy_bits(secret: &str) -> f64 {
    let mut counts = [0u32; 256];
    for byte in secret.bytes() {
        counts[byte as usize] += 1;
    }
    let length = secret.len() as f64;
    let per_character: f64 = counts
        .iter()
        .filter(|count| **count > 0)
        .map(|count| {
            let share = *count as f64 / length;
            -share * share.log2()
        })
        .sum();
    per_character * length
}

/// Refuse a secret file that users other than its owner can read (group or others
/// bits), unless `allow_readable` (config `allow_readable_secret_files`): then the
/// warning to give. `Ok(None)`: private.
pub fn check_private(path: &Path, allow_readable: bool) -> Result<Option<String>, String> {
    let metadata =
        std::fs::metadata(path).map_err(|error| format!("{}: {error}", path.display()))?;
    let mode = metadata.permissions().mode() & 0o777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    if allow_readable {
        Ok(Some(format!(
            "{} has mode {mode:o}: other users can read the secret (allowed by allow_readable_secret_files)",
            path.display()
        )))
    } else {
        Err(format!(
            "{} has mode {mode:o}: other users can read the secret; `chmod 600` it (or set allow_readable_secret_files = true)",
            path.display()
        ))
    }
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
    fn low_entropy_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        for weak in [
            "aaaaaaaaaaaaaaaa",
            "abababababababababababab",
            "1111111122222222",
        ] {
            std::fs::write(&path, weak).unwrap();
            let error = read_secret(&path).unwrap_err();
            assert!(error.contains("too easy to guess"), "{weak}: {error}");
        }
        std::fs::write(&path, "0123456789abcdef0123456789abcdef").unwrap();
        assert!(read_secret(&path).is_ok());
        assert!(entropy_bits(&unguessable()) > 200.0);
    }

    #[test]
    fn a_readable_secret_file_is_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        std::fs::write(&path, "0123456789abcdef0123456789abcdef").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(check_private(&path, false)
            .unwrap_err()
            .contains("mode 644"));
        assert!(check_private(&path, true)
            .unwrap()
            .is_some_and(|warning| warning.contains("mode 644")));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(check_private(&path, false), Ok(None));
    }

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
