//! What a faithful copy keeps of an entry besides its kind and content (invariant 11):
//! all mode bits (setuid, setgid and sticky included), owner and group — ids with their
//! names, so that the other node can map them as rsync does — extended attributes with
//! POSIX ACLs (`acl`), and the modification time.
//!
//! - `Meta::read` takes it from disk (never through a symlink);
//! - `Meta::leaf` hashes the part the folder digest covers: mode, owner, group,
//!   extended attributes and ACLs, with ids replaced by names where they have one, so
//!   the two nodes agree whatever ids the names have on each — not the time;
//! - `apply` puts it on disk (`apply.rs`), mapping names to this node's ids unless
//!   `numeric_ids`.

pub mod acl;
mod apply;
mod owners;

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use bincode::{Decode, Encode};

use crate::hash::Hash;
use crate::path::RelPath;

/// The mode bits of an entry's format-1 view (`Entry`'s own `mode`, the format-1
/// changes): read/write/execute and the sticky bit. Every bit, setuid and setgid
/// included, is in the entry's `Meta` (format 2).
pub const MODE_MASK: u32 = 0o1777;

pub use apply::{
    align_to_record, apply_meta, apply_meta_to_file, can_chown, local_owner, set_mtime, unapplied,
    Applied, MetaOptions,
};
pub use owners::{group_name, user_name};

/// Every mode bit a file, directory or symlink can carry besides its type.
pub const ALL_MODE_BITS: u32 = 0o7777;

/// The metadata of one entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Encode, Decode)]
pub struct Meta {
    /// All mode bits (`ALL_MODE_BITS`); ignored for a symlink.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The owner's name on the recording node; empty when the id has none. Shared
    /// (`Name`): a scan gives the same few names to thousands of entries.
    pub user: Name,
    /// The group's name on the recording node; empty when the id has none.
    pub group: Name,
    /// Modification time, nanoseconds since the Unix epoch (not in the digest).
    pub mtime_ns: i64,
    /// Extended attributes, sorted by name: `user.*`, `trusted.*`, `security.*` and
    /// the POSIX ACLs (`system.posix_acl_access`, `system.posix_acl_default`).
    pub xattrs: Vec<Xattr>,
    /// The names of the users and groups the ACLs' named entries carry ids of.
    pub names: Vec<IdName>,
    /// A regular file's or directory's inode number on the recording node (0 for a
    /// symlink). Files with one link group are hard links of one file (the passive
    /// links them: `replay`); a directory's lets capture recognize a move it could not
    /// watch (`moves`). Not in the digest (the two nodes' inode numbers differ);
    /// `verify` checks the partition of paths it makes.
    pub link: u64,
}

/// A user or group name: shared, cheap to clone; encoded as a string.
pub type Name = std::sync::Arc<str>;

/// One extended attribute.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub struct Xattr {
    pub name: Vec<u8>,
    pub value: Vec<u8>,
}

/// The name of a user or group id, as the recording node knows it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Encode, Decode)]
pub struct IdName {
    pub group: bool,
    pub id: u32,
    pub name: Name,
}

/// The replicated extended attributes of what is at `full` (never through a
/// symlink), sorted, and the names of the ids their ACLs name.
pub fn read_xattrs(full: &Path) -> (Vec<Xattr>, Vec<IdName>) {
    let mut xattrs = Vec::new();
    if let Ok(names) = xattr::list(full) {
        for name in names {
            let name = std::os::unix::ffi::OsStrExt::as_bytes(name.as_os_str()).to_vec();
            if !is_replicated_xattr(&name) {
                continue;
            }
            let os_name = std::ffi::OsStr::from_bytes_compat(&name);
            if let Ok(Some(value)) = xattr::get(full, os_name) {
                xattrs.push(Xattr { name, value });
            }
        }
    }
    xattrs.sort();
    let mut names = Vec::new();
    for xattr in &xattrs {
        if !acl::is_acl(&xattr.name) {
            continue;
        }
        for (group, id) in acl::qualifiers(&xattr.value).unwrap_or_default() {
            let name = if group { group_name(id) } else { user_name(id) };
            let entry = IdName { group, id, name };
            if !names.contains(&entry) {
                names.push(entry);
            }
        }
    }
    names.sort();
    (xattrs, names)
}

/// Whether an extended attribute of this name is replicated.
pub fn is_replicated_xattr(name: &[u8]) -> bool {
    name.starts_with(b"user.")
        || name.starts_with(b"trusted.")
        || name.starts_with(b"security.")
        || acl::is_acl(name)
}

impl Meta {
    /// The metadata of what is at `full` (already `lstat`ed as `metadata`), never
    /// through a symlink. Extended attributes that cannot be read (a file system
    /// without them, a race with a removal) are left out.
    pub fn read(full: &Path, metadata: &std::fs::Metadata) -> Meta {
        let (xattrs, names) = read_xattrs(full);
        Meta::from_stat(metadata, xattrs, names)
    }

    /// The metadata a stat gives, with extended attributes (and their ACLs' names)
    /// already read.
    pub fn from_stat(metadata: &std::fs::Metadata, xattrs: Vec<Xattr>, names: Vec<IdName>) -> Meta {
        Meta {
            mode: metadata.mode() & ALL_MODE_BITS,
            uid: metadata.uid(),
            gid: metadata.gid(),
            user: user_name(metadata.uid()),
            group: group_name(metadata.gid()),
            mtime_ns: crate::fsutil::mtime_ns(metadata),
            xattrs,
            names,
            link: if metadata.is_file() || metadata.is_dir() {
                metadata.ino()
            } else {
                0
            },
        }
    }

    /// The name the record gives to `id` (a user, or a group when `group`).
    fn name_of(&self, group: bool, id: u32) -> &str {
        if group && id == self.gid && !self.group.is_empty() {
            return &self.group;
        }
        if !group && id == self.uid && !self.user.is_empty() {
            return &self.user;
        }
        self.names
            .iter()
            .find(|entry| entry.group == group && entry.id == id)
            .map(|entry| &*entry.name)
            .unwrap_or("")
    }

    /// A hash of this metadata alone, for naming a difference (`verify`); the
    /// folder digest hashes it with the entry (`digest::leaf_with_meta`).
    pub fn leaf(&self, path: &RelPath, with_mode: bool) -> Hash {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"standin-meta-v1");
        hasher.update(&(path.as_bytes().len() as u64).to_le_bytes());
        hasher.update(path.as_bytes());
        self.feed(&mut hasher, with_mode);
        hasher.finalize().into()
    }

    /// Feed what the digest covers of this metadata: mode (`with_mode`: not for a
    /// symlink), owner and group, extended attributes; each id as its name where it
    /// has one. Not the time, not the link value.
    pub fn feed(&self, hasher: &mut blake3::Hasher, with_mode: bool) {
        hasher.update(&(if with_mode { self.mode } else { 0 }).to_le_bytes());
        let identity = |hasher: &mut blake3::Hasher, group: bool, id: u32| {
            let name = self.name_of(group, id);
            if name.is_empty() {
                hasher.update(b"#");
                hasher.update(&id.to_le_bytes());
            } else {
                hasher.update(b"@");
                hasher.update(&(name.len() as u64).to_le_bytes());
                hasher.update(name.as_bytes());
            }
        };
        identity(hasher, false, self.uid);
        identity(hasher, true, self.gid);
        hasher.update(&(self.xattrs.len() as u64).to_le_bytes());
        for xattr in &self.xattrs {
            hasher.update(&(xattr.name.len() as u64).to_le_bytes());
            hasher.update(&xattr.name);
            if acl::is_acl(&xattr.name) {
                if let Some(qualifiers) = acl::qualifiers(&xattr.value) {
                    // The ACL with each named entry's id as its identity.
                    let plain = acl::map_ids(&xattr.value, |_, _| 0);
                    hasher.update(&(plain.len() as u64).to_le_bytes());
                    hasher.update(&plain);
                    for (group, id) in qualifiers {
                        identity(hasher, group, id);
                    }
                    continue;
                }
            }
            hasher.update(&(xattr.value.len() as u64).to_le_bytes());
            hasher.update(&xattr.value);
        }
    }

    /// Whether `self` and `other` differ in what the digest covers or in the time.
    pub fn differs(&self, other: &Meta, with_time: bool) -> bool {
        self.mode != other.mode
            || self.uid != other.uid
            || self.gid != other.gid
            || self.xattrs != other.xattrs
            || (with_time && self.mtime_ns != other.mtime_ns)
    }

    /// `mode 2775, owner www-data:staff, 2 xattrs`, for messages.
    pub fn describe(&self) -> String {
        let who = |name: &str, id: u32| {
            if name.is_empty() {
                id.to_string()
            } else {
                name.to_string()
            }
        };
        let mut text = format!(
            "mode {:o}, owner {}:{}",
            self.mode,
            who(&self.user, self.uid),
            who(&self.group, self.gid)
        );
        if !self.xattrs.is_empty() {
            let names: Vec<String> = self
                .xattrs
                .iter()
                .map(|xattr| String::from_utf8_lossy(&xattr.name).into_owned())
                .collect();
            text.push_str(&format!(", xattrs {}", names.join(" ")));
        }
        text
    }
}

/// `OsStr` from bytes (Unix).
trait FromBytesCompat {
    fn from_bytes_compat(bytes: &[u8]) -> &Self;
}

impl FromBytesCompat for std::ffi::OsStr {
    fn from_bytes_compat(bytes: &[u8]) -> &std::ffi::OsStr {
        std::os::unix::ffi::OsStrExt::from_bytes(bytes)
    }
}
