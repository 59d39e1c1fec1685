//! Connecting to a node: endpoints and channels for the CLI's calls to its node, and
//! the endpoint the peer link (`peer`) keeps its connections to the peer with.

use std::time::Duration;

use standin_proto::v1::cluster_client::ClusterClient;
use standin_proto::v1::replication_client::ReplicationClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::config::TlsFiles;
use crate::wire::auth::AddSecret;

pub type Authed = InterceptedService<Channel, AddSecret>;

/// Largest message a client accepts: one event batch of up to `MAX_BATCH_BYTES`, or
/// one event up to the engine's `MAX_EVENT_BYTES`.
pub const MAX_MESSAGE_BYTES: usize = standin_engine::log::event::MAX_EVENT_BYTES + (1 << 20);

/// HTTP/2 frame size and flow-control windows the passive asks its active for.
const HTTP2_MAX_FRAME_BYTES: u32 = 1 << 20;
const HTTP2_STREAM_WINDOW_BYTES: u32 = 8 << 20;
const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 16 << 20;

/// A lazily connecting channel to `url`, with timeouts suited to a LAN pair.
pub fn channel(url: &str, tls: Option<&TlsFiles>) -> Result<Channel, String> {
    Ok(endpoint(url, tls)?.connect_lazy())
}

/// Where and how to connect to `url` (the CA file, with https, is read here, once);
/// `Endpoint::connect_lazy` makes a channel of it.
pub fn endpoint(url: &str, tls: Option<&TlsFiles>) -> Result<Endpoint, String> {
    let mut endpoint = Endpoint::from_shared(url.to_string())
        .map_err(|error| format!("{url}: {error}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .keep_alive_while_idle(true)
        // Content streams in 1 MiB messages: frames of 16 KiB (HTTP/2's default) cost
        // the receiver per frame, and a 2 MiB stream window lets a LAN's round trip
        // idle the sender.
        .max_frame_size(HTTP2_MAX_FRAME_BYTES)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES);
    if url.starts_with("https://") {
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = tls.and_then(|files| files.ca.as_ref()) {
            let pem = std::fs::read(ca).map_err(|error| format!("{}: {error}", ca.display()))?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|error| format!("TLS for {url}: {error}"))?;
    }
    Ok(endpoint)
}

pub fn replication(channel: Channel, secret: &str) -> Result<ReplicationClient<Authed>, String> {
    Ok(
        ReplicationClient::with_interceptor(channel, AddSecret::new(secret)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
}

pub fn cluster(channel: Channel, secret: &str) -> Result<ClusterClient<Authed>, String> {
    Ok(
        ClusterClient::with_interceptor(channel, AddSecret::new(secret)?)
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
    )
}
