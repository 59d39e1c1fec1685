//! Quarantine: events a superseded node recorded after the last event it shares with
//! the authority are moved out of its log — never dropped (invariant 7).
//!
//! `data_dir/quarantine/<epoch>-<unix ms>/` holds:
//!
//! ```text
//! manifest.json       one record per event: seq, epoch, kind, path(s), size, mode,
//!                     content hash, event hash, recorded_at_ms, and `file` (below)
//! files/<seq>/<path>  the content of each `Put` exactly as recorded
//! ```
//!
//! The directory is written and fsync'd before the events leave the log, so a crash in
//! between leaves the events in both places, never in neither.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, now_ms};
use crate::hash::Hash;
use crate::log::event::Change;
use crate::path::RelPath;
use crate::repository::Repository;

/// One quarantined event, as the manifest lists it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct QuarantinedEvent {
    pub seq: u64,
    pub epoch: u64,
    pub kind: String,
    pub path: String,
    /// For a rename: where the entry went.
    pub to: Option<String>,
    pub size: Option<u64>,
    pub mode: Option<u32>,
    pub content: Option<Hash>,
    pub event_hash: Hash,
    pub recorded_at_ms: u64,
    /// The content of a `Put`, relative to the quarantine directory.
    pub file: Option<String>,
}

/// A quarantine directory's manifest.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    /// The last seq this node shared with the authority.
    pub common_seq: u64,
    pub common_hash: Hash,
    pub quarantined_at_ms: u64,
    pub events: Vec<QuarantinedEvent>,
}

/// What `quarantine_after` did.
#[derive(Clone, Debug)]
pub struct Quarantined {
    pub dir: PathBuf,
    pub manifest: Manifest,
    /// Every path the quarantined events touched (`rewind_folder` puts them back).
    pub touched: Vec<RelPath>,
}

/// Move the events after `seq` into a new quarantine directory and out of the log, and
/// bring the index back to `seq`. `None` when there is nothing after `seq`.
pub fn quarantine_after(repository: &Repository, seq: u64) -> Result<Option<Quarantined>> {
    // Hold the writers' lock throughout, so that no event is appended between reading
    // the events to quarantine and truncating the log (it would be lost in neither).
    let mut index = repository.lock_index();
    let head = repository.head();
    if seq >= head.seq {
        return Ok(None);
    }
    let common_hash = repository.log().hash_at(seq)?.unwrap_or_default();
    let events = repository
        .log()
        .events_after(seq, &common_hash, usize::MAX)?;
    let quarantined_at_ms = now_ms();
    let root = repository.data_dir().join("quarantine");
    std::fs::create_dir_all(&root).at("create", &root)?;
    let mut dir = root.join(format!("{}-{quarantined_at_ms}", head.epoch));
    let mut attempt = 1;
    loop {
        match std::fs::create_dir(&dir) {
            Ok(()) => break,
            Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists && attempt < 1000 => {
                attempt += 1;
                dir = root.join(format!("{}-{quarantined_at_ms}-{attempt}", head.epoch));
            }
            Err(error) => {
                return Err(Error::Io {
                    op: "create",
                    path: dir,
                    source: error,
                })
            }
        }
    }
    let files = dir.join("files");
    std::fs::create_dir_all(&files).at("create", &files)?;

    let mut manifest = Manifest {
        common_seq: seq,
        common_hash,
        quarantined_at_ms,
        events: Vec::new(),
    };
    let mut touched = Vec::new();
    for event in &events {
        let change = &event.body.change;
        touched.extend(change.paths().into_iter().cloned());
        let mut record = QuarantinedEvent {
            seq: event.seq(),
            epoch: event.epoch(),
            kind: change.kind().to_string(),
            path: change
                .paths()
                .first()
                .map(|path| path.to_string())
                .unwrap_or_default(),
            to: None,
            size: None,
            mode: None,
            content: None,
            event_hash: event.hash,
            recorded_at_ms: event.body.recorded_at_ms,
            file: None,
        };
        let base = change.base();
        match base.as_deref() {
            None => {}
            Some(Change::Put {
                path,
                mode,
                size,
                content,
                chunks,
                ..
            }) => {
                let relative = format!("files/{}/{}", event.seq(), path);
                let target = dir.join(&relative);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent).at("create", parent)?;
                }
                let mut file = std::fs::File::create(&target).at("create", &target)?;
                for chunk in chunks {
                    file.write_all(&repository.chunks().get(&chunk.hash)?)
                        .at("write", &target)?;
                }
                crate::fsutil::sync_all(&file, &target)?;
                record.size = Some(*size);
                record.mode = Some(*mode);
                record.content = Some(*content);
                record.file = Some(relative);
            }
            Some(Change::Mkdir { mode, .. } | Change::SetMode { mode, .. }) => {
                record.mode = Some(*mode)
            }
            Some(Change::Rename { to, .. }) => record.to = Some(to.to_string()),
            Some(Change::Symlink { target, .. }) => {
                record.to = Some(String::from_utf8_lossy(target).into_owned())
            }
            Some(Change::Promote { node }) => record.path = node.clone(),
            Some(Change::Group { events }) => record.path = format!("{events} events"),
            Some(_) => {}
        }
        if let Some(meta) = change.meta() {
            record.mode = Some(meta.mode);
        }
        manifest.events.push(record);
    }
    let manifest_path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(&manifest).map_err(|error| Error::Decode {
        what: "quarantine manifest".to_string(),
        reason: error.to_string(),
    })?;
    let mut file = std::fs::File::create(&manifest_path).at("create", &manifest_path)?;
    file.write_all(text.as_bytes())
        .at("write", &manifest_path)?;
    crate::fsutil::sync_all(&file, &manifest_path)?;
    fsync_dir(&dir)?;
    fsync_dir(&root)?;

    // Journal the touched paths before the log moves back, so that `replay::recover`
    // (run by `rewind_folder`, or at the next start after a crash) puts them back.
    crate::replay::journal_touched(repository, &touched)?;
    repository.log().truncate_after(seq)?;
    repository.reload_index_locked(&mut index)?;
    drop(index);
    tracing::warn!(
        dir = %dir.display(),
        events = manifest.events.len(),
        common_seq = seq,
        "moved events that never reached the authority into quarantine"
    );
    Ok(Some(Quarantined {
        dir,
        manifest,
        touched,
    }))
}

/// Every quarantine directory with its manifest, oldest first.
pub fn list_quarantines(data_dir: &Path) -> Result<Vec<(PathBuf, Manifest)>> {
    let root = data_dir.join("quarantine");
    let mut out = Vec::new();
    let listing = match std::fs::read_dir(&root) {
        Ok(listing) => listing,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(error) => {
            return Err(Error::Io {
                op: "list",
                path: root,
                source: error,
            })
        }
    };
    for item in listing {
        let item = item.at("list", &root)?;
        let manifest_path = item.path().join("manifest.json");
        let text = match std::fs::read_to_string(&manifest_path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => continue,
            Err(error) => {
                return Err(Error::Io {
                    op: "read",
                    path: manifest_path,
                    source: error,
                })
            }
        };
        let manifest: Manifest = serde_json::from_str(&text).map_err(|error| Error::Decode {
            what: manifest_path.display().to_string(),
            reason: error.to_string(),
        })?;
        out.push((item.path(), manifest));
    }
    out.sort_by_key(|(_, manifest)| manifest.quarantined_at_ms);
    Ok(out)
}

/// Put every path the quarantined events touched back to the state the index now holds
/// (the common point). Safe to call again, and run at start-up if a crash came first.
pub fn rewind_folder(root: &Path, repository: &Repository) -> Result<()> {
    crate::replay::restore_touched(root, repository)
}

/// Keep aside whatever in the folder the log does not know — a change written to this
/// node after its last capture (say, during a switchover), or anything else written
/// into a passive's folder — and put the folder back to the index's state. Each such
/// file is copied to `data_dir/quarantine/<epoch>-<ms>-unrecorded/files/<path>` and
/// listed in the manifest with kind `unrecorded`; nothing is silently overwritten.
/// Returns how many files were kept aside.
pub fn quarantine_unrecorded(root: &Path, repository: &Repository) -> Result<usize> {
    let report = crate::folder::verify::verify_folder(root, repository)?;
    if report.matches() {
        return Ok(0);
    }
    let head = repository.head();
    let quarantined_at_ms = now_ms();
    let quarantine_root = repository.data_dir().join("quarantine");
    let dir = quarantine_root.join(format!("{}-{quarantined_at_ms}-unrecorded", head.epoch));
    std::fs::create_dir_all(dir.join("files")).at("create", &dir)?;
    let disk = crate::folder::scan::disk::walk(root, None)?;
    let mut manifest = Manifest {
        common_seq: head.seq,
        common_hash: head.hash,
        quarantined_at_ms,
        events: Vec::new(),
    };
    let mut touched = Vec::new();
    {
        let index = repository.lock_index();
        for (path, on_disk) in &disk.entries {
            let crate::folder::scan::disk::DiskEntry::File { size, mode, .. } = on_disk else {
                continue;
            };
            let differs = match index.get(path) {
                Some(crate::folder::index::Entry::File { content, .. }) => {
                    crate::replay::hash_file(&path.under(root))? != *content
                }
                _ => true,
            };
            if !differs {
                continue;
            }
            let relative = format!("files/{path}");
            let target = dir.join(&relative);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).at("create", parent)?;
            }
            std::fs::copy(path.under(root), &target).at("copy", &target)?;
            manifest.events.push(QuarantinedEvent {
                // Not a log seq: the file's number in this quarantine (for `restore`).
                seq: manifest.events.len() as u64 + 1,
                epoch: head.epoch,
                kind: "unrecorded".to_string(),
                path: path.to_string(),
                to: None,
                size: Some(*size),
                mode: Some(*mode),
                content: None,
                event_hash: Hash::ZERO,
                recorded_at_ms: quarantined_at_ms,
                file: Some(relative),
            });
            touched.push(path.clone());
        }
        // Paths the index does not have at all (directories, links) are put back too.
        for path in disk.entries.keys() {
            if index.get(path).is_none() {
                touched.push(path.clone());
            }
        }
        for (path, _) in index.iter() {
            if !disk.entries.contains_key(path) {
                touched.push(path.clone());
            }
        }
    }
    let text = serde_json::to_string_pretty(&manifest).map_err(|error| Error::Decode {
        what: "quarantine manifest".to_string(),
        reason: error.to_string(),
    })?;
    let manifest_path = dir.join("manifest.json");
    std::fs::write(&manifest_path, text).at("write", &manifest_path)?;
    fsync_dir(&dir)?;
    crate::replay::journal_touched(repository, &touched)?;
    crate::replay::restore_touched(root, repository)?;
    tracing::warn!(
        dir = %dir.display(),
        files = manifest.events.len(),
        "kept aside changes in the folder that the log does not know"
    );
    Ok(manifest.events.len())
}
