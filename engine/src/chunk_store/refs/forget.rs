//! Forgetting inodes with references: those a recovery found gone, those a failed
//! batch installed but never committed, and those no reference names any more.

use std::path::PathBuf;

use super::{key_bytes, open_inode, read_lock, write_lock, HomeState, InodeKey, Refs};
use crate::error::Result;

impl Refs {
    /// After a recovery: forget the committed inodes that are neither at their home
    /// nor in `kept/` (a part's references can reach the disk before the log append
    /// that would have kept its files; `recover` then removed them).
    pub fn drop_unreachable(&self) -> Result<()> {
        let homes: Vec<(InodeKey, PathBuf)> = read_lock(&self.homes)
            .iter()
            .filter(|(_, home)| home.state == HomeState::Committed)
            .map(|(key, home)| (*key, home.path.clone()))
            .collect();
        for (key, path) in homes {
            if open_inode(&path, key).is_none() && open_inode(&self.kept_path(key), key).is_none() {
                tracing::info!(inode = key.1, path = %path.display(), "forgetting the references to a file an interrupted batch left unfinished");
                self.remove_inode(key)?;
            }
        }
        Ok(())
    }

    /// Forget what a failed batch installed but never committed (its files are being
    /// put back by `recover`): their references would only resolve to nothing.
    pub fn forget_uncommitted(&self) {
        let mut homes = write_lock(&self.homes);
        let gone: Vec<InodeKey> = homes
            .iter()
            .filter(|(_, home)| matches!(home.state, HomeState::Installed(_)))
            .map(|(key, _)| *key)
            .collect();
        for key in &gone {
            homes.remove(key);
            self.opened.forget(*key);
        }
        drop(homes);
        write_lock(&self.pending).retain(|_, location| !gone.contains(&location.key));
        write_lock(&self.superseded).retain(|(_, location)| !gone.contains(&location.key));
    }

    /// Forget the committed inodes in the folder that no reference names any more
    /// (every chunk they held is dead or now referenced elsewhere).
    pub fn forget_unreferenced_homes(&self) -> Result<()> {
        let mut named = std::collections::HashSet::new();
        for (_, location) in self.all()? {
            named.insert(location.key);
        }
        named.extend(
            read_lock(&self.pending)
                .values()
                .map(|location| location.key),
        );
        let idle: Vec<InodeKey> = read_lock(&self.homes)
            .iter()
            .filter(|(key, home)| {
                home.state == HomeState::Committed
                    && !home.path.starts_with(&self.kept_dir)
                    && !named.contains(*key)
            })
            .map(|(key, _)| *key)
            .collect();
        for key in idle {
            write_lock(&self.homes).remove(&key);
            self.opened.forget(key);
            self.inodes.remove(key_bytes(key))?;
        }
        Ok(())
    }
}
