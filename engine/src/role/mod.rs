//! Who is authoritative, pure (no I/O, no clock): the role machine (this file and
//! its concerns: `state`, `interface`, `observe`, `active`, `passive`), the
//! `switchover` sub-protocol, the `authority` it consults (peer only, the agents'
//! witness quorum, an etcd lease: where a third voter plugs in) and `timing`, every
//! duration the pair works with.
//!
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
//!   backs it again (see [`crate::role::switchover`]). `auto_failback` makes the preferred
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

pub mod authority;
pub mod switchover;
pub mod timing;

use crate::role::authority::{Authority, Evidence, PeerOnly};
use crate::role::timing::Timing;
use takeover::TakeOverMemory;

mod active;
mod interface;
mod observe;
mod passive;
mod state;
pub(crate) mod takeover;

pub use interface::{Action, Command, Hook, Input, PeerView, Refusal};
pub(crate) use state::Phase;
pub use state::{Promotion, Role};

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
    pub(crate) last_answer_ms: u64,
    pub(crate) peer: Option<PeerView>,
    /// The target's side of switchovers: the pending request, the answered ones.
    pub(crate) take_over: TakeOverMemory,
    /// What the role is in the middle of (a promotion's final pull, waiting for
    /// the authority, handing over): see `Phase`.
    pub(crate) phase: Phase,
    /// The preferred node asked for its failback (`auto_failback`): once per run of
    /// the process, whatever roles come after — history, not a sub-state.
    pub(crate) failback_requested: bool,
    pub(crate) authority: Box<dyn Authority>,
    /// The latest time an input carried.
    pub(crate) now_ms: u64,
    /// When the peer last answered or called, whatever its role.
    pub(crate) peer_contact_ms: u64,
    /// The last refusal reported, so it is alerted once, not every tick.
    pub(crate) last_refusal: Option<String>,
    /// This node's last promotion from passive (the shell records a failover's).
    pub(crate) last_promotion: Option<Promotion>,
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
            phase: Phase::Settled,
            take_over: TakeOverMemory::default(),
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

    /// Feed one input; returns the actions to carry out, in order.
    pub fn step(&mut self, input: Input) -> Vec<Action> {
        let actions = self.step_input(input);
        self.check_postconditions(&actions);
        actions
    }

    fn step_input(&mut self, input: Input) -> Vec<Action> {
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
            Input::FinalPullDone => self.final_pull_done(),
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
        match self.role {
            Role::HandingOver => actions.extend(self.handing_over_tick(now_ms)),
            Role::Active => actions.extend(self.active_tick(now_ms)),
            Role::Suspended { .. } => actions.extend(self.suspended_tick(now_ms)),
            Role::Passive => actions.extend(self.passive_tick(now_ms)),
            _ => {}
        }
        actions
    }

    /// An operator's command: accepted with the actions to carry out, or refused with
    /// the reason (nothing changed). The shell answers the operator with either.
    pub fn operate(&mut self, command: Command) -> Result<Vec<Action>, Refusal> {
        let answer = self.operate_command(command);
        if let Ok(actions) = &answer {
            self.check_postconditions(actions);
        }
        answer
    }

    fn operate_command(&mut self, command: Command) -> Result<Vec<Action>, Refusal> {
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

    /// An operator's command fed as an input: a refusal becomes an alert.
    fn command(&mut self, command: Command) -> Vec<Action> {
        match self.operate(command) {
            Ok(actions) => actions,
            Err(Refusal(message)) => vec![Action::Alert { message }],
        }
    }

    /// What holds after every step and every accepted command (checked in debug
    /// builds: the unit tests and the seeded simulation run with them).
    fn check_postconditions(&self, actions: &[Action]) {
        debug_assert!(
            self.phase.allowed_in(&self.role),
            "phase {:?} in role {:?}",
            self.phase,
            self.role
        );
        debug_assert!(
            !self.take_over.is_pending() || self.role == Role::Passive,
            "a take-over pending in role {:?}",
            self.role
        );
        if self.role == Role::Active {
            // An active node holds an epoch of its own (odd for the node configured
            // active, even for the other): never one the peer could also take.
            debug_assert!(self.epoch >= 1);
            debug_assert_eq!(
                self.epoch % 2,
                u64::from(self.settings.initial_active),
                "active in the peer's epoch {}",
                self.epoch
            );
        }
        for action in actions {
            match action {
                Action::OpenLogins | Action::StartCapture => debug_assert!(
                    self.role == Role::Active,
                    "{action:?} while {:?}",
                    self.role
                ),
                Action::CloseLogins => debug_assert!(self.role != Role::Active),
                Action::RecordPromote { epoch } => debug_assert_eq!(*epoch, self.epoch),
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
