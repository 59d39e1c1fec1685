//! The role state machine: which node is authoritative, when a passive takes over,
//! when an active steps down. Pure: `RoleMachine::step(input) -> Vec<Action>`; time,
//! heartbeat results, what the peer says and operator commands come in as inputs, and
//! the service (a thin shell) carries out the actions. No I/O and no clock here, so
//! every rule is tested with simulated time.
//!
//! # Rules
//!
//! - **Authority order.** Authorities are ordered by `(epoch, node)`. A node that sees
//!   an active peer with a higher `(epoch, node)` than its own stops capture and
//!   logins at once and rejoins (invariant 6).
//! - **Start-up.** A node asks its peer first (`Starting`): an active peer with a
//!   higher authority makes it rejoin; otherwise (peer down, passive, or lower) a node
//!   whose log ends in an epoch of its own (it was the last authority) resumes as
//!   active, a fresh node takes its configured role, and any other follows.
//! - **Failover.** A passive whose heartbeats have gone unanswered for
//!   `failover_after_ms` makes a last pull attempt, then promotes itself to the next
//!   epoch above every epoch it has seen that is its own: odd epochs belong to the node
//!   configured active, even ones to the node configured passive, so the two can never
//!   take the same epoch even when a cut link hides each from the other. An answer
//!   before the promotion is recorded cancels it.
//! - **Switchover.** The active stops capture (after a final capture) and logins and
//!   asks its peer to take over at its exact head; the peer pulls to that head and
//!   promotes once the authority agrees; the old active then sees the higher
//!   authority and follows. It resumes only on the peer's abort or when the authority
//!   backs it again (see [`crate::switchover`]). `auto_failback` makes the preferred
//!   node ask for this once it has caught up.
//! - **Fencing.** Two active nodes in one epoch, a broken chain or a digest mismatch
//!   fence the node: it refuses everything but status until an operator acts.
//! - **Authority.** Every decision to take, keep or resume authority is also put to
//!   the configured [`Authority`] (peer only, agent witness, etcd lease): a passive
//!   fails over only when it agrees, an active it no longer backs is `Suspended`
//!   (logins and capture stopped) until it backs it again — resuming in a new epoch
//!   when the authority's epoch floor (the etcd revision) moved past it — or a higher
//!   authority shows up and it rejoins. A switchover's target needs the witness
//!   quorum or the etcd lease like any other promotion.

use serde::Serialize;

use crate::authority::{Authority, Decision, Evidence, PeerOnly};
use crate::switchover::{HandingOver, TakeOverMemory, TakeOverRequest, TakeOverState};
use crate::timing::Timing;

/// What a node is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
pub enum Role {
    /// Just started: asking the peer before taking a role.
    Starting,
    /// Authoritative: records changes, serves the log, accepts logins.
    Active,
    /// Was active, stopped logins and capture for a switchover: waits for the peer to
    /// take over (or to abort), or for the authority to back it again.
    #[serde(rename = "handing-over")]
    HandingOver,
    /// Follows the active.
    Passive,
    /// Learned it was superseded: quarantining what never replicated, rewinding its
    /// folder to the last common event, then following.
    Rejoining,
    /// Was active, but its authority (witness quorum, etcd lease) no longer backs it:
    /// logins and capture stopped; resumes when backed again, rejoins when a higher
    /// authority shows up.
    Suspended { reason: String },
    /// Refuses everything but status until an operator acts.
    Fenced { reason: String },
}

impl Role {
    pub fn name(&self) -> &'static str {
        match self {
            Role::Starting => "starting",
            Role::Active => "active",
            Role::HandingOver => "handing-over",
            Role::Passive => "passive",
            Role::Rejoining => "rejoining",
            Role::Suspended { .. } => "suspended",
            Role::Fenced { .. } => "fenced",
        }
    }
}

/// The peer as one answer showed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerView {
    pub node: String,
    pub epoch: u64,
    pub active: bool,
    /// Handing authority over (a switchover): not active, but still the holder of
    /// its epoch for a lower node.
    pub handing_over: bool,
    pub head_seq: u64,
}

/// Why an operator's command was refused (nothing was changed).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Operator commands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Promote this (passive) node; `force` when the operator knows the peer is dead.
    Promote { force: bool },
    /// Hand authority to the peer without losing anything (on the active).
    Switchover,
    /// Leave `Fenced` and start over by asking the peer.
    Unfence,
}

/// Everything the shell tells the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// Time has passed.
    Tick {
        now_ms: u64,
    },
    /// A heartbeat to the peer was answered.
    HeartbeatAnswered {
        now_ms: u64,
        peer: PeerView,
    },
    /// A heartbeat to the peer failed (unreachable, timed out, refused).
    HeartbeatFailed {
        now_ms: u64,
    },
    /// A call from the peer (a heartbeat, a pull) showed its view.
    PeerSeen {
        now_ms: u64,
        peer: PeerView,
    },
    /// This node's log moved (its head epoch and seq).
    Applied {
        epoch: u64,
        head_seq: u64,
    },
    /// The last pull before a promotion has finished (successfully or not).
    FinalPullDone,
    /// The passive has applied everything up to the active's head.
    CaughtUp {
        head_seq: u64,
    },
    /// The rejoin (quarantine, rewind) is done; the node can follow.
    RejoinDone,
    /// The active asks this passive to take over (a switchover).
    TakeOverRequested(TakeOverRequest),
    /// The peer answered a take-over request this node sent (switchover `id`).
    TakeOverAnswered {
        id: u64,
        state: TakeOverState,
    },
    /// A pull answered that our history is not the authority's (we hold events it
    /// does not): rejoin.
    Diverged {
        authority: String,
    },
    /// The chain broke or a digest did not match.
    IntegrityFailure {
        reason: String,
    },
    /// Evidence for the authority (an agent's report, an etcd lease result).
    Authority(Evidence),
    Operator(Command),
}

/// Hooks the shell runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    OnPromote,
    OnDemote,
}

/// What the shell must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    SendHeartbeat,
    /// One last pull from the (unanswering) active before promoting.
    FinalPull,
    /// Pull until the head reaches `head_seq` (a switchover).
    PullTo {
        head_seq: u64,
    },
    StartPulling,
    StopPulling,
    /// Record a `Promote` event in `epoch`, reconcile the folder.
    RecordPromote {
        epoch: u64,
    },
    StartCapture,
    /// Stop capture after a final capture of pending changes.
    StopCapture,
    OpenLogins,
    CloseLogins,
    RunHook {
        hook: Hook,
        epoch: u64,
        old_active: Option<String>,
    },
    /// Find the last common event with `authority`, quarantine the rest, rewind.
    StartRejoin {
        authority: String,
    },
    /// Ask the peer to take over (a switchover); repeated every tick until it
    /// answers done or aborted. The shell sets `head_seq` to the head after the final
    /// capture.
    AskPeerToTakeOver(TakeOverRequest),
    /// Ask the active peer for a switchover (auto_failback).
    RequestSwitchover,
    /// Tell the operator (log and status).
    Alert {
        message: String,
    },
    /// Acquire (or renew) what the authority needs (the etcd lease); the shell
    /// ignores it while an attempt is under way or the lease is held.
    AcquireAuthority,
    /// Give up what the authority needs (revoke the etcd lease) so the peer can
    /// take it.
    ReleaseAuthority,
}

/// Settings of the machine.
#[derive(Clone, Debug)]
pub struct RoleSettings {
    pub node: String,
    pub initial_active: bool,
    pub preferred: bool,
    pub auto_failback: bool,
    /// The pair's durations (`failover_after_ms`, the switchover's patience).
    pub timing: Timing,
}

/// The machine's state.
#[derive(Clone, Debug)]
pub struct RoleMachine {
    pub(crate) settings: RoleSettings,
    pub(crate) role: Role,
    pub(crate) epoch: u64,
    pub(crate) head_seq: u64,
    /// The epoch of this node's log head, as last applied (after a rejoin it may be
    /// below `epoch`).
    pub(crate) head_epoch: u64,
    /// The highest epoch seen anywhere (own or peer's).
    pub(crate) highest_epoch_seen: u64,
    /// When the peer last answered (or when we started waiting for it).
    last_answer_ms: u64,
    pub(crate) peer: Option<PeerView>,
    /// A promotion waiting for its final pull.
    promoting: bool,
    /// The target's side of switchovers: the pending request, the answered ones.
    pub(crate) take_over: TakeOverMemory,
    /// The old active's side of a switchover (role `HandingOver`).
    pub(crate) handing: Option<HandingOver>,
    failback_requested: bool,
    pub(crate) authority: Box<dyn Authority>,
    /// The latest time an input carried.
    pub(crate) now_ms: u64,
    /// When the peer last answered or called, whatever its role.
    pub(crate) peer_contact_ms: u64,
    /// A promotion (switchover, forced) waiting for the authority (the etcd lease).
    awaiting_authority: Option<String>,
    /// The last refusal reported, so it is alerted once, not every tick.
    last_refusal: Option<String>,
    /// This node's last promotion from passive (the shell records a failover's).
    last_promotion: Option<Promotion>,
}

/// A promotion of this node from passive, as the shell may record it (a failover's
/// named-loss report).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promotion {
    pub epoch: u64,
    /// A switchover's: taken at the old active's exact head, nothing lost.
    pub planned: bool,
    /// The peer, when it was last seen active.
    pub old_active: Option<String>,
}

impl RoleMachine {
    /// A machine for a node whose log head is at `epoch`, started at `now_ms`. The
    /// first actions come from `start`.
    pub fn new(settings: RoleSettings, epoch: u64, now_ms: u64) -> RoleMachine {
        RoleMachine::with_authority(settings, Box::new(PeerOnly), epoch, now_ms)
    }

    /// A machine that consults `authority` (see the module documentation).
    pub fn with_authority(
        settings: RoleSettings,
        authority: Box<dyn Authority>,
        epoch: u64,
        now_ms: u64,
    ) -> RoleMachine {
        RoleMachine {
            authority,
            now_ms,
            peer_contact_ms: now_ms,
            awaiting_authority: None,
            last_refusal: None,
            last_promotion: None,
            settings,
            role: Role::Starting,
            epoch,
            head_seq: 0,
            head_epoch: epoch,
            highest_epoch_seen: epoch,
            last_answer_ms: now_ms,
            peer: None,
            promoting: false,
            take_over: TakeOverMemory::default(),
            handing: None,
            failback_requested: false,
        }
    }

    /// This node's last promotion from passive, if any (failover, forced or planned).
    pub fn last_promotion(&self) -> Option<&Promotion> {
        self.last_promotion.as_ref()
    }

    pub fn role(&self) -> &Role {
        &self.role
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn peer(&self) -> Option<&PeerView> {
        self.peer.as_ref()
    }

    /// The authority this machine consults.
    pub fn authority(&self) -> &dyn Authority {
        self.authority.as_ref()
    }

    /// The latest time an input carried.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Only the active node lets users log in.
    pub fn accepts_logins(&self) -> bool {
        self.role == Role::Active
    }

    /// The first actions: ask the peer.
    pub fn start(&mut self) -> Vec<Action> {
        vec![Action::SendHeartbeat]
    }

    fn outranks_us(&self, peer: &PeerView) -> bool {
        (peer.active || peer.handing_over)
            && (peer.epoch, peer.node.as_str()) > (self.epoch, self.settings.node.as_str())
    }

    fn fence(&mut self, reason: String) -> Vec<Action> {
        let was_active = self.role == Role::Active;
        self.role = Role::Fenced {
            reason: reason.clone(),
        };
        self.promoting = false;
        self.handing = None;
        self.settle_take_over(false);
        let mut actions = Vec::new();
        if was_active {
            actions.extend([Action::CloseLogins, Action::StopCapture]);
        }
        actions.push(Action::StopPulling);
        if self.authority.needs_acquire() {
            // A fenced node must not keep the lease the peer needs to take over.
            self.authority.release(self.now_ms);
            actions.push(Action::ReleaseAuthority);
        }
        actions.push(Action::Alert {
            message: format!("fenced: {reason}; an operator must act (standin status)"),
        });
        actions
    }

    fn step_down(&mut self, authority: &PeerView) -> Vec<Action> {
        let mut actions = Vec::new();
        if matches!(self.role, Role::Active | Role::HandingOver) {
            actions.extend([
                Action::CloseLogins,
                Action::StopCapture,
                Action::RunHook {
                    hook: Hook::OnDemote,
                    epoch: authority.epoch,
                    old_active: Some(self.settings.node.clone()),
                },
            ]);
        }
        actions.push(Action::StopPulling);
        actions.push(Action::StartRejoin {
            authority: authority.node.clone(),
        });
        if self.authority.needs_acquire() {
            self.authority.release(self.now_ms);
            actions.push(Action::ReleaseAuthority);
        }
        self.role = Role::Rejoining;
        self.promoting = false;
        self.settle_take_over(false);
        self.handing = None;
        self.awaiting_authority = None;
        actions
    }

    /// The authority no longer backs this active: stop logins and capture.
    pub(crate) fn suspend(&mut self, reason: String) -> Vec<Action> {
        let mut actions = Vec::new();
        if self.role == Role::Active {
            actions.extend([
                Action::CloseLogins,
                Action::StopCapture,
                Action::RunHook {
                    hook: Hook::OnDemote,
                    epoch: self.epoch,
                    old_active: Some(self.settings.node.clone()),
                },
            ]);
        }
        actions.push(Action::Alert {
            message: format!("suspended: {reason}; logins and capture stopped until the authority backs this node again"),
        });
        if self.authority.needs_acquire() {
            actions.push(Action::AcquireAuthority);
        }
        self.role = Role::Suspended { reason };
        self.last_refusal = None;
        actions
    }

    /// Backed again: resume as the authority, in a new epoch when the authority's
    /// floor (the etcd revision) moved past ours.
    pub(crate) fn resume(&mut self) -> Vec<Action> {
        let mut actions = Vec::new();
        // Resume in a new epoch, above any seen (an etcd revision, a peer's promotion):
        // a peer may have promoted unseen while this node was suspended, and the
        // history that goes on from here must outrank the one it diverged from.
        let floor = self.authority.epoch_floor().max(self.highest_epoch_seen);
        if floor > self.epoch || self.authority.mode() != "peer" {
            let epoch = self.next_epoch(self.epoch.max(self.highest_epoch_seen).max(floor));
            self.epoch = epoch;
            self.highest_epoch_seen = epoch;
            actions.push(Action::RecordPromote { epoch });
        }
        self.role = Role::Active;
        self.epoch = self.epoch.max(1);
        actions.extend([
            Action::StartCapture,
            Action::OpenLogins,
            Action::RunHook {
                hook: Hook::OnPromote,
                epoch: self.epoch,
                old_active: None,
            },
            Action::Alert {
                message: format!(
                    "the authority backs this node: active in epoch {}",
                    self.epoch
                ),
            },
        ]);
        actions
    }

    /// Promote if the authority agrees (a switchover or a forced promotion skips the
    /// witness quorum, never the etcd lease); otherwise wait for it.
    fn promote_if_authorized(&mut self, reason: &str, skip_quorum: bool) -> Vec<Action> {
        let decision = if skip_quorum && !self.authority.needs_acquire() {
            Decision::Yes
        } else {
            self.authority.may_promote(self.now_ms, &self.settings.node)
        };
        match decision {
            Decision::Yes => {
                self.awaiting_authority = None;
                self.promote(reason)
            }
            Decision::No(why) => {
                if self.authority.needs_acquire() {
                    self.awaiting_authority = Some(reason.to_string());
                    vec![
                        Action::AcquireAuthority,
                        Action::Alert {
                            message: format!("{reason}: waiting for the authority ({why})"),
                        },
                    ]
                } else {
                    vec![Action::Alert {
                        message: format!("{reason}: not promoting ({why})"),
                    }]
                }
            }
        }
    }

    /// With a witness or a lease, a node does not take authority while its peer,
    /// heard from within `failover_after_ms`, is active (it may be holding authority
    /// through the link) or holds a later epoch than ours (it was a later authority:
    /// it goes first). Peer-only mode keeps its start-up rule (the higher authority
    /// wins).
    pub(crate) fn peer_blocks_taking(&self) -> Option<String> {
        if self.authority.mode() == "peer" {
            return None;
        }
        let peer = self.peer.as_ref()?;
        let since_active = self.now_ms.saturating_sub(self.last_answer_ms);
        if peer.active && since_active < self.settings.timing.failover_after_ms() {
            return Some(format!(
                "{} answered as active {since_active} ms ago",
                peer.node
            ));
        }
        let since_contact = self.now_ms.saturating_sub(self.peer_contact_ms);
        // With a lease, the holder goes first (the peer cannot take the lease it
        // holds); its history is the one that goes on, the peer's later events are
        // quarantined when it rejoins.
        if peer.epoch > self.epoch
            && since_contact < self.settings.timing.failover_after_ms()
            && !self.authority.needs_acquire()
        {
            return Some(format!(
                "{} holds epoch {}, above this node's {}",
                peer.node, peer.epoch, self.epoch
            ));
        }
        None
    }

    /// An alert for a refusal, once per distinct reason.
    pub(crate) fn refusal(&mut self, message: String) -> Vec<Action> {
        if self.last_refusal.as_ref() == Some(&message) {
            return Vec::new();
        }
        self.last_refusal = Some(message.clone());
        vec![Action::Alert { message }]
    }

    /// The next epoch above `above` that is this node's to take. Epochs are split
    /// between the two nodes — odd for the node configured active, even for the one
    /// configured passive — so two nodes that promote themselves without hearing from
    /// each other (a cut link) never take the same epoch.
    fn next_epoch(&self, above: u64) -> u64 {
        let parity = u64::from(self.settings.initial_active);
        let candidate = above + 1;
        if candidate % 2 == parity {
            candidate
        } else {
            candidate + 1
        }
    }

    pub(crate) fn promote(&mut self, reason: &str) -> Vec<Action> {
        let epoch = self.next_epoch(
            self.epoch
                .max(self.highest_epoch_seen)
                .max(self.authority.epoch_floor()),
        );
        let old_active = self
            .peer
            .as_ref()
            .filter(|peer| peer.active)
            .map(|peer| peer.node.clone());
        self.last_promotion = Some(Promotion {
            epoch,
            // A pending take-over request: this is a switchover's promotion.
            planned: self.take_over.is_pending(),
            old_active: old_active.clone(),
        });
        self.role = Role::Active;
        self.epoch = epoch;
        self.highest_epoch_seen = epoch;
        self.promoting = false;
        self.settle_take_over(true);
        vec![
            Action::StopPulling,
            Action::RecordPromote { epoch },
            Action::StartCapture,
            Action::OpenLogins,
            Action::RunHook {
                hook: Hook::OnPromote,
                epoch,
                old_active,
            },
            Action::Alert {
                message: format!("promoted to active in epoch {epoch}: {reason}"),
            },
        ]
    }

    /// Note what the peer showed; returns actions when it changes our role.
    fn observe(&mut self, peer: PeerView) -> Vec<Action> {
        self.highest_epoch_seen = self.highest_epoch_seen.max(peer.epoch);
        let same_epoch_two_actives = self.role == Role::Active
            && peer.active
            && peer.epoch == self.epoch
            && peer.node != self.settings.node;
        let outranked = self.outranks_us(&peer);
        self.peer = Some(peer.clone());
        if same_epoch_two_actives {
            return self.fence(format!(
                "{} is also active in epoch {}",
                peer.node, peer.epoch
            ));
        }
        match self.role {
            Role::Active | Role::HandingOver | Role::Suspended { .. } if outranked => {
                self.step_down(&peer)
            }
            Role::Starting if outranked => self.step_down(&peer),
            // With a lease, an active peer holds it: follow it, whatever the epochs
            // (later events of ours are quarantined by the rejoin).
            Role::Suspended { .. } if peer.active && self.authority.needs_acquire() => {
                self.step_down(&peer)
            }
            Role::Starting => self.take_configured_role(),
            Role::Passive if self.promoting && (peer.active || peer.handing_over) => {
                // The active answered after all: no promotion.
                self.promoting = false;
                vec![Action::Alert {
                    message: format!("{} answered again; not promoting", peer.node),
                }]
            }
            _ => Vec::new(),
        }
    }

    fn take_configured_role(&mut self) -> Vec<Action> {
        // Becoming active without a promotion is only right in a fresh pair or in an
        // epoch of our own; a log whose last epoch is the peer's means we were
        // following it: follow, and fail over only after `failover_after_ms`.
        // A node whose last epoch is its own was the last authority: it resumes.
        let fresh = self.epoch == 0;
        let own_epoch = !fresh && self.epoch % 2 == u64::from(self.settings.initial_active);
        if (fresh && self.settings.initial_active) || own_epoch {
            let decision = match self.peer_blocks_taking() {
                Some(reason) => Decision::No(reason),
                None => {
                    self.authority
                        .may_take(self.now_ms, &self.settings.node, self.epoch.max(1))
                }
            };
            match decision {
                Decision::Yes if self.authority.epoch_floor() <= self.epoch.max(1) => {
                    self.role = Role::Active;
                    self.epoch = self.epoch.max(1);
                    vec![Action::StartCapture, Action::OpenLogins]
                }
                Decision::Yes => {
                    self.role = Role::Suspended {
                        reason: "starting".to_string(),
                    };
                    self.resume()
                }
                Decision::No(reason) => {
                    // Suspended from the start: nothing to close, no hook to run.
                    self.epoch = self.epoch.max(1);
                    self.suspend(format!("waiting for the authority at start-up: {reason}"))
                }
            }
        } else {
            self.role = Role::Passive;
            vec![Action::StartPulling]
        }
    }

    /// Feed one input; returns the actions to carry out, in order.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        match &input {
            Input::Tick { now_ms }
            | Input::HeartbeatAnswered { now_ms, .. }
            | Input::HeartbeatFailed { now_ms }
            | Input::PeerSeen { now_ms, .. } => self.now_ms = self.now_ms.max(*now_ms),
            Input::Authority(evidence) => {
                let (Evidence::AgentReport { now_ms, .. }
                | Evidence::LeaseHeld { now_ms, .. }
                | Evidence::LeaseLost { now_ms, .. }
                | Evidence::VoterSets { now_ms, .. }) = evidence;
                self.now_ms = self.now_ms.max(*now_ms);
            }
            _ => {}
        }
        if let Input::Authority(evidence) = input {
            self.authority.observe(evidence);
            return Vec::new();
        }
        if let Role::Fenced { .. } = self.role {
            return match input {
                Input::Operator(Command::Unfence) => {
                    self.role = Role::Starting;
                    vec![
                        Action::Alert {
                            message: "unfenced by the operator; asking the peer".to_string(),
                        },
                        Action::SendHeartbeat,
                    ]
                }
                Input::Applied { epoch, head_seq } => {
                    self.epoch = epoch;
                    self.head_epoch = epoch;
                    self.head_seq = head_seq;
                    Vec::new()
                }
                _ => Vec::new(),
            };
        }
        match input {
            Input::Tick { now_ms } => self.tick(now_ms),
            Input::HeartbeatAnswered { now_ms, peer } => {
                // Only an active peer (or one handing authority over: it takes over
                // only through the switchover) holds off a failover: two followers
                // talking to each other must not wait for each other forever.
                if peer.active || peer.handing_over {
                    self.last_answer_ms = now_ms;
                }
                self.peer_contact_ms = self.peer_contact_ms.max(now_ms);
                self.observe(peer)
            }
            Input::PeerSeen { now_ms, peer } => {
                self.peer_contact_ms = self.peer_contact_ms.max(now_ms);
                if peer.active || peer.handing_over {
                    self.last_answer_ms = self.last_answer_ms.max(now_ms);
                }
                self.observe(peer)
            }
            Input::HeartbeatFailed { now_ms } => {
                if self.role == Role::Starting {
                    // Nobody to ask: take the configured role (a passive then fails
                    // over on its own schedule if the active stays away).
                    self.last_answer_ms = now_ms;
                    return self.take_configured_role();
                }
                // The checks of a tick, but no new heartbeat: the next tick sends it
                // (a node whose peer fails at once would otherwise spin).
                self.tick(now_ms)
                    .into_iter()
                    .filter(|action| *action != Action::SendHeartbeat)
                    .collect()
            }
            Input::Applied { epoch, head_seq } => {
                self.epoch = self.epoch.max(epoch);
                self.head_epoch = epoch;
                self.highest_epoch_seen = self.highest_epoch_seen.max(epoch);
                self.head_seq = head_seq;
                Vec::new()
            }
            Input::FinalPullDone => {
                if self.role == Role::Passive && self.promoting {
                    // Asked again: the evidence may have changed during the pull.
                    match self.authority.may_promote(self.now_ms, &self.settings.node) {
                        Decision::Yes => self.promote("the active stopped answering"),
                        Decision::No(why) => {
                            self.promoting = false;
                            vec![Action::Alert {
                                message: format!("not promoting after the final pull: {why}"),
                            }]
                        }
                    }
                } else {
                    Vec::new()
                }
            }
            Input::CaughtUp { head_seq } => self.caught_up(head_seq),
            Input::RejoinDone => {
                if self.role == Role::Rejoining {
                    self.role = Role::Passive;
                    vec![Action::StartPulling]
                } else {
                    Vec::new()
                }
            }
            Input::TakeOverRequested(request) => self.take_over_requested(request),
            Input::TakeOverAnswered { id, state } => self.take_over_answered(id, state),
            Input::Diverged { authority } => {
                if self.role == Role::Passive {
                    let peer = self.peer.clone().unwrap_or(PeerView {
                        node: authority,
                        epoch: self.epoch,
                        active: true,
                        handing_over: false,
                        head_seq: 0,
                    });
                    self.step_down(&peer)
                } else {
                    Vec::new()
                }
            }
            Input::IntegrityFailure { reason } => self.fence(reason),
            Input::Operator(command) => self.command(command),
            Input::Authority(_) => Vec::new(),
        }
    }

    fn tick(&mut self, now_ms: u64) -> Vec<Action> {
        let mut actions = vec![Action::SendHeartbeat];
        let node = self.settings.node.clone();
        match self.role.clone() {
            Role::HandingOver => actions.extend(self.handing_over_tick(now_ms)),
            Role::Active => {
                let later_peer = self
                    .peer_blocks_taking()
                    .filter(|_| self.peer.as_ref().is_some_and(|peer| !peer.active));
                let decision = match later_peer {
                    Some(reason) => Decision::No(reason),
                    None => {
                        self.authority
                            .may_hold(now_ms, &node, self.epoch, self.peer_contact_ms)
                    }
                };
                if let Decision::No(reason) = decision {
                    actions.extend(self.suspend(reason));
                }
            }
            Role::Suspended { .. } => match self
                .peer_blocks_taking()
                .map(Decision::No)
                .unwrap_or_else(|| self.authority.may_take(now_ms, &node, self.epoch))
            {
                Decision::Yes => actions.extend(self.resume()),
                Decision::No(_) => {
                    if self.authority.needs_acquire() {
                        actions.push(Action::AcquireAuthority);
                    }
                }
            },
            Role::Passive => {
                if self.take_over.is_pending() {
                    actions.extend(self.try_take_over());
                    return actions;
                }
                if let Some(reason) = self.awaiting_authority.clone() {
                    if self.authority.may_promote(now_ms, &node).allowed() {
                        self.awaiting_authority = None;
                        actions.extend(self.promote(&reason));
                    } else {
                        actions.push(Action::AcquireAuthority);
                    }
                    return actions;
                }
                let silent_ms = now_ms.saturating_sub(self.last_answer_ms);
                if !self.promoting && silent_ms >= self.settings.timing.failover_after_ms() {
                    match self.authority.may_promote(now_ms, &node) {
                        Decision::Yes => {
                            self.promoting = true;
                            self.last_refusal = None;
                            actions.push(Action::Alert {
                                message: format!(
                                    "no answer from the active for {silent_ms} ms; a last pull, then promotion"
                                ),
                            });
                            actions.push(Action::FinalPull);
                        }
                        Decision::No(why) => {
                            if self.authority.needs_acquire() {
                                actions.push(Action::AcquireAuthority);
                            }
                            actions.extend(self.refusal(format!(
                                "no answer from the active, but not promoting: {why}"
                            )));
                        }
                    }
                }
            }
            _ => {}
        }
        actions
    }

    fn caught_up(&mut self, head_seq: u64) -> Vec<Action> {
        self.head_seq = self.head_seq.max(head_seq);
        if self.role != Role::Passive {
            return Vec::new();
        }
        if self.take_over.is_pending() {
            return self.try_take_over();
        }
        let peer_active = self.peer.as_ref().is_some_and(|peer| peer.active);
        if self.settings.preferred
            && self.settings.auto_failback
            && peer_active
            && !self.failback_requested
        {
            self.failback_requested = true;
            return vec![Action::RequestSwitchover];
        }
        Vec::new()
    }

    /// An operator's command: accepted with the actions to carry out, or refused with
    /// the reason (nothing changed). The shell answers the operator with either.
    pub fn operate(&mut self, command: Command) -> Result<Vec<Action>, Refusal> {
        if let Role::Fenced { reason } = &self.role {
            if command == Command::Unfence {
                return Ok(self.step(Input::Operator(command)));
            }
            return Err(Refusal(format!(
                "this node is fenced ({reason}): it refuses every command until an operator acts (restart it once the cause is dealt with)"
            )));
        }
        match command {
            Command::Promote { force } => self.promote_command(force),
            Command::Switchover => self.start_switchover(),
            Command::Unfence => Err(Refusal("not fenced".to_string())),
        }
    }

    fn promote_command(&mut self, force: bool) -> Result<Vec<Action>, Refusal> {
        match self.role {
            Role::Passive | Role::Starting | Role::Suspended { .. } => {
                if force {
                    let mut actions = vec![Action::Alert {
                        message: "forced promotion: if the old active is still recording, its changes since the last pull will be quarantined when it rejoins".to_string(),
                    }];
                    actions.extend(self.promote_if_authorized("forced by the operator", true));
                    Ok(actions)
                } else if matches!(self.role, Role::Suspended { .. }) {
                    Err(Refusal("this node is suspended: it resumes when the authority backs it; `promote --force` overrides the witness quorum".to_string()))
                } else if self.peer.as_ref().is_some_and(|peer| peer.active) && !self.promoting {
                    Err(Refusal(format!(
                        "the active ({}) answers: use `standin switchover` on it (or `promote --force` if you know it is dead)",
                        self.peer.as_ref().map(|peer| peer.node.as_str()).unwrap_or("the peer")
                    )))
                } else {
                    self.promoting = true;
                    Ok(vec![Action::FinalPull])
                }
            }
            Role::Active => Err(Refusal(format!(
                "this node is already the active (epoch {}): nothing to promote",
                self.epoch
            ))),
            _ => Err(Refusal(format!(
                "cannot promote while {}",
                self.role.name()
            ))),
        }
    }

    /// An operator's command fed as an input: a refusal becomes an alert.
    fn command(&mut self, command: Command) -> Vec<Action> {
        match self.operate(command) {
            Ok(actions) => actions,
            Err(Refusal(message)) => vec![Action::Alert { message }],
        }
    }
}

#[cfg(test)]
mod tests;
