//! A faithful copy (invariant 11): owners, every mode bit, ACLs, extended attributes,
//! times and hard links replicate as `rsync -aHAX --numeric-ids` keeps them (as root;
//! each test says why it skips otherwise), and each change of them alone is an event.
//! Paths that cannot be replicated: `skipped_paths`.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use crate::support::{replicate, snapshot, wait_for, Node};

/// What the walker sees of one entry: what `rsync -aHAX` keeps.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    kind: char,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime_ns: i64,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    content: Vec<u8>,
}

/// lstat, extended attributes (ACLs included) and content of every entry under `root`.
pub fn walk_all(root: &Path) -> std::collections::BTreeMap<String, Seen> {
    use std::os::unix::fs::MetadataExt;
    let mut out = std::collections::BTreeMap::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for item in std::fs::read_dir(&dir).unwrap() {
            let path = item.unwrap().path();
            let metadata = std::fs::symlink_metadata(&path).unwrap();
            let kind = if metadata.file_type().is_symlink() {
                'l'
            } else if metadata.is_dir() {
                dirs.push(path.clone());
                'd'
            } else {
                'f'
            };
            let mut xattrs: Vec<(Vec<u8>, Vec<u8>)> = xattr::list(&path)
                .unwrap()
                .map(|name| {
                    let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
                    (name.as_bytes().to_vec(), value)
                })
                .collect();
            xattrs.sort();
            let content = match kind {
                'f' => std::fs::read(&path).unwrap(),
                'l' => std::fs::read_link(&path)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
                _ => Vec::new(),
            };
            out.insert(
                path.strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                Seen {
                    kind,
                    mode: if kind == 'l' {
                        0
                    } else {
                        metadata.mode() & 0o7777
                    },
                    uid: metadata.uid(),
                    gid: metadata.gid(),
                    mtime_ns: metadata.mtime() * 1_000_000_000 + metadata.mtime_nsec(),
                    xattrs,
                    content,
                },
            );
        }
    }
    out
}

/// A POSIX ACL xattr value: the owner, one named user, the group, the mask, others.
fn acl_value(named_uid: u32) -> Vec<u8> {
    let mut out = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (0x01u16, 6u16, u32::MAX),
        (0x02, 6, named_uid),
        (0x04, 4, u32::MAX),
        (0x10, 6, u32::MAX),
        (0x20, 4, u32::MAX),
    ] {
        out.extend(tag.to_le_bytes());
        out.extend(perm.to_le_bytes());
        out.extend(id.to_le_bytes());
    }
    out
}

fn set_mtime(path: &Path, seconds: i64) {
    standin_engine::folder::meta::set_mtime(path, seconds * 1_000_000_000 + 123_456_789).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid)).unwrap();
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Run `command` on `path`; false (saying so) when the program is not installed.
fn tool(command: &[&str], path: &Path) -> bool {
    match std::process::Command::new(command[0])
        .args(&command[1..])
        .arg(path)
        .status()
    {
        Ok(status) => {
            assert!(status.success(), "{command:?} {}", path.display());
            true
        }
        Err(error) => {
            eprintln!(
                "{} not run ({error}): setting the attribute directly",
                command[0]
            );
            false
        }
    }
}

/// `getfacl -R --numeric` of a tree (relative paths), when getfacl is installed.
fn getfacl(root: &Path) -> Option<String> {
    let output = std::process::Command::new("getfacl")
        .args(["-R", "--numeric", "--physical", "."])
        .current_dir(root)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether the test can give files away; says why not when it cannot.
fn running_as_root(test: &str) -> bool {
    if standin_engine::folder::meta::can_chown() {
        return true;
    }
    eprintln!("{test}: skipped, owners can only be given away as root");
    false
}

/// A tree with owners, setuid/setgid/sticky bits, ACLs, xattrs and directory and
/// symlink times, captured and replicated, is what `rsync -aHAX --numeric-ids` makes
/// of it — compared by a walker of lstat, extended attributes and content.
#[test]
fn owners_modes_acls_xattrs_and_times_replicate_as_rsync_keeps_them() {
    if !running_as_root("owners_modes_acls_xattrs_and_times_replicate_as_rsync_keeps_them") {
        return;
    }
    let active = Node::new();
    let root = &active.folder;
    std::fs::create_dir(root.join("shared")).unwrap();
    chmod(&root.join("shared"), 0o2775);
    chown(&root.join("shared"), 1001, 1002);
    std::fs::create_dir(root.join("drop")).unwrap();
    chmod(&root.join("drop"), 0o3777);
    std::fs::write(root.join("shared/report.txt"), b"owned by 1001").unwrap();
    chown(&root.join("shared/report.txt"), 1001, 1002);
    std::fs::write(root.join("nobody.txt"), b"owned by nobody").unwrap();
    chown(&root.join("nobody.txt"), 65534, 65534);
    std::fs::write(root.join("tool"), b"#!/bin/sh\n").unwrap();
    chmod(&root.join("tool"), 0o4755);
    std::fs::write(root.join("noted.txt"), b"with attributes").unwrap();
    xattr::set(root.join("noted.txt"), "user.comment", b"hello").unwrap();
    xattr::set(root.join("noted.txt"), "trusted.origin", b"alpha").unwrap();
    std::fs::write(root.join("acl.txt"), b"with an ACL").unwrap();
    xattr::set(
        root.join("acl.txt"),
        "system.posix_acl_access",
        &acl_value(1001),
    )
    .unwrap();
    xattr::set(
        root.join("shared"),
        "system.posix_acl_default",
        &acl_value(1001),
    )
    .unwrap();
    std::os::unix::fs::symlink("shared/report.txt", root.join("link")).unwrap();
    chown(&root.join("link"), 1001, 1002);
    set_mtime(&root.join("link"), 1_500_000_000);
    set_mtime(&root.join("shared/report.txt"), 1_500_000_100);
    set_mtime(&root.join("shared"), 1_500_000_200);
    set_mtime(&root.join("drop"), 1_500_000_300);
    let original = walk_all(root);

    active.capture();
    let passive = Node::new();
    replicate(&active, &passive, 100);
    passive.assert_verified();
    let replica = walk_all(&passive.folder);

    let reference = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("rsync")
        .args(["-aHAX", "--numeric-ids"])
        .arg(format!("{}/", root.display()))
        .arg(format!("{}/", reference.path().display()))
        .status();
    match status {
        Ok(status) if status.success() => {
            let by_rsync = walk_all(reference.path());
            assert_eq!(
                by_rsync, original,
                "rsync -aHAX did not keep what the walker sees"
            );
        }
        other => eprintln!("rsync not run ({other:?}): compared with the original only"),
    }
    for (path, seen) in &original {
        assert_eq!(
            replica.get(path),
            Some(seen),
            "{path} differs on the passive"
        );
    }
    assert_eq!(replica.len(), original.len(), "{replica:?}");
    // The ACLs as the acl tools read them, when installed.
    if let (Some(theirs), Some(ours)) = (getfacl(root), getfacl(&passive.folder)) {
        assert_eq!(ours, theirs, "getfacl differs");
    }
}

/// Each metadata change alone reaches the passive as an event: chown, chmod g+s on a
/// directory, an ACL, an extended attribute, `touch -h` on a symlink.
#[test]
fn each_metadata_change_alone_replicates() {
    if !running_as_root("each_metadata_change_alone_replicates") {
        return;
    }
    let active = Node::new();
    let root = active.folder.clone();
    std::fs::create_dir(root.join("d")).unwrap();
    std::fs::write(root.join("d/f"), b"content").unwrap();
    std::os::unix::fs::symlink("d/f", root.join("l")).unwrap();
    let capture = active.watch();
    active.settle();
    let passive = Node::new();
    replicate(&active, &passive, 100);
    type Step<'a> = (&'a str, Box<dyn Fn() + 'a>);
    let changes: Vec<Step> = vec![
        ("chown", Box::new(|| chown(&root.join("d/f"), 1001, 1002))),
        ("chmod g+s", Box::new(|| chmod(&root.join("d"), 0o2755))),
        (
            "setfacl",
            Box::new(|| {
                // The program users run, when installed (.ci/run installs acl).
                if !tool(&["setfacl", "-m", "u:1003:rw"], &root.join("d/f")) {
                    xattr::set(
                        root.join("d/f"),
                        "system.posix_acl_access",
                        &acl_value(1003),
                    )
                    .unwrap()
                }
            }),
        ),
        (
            "setfattr",
            Box::new(|| {
                if !tool(
                    &["setfattr", "-n", "user.tag", "-v", "v2"],
                    &root.join("d/f"),
                ) {
                    xattr::set(root.join("d/f"), "user.tag", b"v2").unwrap()
                }
            }),
        ),
        (
            "touch -h",
            Box::new(|| set_mtime(&root.join("l"), 1_400_000_000)),
        ),
        // A directory's time moves with the entries made and removed in it, which no
        // event of the directory's own reports.
        (
            "a file made in d",
            Box::new(|| std::fs::write(root.join("d/new"), b"new").unwrap()),
        ),
        (
            "a file removed from d",
            Box::new(|| std::fs::remove_file(root.join("d/new")).unwrap()),
        ),
    ];
    for (what, change) in changes {
        let head = active.repository.head().seq;
        change();
        assert!(
            wait_for(Duration::from_secs(20), || active.repository.head().seq
                > head),
            "{what}: no event recorded"
        );
        active.settle();
        replicate(&active, &passive, 100);
        let (original, replica) = (walk_all(&root), walk_all(&passive.folder));
        for (path, seen) in &original {
            assert_eq!(
                replica.get(path),
                Some(seen),
                "after {what}: {path} differs"
            );
        }
    }
    capture.stop();
    passive.assert_verified();
}

/// A data_dir written by the previous release (format-1 events only, index entries
/// without metadata; `tests/fixtures/previous-release.tar.gz`, made by 325085d) opens
/// and verifies, its log replays on a new passive, and capture carries on: the first
/// scan records the metadata of every entry once, new changes follow, and the passive
/// ends up with the same tree and metadata.
#[test]
fn a_data_dir_from_the_previous_release_opens_and_carries_on() {
    let temp = tempfile::tempdir().unwrap();
    let fixture =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/previous-release.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(temp.path())
        .status()
        .unwrap();
    assert!(status.success());
    let folder = temp.path().join("folder");
    let data_dir = temp.path().join("data");
    let repository = std::sync::Arc::new(standin_engine::Repository::open(&data_dir).unwrap());
    let old = crate::support::Node {
        _temp: temp,
        folder,
        data_dir,
        repository,
    };
    let events = old.all_events();
    assert!(
        events
            .iter()
            .all(|event| event.body.change.format_version() == 1),
        "{events:?}"
    );
    old.assert_verified();
    let passive = Node::new();
    replicate(&old, &passive, 100);
    passive.assert_verified();
    assert_eq!(snapshot(&old.folder), snapshot(&passive.folder));

    let upgrade = old.capture();
    assert!(
        upgrade
            .iter()
            .any(|event| matches!(event.body.change, standin_engine::Change::SetMeta { .. })),
        "{upgrade:?}"
    );
    std::fs::write(old.folder.join("records/c.toml"), b"name = \"c\"\n").unwrap();
    old.capture();
    replicate(&old, &passive, 100);
    passive.assert_verified();
    old.assert_verified();
    let (original, replica) = (walk_all(&old.folder), walk_all(&passive.folder));
    for (path, seen) in &original {
        let theirs = replica.get(path);
        // Times, owners and modes are kept from the upgrade on.
        assert_eq!(theirs, Some(seen), "{path} differs on the passive");
    }
    // Nothing more to record: the upgrade's metadata is the disk's.
    assert!(old.capture().is_empty());
}

/// `strip_setuid`: the passive leaves setuid and setgid off files (not directories),
/// and its verify accepts that difference; without it they are kept.
#[test]
fn strip_setuid_leaves_the_bits_off_files_on_that_node_only() {
    use std::os::unix::fs::PermissionsExt;
    let active = Node::new();
    std::fs::write(active.folder.join("tool"), b"#!/bin/sh\n").unwrap();
    chmod(&active.folder.join("tool"), 0o4755);
    std::fs::create_dir(active.folder.join("shared")).unwrap();
    chmod(&active.folder.join("shared"), 0o2775);
    active.capture();
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    let faithful = Node::new();
    replicate(&active, &faithful, 100);
    assert_eq!(mode(&faithful.folder.join("tool")), 0o4755);
    let stripped = Node::new();
    stripped
        .repository
        .set_meta_options(standin_engine::folder::meta::MetaOptions {
            strip_setuid: true,
            ..Default::default()
        });
    replicate(&active, &stripped, 100);
    assert_eq!(mode(&stripped.folder.join("tool")), 0o755);
    assert_eq!(mode(&stripped.folder.join("shared")), 0o2775);
    stripped.assert_verified();
    faithful.assert_verified();
}

/// The groups of names that are one file (more than one name each), by lstat.
pub fn link_groups(root: &Path) -> Vec<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let mut by_inode: std::collections::BTreeMap<u64, Vec<String>> = Default::default();
    for (path, seen) in walk_all(root) {
        if seen.kind == 'f' {
            let inode = std::fs::symlink_metadata(root.join(&path)).unwrap().ino();
            by_inode.entry(inode).or_default().push(path);
        }
    }
    let mut groups: Vec<Vec<String>> = by_inode
        .into_values()
        .filter(|names| names.len() > 1)
        .map(|mut names| {
            names.sort();
            names
        })
        .collect();
    groups.sort();
    groups
}

/// Hard links stay links: three names of one file are one file on the passive, and a
/// write through one name (in place, the others untouched) reaches every name there;
/// `verify` agrees on both nodes.
#[test]
fn hard_links_stay_links_and_a_write_through_one_name_reaches_every_name() {
    use std::os::unix::fs::FileExt;
    let active = Node::new();
    let root = active.folder.clone();
    std::fs::create_dir(root.join("sub")).unwrap();
    std::fs::write(root.join("a"), b"first version").unwrap();
    std::fs::hard_link(root.join("a"), root.join("b")).unwrap();
    std::fs::hard_link(root.join("a"), root.join("sub/c")).unwrap();
    std::fs::write(root.join("alone"), b"one name").unwrap();
    let capture = active.watch();
    active.settle();
    let passive = Node::new();
    replicate(&active, &passive, 100);
    let expected = vec![vec!["a".to_string(), "b".to_string(), "sub/c".to_string()]];
    assert_eq!(link_groups(&root), expected);
    assert_eq!(link_groups(&passive.folder), expected);
    passive.assert_verified();

    // Written in place through `b` only.
    let head = active.repository.head().seq;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("b"))
        .unwrap();
    file.write_all_at(b"SECOND", 0).unwrap();
    drop(file);
    assert!(wait_for(Duration::from_secs(20), || active
        .repository
        .head()
        .seq
        > head));
    active.settle();
    capture.stop();
    active.assert_verified();
    replicate(&active, &passive, 100);
    for name in ["a", "b", "sub/c"] {
        assert_eq!(
            std::fs::read(passive.folder.join(name)).unwrap(),
            b"SECONDversion",
            "{name} on the passive"
        );
    }
    assert_eq!(link_groups(&passive.folder), expected);
    passive.assert_verified();

    // Split on the passive by hand: verify names the path.
    std::fs::remove_file(passive.folder.join("b")).unwrap();
    std::fs::write(passive.folder.join("b"), b"SECONDversion").unwrap();
    let report =
        standin_engine::folder::verify::verify_folder(&passive.folder, &passive.repository)
            .unwrap();
    let difference = report
        .first_difference
        .expect("a split link group is found");
    assert_eq!(difference.path, "b", "{difference:?}");
    // The digest covers link groups: same bytes and metadata, other links, other digest.
    assert_ne!(
        report.disk_digest, report.head.digest,
        "the digest does not see a split link group"
    );
}

/// A directory moved into a directory created just before (which the watcher may not
/// watch yet) is one `Rename`, not a removal and a new copy of each of its files; the
/// passive ends up with the same tree.
#[test]
fn a_directory_moved_into_a_new_directory_is_one_rename() {
    let active = Node::new();
    let root = active.folder.clone();
    std::fs::create_dir(root.join("big")).unwrap();
    for file in 0..200 {
        std::fs::write(root.join(format!("big/f{file}")), format!("file {file}")).unwrap();
    }
    let capture = active.watch();
    active.settle();
    let passive = Node::new();
    replicate(&active, &passive, 1000);
    let head = active.repository.head().seq;
    std::fs::create_dir(root.join("new")).unwrap();
    std::fs::rename(root.join("big"), root.join("new/big")).unwrap();
    assert!(wait_for(Duration::from_secs(20), || active
        .repository
        .head()
        .seq
        > head));
    active.settle();
    capture.stop();
    let after: Vec<standin_engine::Event> = active
        .all_events()
        .into_iter()
        .filter(|event| event.seq() > head)
        .collect();
    let kinds = crate::support::kinds(&after);
    assert!(
        kinds.iter().any(|kind| kind == "rename big -> new/big"),
        "{kinds:?}"
    );
    assert!(
        !kinds.iter().any(|kind| kind.starts_with("file new/big/")),
        "the moved files were recorded again: {kinds:?}"
    );
    replicate(&active, &passive, 1000);
    passive.assert_verified();
    assert_eq!(snapshot(&root), snapshot(&passive.folder));
}

/// A user's files named like standin's temporary files (`.standin-tmp-x`, and one with
/// another node's token) replicate like any file and survive a node's start.
#[test]
fn a_users_file_named_like_a_temporary_one_replicates() {
    let active = Node::new();
    std::fs::write(active.folder.join(".standin-tmp-x"), b"mine").unwrap();
    std::fs::write(
        active.folder.join(".standin-tmp-0123456789abcdef-1-2"),
        b"also mine",
    )
    .unwrap();
    active.capture();
    let passive = Node::new();
    replicate(&active, &passive, 100);
    standin_engine::replay::remove_temporary_files(&passive.folder).unwrap();
    standin_engine::replay::remove_temporary_files(&active.folder).unwrap();
    let copied = snapshot(&passive.folder);
    assert_eq!(
        copied.get(".standin-tmp-x").map(|entry| entry.2.as_slice()),
        Some(&b"mine"[..])
    );
    assert_eq!(
        copied
            .get(".standin-tmp-0123456789abcdef-1-2")
            .map(|entry| entry.2.as_slice()),
        Some(&b"also mine"[..])
    );
    assert_eq!(snapshot(&active.folder), copied);
    passive.assert_verified();
}
