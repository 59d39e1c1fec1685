//! A running node: its shared state (`Node`, this file), `serve` wiring it together
//! with its named `tasks` (and `fault`, test-only), the SIGHUP `reload`, the
//! `data_dir_lock`, `status` and `metrics` computed when asked, and `absorb` (an
//! active copying chunks kept by reference into its packs).
//!
//! `Node`: one running node's shared state — its repository, role, capture, what it
//! last heard from its peer, and its metrics. The gRPC and HTTP servers and the pull
//! loop all read and update it.

pub mod absorb;
pub mod data_dir_lock;
#[cfg(feature = "fault-hooks")]
pub mod fault;
pub mod metrics;
pub mod reload;
pub mod serve;
pub mod status;
pub mod tasks;

use std::sync::{Arc, Mutex, RwLock};

use standin_engine::capture::{CaptureOptions, CaptureStats};
use standin_engine::{Capture, Head, Repository};
use tokio::sync::watch;

/// A switchover starts only while the passive is at most this many events behind
/// (one apply batch): it then pulls to the exact head well within the patience the
/// protocol gives it.
pub const SWITCHOVER_MAX_LAG_EVENTS: u64 = 4096;

/// An operator's command for the coordinator (which owns the role machine).
#[derive(Debug)]
pub enum OperatorCommand {
    Promote {
        force: bool,
    },
    /// With what a call to the peer showed just before.
    Switchover {
        probe: standin_engine::role::switchover::PeerProbe,
    },
}

/// An operator's command and where the machine's answer goes.
#[derive(Debug)]
pub struct OperatorRequest {
    pub command: OperatorCommand,
    pub answer: tokio::sync::oneshot::Sender<Result<(), standin_engine::role::Refusal>>,
}

use crate::config::Config;
use crate::node::metrics::Metrics;
pub use crate::node::status::{NodeStatus, TerminalServerStatus};
use standin_engine::role::authority::AuthorityStatus;
use standin_engine::role::Input;
pub use standin_engine::role::Role;

pub struct Node {
    pub config: Config,
    pub secret: String,
    pub repository: Arc<Repository>,
    pub metrics: Metrics,
    /// The link to the peer (`peer_url`): every call this node makes to it.
    peer: Option<Arc<crate::peer::PeerLink>>,
    role: RwLock<Role>,
    accepts_logins: std::sync::atomic::AtomicBool,
    /// With a witness or a lease: logins are refused once the role machine's answer
    /// is older than this many ms (a stalled coordinator must not keep them open past
    /// the point where it would have suspended). `u64::MAX` in peer mode.
    logins_grace_ms: u64,
    /// When the role machine last published (monotonic ms).
    published_ms: std::sync::atomic::AtomicU64,
    /// Inputs for the role state machine (see `coordinator`).
    inputs: tokio::sync::mpsc::Sender<Input>,
    inputs_receiver: Mutex<Option<tokio::sync::mpsc::Receiver<Input>>>,
    /// Authority evidence (agents' reports, lease results) on a queue of its own, so
    /// a flood of reports can never crowd out a control input.
    evidence: tokio::sync::mpsc::Sender<Input>,
    evidence_receiver: Mutex<Option<tokio::sync::mpsc::Receiver<Input>>>,
    /// Operator commands (`promote`, `switchover`), each with its answer's way back.
    operator: tokio::sync::mpsc::Sender<OperatorRequest>,
    operator_receiver: Mutex<Option<tokio::sync::mpsc::Receiver<OperatorRequest>>>,
    /// Pull loops running (0 or 1; a count, so that one ending late after the next
    /// started does not hide it).
    pulling: std::sync::atomic::AtomicUsize,
    /// The epoch the role machine holds (published by the coordinator): an active
    /// records in it before its log has an event of it.
    machine_epoch: std::sync::atomic::AtomicU64,
    /// The log head, for `Pull` streams that wait for new events.
    pub head_watch: watch::Sender<Head>,
    peer_head: Mutex<Option<Head>>,
    /// When this node first saw the peer ahead of it (cleared once caught up).
    behind_since_ms: Mutex<Option<u64>>,
    last_error: Mutex<Option<String>>,
    /// Why the last pull failed, while following an active; `last_error` shows it
    /// only while this node is not the active (the role is published before the
    /// promotion's actions run, so a status read then must not show it).
    pull_error: Mutex<Option<String>>,
    capture: Mutex<Option<Capture>>,
    /// What every capture of this process counted (kept across captures).
    pub capture_stats: Arc<CaptureStats>,
    /// Held shared while the passive fetches chunks and applies them (batches overlap:
    /// one is fetched while the previous one is applied), and exclusively by
    /// compaction's garbage collection: a chunk fetched but not yet named by an
    /// applied event would otherwise look like garbage.
    pub apply_lock: Arc<tokio::sync::RwLock<()>>,
    /// Terminal servers' last load reports.
    pub load_table: crate::site::load_table::LoadTable,
    authority_status: Mutex<Option<AuthorityStatus>>,
    /// What the role machine answers take-over requests (published by the coordinator).
    take_over: Mutex<standin_engine::role::switchover::TakeOverMemory>,
    /// This run of the node (random): agents echo it with this node's time, so a vote
    /// is never counted against a previous run's clock.
    pub instance: u64,
    /// This node's voter set and the peer's last announced one (`voter_set`).
    pub voter_sets: crate::coordinator::voter_set::VoterSets,
    /// Set once the node is ending (`serve`): no logins and no new capture, whatever
    /// the role machine says.
    ending: std::sync::atomic::AtomicBool,
    /// Why the node must stop: a write could not be made durable (`fail`).
    fatal: Mutex<Option<String>>,
    /// The hooks' commands (on_promote, on_demote): the config's, replaced by a
    /// SIGHUP reload (`reload`).
    hooks: Mutex<Hooks>,
    /// The last failover's named-loss report (`failover_report`).
    pub failover: crate::coordinator::failover_report::FailoverLog,
}

/// The commands `on_promote` and `on_demote` run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hooks {
    pub on_promote: Option<String>,
    pub on_demote: Option<String>,
}

/// Inputs waiting for the role state machine, at most.
const INPUT_QUEUE: usize = 1024;
/// Operator commands waiting for it, at most (more are answered "busy").
const OPERATOR_QUEUE: usize = 16;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Node {
    /// Open the node's data directory (blocking: call from a blocking context).
    pub fn open(config: Config, secret: String) -> anyhow::Result<Arc<Node>> {
        let repository = Arc::new(Repository::open(&config.data_dir).map_err(|error| {
            anyhow::anyhow!("open data_dir {}: {error}", config.data_dir.display())
        })?);
        repository.set_meta_options(standin_engine::folder::meta::MetaOptions {
            numeric_ids: config.numeric_ids,
            strip_setuid: config.strip_setuid,
        });
        repository
            .chunks()
            .set_patch_in_place(config.patch_in_place);
        if !standin_engine::folder::meta::can_chown() {
            tracing::warn!("standin does not run as root: owners, setuid bits and trusted.* attributes cannot be applied on this node (counted in standin_meta_unapplied)");
        }
        // Finish (or undo) a batch a crash interrupted, and remove what standin's own
        // temporary files a crash left, before anyone reads the folder.
        standin_engine::replay::recover(&config.folder, &repository)
            .and_then(|()| standin_engine::replay::remove_temporary_files(&config.folder))
            .map_err(|error| {
                anyhow::anyhow!("recover folder {}: {error}", config.folder.display())
            })?;
        let (head_watch, _) = watch::channel(repository.head());
        let sender = head_watch.clone();
        repository.log().set_listener(Box::new(move |head| {
            sender.send_replace(head);
        }));
        let peer = crate::peer::PeerLink::of(&config, &secret)
            .map_err(|error| anyhow::anyhow!("peer_url: {error}"))?
            .map(Arc::new);
        let (inputs, inputs_receiver) = tokio::sync::mpsc::channel(INPUT_QUEUE);
        let (evidence, evidence_receiver) = tokio::sync::mpsc::channel(INPUT_QUEUE);
        let (operator, operator_receiver) = tokio::sync::mpsc::channel(OPERATOR_QUEUE);
        let logins_grace_ms = config.timing.logins_grace_ms();
        let voter_sets = crate::coordinator::voter_set::VoterSets::open(
            &config.data_dir,
            crate::coordinator::voter_set::hash(&config.authority, config.agent_keys.as_ref()),
        );
        let hooks = Mutex::new(Hooks {
            on_promote: config.on_promote.clone(),
            on_demote: config.on_demote.clone(),
        });
        let failover = crate::coordinator::failover_report::FailoverLog::open(&config.data_dir);
        let node = Arc::new(Node {
            failover,
            config,
            hooks,
            secret,
            repository,
            metrics: Metrics::new(),
            peer,
            role: RwLock::new(Role::Starting),
            accepts_logins: std::sync::atomic::AtomicBool::new(false),
            logins_grace_ms,
            published_ms: std::sync::atomic::AtomicU64::new(0),
            inputs,
            inputs_receiver: Mutex::new(Some(inputs_receiver)),
            evidence,
            evidence_receiver: Mutex::new(Some(evidence_receiver)),
            operator,
            operator_receiver: Mutex::new(Some(operator_receiver)),
            machine_epoch: std::sync::atomic::AtomicU64::new(0),
            pulling: std::sync::atomic::AtomicUsize::new(0),
            head_watch,
            peer_head: Mutex::new(None),
            behind_since_ms: Mutex::new(None),
            last_error: Mutex::new(None),
            pull_error: Mutex::new(None),
            capture: Mutex::new(None),
            capture_stats: Arc::default(),
            apply_lock: Arc::new(tokio::sync::RwLock::new(())),
            load_table: crate::site::load_table::LoadTable::default(),
            authority_status: Mutex::new(None),
            take_over: Mutex::new(Default::default()),
            instance: rand::random::<u64>() | 1,
            voter_sets,
            ending: std::sync::atomic::AtomicBool::new(false),
            fatal: Mutex::new(None),
        });
        node.voters_at_start();
        Ok(node)
    }

    /// The link to the peer, if `peer_url` names one.
    pub fn peer(&self) -> Option<Arc<crate::peer::PeerLink>> {
        self.peer.clone()
    }

    /// The hooks' commands now.
    pub fn hooks(&self) -> Hooks {
        lock(&self.hooks).clone()
    }

    /// Replace the hooks' commands (a reload).
    pub fn set_hooks(&self, hooks: Hooks) {
        *lock(&self.hooks) = hooks;
    }

    pub fn role(&self) -> Role {
        self.role
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Publish the role state machine's view (the coordinator calls this).
    pub fn set_role(&self, role: Role, accepts_logins: bool) {
        *self
            .role
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = role;
        self.accepts_logins
            .store(accepts_logins, std::sync::atomic::Ordering::SeqCst);
        self.published_ms.store(
            standin_engine::fsutil::monotonic_ms(),
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Only the authoritative node lets users log in (and answers `/active` 200).
    pub fn accepts_logins(&self) -> bool {
        let published = self.published_ms.load(std::sync::atomic::Ordering::SeqCst);
        let fresh =
            standin_engine::fsutil::monotonic_ms().saturating_sub(published) < self.logins_grace_ms;
        fresh
            && self
                .accepts_logins
                .load(std::sync::atomic::Ordering::SeqCst)
            && !self.ending.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The node is ending: from now on it accepts no logins (`/active` answers 503)
    /// and starts no capture. Stop the running capture next (`stop_capture`).
    pub fn end(&self) {
        self.ending.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Hand an input to the role state machine. The queue is bounded; an input that
    /// does not fit is dropped with a warning (heartbeats repeat).
    pub fn feed(&self, input: Input) {
        let queue = match input {
            Input::Authority(_) => &self.evidence,
            _ => &self.inputs,
        };
        if let Err(error) = queue.try_send(input) {
            tracing::warn!(%error, "role input dropped");
        }
    }

    /// Hand an operator's command to the role machine (its answer comes back on the
    /// request's channel); refused when too many wait already.
    pub fn operate(&self, request: OperatorRequest) -> Result<(), &'static str> {
        self.operator
            .try_send(request)
            .map_err(|_| "busy with other operator commands; try again")
    }

    /// The receiving end of `operate`, once (for the coordinator).
    pub fn take_operator(&self) -> Option<tokio::sync::mpsc::Receiver<OperatorRequest>> {
        lock(&self.operator_receiver).take()
    }

    /// Publish the role machine's epoch (the coordinator calls this).
    pub fn set_machine_epoch(&self, epoch: u64) {
        self.machine_epoch
            .store(epoch, std::sync::atomic::Ordering::SeqCst);
    }

    /// The epoch `status` shows: an authority's (active, handing over, suspended) is
    /// the one it records in, which its log may not show yet (a new active); any
    /// other node's is its log head's.
    pub fn status_epoch(&self) -> u64 {
        let head = self.repository.head().epoch;
        match self.role() {
            Role::Active | Role::HandingOver | Role::Suspended { .. } => {
                head.max(self.machine_epoch.load(std::sync::atomic::Ordering::SeqCst))
            }
            _ => head,
        }
    }

    /// The receiving end of the authority evidence, once (for the coordinator).
    pub fn take_evidence(&self) -> Option<tokio::sync::mpsc::Receiver<Input>> {
        lock(&self.evidence_receiver).take()
    }

    /// The receiving end of `feed`, once (for the coordinator).
    pub fn take_inputs(&self) -> Option<tokio::sync::mpsc::Receiver<Input>> {
        lock(&self.inputs_receiver).take()
    }

    /// The epoch this node records in when active.
    pub fn epoch(&self) -> u64 {
        self.repository.head().epoch.max(1)
    }

    /// Start recording the folder's changes (blocking: reconciles the folder first).
    pub fn start_capture(&self) -> anyhow::Result<()> {
        let mut capture = lock(&self.capture);
        if capture.is_some() {
            return Ok(());
        }
        // Checked under the lock `stop_capture` takes: a capture is never started
        // after the node's end has stopped it.
        if self.ending.load(std::sync::atomic::Ordering::SeqCst) {
            anyhow::bail!("the node is stopping: capture not started");
        }
        let options = CaptureOptions {
            rescan_interval_ms: self.config.rescan_interval_s * 1000,
            max_delay_ms: self.config.max_capture_delay_ms,
            ..CaptureOptions::default()
        };
        *capture = Some(
            Capture::start_with_stats(
                &self.config.folder,
                self.repository.clone(),
                self.epoch(),
                options,
                self.capture_stats.clone(),
            )
            .map_err(|error| {
                anyhow::anyhow!("start capture of {}: {error}", self.config.folder.display())
            })?,
        );
        Ok(())
    }

    /// Whether capture should run but its thread has ended (it ends on its own only
    /// by a panic). Never waits: false while another caller holds the capture.
    pub fn capture_died(&self) -> bool {
        match self.capture.try_lock() {
            Ok(capture) => capture
                .as_ref()
                .is_some_and(|capture| !capture.is_running()),
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned
                .into_inner()
                .as_ref()
                .is_some_and(|capture| !capture.is_running()),
            Err(std::sync::TryLockError::WouldBlock) => false,
        }
    }

    /// Capture runs (an active doing its job).
    pub fn capture_running(&self) -> bool {
        lock(&self.capture)
            .as_ref()
            .is_some_and(|capture| capture.is_running())
    }

    /// A pull loop started (`true`) or ended (`false`); the coordinator's task calls it.
    pub fn set_pulling(&self, running: bool) {
        if running {
            self.pulling
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        } else {
            self.pulling
                .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// The pull loop runs (a passive doing its job).
    pub fn pulling(&self) -> bool {
        self.pulling.load(std::sync::atomic::Ordering::SeqCst) > 0
    }

    /// Whether the node is ending (`end` was called).
    pub fn is_ending(&self) -> bool {
        self.ending.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Stop recording, after a final capture of what is pending (blocking).
    pub fn stop_capture(&self) {
        if let Some(capture) = lock(&self.capture).take() {
            capture.stop();
        }
    }

    pub fn set_peer_head(&self, head: Head) {
        *lock(&self.peer_head) = Some(head);
        // Lag is measured on this node's clock from the moment it learned it was
        // behind (no clock skew between nodes, no false alarm after an idle hour).
        let mut behind_since = lock(&self.behind_since_ms);
        if head.seq > self.repository.head().seq {
            behind_since.get_or_insert_with(standin_engine::fsutil::now_ms);
        } else {
            *behind_since = None;
        }
    }

    pub fn peer_head(&self) -> Option<Head> {
        *lock(&self.peer_head)
    }

    /// Publish the machine's answers to take-over requests (the coordinator calls this).
    pub fn set_take_over(&self, memory: standin_engine::role::switchover::TakeOverMemory) {
        *lock(&self.take_over) = memory;
    }

    /// This node's state for a switchover its peer asked it to take over.
    pub fn take_over_state(
        &self,
        request: &standin_engine::role::switchover::TakeOverRequest,
    ) -> standin_engine::role::switchover::TakeOverState {
        lock(&self.take_over).state(request)
    }

    /// Publish what the authority says (the coordinator calls this).
    pub fn set_authority_status(&self, status: AuthorityStatus) {
        *lock(&self.authority_status) = Some(status);
    }

    /// The authority's mode and its one-line summary.
    pub fn authority_status(&self) -> AuthorityStatus {
        lock(&self.authority_status)
            .clone()
            .unwrap_or_else(|| AuthorityStatus {
                mode: self.config.authority.mode(),
                summary: "starting".to_string(),
            })
    }

    /// Note `error` from the engine (`what` failed): a write that could not be made
    /// durable (`Error::is_durability_lost`) makes the node stop — retrying would
    /// prove nothing, and a restart checks the log. Returns whether it did.
    pub fn fail_if_durability_lost(&self, what: &str, error: &standin_engine::Error) -> bool {
        if !error.is_durability_lost() {
            return false;
        }
        self.fail(format!(
            "{what}: a write could not be made durable ({error}): what it held may be lost; restart the node (it checks its log when it opens)"
        ));
        true
    }

    /// The node must stop, for `reason` (the first one given is kept): `serve`'s watch
    /// task ends it, and it exits non-zero.
    pub fn fail(&self, reason: String) {
        tracing::error!("{reason}");
        self.set_error(Some(reason.clone()));
        lock(&self.fatal).get_or_insert(reason);
    }

    /// Why the node must stop, if it must (`fail_if_durability_lost`, capture stopped
    /// for that reason, or any sync of the engine failed).
    pub fn fatal(&self) -> Option<String> {
        lock(&self.fatal)
            .clone()
            .or_else(|| self.capture_stats.fatal())
            .or_else(|| {
                // A sync failed somewhere, its error perhaps only logged (an index
                // save): the engine's latch (`standin_engine::durability`).
                standin_engine::durability::lost().map(|first| {
                    format!(
                        "a write could not be made durable ({first}): what it held may be lost; restart the node (it checks its log when it opens)"
                    )
                })
            })
    }

    pub fn set_error(&self, error: Option<String>) {
        *lock(&self.last_error) = error;
    }

    /// Why the last pull failed (`None`: the last one worked).
    pub fn set_pull_error(&self, error: Option<String>) {
        *lock(&self.pull_error) = error;
    }

    /// What went wrong last: the node's own error, else, unless this node is the
    /// active, why its last pull failed.
    pub fn last_error(&self) -> Option<String> {
        let own = lock(&self.last_error).clone();
        if own.is_some() || self.role() == Role::Active {
            return own;
        }
        lock(&self.pull_error).clone()
    }

    /// Lag behind the peer: events, and seconds since this node learned it was behind
    /// (0 when caught up).
    pub fn lag(&self) -> (u64, f64) {
        let own = self.repository.head();
        match self.peer_head() {
            Some(peer) if self.role() == Role::Passive && peer.seq > own.seq => {
                let since_ms =
                    lock(&self.behind_since_ms).unwrap_or_else(standin_engine::fsutil::now_ms);
                let seconds =
                    standin_engine::fsutil::now_ms().saturating_sub(since_ms) as f64 / 1000.0;
                (peer.seq - own.seq, seconds)
            }
            _ => (0, 0.0),
        }
    }
}

/// The voter sets the pair's nodes announce (witness mode): `voter_set`.
impl Node {
    /// At start: a remembered peer set that differs refuses the witness before any vote.
    pub fn voters_at_start(&self) {
        if let Some(why) = self.voter_sets.disagreement() {
            tracing::warn!(
                "{why}; witness votes do not count until the peer announces the same set"
            );
            self.feed_voter_sets(Some(why));
        }
    }

    /// The peer announced `peer` in a heartbeat (either direction): log a change, and
    /// tell the role machine (witness mode) whether votes count.
    pub fn voters_announced(&self, peer: &[u8]) {
        if peer.is_empty() {
            return;
        }
        let (disagreement, changed) = self.voter_sets.announced(peer);
        if changed {
            match &disagreement {
                Some(why) => tracing::error!("{why}; witness authority refused until they agree"),
                None => tracing::info!("the peer's voter set is this node's"),
            }
        }
        self.feed_voter_sets(disagreement);
    }

    fn feed_voter_sets(&self, disagreement: Option<String>) {
        if matches!(
            self.config.authority,
            crate::config::AuthorityConfig::Witness { .. }
        ) {
            self.feed(standin_engine::role::Input::Authority(
                standin_engine::role::authority::Evidence::VoterSets {
                    now_ms: standin_engine::fsutil::monotonic_ms(),
                    disagreement,
                },
            ));
        }
    }
}
