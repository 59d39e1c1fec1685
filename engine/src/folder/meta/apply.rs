//! Putting recorded metadata on disk, never through a symlink: owner and group first
//! (a `chown` clears setuid and setgid), then extended attributes and ACLs, then the
//! mode (after an ACL, so that the mode's group bits are the ACL's mask, as recorded);
//! the time last and apart (`set_mtime`: a directory's after its children changed).
//!
//! Ids are mapped by name to this node's ids (rsync's default), the numeric id being
//! the fallback for a name this node does not have; `numeric_ids` keeps the numbers.
//! What this node may not do (change owners or `trusted.*` attributes without root)
//! is warned about once, counted (`unapplied`), and never stops replay.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::{acl, is_replicated_xattr, Meta, Xattr};
use crate::error::{Error, Result};

/// How metadata is applied on this node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MetaOptions {
    /// Keep owners' and ACL qualifiers' numeric ids instead of mapping them by name.
    pub numeric_ids: bool,
    /// Leave setuid and setgid off files on this node (warned once per path): the
    /// copy is then not faithful, but cannot raise anyone's privileges here.
    pub strip_setuid: bool,
}

/// The setuid and setgid bits.
const SET_ID_BITS: u32 = 0o6000;

/// Paths already warned about for `strip_setuid` (bounded).
static STRIPPED: std::sync::Mutex<Option<std::collections::HashSet<std::path::PathBuf>>> =
    std::sync::Mutex::new(None);

fn warn_stripped(full: &Path, mode: u32) {
    let mut warned = STRIPPED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let warned = warned.get_or_insert_with(Default::default);
    if warned.len() < 100_000 && warned.insert(full.to_path_buf()) {
        tracing::warn!(path = %full.display(), mode = format!("{mode:o}"), "strip_setuid: setuid/setgid left off this file on this node");
    }
}

/// Whether everything was applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    All,
    /// Something this node may not do was left (warned once, counted).
    Partly,
}

static UNAPPLIED: AtomicU64 = AtomicU64::new(0);
static WARNED_OWNER: AtomicBool = AtomicBool::new(false);
static WARNED_XATTR: AtomicBool = AtomicBool::new(false);

/// How many owner or attribute changes this process could not apply (not root).
pub fn unapplied() -> u64 {
    UNAPPLIED.load(Ordering::Relaxed)
}

/// Whether this process may give files away (`chown` to anyone).
pub fn can_chown() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn not_permitted(warned: &AtomicBool, what: &str, full: &Path, error: &std::io::Error) {
    UNAPPLIED.fetch_add(1, Ordering::Relaxed);
    if !warned.swap(true, Ordering::Relaxed) {
        tracing::warn!(path = %full.display(), %error, "cannot apply {what} (standin does not run as root?): the copy keeps this node's; warned once, counted in standin_meta_unapplied");
    }
}

/// The id this node gives the record's `id` (of a group when `group`), named `name`.
pub fn local_id(group: bool, id: u32, name: &str, options: MetaOptions) -> u32 {
    if options.numeric_ids || name.is_empty() {
        return id;
    }
    let found = if group {
        super::owners::group_id(name)
    } else {
        super::owners::user_id(name)
    };
    found.unwrap_or(id)
}

/// The record's owner and group as this node's ids.
pub fn local_owner(meta: &Meta, options: MetaOptions) -> (u32, u32) {
    (
        local_id(false, meta.uid, &meta.user, options),
        local_id(true, meta.gid, &meta.group, options),
    )
}

/// An extended attribute's value as this node stores it (an ACL's ids mapped).
fn local_value(meta: &Meta, xattr: &Xattr, options: MetaOptions) -> Vec<u8> {
    if !acl::is_acl(&xattr.name) {
        return xattr.value.clone();
    }
    acl::map_ids(&xattr.value, |group, id| {
        local_id(group, id, meta.name_of(group, id), options)
    })
}

fn c_path(full: &Path) -> Result<CString> {
    CString::new(full.as_os_str().as_bytes()).map_err(|_| Error::Io {
        op: "apply metadata",
        path: full.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })
}

fn io(op: &'static str, full: &Path, source: std::io::Error) -> Error {
    Error::Io {
        op,
        path: full.to_path_buf(),
        source,
    }
}

fn is_permission(error: &std::io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EPERM) | Some(libc::EACCES) | Some(libc::EOPNOTSUPP)
    )
}

/// Put `meta`'s owner, extended attributes and mode (not the time) on the entry at
/// `full`, a symlink when `symlink` (its mode is not set: Linux has none to set).
pub fn apply_meta(
    full: &Path,
    meta: &Meta,
    symlink: bool,
    options: MetaOptions,
) -> Result<Applied> {
    apply_to(Target::Path { full, symlink }, meta, options)
}

/// `apply_meta` on an open regular file (one with no name yet, say: an `O_TMPFILE`),
/// through its descriptor; `shown` names it in errors and warnings.
pub fn apply_meta_to_file(
    file: &std::fs::File,
    shown: &Path,
    meta: &Meta,
    options: MetaOptions,
) -> Result<Applied> {
    apply_to(Target::File { file, shown }, meta, options)
}

/// What metadata is put on: an entry by its path (never through a symlink), or an
/// open regular file by its descriptor.
#[derive(Clone, Copy)]
enum Target<'a> {
    Path {
        full: &'a Path,
        symlink: bool,
    },
    File {
        file: &'a std::fs::File,
        shown: &'a Path,
    },
}

impl Target<'_> {
    fn shown(&self) -> &Path {
        match self {
            Target::Path { full, .. } => full,
            Target::File { shown, .. } => shown,
        }
    }

    /// Owner, group and mode bits (`ALL_MODE_BITS`) as they are now, never through
    /// a symlink; `None` when they cannot be read (every change is then made).
    fn owner_and_mode(&self) -> Option<(u32, u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let metadata = match self {
            Target::Path { full, .. } => std::fs::symlink_metadata(full),
            Target::File { file, .. } => file.metadata(),
        }
        .ok()?;
        Some((
            metadata.uid(),
            metadata.gid(),
            metadata.mode() & super::ALL_MODE_BITS,
        ))
    }

    fn chown(&self, uid: u32, gid: u32) -> std::io::Result<()> {
        match self {
            Target::Path { full, .. } => std::os::unix::fs::lchown(full, Some(uid), Some(gid)),
            Target::File { file, .. } => std::os::unix::fs::fchown(file, Some(uid), Some(gid)),
        }
    }

    fn xattr_names(&self) -> std::io::Result<Vec<Vec<u8>>> {
        use xattr::FileExt;
        let names: Vec<std::ffi::OsString> = match self {
            Target::Path { full, .. } => xattr::list(full)?.collect(),
            Target::File { file, .. } => file.list_xattr()?.collect(),
        };
        Ok(names
            .into_iter()
            .map(|name| name.as_bytes().to_vec())
            .collect())
    }

    fn remove_xattr(&self, name: &std::ffi::OsStr) -> std::io::Result<()> {
        use xattr::FileExt;
        match self {
            Target::Path { full, .. } => xattr::remove(full, name),
            Target::File { file, .. } => file.remove_xattr(name),
        }
    }

    fn get_xattr(&self, name: &std::ffi::OsStr) -> std::io::Result<Option<Vec<u8>>> {
        use xattr::FileExt;
        match self {
            Target::Path { full, .. } => xattr::get(full, name),
            Target::File { file, .. } => file.get_xattr(name),
        }
    }

    fn set_xattr(&self, name: &std::ffi::OsStr, value: &[u8]) -> std::io::Result<()> {
        use xattr::FileExt;
        match self {
            Target::Path { full, .. } => xattr::set(full, name, value),
            Target::File { file, .. } => file.set_xattr(name, value),
        }
    }

    fn is_dir(&self) -> bool {
        match self {
            Target::Path { full, .. } => {
                std::fs::symlink_metadata(full).is_ok_and(|metadata| metadata.is_dir())
            }
            Target::File { .. } => false,
        }
    }

    fn chmod(&self, mode: u32) -> Result<()> {
        let status = match self {
            Target::Path { full, .. } => {
                let path = c_path(full)?;
                // SAFETY: a NUL-terminated path; fchmodat without AT_SYMLINK_NOFOLLOW on
                // an entry that is not a symlink (checked by the caller).
                unsafe { libc::fchmodat(libc::AT_FDCWD, path.as_ptr(), mode, 0) }
            }
            Target::File { file, .. } => {
                use std::os::fd::AsRawFd;
                // SAFETY: fchmod on a descriptor the borrowed file keeps open.
                unsafe { libc::fchmod(file.as_raw_fd(), mode) }
            }
        };
        if status != 0 {
            return Err(io("chmod", self.shown(), std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

fn apply_to(target: Target<'_>, meta: &Meta, options: MetaOptions) -> Result<Applied> {
    let full = target.shown();
    let mut applied = Applied::All;
    let (uid, gid) = local_owner(meta, options);
    // What the entry has now (a file replay just created, mostly): a chown or chmod
    // that would change nothing is not made. Each dirties the inode, and the two were
    // ~4% of the passive's CPU in a small-file sync; a stat is a read.
    let before = target.owner_and_mode();
    let chown = before.is_none_or(|(had_uid, had_gid, _)| (had_uid, had_gid) != (uid, gid));
    if chown {
        if let Err(error) = target.chown(uid, gid) {
            if !is_permission(&error) {
                return Err(io("chown", full, error));
            }
            not_permitted(&WARNED_OWNER, "owner and group", full, &error);
            applied = Applied::Partly;
        }
    }
    // An attribute set or removed (an ACL changes the mode's group bits) or a chown
    // (it clears setuid and setgid) leaves the mode read before out of date.
    let mut xattrs_touched = false;
    // Attributes: those on disk and not in the record go, the record's are set.
    let present: Vec<Vec<u8>> = target
        .xattr_names()
        .map(|names| {
            names
                .into_iter()
                .filter(|name| is_replicated_xattr(name))
                .collect()
        })
        .unwrap_or_default();
    for name in &present {
        if meta.xattrs.iter().any(|xattr| &xattr.name == name) {
            continue;
        }
        xattrs_touched = true;
        if let Err(error) = target.remove_xattr(std::ffi::OsStr::from_bytes(name)) {
            if error.raw_os_error() == Some(libc::ENODATA) {
                continue;
            }
            if !is_permission(&error) {
                return Err(io("remove xattr", full, error));
            }
            not_permitted(&WARNED_XATTR, "extended attributes", full, &error);
            applied = Applied::Partly;
        }
    }
    for xattr in &meta.xattrs {
        let value = local_value(meta, xattr, options);
        let name = std::ffi::OsStr::from_bytes(&xattr.name);
        if target.get_xattr(name).ok().flatten().as_deref() == Some(value.as_slice()) {
            continue;
        }
        xattrs_touched = true;
        if let Err(error) = target.set_xattr(name, &value) {
            if !is_permission(&error) {
                return Err(io("set xattr", full, error));
            }
            not_permitted(&WARNED_XATTR, "extended attributes", full, &error);
            applied = Applied::Partly;
        }
    }
    if !matches!(target, Target::Path { symlink: true, .. }) {
        let mut mode = meta.mode;
        if options.strip_setuid && mode & SET_ID_BITS != 0 && !target.is_dir() {
            mode &= !SET_ID_BITS;
            warn_stripped(full, meta.mode);
        }
        let unchanged =
            !chown && !xattrs_touched && before.is_some_and(|(_, _, had_mode)| had_mode == mode);
        if !unchanged {
            target.chmod(mode)?;
        }
    }
    Ok(applied)
}

/// Set the modification time of the entry at `full` (never through a symlink), and
/// leave its access time.
pub fn set_mtime(full: &Path, mtime_ns: i64) -> Result<()> {
    let path = c_path(full)?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: mtime_ns.div_euclid(1_000_000_000),
            tv_nsec: mtime_ns.rem_euclid(1_000_000_000),
        },
    ];
    // SAFETY: a NUL-terminated path and an array of two timespecs.
    let status = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if status != 0 {
        return Err(io("set mtime", full, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// `disk` (read from this node's disk) described as the record is, where the two
/// agree under this node's mapping — so that `Meta::leaf` of both is equal when the
/// entry is as replay would have left it: ids that are the record's names mapped
/// here take the record's ids and names; what this node could not apply (owners
/// without root, `trusted.*` without root) is taken from the record.
pub fn align_to_record(disk: &mut Meta, recorded: &Meta, options: MetaOptions) {
    let root = can_chown();
    if options.strip_setuid && disk.mode == recorded.mode & !SET_ID_BITS {
        disk.mode = recorded.mode;
    }
    let (uid, gid) = local_owner(recorded, options);
    if !root || disk.uid == uid {
        disk.uid = recorded.uid;
        disk.user = recorded.user.clone();
    }
    if !root || disk.gid == gid {
        disk.gid = recorded.gid;
        disk.group = recorded.group.clone();
    }
    for xattr in &mut disk.xattrs {
        if !acl::is_acl(&xattr.name) {
            continue;
        }
        if let Some(expected) = recorded
            .xattrs
            .iter()
            .find(|theirs| theirs.name == xattr.name)
        {
            if local_value(recorded, expected, options) == xattr.value {
                xattr.value = expected.value.clone();
            }
        }
    }
    if disk.xattrs.iter().any(|xattr| acl::is_acl(&xattr.name)) {
        disk.names = recorded.names.clone();
    }
    if !root {
        for xattr in &recorded.xattrs {
            if xattr.name.starts_with(b"trusted.")
                && !disk.xattrs.iter().any(|mine| mine.name == xattr.name)
            {
                disk.xattrs.push(xattr.clone());
            }
        }
        disk.xattrs.sort();
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::Path;

    use super::{apply_meta_to_file, MetaOptions};
    use crate::folder::meta::Meta;

    fn ctime_ns(path: &Path) -> i128 {
        let metadata = std::fs::symlink_metadata(path).unwrap();
        i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec())
    }

    /// Without root, `user.*` attributes can be set only on a file whose mode lets its
    /// owner write it: a new file with a read-only recorded mode gets them before its
    /// mode (this fails as a non-root user if the file is created read-only).
    #[test]
    fn a_read_only_new_file_gets_its_user_attributes_then_its_mode() {
        use std::io::Write;
        // Root may set any attribute: the check is made as an ordinary user as well,
        // in a child run of this test as `nobody`.
        // SAFETY: geteuid only reads the process's effective user id.
        if unsafe { libc::geteuid() } == 0 && std::env::var_os("STANDIN_TEST_AS_USER").is_none() {
            use std::os::unix::process::CommandExt;
            let name = "folder::meta::apply::tests::a_read_only_new_file_gets_its_user_attributes_then_its_mode";
            let child = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads", "1"])
                .env("STANDIN_TEST_AS_USER", "1")
                .env("TMPDIR", std::env::temp_dir())
                .uid(65534)
                .gid(65534)
                .output();
            match child {
                Ok(output) => assert!(
                    output.status.success()
                        && String::from_utf8_lossy(&output.stdout).contains("1 passed"),
                    "as nobody: {}{}",
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                ),
                // The test binary cannot be run as nobody here (a private target dir).
                Err(error) => eprintln!("not checked as an ordinary user: {error}"),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let source = dir.path().join("source");
        std::fs::write(&source, b"content").unwrap();
        if xattr::set(&source, "user.standin-test", b"value").is_err() {
            return; // No user attributes on this file system.
        }
        std::fs::set_permissions(&source, std::fs::Permissions::from_mode(0o444)).unwrap();
        let meta = Meta::read(&source, &std::fs::symlink_metadata(&source).unwrap());
        let Some(mut file) = crate::fsutil::create_unnamed(dir.path(), meta.mode).unwrap() else {
            return; // No O_TMPFILE here.
        };
        file.write_all(b"content").unwrap();
        let shown = dir.path().join("copy");
        apply_meta_to_file(&file, &shown, &meta, MetaOptions::default()).unwrap();
        crate::fsutil::link_unnamed(&file, &shown).unwrap();
        assert_eq!(
            xattr::get(&shown, "user.standin-test").unwrap().as_deref(),
            Some(&b"value"[..])
        );
        let copied = std::fs::symlink_metadata(&shown).unwrap();
        assert_eq!(copied.mode() & 0o7777, 0o444);
    }

    #[test]
    fn an_owner_and_mode_already_there_are_not_set_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("file");
        std::fs::write(&path, b"content").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let meta = Meta::read(&path, &std::fs::symlink_metadata(&path).unwrap());
        let before = ctime_ns(&path);
        // Any chown or chmod would move the change time past this.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let file = std::fs::File::open(&path).unwrap();
        apply_meta_to_file(&file, &path, &meta, MetaOptions::default()).unwrap();
        assert_eq!(
            ctime_ns(&path),
            before,
            "a chown or chmod changing nothing was made"
        );

        let mut other = meta.clone();
        other.mode = 0o600;
        apply_meta_to_file(&file, &path, &other, MetaOptions::default()).unwrap();
        let after = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(after.mode() & 0o7777, 0o600);
        assert_ne!(ctime_ns(&path), before);
    }
}
