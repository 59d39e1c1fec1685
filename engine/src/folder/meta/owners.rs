//! User and group names and ids from this machine's databases (NSS, through `uzers`),
//! cached for a minute: a scan asks for the same few owners thousands of times, and a
//! user added meanwhile is seen within the minute. Names are looked up first in a
//! cache of the calling thread (capture reads files on several threads: no lock to
//! share per file), then in the process's.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::Name;

const KEEP: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Cache {
    user_names: HashMap<u32, (Instant, Name)>,
    group_names: HashMap<u32, (Instant, Name)>,
    user_ids: HashMap<String, (Instant, Option<u32>)>,
    group_ids: HashMap<String, (Instant, Option<u32>)>,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

fn cached<K: std::hash::Hash + Eq + Clone, V: Clone>(
    pick: impl FnOnce(&mut Cache) -> &mut HashMap<K, (Instant, V)>,
    key: &K,
    look_up: impl FnOnce() -> V,
) -> V {
    let mut guard = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let map = pick(guard.get_or_insert_with(Cache::default));
    if let Some((at, value)) = map.get(key) {
        if at.elapsed() < KEEP {
            return value.clone();
        }
    }
    let value = look_up();
    map.insert(key.clone(), (crate::clock::instant(), value.clone()));
    value
}

/// This thread's names: (group, id) → when looked up, the name.
type Local = HashMap<(bool, u32), (Instant, Name)>;

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(HashMap::new());
}

/// The name of `id` (a group's when `group`), from this thread's cache, else the
/// process's, else `look_up`.
fn name(group: bool, id: u32) -> Name {
    let local = LOCAL.with(|local| {
        local
            .borrow()
            .get(&(group, id))
            .filter(|(at, _)| at.elapsed() < KEEP)
            .map(|(_, name)| name.clone())
    });
    if let Some(name) = local {
        return name;
    }
    let name = if group {
        cached(
            |cache| &mut cache.group_names,
            &id,
            || {
                uzers::get_group_by_gid(id)
                    .and_then(|group| group.name().to_str().map(Name::from))
                    .unwrap_or_default()
            },
        )
    } else {
        cached(
            |cache| &mut cache.user_names,
            &id,
            || {
                uzers::get_user_by_uid(id)
                    .and_then(|user| user.name().to_str().map(Name::from))
                    .unwrap_or_default()
            },
        )
    };
    LOCAL.with(|local| {
        local
            .borrow_mut()
            .insert((group, id), (crate::clock::instant(), name.clone()))
    });
    name
}

/// The name of user `uid` here; empty when it has none.
pub fn user_name(uid: u32) -> Name {
    name(false, uid)
}

/// The name of group `gid` here; empty when it has none.
pub fn group_name(gid: u32) -> Name {
    name(true, gid)
}

/// The id of user `name` here, if there is one.
pub fn user_id(name: &str) -> Option<u32> {
    cached(
        |cache| &mut cache.user_ids,
        &name.to_string(),
        || uzers::get_user_by_name(name).map(|user| user.uid()),
    )
}

/// The id of group `name` here, if there is one.
pub fn group_id(name: &str) -> Option<u32> {
    cached(
        |cache| &mut cache.group_ids,
        &name.to_string(),
        || uzers::get_group_by_name(name).map(|group| group.gid()),
    )
}
