//! `standin failover-ack`: the last failover's report (`status`: "last failover: …")
//! has been read. The node asked records the acknowledgement and its peer learns it
//! in the next heartbeat; the peer (the config's `peer_url`, or `--peer-url`) is told
//! at once too when it answers. Refused (exit 3) when there is no failover to
//! acknowledge (none, or already acknowledged), or when `--epoch` names another one.

use std::time::Duration;

use standin_proto::v1 as wire;

use super::status::configured_peer;
use super::{resolve, rpc_failure, Failure, Target};

pub async fn run(target: &Target, peer_url: Option<&str>, epoch: u64) -> Result<u8, Failure> {
    let resolved = resolve(target)?;
    let mut client = crate::wire::client::cluster(resolved.channel()?, &resolved.secret)
        .map_err(Failure::usage)?;
    let reply = client
        .acknowledge_failover(wire::AcknowledgeFailoverRequest { epoch })
        .await
        .map_err(|status| rpc_failure(&resolved.url, &status))?
        .into_inner();
    println!("{}: {}", resolved.url, reply.message);
    if let Some(url) = configured_peer(&resolved, peer_url)? {
        let tls = resolved
            .config
            .as_ref()
            .and_then(|config| config.tls.as_ref());
        let channel = crate::wire::client::channel(&url, tls).map_err(Failure::usage)?;
        let mut peer =
            crate::wire::client::cluster(channel, &resolved.secret).map_err(Failure::usage)?;
        let call = peer.acknowledge_failover(wire::AcknowledgeFailoverRequest { epoch });
        // The heartbeats carry it anyway: a peer that does not answer now learns it
        // when it does.
        match tokio::time::timeout(Duration::from_secs(5), call).await {
            Ok(Ok(reply)) => println!("{url}: {}", reply.into_inner().message),
            // Already acknowledged (it heard it from the node asked), or unreachable.
            Ok(Err(status)) => println!("{}", rpc_failure(&url, &status).message),
            Err(_) => println!(
                "{url}: no answer within 5 s (it learns the acknowledgement through the heartbeats)"
            ),
        }
    }
    Ok(0)
}
