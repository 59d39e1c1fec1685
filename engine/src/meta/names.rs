//! User and group names and ids from this machine's databases (NSS, through `uzers`),
//! cached for a minute: a scan asks for the same few owners thousands of times, and a
//! user added meanwhile is seen within the minute.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const KEEP: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Cache {
    user_names: HashMap<u32, (Instant, String)>,
    group_names: HashMap<u32, (Instant, String)>,
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
    map.insert(key.clone(), (Instant::now(), value.clone()));
    value
}

/// The name of user `uid` here; empty when it has none.
pub fn user_name(uid: u32) -> String {
    cached(
        |cache| &mut cache.user_names,
        &uid,
        || {
            uzers::get_user_by_uid(uid)
                .and_then(|user| user.name().to_str().map(str::to_string))
                .unwrap_or_default()
        },
    )
}

/// The name of group `gid` here; empty when it has none.
pub fn group_name(gid: u32) -> String {
    cached(
        |cache| &mut cache.group_names,
        &gid,
        || {
            uzers::get_group_by_gid(gid)
                .and_then(|group| group.name().to_str().map(str::to_string))
                .unwrap_or_default()
        },
    )
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
