//! What the status page shows of this node beyond its `NodeStatus`, read from its
//! data_dir and log when the page is asked: its quarantines (when, how many events,
//! which paths) and the last promotion its log records (a failover, a switchover, or
//! an active resuming in a new epoch). The peer's are not asked for: its status
//! carries only its count of quarantined events.

use standin_engine::log::quarantine::list_quarantines;
use standin_engine::{Change, Event, EventLog};

use crate::node::Node;

/// At most this many quarantines, and this many paths of each, are shown.
pub const MAX_QUARANTINES: usize = 10;
pub const MAX_PATHS: usize = 8;

/// One quarantine of this node, as `standin quarantine list` names it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct QuarantineFacts {
    /// The directory's name under `data_dir/quarantine/` (the id `show` takes).
    pub id: String,
    pub events: usize,
    pub common_seq: u64,
    pub quarantined_at_ms: u64,
    /// The first `MAX_PATHS` paths its events touched.
    pub paths: Vec<String>,
}

/// The last `Promote` event of the log: who took over, in which epoch, when.
#[derive(Clone, Debug, PartialEq)]
pub struct Promotion {
    pub node: String,
    pub epoch: u64,
    pub seq: u64,
    pub recorded_at_ms: u64,
    /// The epoch of the events before it (none: it is the first the log holds).
    pub previous_epoch: Option<u64>,
    /// Who promoted in that epoch, when that began with a promotion.
    pub previous_node: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LocalFacts {
    /// This node's name (whose data the facts are).
    pub node: String,
    /// Newest first, at most `MAX_QUARANTINES`.
    pub quarantines: Vec<QuarantineFacts>,
    /// How many quarantines there are in all.
    pub quarantine_count: usize,
    /// The last promotion in this node's log, if the log still holds it.
    pub last_promotion: Option<Promotion>,
    /// What could not be read (shown as a warning).
    pub problems: Vec<String>,
}

impl LocalFacts {
    /// Nothing could be read: only why.
    pub fn unreadable(why: String) -> LocalFacts {
        LocalFacts {
            problems: vec![why],
            ..LocalFacts::default()
        }
    }
}

/// Read this node's facts.
pub fn gather(node: &Node) -> LocalFacts {
    let mut facts = LocalFacts {
        node: node.config.node_name.clone(),
        ..LocalFacts::default()
    };
    match list_quarantines(&node.config.data_dir) {
        Ok(list) => {
            facts.quarantine_count = list.len();
            let mut list: Vec<QuarantineFacts> = list
                .into_iter()
                .map(|(dir, manifest)| {
                    let mut paths: Vec<String> = Vec::new();
                    for event in &manifest.events {
                        if paths.len() < MAX_PATHS && !paths.contains(&event.path) {
                            paths.push(event.path.clone());
                        }
                    }
                    QuarantineFacts {
                        id: dir
                            .file_name()
                            .map(|name| name.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                        events: manifest.events.len(),
                        common_seq: manifest.common_seq,
                        quarantined_at_ms: manifest.quarantined_at_ms,
                        paths,
                    }
                })
                .collect();
            list.sort_by_key(|quarantine| std::cmp::Reverse(quarantine.quarantined_at_ms));
            list.truncate(MAX_QUARANTINES);
            facts.quarantines = list;
        }
        Err(error) => facts
            .problems
            .push(format!("the quarantine cannot be read: {error}")),
    }
    match last_promotion(node.repository.log()) {
        Ok(promotion) => facts.last_promotion = promotion,
        Err(error) => facts
            .problems
            .push(format!("the log cannot be read: {error}")),
    }
    facts
}

/// The first event of the epoch of the event at `seq` (at or after the log's base):
/// epochs never decrease along the log, so a binary search finds it in a few reads.
fn first_of_epoch(log: &EventLog, seq: u64) -> standin_engine::Result<Option<Event>> {
    let Some(last) = log.get(seq)? else {
        return Ok(None);
    };
    let epoch = last.body.epoch;
    let (mut low, mut high) = (log.base().seq + 1, seq);
    while low < high {
        let middle = low + (high - low) / 2;
        let Some(event) = log.get(middle)? else {
            return Ok(None);
        };
        if event.body.epoch < epoch {
            low = middle + 1;
        } else {
            high = middle;
        }
    }
    log.get(low)
}

/// The last `Promote` event in `log`: the first event of the head's epoch, when it is
/// one (a promotion records it before anything else of its epoch), with the epoch
/// before it and that epoch's promotion, when the log still holds them. None when the
/// log is empty, its epoch began with no promotion (a first start in peer mode), or
/// the event was compacted away.
pub fn last_promotion(log: &EventLog) -> standin_engine::Result<Option<Promotion>> {
    let Some(first) = first_of_epoch(log, log.head().seq)? else {
        return Ok(None);
    };
    let Change::Promote { node } = first.body.change else {
        return Ok(None);
    };
    let mut promotion = Promotion {
        node,
        epoch: first.body.epoch,
        seq: first.body.seq,
        recorded_at_ms: first.body.recorded_at_ms,
        previous_epoch: None,
        previous_node: None,
    };
    if let Some(before) = first_of_epoch(log, first.body.seq - 1)? {
        promotion.previous_epoch = Some(before.body.epoch);
        if let Change::Promote { node } = before.body.change {
            promotion.previous_node = Some(node);
        }
    }
    Ok(Some(promotion))
}
