//! The index of references by inode (`by_inode.rs`) against `chunk_refs`.

use std::path::Path;

use super::{key_of, HomeState, InodeKey, RefLoc, RefTrees, Refs};
use crate::hash::Hash;

fn open(dir: &Path) -> (sled::Db, Refs) {
    // Reopened in the same process: sled lets go of its lock from a background
    // thread, which `open_sled` waits for.
    let db = crate::repository::open::open_sled(&dir.join("db")).unwrap();
    let refs = Refs::open(
        &dir.join("chunks"),
        RefTrees::open(&db).unwrap(),
        crate::sled_sync::SledSync::open(&dir.join("db")).unwrap(),
    )
    .unwrap();
    (db, refs)
}

/// A file of `chunks` (each `len` bytes of its seed) in `folder`, installed by event
/// `seq` with a pending reference per chunk; returns its inode and (hash, place)s.
fn file(
    refs: &Refs,
    folder: &Path,
    name: &str,
    chunks: &[u8],
    seq: u64,
) -> (InodeKey, Vec<(Hash, RefLoc)>) {
    let len = 1000u32;
    let path = folder.join(name);
    let bytes: Vec<u8> = chunks
        .iter()
        .flat_map(|seed| vec![*seed; len as usize])
        .collect();
    std::fs::write(&path, &bytes).unwrap();
    let key = key_of(&std::fs::File::open(&path).unwrap(), &path).unwrap();
    refs.register(key, path, bytes.len() as u64, HomeState::Installed(seq));
    let mut placed = Vec::new();
    for (at, seed) in chunks.iter().enumerate() {
        let location = RefLoc {
            key,
            offset: at as u64 * len as u64,
            len,
        };
        let hash = Hash::of(&vec![*seed; len as usize]);
        refs.add_pending(hash, location);
        placed.push((hash, location));
    }
    (key, placed)
}

fn sorted(mut refs: Vec<(Hash, RefLoc)>) -> Vec<(Hash, RefLoc)> {
    refs.sort_by_key(|(hash, location)| (location.offset, hash.0));
    refs
}

#[test]
fn a_file_s_references_are_its_own_and_follow_drops_and_moves() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    let (_db, refs) = open(dir.path());
    let (a, a_refs) = file(&refs, &folder, "a", &[1, 2, 3], 1);
    let (b, b_refs) = file(&refs, &folder, "b", &[4, 5], 1);
    // Pending: found all the same.
    assert_eq!(sorted(refs.refs_of(a).unwrap()), a_refs);
    refs.commit(1).unwrap();
    assert_eq!(sorted(refs.refs_of(a).unwrap()), a_refs);
    assert_eq!(sorted(refs.refs_of(b).unwrap()), b_refs);

    refs.drop_ref(&a_refs[1].0, a_refs[1].1).unwrap();
    assert_eq!(sorted(refs.refs_of(a).unwrap()), vec![a_refs[0], a_refs[2]]);

    // A later file holding a's first chunk takes its reference once its batch is in
    // the log (`apply_deferred`): the chunk is then b's, no longer a's.
    let (c, c_refs) = file(&refs, &folder, "c", &[1, 6], 2);
    refs.commit(2).unwrap();
    refs.apply_deferred().unwrap();
    assert_eq!(sorted(refs.refs_of(a).unwrap()), vec![a_refs[2]]);
    assert_eq!(sorted(refs.refs_of(c).unwrap()), c_refs);
    assert_eq!(refs.usage().0, 5);

    refs.remove_inode(b).unwrap();
    assert!(refs.refs_of(b).unwrap().is_empty());
    assert_eq!(refs.usage().0, 3);
}

#[test]
fn a_store_whose_index_is_missing_or_stale_is_healed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("folder");
    std::fs::create_dir_all(&folder).unwrap();
    let (a, a_refs, b, b_refs) = {
        let (db, refs) = open(dir.path());
        let (a, a_refs) = file(&refs, &folder, "a", &[1, 2], 1);
        let (b, b_refs) = file(&refs, &folder, "b", &[3], 1);
        refs.commit(1).unwrap();
        // What a binary without the index leaves (its references written, the index
        // not), and an entry a crash left behind (its reference gone).
        let index = db.open_tree("ref_by_inode").unwrap();
        index.clear().unwrap();
        let mut stale = [0u8; 48];
        stale[..16].copy_from_slice(&super::key_bytes(a));
        stale[16..].copy_from_slice(&Hash::of(b"gone").0);
        index.insert(stale, &a_refs[0].1.to_bytes()).unwrap();
        // And one whose place is not the reference's (a chunk moved within its file).
        let mut moved = [0u8; 48];
        moved[..16].copy_from_slice(&super::key_bytes(b));
        moved[16..].copy_from_slice(&b_refs[0].0 .0);
        let elsewhere = RefLoc {
            offset: 7000,
            ..b_refs[0].1
        };
        index.insert(moved, &elsewhere.to_bytes()).unwrap();
        db.flush().unwrap();
        (a, a_refs, b, b_refs)
    };
    let (db, refs) = open(dir.path());
    // Healed at open, before anything reads it: one entry per reference, as they are.
    let index = db.open_tree("ref_by_inode").unwrap();
    let mut entries: Vec<Vec<u8>> = index.iter().map(|item| item.unwrap().1.to_vec()).collect();
    entries.sort();
    let mut wanted: Vec<Vec<u8>> = a_refs
        .iter()
        .chain(&b_refs)
        .map(|(_, location)| location.to_bytes().to_vec())
        .collect();
    wanted.sort();
    assert_eq!(entries, wanted);
    assert_eq!(sorted(refs.refs_of(a).unwrap()), a_refs);
    assert_eq!(sorted(refs.refs_of(b).unwrap()), b_refs);
}

#[test]
fn the_inode_kept_open_is_used_only_while_its_home_still_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big");
    std::fs::write(&path, b"first").unwrap();
    let key = key_of(&std::fs::File::open(&path).unwrap(), &path).unwrap();
    let opened = super::place::LastOpened::default();
    assert!(opened.open(&path, key).is_some());
    // Kept open: found again while the path holds it.
    assert!(opened.open(&path, key).is_some());
    // Replaced by another file (renamed over it), the path no longer holds the inode,
    // though a descriptor of it is still open.
    let other = dir.path().join("other");
    std::fs::write(&other, b"second").unwrap();
    std::fs::rename(&other, &path).unwrap();
    assert!(opened.open(&path, key).is_none());
    // Nor through a symlink to a file that is that inode.
    let kept = dir.path().join("kept");
    std::fs::write(&kept, b"third").unwrap();
    let kept_key = key_of(&std::fs::File::open(&kept).unwrap(), &kept).unwrap();
    assert!(opened.open(&kept, kept_key).is_some());
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&kept, &link).unwrap();
    assert!(opened.open(&link, kept_key).is_none());
    opened.forget(kept_key);
    assert!(opened.open(&kept, kept_key).is_some());
}
