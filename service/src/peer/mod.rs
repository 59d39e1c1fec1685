//! The peer link: every call this node makes to its peer — heartbeats, pulls, content
//! fetches, snapshots, the switchover's take-over and failback requests, the rejoin's
//! probes — goes through the one `PeerLink` it keeps for that peer, and comes back as
//! engine types. Protobuf types stop here (and in the servers and `convert`).
//!
//! # Connections
//!
//! A link holds two HTTP/2 connections to its peer, each made once and reused:
//! `control` (heartbeats, take-over and switchover calls: small messages) and `bulk`
//! (pulls, fetches, snapshots, the rejoin's probes). Two, because HTTP/2 flow control
//! is per connection as well as per stream: content received but not yet stored
//! during a catch-up could otherwise hold back a heartbeat's answer, and a passive that
//! does not hear its active promotes. The CA file (https) is read once, when the link
//! is made.
//!
//! # Failures
//!
//! Every call has a deadline: a unary call as a whole, a stream at its opening (and the
//! caller bounds the silence between its messages with `PeerStream::next_within`). A
//! reused HTTP/2 connection can stay stuck after a partition heals (nothing tells it
//! that the path dropped its packets): keepalive pings find such a connection, and any
//! call that finds the peer unreachable drops the connection it used, so that the next
//! call makes a new one.
//!
//! # What this node knows of its peer
//!
//! `health`: heartbeats both ways tell the link the peer's name, role and applied
//! head, when it was last heard from, and whether it is up, unreachable (from the
//! first failed heartbeat) or down (silent for `failover_after_ms`); each change is
//! logged once. This is how an active sees its passive (`status`, `/`, `/metrics`).
//!
//! A node has one link today (`peer_url`); several passives following one active would
//! each be a `PeerLink` of their own.

mod calls;
pub mod health;
mod streams;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use standin_engine::role::timing::Timing;
use tonic::transport::{Channel, Endpoint};
use tonic::Code;

use crate::config::Config;
use crate::wire::auth::AddSecret;

pub use calls::{EventKnown, PeerAnswer};
pub use health::{PeerSelf, PeerState};
pub use streams::{PeerStream, PullMessage, SnapshotPart};

/// Why a call to the peer did not give a usable answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// No answer: the connection failed, the call timed out or was cut.
    #[error("{0}")]
    Unreachable(String),
    /// No answer within the call's deadline (or a stream silent past its bound).
    #[error("{0}")]
    TimedOut(String),
    /// The peer refused our credentials.
    #[error("{0}")]
    Refused(String),
    /// The peer answered with an error of another kind.
    #[error("{message}")]
    Answered { code: Code, message: String },
    /// The peer's answer cannot be an engine value (malformed, or not what was asked).
    #[error("{0}")]
    BadAnswer(String),
}

impl PeerError {
    pub fn from_status(status: tonic::Status) -> PeerError {
        let message = status.message().to_string();
        match status.code() {
            Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Unknown => {
                PeerError::Unreachable(message)
            }
            Code::Unauthenticated | Code::PermissionDenied => PeerError::Refused(message),
            code => PeerError::Answered { code, message },
        }
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, PeerError::Unreachable(_) | PeerError::TimedOut(_))
    }
}

/// The deadlines of the link's calls, from the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkTiming {
    /// A heartbeat or a take-over call, as a whole.
    pub call: Duration,
    /// A failback request: the peer answers once its switchover is done.
    pub switchover: Duration,
    /// The peer's status (for the status page).
    pub status: Duration,
    /// Opening a pull or fetch stream (the peer's first answer), and a rejoin probe.
    pub open: Duration,
    /// Opening a snapshot (the peer reads its whole index before it answers).
    pub open_snapshot: Duration,
    /// HTTP/2 keepalive: a ping this often, the connection dropped when one is not
    /// answered within `keepalive_timeout`. A backstop for idle connections: the
    /// deadlines find a stuck connection first, and a ping timeout short enough to
    /// matter would cut healthy streams on a busy node.
    pub keepalive: Duration,
    pub keepalive_timeout: Duration,
    /// Silence after which the peer counts as down (`failover_after_ms`).
    pub down_after_ms: u64,
}

impl LinkTiming {
    pub fn new(timing: &Timing) -> LinkTiming {
        LinkTiming {
            call: Duration::from_millis(timing.peer_call_ms()),
            switchover: Duration::from_millis(timing.peer_switchover_call_ms()),
            status: Duration::from_secs(5),
            open: Duration::from_secs(30),
            open_snapshot: Duration::from_secs(120),
            keepalive: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(5),
            down_after_ms: timing.failover_after_ms(),
        }
    }

    pub fn of(config: &Config) -> LinkTiming {
        LinkTiming::new(&config.timing)
    }
}

/// One reused connection to the peer, dropped after a failure and made again on the
/// next call. Its generation tells a late failure report of a connection already
/// replaced from one of the current connection.
struct Connection {
    endpoint: Endpoint,
    current: Mutex<(u64, Option<Channel>)>,
}

impl Connection {
    fn new(endpoint: Endpoint) -> Arc<Connection> {
        Arc::new(Connection {
            endpoint,
            current: Mutex::new((0, None)),
        })
    }

    /// The connection's generation and a channel on it (made now if there is none).
    fn channel(&self) -> (u64, Channel) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let channel = match &current.1 {
            Some(channel) => channel.clone(),
            None => {
                let channel = self.endpoint.connect_lazy();
                current.1 = Some(channel.clone());
                channel
            }
        };
        (current.0, channel)
    }

    /// A call on generation `generation` found the peer unreachable: drop that
    /// connection (calls still running on it finish or fail on their own).
    fn failed(&self, generation: u64) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if current.0 == generation && current.1.is_some() {
            current.0 += 1;
            current.1 = None;
            tracing::debug!(
                generation,
                "dropped a connection to the peer after a failure"
            );
        }
    }

    /// Note a call's outcome: an unreachable peer drops the connection.
    fn note<T>(&self, generation: u64, result: &Result<T, PeerError>) {
        if let Err(error) = result {
            if error.is_unreachable() {
                self.failed(generation);
            }
        }
    }

    #[cfg(test)]
    fn generation(&self) -> u64 {
        self.current
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .0
    }
}

/// This node's link to one peer (see the module's doc).
pub struct PeerLink {
    url: String,
    secret: AddSecret,
    timing: LinkTiming,
    control: Arc<Connection>,
    bulk: Arc<Connection>,
    health: Mutex<health::PeerHealth>,
}

/// What this node knows of its peer now (see `health`).
#[derive(Clone, Debug, PartialEq)]
pub struct PeerReport {
    pub state: PeerState,
    /// The peer as it last described itself (name, role, applied head).
    pub peer: Option<PeerSelf>,
    /// Ms since it was last heard from, if ever.
    pub last_contact_ago_ms: Option<u64>,
    /// Ms of silence (since this node started, if it was never heard from).
    pub silent_ms: u64,
    /// Why the last heartbeat to it failed, while they fail.
    pub last_failure: Option<String>,
}

impl PeerLink {
    /// A link to `url`: nothing is connected until the first call.
    pub fn new(
        url: &str,
        tls: Option<&crate::config::TlsFiles>,
        secret: &str,
        timing: LinkTiming,
    ) -> Result<PeerLink, String> {
        let endpoint = crate::wire::client::endpoint(url, tls)?
            .http2_keep_alive_interval(timing.keepalive)
            .keep_alive_timeout(timing.keepalive_timeout)
            .keep_alive_while_idle(true);
        Ok(PeerLink {
            url: url.to_string(),
            secret: AddSecret::new(secret)?,
            timing,
            control: Connection::new(endpoint.clone()),
            bulk: Connection::new(endpoint),
            health: Mutex::new(health::PeerHealth::new(
                timing.down_after_ms,
                standin_engine::fsutil::monotonic_ms(),
            )),
        })
    }

    /// The link of `config`'s `peer_url`, if it names one.
    pub fn of(config: &Config, secret: &str) -> Result<Option<PeerLink>, String> {
        config
            .peer_url
            .as_deref()
            .map(|url| PeerLink::new(url, config.tls.as_ref(), secret, LinkTiming::of(config)))
            .transpose()
    }

    /// The peer's gRPC address.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn timing(&self) -> LinkTiming {
        self.timing
    }

    fn health(&self) -> std::sync::MutexGuard<'_, health::PeerHealth> {
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A heartbeat from the peer reached this node (the cluster server calls this).
    pub fn seen(&self, peer: PeerSelf) {
        let now_ms = standin_engine::fsutil::monotonic_ms();
        let mut health = self.health();
        health.seen(now_ms, peer);
        self.log_change(&mut health, now_ms);
    }

    /// Note the outcome of a heartbeat this node sent.
    pub(super) fn heartbeat_outcome(&self, outcome: Result<PeerSelf, String>) {
        let now_ms = standin_engine::fsutil::monotonic_ms();
        let mut health = self.health();
        match outcome {
            Ok(peer) => health.answered(now_ms, peer),
            Err(why) => health.failed(now_ms, why),
        }
        self.log_change(&mut health, now_ms);
    }

    /// What this node knows of its peer now.
    pub fn report(&self) -> PeerReport {
        let now_ms = standin_engine::fsutil::monotonic_ms();
        let mut health = self.health();
        self.log_change(&mut health, now_ms);
        PeerReport {
            state: health.state(now_ms),
            peer: health.peer().cloned(),
            last_contact_ago_ms: health.last_contact_ago_ms(now_ms),
            silent_ms: health.silent_ms(now_ms),
            last_failure: health.last_failure().map(str::to_string),
        }
    }

    /// One log line when the peer's state changes.
    fn log_change(&self, health: &mut health::PeerHealth, now_ms: u64) {
        let Some(change) = health.transition(now_ms) else {
            return;
        };
        let (name, role) = health
            .peer()
            .map(|peer| (peer.node.clone(), peer.role.clone()))
            .unwrap_or_else(|| (self.url.clone(), "unknown".to_string()));
        let error = health.last_failure().unwrap_or("-").to_string();
        match (change.from, change.to) {
            (_, PeerState::Unreachable) => tracing::warn!(
                peer = %name,
                role = %role,
                %error,
                "the peer stopped answering"
            ),
            (_, PeerState::Down) => tracing::warn!(
                peer = %name,
                role = %role,
                silent_ms = change.silent_ms,
                %error,
                "the peer is down: silent for failover_after_ms or longer"
            ),
            (PeerState::Unknown, PeerState::Up) => {
                tracing::info!(peer = %name, role = %role, "in contact with the peer")
            }
            (_, PeerState::Up) => tracing::warn!(
                peer = %name,
                role = %role,
                after_ms = change.silent_ms,
                "the peer answers again"
            ),
            (_, PeerState::Unknown) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_drops_only_the_connection_it_happened_on() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let link = PeerLink::new(
                "http://127.0.0.1:9",
                None,
                "0123456789abcdef0123456789abcdef",
                LinkTiming::new(&Timing::new(100, 1500).unwrap()),
            )
            .expect("a link");
            let (first, _) = link.control.channel();
            // Reused while nothing failed.
            assert_eq!(link.control.channel().0, first);
            link.control.failed(first);
            let (second, _) = link.control.channel();
            assert_ne!(second, first);
            // A late report about the old connection leaves the new one alone.
            link.control.failed(first);
            assert_eq!(link.control.channel().0, second);
            // The bulk connection is another one.
            assert_eq!(link.bulk.generation(), 0);
            // An answer that is not a failure to reach the peer keeps the connection.
            link.control.note::<()>(
                second,
                &Err(PeerError::Answered {
                    code: Code::FailedPrecondition,
                    message: "no".to_string(),
                }),
            );
            assert_eq!(link.control.generation(), second);
            link.control
                .note::<()>(second, &Err(PeerError::Unreachable("gone".to_string())));
            assert_ne!(link.control.generation(), second);
        });
    }

    #[test]
    fn deadlines_follow_the_config() {
        let pair = Timing::new(500, 5000).unwrap();
        let timing = LinkTiming::new(&pair);
        assert_eq!(timing.call, Duration::from_millis(1000));
        assert!(timing.keepalive_timeout <= timing.keepalive);
        // The failback request outlasts the whole switchover it waits for.
        assert!(timing.switchover > Duration::from_millis(pair.switchover_patience_ms() + 5000));
        let fast = LinkTiming::new(&Timing::new(50, 600).unwrap());
        assert_eq!(fast.call, Duration::from_millis(400));
    }
}
