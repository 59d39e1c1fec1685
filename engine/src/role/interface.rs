//! What goes into the machine (`Input`, the operator's `Command`, the `PeerView` an
//! answer showed) and what comes out (`Action`, `Hook`, a `Refusal`).

use super::takeover::{TakeOverRequest, TakeOverState};
use crate::role::authority::Evidence;

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
