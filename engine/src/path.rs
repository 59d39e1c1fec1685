//! `RelPath`: a path relative to the server folder that cannot leave it.
//!
//! A `RelPath` is a non-empty sequence of `/`-separated components, none of them empty,
//! `.`, `..`, or containing a NUL byte; it never starts with `/`. The check runs when a
//! `RelPath` is built, including when one is decoded from the wire or the log, so no
//! code past that point can see an absolute path or a `..`. Paths through symlinks are
//! a property of the replica's disk, not of the path, and are checked by replay.
//! Names are bytes, as on Linux: a file name need not be UTF-8.

use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A validated path relative to the server folder.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<u8>);

/// Prefix of the temporary files replay writes before renaming them into place:
/// `.standin-tmp-<token>-<pid>-<n>`, where the token is the node's own (a random
/// string kept in its data_dir, `register_temp_token`), so that no user's file can be
/// mistaken for one: capture records a user's `.standin-tmp-x` like any file.
pub const TEMP_PREFIX: &[u8] = b".standin-tmp-";

/// The temporary-name tokens of the data_dirs this process opened (the first names
/// new temporary files).
static TEMP_TOKENS: std::sync::RwLock<Vec<Vec<u8>>> = std::sync::RwLock::new(Vec::new());

/// Count `token` as a node's temporary-name token (see `TEMP_PREFIX`).
pub fn register_temp_token(token: &[u8]) {
    let mut tokens = TEMP_TOKENS
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if !tokens.iter().any(|known| known == token) {
        tokens.push(token.to_vec());
    }
}

/// The token new temporary names carry (the first registered one).
pub fn temp_token() -> Vec<u8> {
    TEMP_TOKENS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .first()
        .cloned()
        .unwrap_or_else(|| b"0".to_vec())
}

/// Whether a file name is one of standin's temporary names: the prefix, then a
/// registered token — or, from a release before tokens, `<pid>-<n>` in digits.
pub fn is_temporary_name(name: &[u8]) -> bool {
    let Some(rest) = name.strip_prefix(TEMP_PREFIX) else {
        return false;
    };
    let tokens = TEMP_TOKENS
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let tokened = tokens.iter().any(|token| {
        rest.strip_prefix(token.as_slice())
            .is_some_and(|after| after.first() == Some(&b'-'))
    });
    tokened || {
        let parts: Vec<&[u8]> = rest.split(|byte| *byte == b'-').collect();
        parts.len() == 2
            && parts
                .iter()
                .all(|part| !part.is_empty() && part.iter().all(u8::is_ascii_digit))
    }
}

impl RelPath {
    /// Validate `bytes` as a relative path inside the folder.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<RelPath> {
        let bytes = bytes.into();
        if let Some(reason) = Self::problem(&bytes) {
            return Err(Error::UnsafePath {
                path: String::from_utf8_lossy(&bytes).into_owned(),
                reason: reason.to_string(),
            });
        }
        Ok(RelPath(bytes))
    }

    fn problem(bytes: &[u8]) -> Option<&'static str> {
        if bytes.is_empty() {
            return Some("empty path");
        }
        if bytes[0] == b'/' {
            return Some("absolute path");
        }
        if bytes.contains(&0) {
            return Some("NUL byte in path");
        }
        for component in bytes.split(|byte| *byte == b'/') {
            match component {
                b"" => return Some("empty component"),
                b"." => return Some("`.` component"),
                b".." => return Some("`..` component"),
                _ => {}
            }
        }
        None
    }

    /// The path of `full` relative to `root`, if `full` is strictly inside `root`.
    pub fn from_fs(root: &Path, full: &Path) -> Option<RelPath> {
        let relative = full.strip_prefix(root).ok()?;
        RelPath::new(relative.as_os_str().as_bytes()).ok()
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Where this path lives under `root`.
    pub fn under(&self, root: &Path) -> PathBuf {
        root.join(OsStr::from_bytes(&self.0))
    }

    /// `self/name`.
    pub fn join(&self, name: &[u8]) -> Result<RelPath> {
        let mut bytes = self.0.clone();
        bytes.push(b'/');
        bytes.extend_from_slice(name);
        RelPath::new(bytes)
    }

    /// A child of the folder root.
    pub fn top(name: &[u8]) -> Result<RelPath> {
        RelPath::new(name.to_vec())
    }

    /// The parent path, `None` for a top-level entry.
    pub fn parent(&self) -> Option<RelPath> {
        let cut = self.0.iter().rposition(|byte| *byte == b'/')?;
        Some(RelPath(self.0[..cut].to_vec()))
    }

    /// The last component.
    pub fn file_name(&self) -> &[u8] {
        match self.0.iter().rposition(|byte| *byte == b'/') {
            Some(cut) => &self.0[cut + 1..],
            None => &self.0,
        }
    }

    /// Every proper ancestor, nearest to the root first.
    pub fn ancestors(&self) -> Vec<RelPath> {
        let mut out = Vec::new();
        for (index, byte) in self.0.iter().enumerate() {
            if *byte == b'/' {
                out.push(RelPath(self.0[..index].to_vec()));
            }
        }
        out
    }

    /// True when `self` is `other` or lies below it.
    pub fn is_within(&self, other: &RelPath) -> bool {
        self.0 == other.0
            || (self.0.len() > other.0.len()
                && self.0.starts_with(&other.0)
                && self.0[other.0.len()] == b'/')
    }

    /// `self` with its prefix `from` replaced by `to`; `self` must be within `from`.
    pub fn rebase(&self, from: &RelPath, to: &RelPath) -> RelPath {
        debug_assert!(self.is_within(from));
        let mut bytes = to.0.clone();
        bytes.extend_from_slice(&self.0[from.0.len()..]);
        RelPath(bytes)
    }

    /// True for the temporary names replay uses (`is_temporary_name`).
    pub fn is_temporary(&self) -> bool {
        is_temporary_name(self.file_name())
    }

    /// The key range of everything strictly below this path, in byte order:
    /// `self/` up to (not including) `self0`, because `0` follows `/` in ASCII.
    pub fn descendants_range(&self) -> (RelPath, RelPath) {
        let mut low = self.0.clone();
        low.push(b'/');
        let mut high = self.0.clone();
        high.push(b'/' + 1);
        (RelPath(low), RelPath(high))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl bincode::Encode for RelPath {
    fn encode<E: bincode::enc::Encoder>(
        &self,
        encoder: &mut E,
    ) -> Result<(), bincode::error::EncodeError> {
        self.0.encode(encoder)
    }
}

impl<Context> bincode::Decode<Context> for RelPath {
    fn decode<D: bincode::de::Decoder<Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        let bytes = Vec::<u8>::decode(decoder)?;
        RelPath::new(bytes)
            .map_err(|error| bincode::error::DecodeError::OtherString(error.to_string()))
    }
}

impl<'de, Context> bincode::BorrowDecode<'de, Context> for RelPath {
    fn borrow_decode<D: bincode::de::BorrowDecoder<'de, Context = Context>>(
        decoder: &mut D,
    ) -> Result<Self, bincode::error::DecodeError> {
        <RelPath as bincode::Decode<Context>>::decode(decoder)
    }
}

impl serde::Serialize for RelPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&String::from_utf8_lossy(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_paths_that_leave_the_folder() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "a/./b",
            "a/",
            "a\0b",
            "..",
        ] {
            assert!(RelPath::new(bad).is_err(), "{bad:?} must be refused");
        }
        for good in ["a", "a/b", "..a", "a..", ".hidden/x"] {
            assert!(RelPath::new(good).is_ok(), "{good:?} must be accepted");
        }
    }

    #[test]
    fn family_relations() {
        let path = RelPath::new("a/b/c").unwrap();
        assert_eq!(path.parent(), Some(RelPath::new("a/b").unwrap()));
        assert_eq!(path.file_name(), b"c");
        assert_eq!(
            path.ancestors(),
            vec![RelPath::new("a").unwrap(), RelPath::new("a/b").unwrap()]
        );
        let a = RelPath::new("a").unwrap();
        assert!(path.is_within(&a));
        assert!(!RelPath::new("ab").unwrap().is_within(&a));
        let moved = path.rebase(&a, &RelPath::new("z").unwrap());
        assert_eq!(moved, RelPath::new("z/b/c").unwrap());
        let (low, high) = a.descendants_range();
        assert!(low < path && path < high);
        assert!(!(low < RelPath::new("a-c").unwrap() && RelPath::new("a-c").unwrap() < high));
    }
}
