//! The by-reference passive when files it keeps by reference are replaced by versions
//! that share most of their chunks (a database's pages rewritten): each old inode
//! keeps only what its new version lacks — copied into the packs, then freed.

use crate::byref::{
    assert_every_logged_chunk_readable, kept_files, noise, pack_bytes, pair_with, replicate_by_ref,
};

const MIB: usize = 1 << 20;

#[test]
fn a_replaced_file_keeps_only_the_chunks_the_new_version_lacks() {
    let size = 8 * MIB;
    let mut content = noise(size, 5);
    let (active, passive) = pair_with(&[("db.bin", content.clone())]);
    let edits = 10;
    for edit in 0..edits {
        let at = (edit * 787_001 + 4_000) % (size - 100);
        content[at..at + 64].copy_from_slice(&noise(64, 100 + edit as u64));
        std::fs::write(active.folder.join("db.bin"), &content).unwrap();
        active.capture();
        replicate_by_ref(&active, &passive, 100);
        passive.assert_verified();
        assert_eq!(kept_files(&passive), 0, "the old inode was freed");
    }
    // The packs hold about the changed chunks (≤ 256 KiB each, a few per edit), not
    // ten old versions.
    let packed = pack_bytes(&passive.repository);
    assert!(
        packed <= (edits * 3 * 256 * 1024) as u64,
        "{packed} bytes in packs after {edits} edits of an {size}-byte file"
    );
    // Every version the log holds reads back whole.
    assert_eq!(passive.versions_of("db.bin"), active.versions_of("db.bin"));
}

/// Several files replaced in one batch: what each old version alone held goes into
/// the packs (with one sync for them all), and every old inode is freed.
#[test]
fn files_replaced_together_each_keep_only_what_their_new_version_lacks() {
    let size = 2 * MIB;
    let names = ["a.db", "b.db", "c.db"];
    let mut contents: Vec<Vec<u8>> = (0..3).map(|index| noise(size, 20 + index)).collect();
    let files: Vec<(&str, Vec<u8>)> = names.iter().copied().zip(contents.clone()).collect();
    let (active, passive) = pair_with(&files);
    for round in 0..3usize {
        for (index, name) in names.iter().enumerate() {
            let at = ((round * 3 + index) * 300_007 + 5_000) % (size - 100);
            let seed = 200 + (round * 3 + index) as u64;
            contents[index][at..at + 64].copy_from_slice(&noise(64, seed));
            std::fs::write(active.folder.join(name), &contents[index]).unwrap();
        }
        active.capture();
        replicate_by_ref(&active, &passive, 100);
        passive.assert_verified();
        assert_eq!(kept_files(&passive), 0, "every old inode was freed");
    }
    assert_every_logged_chunk_readable(&passive.repository);
    for name in names {
        assert_eq!(passive.versions_of(name), active.versions_of(name));
    }
    // The packs hold about the changed chunks (≤ 256 KiB each, a few per edit), not
    // whole old versions.
    let packed = pack_bytes(&passive.repository);
    let edits = 3 * names.len();
    assert!(
        packed <= (edits * 3 * 256 * 1024) as u64,
        "{packed} bytes in packs after {edits} edits of {size}-byte files"
    );
}

/// A replaced inode's last link in `kept/` is removed after its references are
/// forgotten, on a thread of its own; a stop in between leaves the link behind. The
/// next open removes such links (no inode entry names them) and keeps the ones that
/// still hold references.
#[test]
fn a_kept_link_nothing_refers_to_goes_at_the_next_open() {
    use std::os::unix::fs::MetadataExt;
    let size = 2 * MIB;
    let (active, passive) = pair_with(&[("db.bin", noise(size, 40))]);
    let kept_dir = passive.data_dir.join("chunks").join("kept");
    let link_name = |path: &std::path::Path| {
        let meta = std::fs::metadata(path).unwrap();
        format!("{}-{}", meta.dev(), meta.ino())
    };
    // As a guard leaves it: the file kept by reference, linked into kept/ too.
    let home = passive.folder.join("db.bin");
    let guarded = kept_dir.join(link_name(&home));
    std::fs::hard_link(&home, &guarded).unwrap();
    // As a stop before the reaper's unlink leaves it: an inode nothing names.
    let forgotten = passive.data_dir.join("forgotten");
    std::fs::write(&forgotten, noise(size, 41)).unwrap();
    let orphan = kept_dir.join(link_name(&forgotten));
    std::fs::rename(&forgotten, &orphan).unwrap();
    let passive = passive.reopen();
    assert!(
        !orphan.exists(),
        "the link of an inode nothing names is removed"
    );
    assert!(guarded.exists(), "a link of an inode with references stays");
    passive.assert_verified();
    assert_eq!(passive.versions_of("db.bin"), active.versions_of("db.bin"));
}
