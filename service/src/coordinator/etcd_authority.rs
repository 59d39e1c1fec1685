//! The etcd lease (`authority = "etcd"`): the I/O around the engine's pure
//! `EtcdLease`. On the role machine's `AcquireAuthority` it takes the authority key
//! with a create-if-absent transaction under a fresh lease (or adopts the lease of a
//! key that already names this node, after a restart), keeps the lease alive every
//! third of its TTL, and on `ReleaseAuthority` revokes it. Every result goes back to
//! the machine as evidence: `LeaseHeld` with the etcd revision and the time the lease
//! is good until (counted from when the renewing request was *sent*, so never
//! overstated), or `LeaseLost` with the reason. The machine steps down a quarter of
//! the TTL before that time; a keep-alive that fails is simply not renewed.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, PutOptions, Txn, TxnOp};
use standin_engine::fsutil::monotonic_ms as now_ms;
use standin_engine::role::authority::Evidence;
use standin_engine::role::Input;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use crate::config::authority::EtcdSettings;
use crate::node::Node;

enum Request {
    Acquire,
    Release,
}

/// The handle the coordinator keeps; the work happens in a task of its own so the
/// role machine never waits on etcd.
pub struct EtcdAuthority {
    requests: mpsc::Sender<Request>,
}

impl EtcdAuthority {
    pub fn start(node: Arc<Node>, settings: EtcdSettings) -> EtcdAuthority {
        let (requests, receiver) = mpsc::channel(16);
        tokio::spawn(run(node, settings, receiver));
        EtcdAuthority { requests }
    }

    /// Take (or keep) the lease; ignored while an attempt is under way or it is held.
    pub fn acquire(&self) {
        let _ = self.requests.try_send(Request::Acquire);
    }

    /// Give the lease up (revoke it) so the peer can take the key. Never dropped,
    /// even behind a queue of acquisitions.
    pub fn release(&self) {
        let requests = self.requests.clone();
        tokio::spawn(async move {
            let _ = requests.send(Request::Release).await;
        });
    }
}

/// A lease this node holds, and the task keeping it alive.
struct Held {
    lease_id: i64,
    keeper: JoinHandle<()>,
}

/// Failed attempts are retried at most this often.
const RETRY_EVERY: Duration = Duration::from_secs(1);

async fn run(node: Arc<Node>, settings: EtcdSettings, mut requests: mpsc::Receiver<Request>) {
    let mut held: Option<Held> = None;
    // Leases this node gave up: never adopted again, even after a restart, as the
    // revoke may not have reached etcd yet (it may still, under the adopter's feet).
    let given_up_file = node.config.data_dir.join("etcd-given-up-leases");
    let mut revoked: Vec<i64> = std::fs::read_to_string(&given_up_file)
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    let mut last_attempt: Option<tokio::time::Instant> = None;
    let mut last_problem = String::new();
    while let Some(request) = requests.recv().await {
        match request {
            Request::Acquire => {
                if held.as_ref().is_some_and(|held| !held.keeper.is_finished()) {
                    continue;
                }
                if last_attempt.is_some_and(|at| at.elapsed() < RETRY_EVERY) {
                    continue;
                }
                last_attempt = Some(tokio::time::Instant::now());
                match campaign(&node, &settings, &revoked).await {
                    Ok(Some((lease_id, revision, sent_ms, ttl_s))) => {
                        tracing::info!(key = %settings.key, lease_id, revision, "took the etcd authority key");
                        last_problem.clear();
                        node.feed(lease_held(revision, sent_ms, ttl_s));
                        let keeper = tokio::spawn(keep_alive(
                            node.clone(),
                            settings.clone(),
                            lease_id,
                            revision,
                        ));
                        held = Some(Held { lease_id, keeper });
                    }
                    Ok(None) | Err(_) => {
                        let reason = match campaign_problem(&node, &settings).await {
                            Some(reason) => reason,
                            None => "the etcd authority key is held by another node".to_string(),
                        };
                        if reason != last_problem {
                            tracing::warn!(key = %settings.key, %reason, "etcd authority not taken");
                            last_problem = reason.clone();
                        }
                        node.feed(Input::Authority(Evidence::LeaseLost {
                            now_ms: now_ms(),
                            reason,
                        }));
                    }
                }
            }
            Request::Release => {
                if let Some(held) = held.take() {
                    held.keeper.abort();
                    if revoked.len() >= 64 {
                        revoked.remove(0);
                    }
                    revoked.push(held.lease_id);
                    let lines: String = revoked.iter().map(|lease| format!("{lease}\n")).collect();
                    if let Err(error) = record_given_up(&given_up_file, &lines) {
                        tracing::warn!(%error, "could not record the given-up etcd lease");
                    }
                    let revoking = async {
                        let mut client = connect(&settings).await?;
                        client.lease_revoke(held.lease_id).await
                    };
                    match tokio::time::timeout(Duration::from_secs(2), revoking).await {
                        Ok(Ok(_)) => {
                            tracing::info!(key = %settings.key, "released the etcd authority key")
                        }
                        Ok(Err(error)) => {
                            tracing::warn!(%error, "could not revoke the etcd lease; it expires by itself")
                        }
                        Err(_) => tracing::warn!(
                            "revoking the etcd lease timed out; it expires by itself"
                        ),
                    }
                    node.feed(Input::Authority(Evidence::LeaseLost {
                        now_ms: now_ms(),
                        reason: "released".to_string(),
                    }));
                }
            }
        }
    }
}

/// Write the list of given-up leases durably (temporary file, fsync, rename).
fn record_given_up(path: &std::path::Path, lines: &str) -> std::io::Result<()> {
    use std::io::Write;
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(lines.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temporary, path)
}

fn lease_held(revision: u64, sent_ms: u64, ttl_s: i64) -> Input {
    Input::Authority(Evidence::LeaseHeld {
        now_ms: now_ms(),
        sent_ms,
        revision,
        valid_until_ms: sent_ms + u64::try_from(ttl_s).unwrap_or(0) * 1000,
    })
}

async fn connect(settings: &EtcdSettings) -> Result<Client, etcd_client::Error> {
    let options = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(2));
    Client::connect(&settings.endpoints, Some(options)).await
}

/// A drill's question (`standin drill`), changing nothing: does etcd answer, and
/// who holds the authority key (its node name; `None`: nobody)?
pub async fn probe(settings: &EtcdSettings) -> Result<Option<String>, String> {
    let lookup = async {
        let mut client = connect(settings).await?;
        client.get(settings.key.as_str(), None).await
    };
    match tokio::time::timeout(Duration::from_secs(3), lookup).await {
        Ok(Ok(response)) => Ok(response.kvs().first().map(|kv| {
            String::from_utf8_lossy(kv.value())
                .split(' ')
                .next()
                .unwrap_or_default()
                .to_string()
        })),
        Ok(Err(error)) => Err(format!(
            "etcd at {} unreachable: {error}: no node could take the authority key",
            settings.endpoints.join(",")
        )),
        Err(_) => Err(format!(
            "etcd at {} did not answer within 3 s: no node could take the authority key",
            settings.endpoints.join(",")
        )),
    }
}

/// One attempt: `Some((lease id, revision, sent at, ttl))` when this node holds the
/// key now, `None` when another node does.
async fn campaign(
    node: &Arc<Node>,
    settings: &EtcdSettings,
    revoked: &[i64],
) -> Result<Option<(i64, u64, u64, i64)>, etcd_client::Error> {
    let holder = holder_value(node);
    let attempt = async {
        let mut client = connect(settings).await?;
        let name = holder.as_str();
        // A key that already names this node (a restart within the TTL): adopt its
        // lease, unless this run gave it up (then it waits for it to expire).
        let existing = client.get(settings.key.as_str(), None).await?;
        if let Some(kv) = existing.kvs().first() {
            if kv.value() == name.as_bytes() && kv.lease() != 0 && !revoked.contains(&kv.lease()) {
                let sent_ms = now_ms();
                let (mut keeper, mut stream) = client.lease_keep_alive(kv.lease()).await?;
                keeper.keep_alive().await?;
                if let Some(answer) = stream.message().await? {
                    if answer.ttl() > 0 {
                        let revision = u64::try_from(kv.mod_revision()).unwrap_or(0);
                        return Ok(Some((kv.lease(), revision, sent_ms, answer.ttl())));
                    }
                }
            }
            return Ok(None);
        }
        let sent_ms = now_ms();
        let ttl = i64::try_from(settings.lease_ttl_s).unwrap_or(i64::MAX);
        let lease = client.lease_grant(ttl, None).await?;
        let txn = Txn::new()
            .when([Compare::create_revision(
                settings.key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then([TxnOp::put(
                settings.key.as_str(),
                name,
                Some(PutOptions::new().with_lease(lease.id())),
            )]);
        let response = client.txn(txn).await?;
        if response.succeeded() {
            let revision = response
                .header()
                .map(|header| u64::try_from(header.revision()).unwrap_or(0))
                .unwrap_or(0);
            Ok(Some((lease.id(), revision, sent_ms, lease.ttl())))
        } else {
            let _ = client.lease_revoke(lease.id()).await;
            Ok(None)
        }
    };
    match tokio::time::timeout(Duration::from_secs(5), attempt).await {
        Ok(result) => result,
        Err(_) => Err(etcd_client::Error::InvalidArgs(
            "etcd did not answer within 5 s".to_string(),
        )),
    }
}

/// What the key holds: this node's name and an id kept in its data_dir, so only this
/// node (restarted), never another configured with the same name, adopts its lease.
fn holder_value(node: &Arc<Node>) -> String {
    let path = node.config.data_dir.join("etcd-holder-id");
    let id = match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => id.trim().to_string(),
        _ => {
            let id = format!("{:016x}", rand::random::<u64>());
            if let Err(error) = std::fs::write(&path, &id) {
                tracing::warn!(path = %path.display(), %error, "cannot keep the etcd holder id; a restart will not adopt its lease");
            }
            id
        }
    };
    format!("{} {id}", node.config.node_name)
}

/// Why a campaign failed, for the operator: the holder's name, or the error.
async fn campaign_problem(node: &Arc<Node>, settings: &EtcdSettings) -> Option<String> {
    let lookup = async {
        let mut client = connect(settings).await?;
        client.get(settings.key.as_str(), None).await
    };
    match tokio::time::timeout(Duration::from_secs(2), lookup).await {
        Ok(Ok(response)) => {
            let holder = response
                .kvs()
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())?;
            (holder != holder_value(node)).then(|| {
                let name = holder.split(' ').next().unwrap_or_default();
                format!("the etcd authority key {} is held by {name}", settings.key)
            })
        }
        Ok(Err(error)) => Some(format!(
            "etcd at {} unreachable: {error}",
            settings.endpoints.join(",")
        )),
        Err(_) => Some(format!(
            "etcd at {} did not answer",
            settings.endpoints.join(",")
        )),
    }
}

/// Renew the lease every third of its TTL until etcd says it has expired or the time
/// it was good until has passed without a renewal (failed renewals are retried
/// meanwhile); each success moves that time.
async fn keep_alive(node: Arc<Node>, settings: EtcdSettings, lease_id: i64, revision: u64) {
    let every = Duration::from_millis((settings.lease_ttl_s * 1000 / 3).max(100));
    let mut valid_until_ms = now_ms() + settings.lease_ttl_s * 1000;
    let mut failing = false;
    let reason = loop {
        tokio::time::sleep(if failing { every / 3 } else { every }).await;
        let sent_ms = now_ms();
        let renewal = async {
            let mut client = connect(&settings).await?;
            let (mut keeper, mut stream) = client.lease_keep_alive(lease_id).await?;
            keeper.keep_alive().await?;
            let answer = stream.message().await?;
            // The key must still be ours (an operator may have deleted it, and the
            // peer taken it under its own lease).
            let key = client.get(settings.key.as_str(), None).await?;
            let ours = key.kvs().first().is_some_and(|kv| kv.lease() == lease_id);
            Ok::<_, etcd_client::Error>((answer, ours))
        };
        let problem = match tokio::time::timeout(every, renewal).await {
            Ok(Ok((_, false))) => {
                break format!(
                    "the etcd key {} no longer holds this node's lease",
                    settings.key
                )
            }
            Ok(Ok((Some(answer), true))) if answer.ttl() > 0 => {
                valid_until_ms = sent_ms + u64::try_from(answer.ttl()).unwrap_or(0) * 1000;
                node.feed(lease_held(revision, sent_ms, answer.ttl()));
                if failing {
                    tracing::info!("renewing the etcd lease again");
                }
                failing = false;
                continue;
            }
            Ok(Ok((_, true))) => break "the etcd lease expired".to_string(),
            Ok(Err(error)) => format!("renewing the etcd lease failed: {error}"),
            Err(_) => "renewing the etcd lease timed out".to_string(),
        };
        if !failing {
            tracing::warn!(%problem, "retrying until the lease would run out");
        }
        failing = true;
        if now_ms() >= valid_until_ms {
            break problem;
        }
    };
    tracing::warn!(%reason, "etcd lease lost; the node steps down before it can run out");
    node.feed(Input::Authority(Evidence::LeaseLost {
        now_ms: now_ms(),
        reason,
    }));
}
