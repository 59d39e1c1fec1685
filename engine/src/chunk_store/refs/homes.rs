//! The inodes with references, in memory: by inode, and by home path (`Homes`).
//!
//! Before a part of a batch writes, replay links into `kept/` every referenced inode
//! whose home the part may displace: those at or under a path the part names
//! (`replay::byref::guard`). Found by walking every inode, that cost each part time in
//! proportion to the large files the passive keeps — on the path of every change,
//! however small. The index by path answers with a range of it per named path.

use std::collections::{BTreeSet, HashMap};
use std::ops::Bound;
use std::path::{Path, PathBuf};

use super::{Home, InodeKey};

/// Every inode with references, by inode and by home.
#[derive(Default)]
pub(super) struct Homes {
    by_key: HashMap<InodeKey, Home>,
    by_path: BTreeSet<(PathBuf, InodeKey)>,
}

impl Homes {
    pub fn get(&self, key: &InodeKey) -> Option<&Home> {
        self.by_key.get(key)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&InodeKey, &Home)> {
        self.by_key.iter()
    }

    pub fn insert(&mut self, key: InodeKey, home: Home) {
        let path = home.path.clone();
        if let Some(old) = self.by_key.insert(key, home) {
            self.by_path.remove(&(old.path, key));
        }
        self.by_path.insert((path, key));
    }

    pub fn remove(&mut self, key: &InodeKey) -> Option<Home> {
        let home = self.by_key.remove(key)?;
        self.by_path.remove(&(home.path.clone(), *key));
        Some(home)
    }

    /// Change `key`'s home (its path kept in the index by path); the home after.
    pub fn update(&mut self, key: &InodeKey, change: impl FnOnce(&mut Home)) -> Option<&Home> {
        let home = self.by_key.get_mut(key)?;
        let before = home.path.clone();
        change(home);
        if home.path != before {
            self.by_path.remove(&(before, *key));
            self.by_path.insert((home.path.clone(), *key));
        }
        self.by_key.get(key)
    }

    /// The inodes whose home is `dir` or under it (by components: not `dir` + "x"),
    /// in path order.
    pub fn at_or_under<'a>(
        &'a self,
        dir: &'a Path,
    ) -> impl Iterator<Item = (InodeKey, &'a Home)> + 'a {
        self.by_path
            .range((
                Bound::Included((dir.to_path_buf(), (0, 0))),
                Bound::Unbounded,
            ))
            .take_while(move |(path, _)| path.starts_with(dir))
            .filter_map(|(_, key)| self.by_key.get(key).map(|home| (*key, home)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunk_store::refs::HomeState;

    fn home(path: &str) -> Home {
        Home {
            path: PathBuf::from(path),
            size: 1,
            state: HomeState::Committed,
        }
    }

    fn under(homes: &Homes, dir: &str) -> Vec<InodeKey> {
        homes
            .at_or_under(Path::new(dir))
            .map(|(key, _)| key)
            .collect()
    }

    #[test]
    fn the_homes_under_a_path_are_found_by_components_and_follow_moves() {
        let mut homes = Homes::default();
        homes.insert((1, 1), home("/f/a/b"));
        homes.insert((1, 2), home("/f/a/b/c"));
        homes.insert((1, 3), home("/f/a/b0"));
        homes.insert((1, 4), home("/f/a/b/d/e"));
        homes.insert((1, 5), home("/f/a"));
        // Two inodes may share a home for a while (a crash, before recovery).
        homes.insert((1, 6), home("/f/a/b/c"));
        assert_eq!(
            under(&homes, "/f/a/b"),
            vec![(1, 1), (1, 2), (1, 6), (1, 4)]
        );
        assert_eq!(under(&homes, "/f/a/b/c"), vec![(1, 2), (1, 6)]);
        assert_eq!(under(&homes, "/f/a/b0"), vec![(1, 3)]);
        assert!(under(&homes, "/f/a/bb").is_empty());
        assert_eq!(under(&homes, "/f").len(), 6);

        homes.update(&(1, 2), |home| home.path = PathBuf::from("/kept/1-2"));
        assert_eq!(under(&homes, "/f/a/b/c"), vec![(1, 6)]);
        assert_eq!(under(&homes, "/kept"), vec![(1, 2)]);
        // Registered again at another path: only there.
        homes.insert((1, 6), home("/f/z"));
        assert!(under(&homes, "/f/a/b/c").is_empty());
        homes.remove(&(1, 4));
        assert_eq!(under(&homes, "/f/a/b"), vec![(1, 1)]);
        assert_eq!(homes.get(&(1, 1)).map(|home| home.size), Some(1));
    }
}
