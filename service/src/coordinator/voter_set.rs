//! The pair's agreement on who votes. A node's voter set is a hash of its authority
//! mode, `witness_window_ms`, `witness_agents` and each agent's key fingerprint (or
//! "shared" without per-agent keys); heartbeats carry it both ways. Two nodes counting
//! different voters could each find a majority, so while the peer's set differs from
//! this node's, no witness vote counts here (logged, and shown by `status`).
//!
//! The peer's last announced set is kept in `data_dir/peer-voter-set`: a node
//! restarted with a changed set during a cut link still knows that its peer's differs
//! and refuses. A node that never heard its peer compares nothing.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::config::AuthorityConfig;
use crate::site::agent_keys::AgentKeys;

const CONTEXT: &str = "standin 2025 voter set v1";
const FILE: &str = "peer-voter-set";

/// The voter set's hash for this configuration.
pub fn hash(authority: &AuthorityConfig, keys: Option<&AgentKeys>) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new_derive_key(CONTEXT);
    let mut field = |bytes: &[u8]| {
        hasher.update(&(bytes.len() as u64).to_le_bytes());
        hasher.update(bytes);
    };
    field(authority.mode().as_bytes());
    if let AuthorityConfig::Witness { agents, window_ms } = authority {
        field(&window_ms.to_le_bytes());
        let mut agents = agents.clone();
        agents.sort();
        let keys = keys.filter(|keys| !keys.is_empty());
        for agent in agents {
            field(agent.as_bytes());
            match keys.and_then(|keys| keys.get(&agent)) {
                Some(key) => field(&key.fingerprint()),
                None => field(b"shared"),
            }
        }
    }
    *hasher.finalize().as_bytes()
}

fn short(hash: &[u8]) -> String {
    hash.iter()
        .take(6)
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// This node's voter set and what the peer last announced.
pub struct VoterSets {
    own: [u8; 32],
    file: PathBuf,
    peer: Mutex<Option<Vec<u8>>>,
}

impl VoterSets {
    /// This node's set `own`, and the peer's as remembered in `data_dir`.
    pub fn open(data_dir: &Path, own: [u8; 32]) -> VoterSets {
        let file = data_dir.join(FILE);
        let peer = std::fs::read_to_string(&file).ok().and_then(|text| {
            let text = text.trim();
            (text.len() == 64)
                .then(|| {
                    (0..32)
                        .map(|index| u8::from_str_radix(&text[2 * index..2 * index + 2], 16))
                        .collect::<Result<Vec<u8>, _>>()
                        .ok()
                })
                .flatten()
        });
        VoterSets {
            own,
            file,
            peer: Mutex::new(peer),
        }
    }

    pub fn own(&self) -> Vec<u8> {
        self.own.to_vec()
    }

    /// Why the witness is refused, while the peer's last announced set differs.
    pub fn disagreement(&self) -> Option<String> {
        let peer = self
            .peer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.judge(peer.as_deref())
    }

    fn judge(&self, peer: Option<&[u8]>) -> Option<String> {
        let peer = peer?;
        (peer != self.own.as_slice()).then(|| {
            format!(
                "the peer's voter set ({}) differs from this node's ({}): give both nodes the same witness_agents, agent keys and witness_window_ms",
                short(peer),
                short(&self.own)
            )
        })
    }

    /// The peer announced `peer` (a heartbeat; empty from an older node: ignored).
    /// Returns the disagreement now, and whether the peer's set changed (it is then
    /// logged and remembered in data_dir).
    pub fn announced(&self, peer: &[u8]) -> (Option<String>, bool) {
        let mut last = self
            .peer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if peer.is_empty() {
            return (self.judge(last.as_deref()), false);
        }
        let changed = last.as_deref() != Some(peer);
        if changed {
            *last = Some(peer.to_vec());
            let text: String = peer.iter().map(|byte| format!("{byte:02x}")).collect();
            let temporary = self.file.with_extension("writing");
            let written = std::fs::write(&temporary, format!("{text}\n"))
                .and_then(|()| std::fs::rename(&temporary, &self.file));
            if let Err(error) = written {
                tracing::warn!(file = %self.file.display(), %error, "cannot remember the peer's voter set");
            }
        }
        (self.judge(last.as_deref()), changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::site::agent_keys::AgentKey;

    fn witness(agents: &[&str], window_ms: u64) -> AuthorityConfig {
        AuthorityConfig::Witness {
            agents: agents.iter().map(|agent| agent.to_string()).collect(),
            window_ms,
        }
    }

    #[test]
    fn the_hash_covers_mode_window_agents_and_keys() {
        let (ts1, ts2) = (AgentKey::generate(), AgentKey::generate());
        let keys =
            AgentKeys::from_keys([("ts1".to_string(), ts1.clone()), ("ts2".to_string(), ts2)]);
        let base = hash(&witness(&["ts1", "ts2"], 1_500), Some(&keys));
        assert_eq!(base, hash(&witness(&["ts2", "ts1"], 1_500), Some(&keys)));
        let other_key = AgentKeys::from_keys([
            ("ts1".to_string(), ts1),
            ("ts2".to_string(), AgentKey::generate()),
        ]);
        for different in [
            hash(&witness(&["ts1", "ts2"], 1_600), Some(&keys)),
            hash(&witness(&["ts1"], 1_500), Some(&keys)),
            hash(&witness(&["ts1", "ts2"], 1_500), None),
            hash(&witness(&["ts1", "ts2"], 1_500), Some(&other_key)),
            hash(&AuthorityConfig::Peer, None),
        ] {
            assert_ne!(base, different);
        }
    }

    #[test]
    fn the_peers_set_is_compared_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let own = hash(&witness(&["ts1"], 1_500), None);
        let other = hash(&witness(&["ts2"], 1_500), None);
        let sets = VoterSets::open(dir.path(), own);
        assert_eq!(sets.disagreement(), None, "never heard: nothing to compare");
        assert_eq!(sets.announced(&own), (None, true));
        assert_eq!(sets.announced(&own), (None, false));
        let (disagreement, changed) = sets.announced(&other);
        assert!(changed && disagreement.unwrap().contains("differs"));
        assert!(sets.announced(&[]).0.is_some(), "an older peer: unchanged");
        // Remembered across a restart.
        assert!(VoterSets::open(dir.path(), own).disagreement().is_some());
        assert!(VoterSets::open(dir.path(), other).disagreement().is_none());
    }
}
