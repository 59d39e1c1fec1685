//! `standin serve`: open the node, start its servers and its role's work, run until a
//! shutdown signal or until any of its tasks ends (a server, the coordinator,
//! compaction, the watch on capture's thread), then stop in order: logins and capture
//! first (capture's final round), then the other tasks, then flush. A node that has
//! lost a task must not stay active: its peer may no longer hear it and promote.
//! When a task ended, `run` fails naming it (the process exits non-zero).
//! `prepare` reads the config and runs the preflight checks first (a failure is a
//! config error: exit 2); SIGHUP reloads what can be (`reload`), never ending the node.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::{Identity, Server, ServerTlsConfig};

use crate::config::Config;
use crate::node::Node;
use crate::wire::auth::RequireSecret;

/// A config read and checked for `serve`, with the secrets as read.
pub struct Start {
    pub config: Config,
    pub config_path: PathBuf,
    pub secret: String,
    pub agent_secret: Option<String>,
}

/// Read the config at `path` and run the preflight checks (`Mode::Serve`: data_dir
/// is created when missing); warnings are logged, the first failure is returned as
/// `config PATH: key `K`: reason`.
pub fn prepare(path: &Path) -> Result<Start, String> {
    let config = Config::load(path).map_err(|error| error.to_string())?;
    let checked = crate::config::preflight::run(&config, crate::config::preflight::Mode::Serve);
    for warning in checked.warnings() {
        tracing::warn!(key = warning.key, "{}", warning.message);
    }
    if let Some(failure) = checked.failure() {
        return Err(format!(
            "config {}: key `{}`: {}",
            path.display(),
            failure.key,
            failure.message
        ));
    }
    let secret = checked
        .secret
        .ok_or_else(|| format!("config {}: key `secret_file`: not read", path.display()))?;
    Ok(Start {
        config,
        config_path: path.to_path_buf(),
        secret,
        agent_secret: checked.agent_secret,
    })
}

/// Run a node until `shutdown` completes; each of `hangups` (SIGHUP) reloads the
/// config.
pub async fn run(
    start: Start,
    hangups: tokio::signal::unix::Signal,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let Start {
        config,
        config_path,
        secret,
        agent_secret,
    } = start;
    if let Some(filter) = &config.log_filter {
        if let Err(reason) = crate::logging::set_filter(Some(filter)) {
            tracing::warn!("log_filter not applied: {reason}");
        }
    }
    let reloader = crate::node::reload::Reloader::new(
        config_path,
        config.clone(),
        secret.clone(),
        agent_secret.clone(),
    );
    // Before any port: a second node on this data_dir stops here, holding nothing.
    let _data_dir_lock = crate::node::data_dir_lock::DataDirLock::take(&config.data_dir)?;
    let grpc_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listen on {}", config.listen))?;
    let http_listener = match config.http_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("http_listen on {address}"))?,
        ),
        None => None,
    };
    let node = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Node::open(config, secret)).await??
    };
    tracing::info!(
        node = %config.node_name,
        configured_role = ?config.role,
        head = node.repository.head().seq,
        grpc = %grpc_listener.local_addr()?,
        "standin node starting"
    );

    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    let mut tasks = crate::node::tasks::Tasks::default();

    // gRPC: replication, cluster, health; every standin.v1 call needs the secret.
    let interceptor = RequireSecret::new(node.secret.clone());
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<crate::servers::replication_server::Grpc>()
        .await;
    health_reporter
        .set_serving::<crate::servers::cluster_server::Grpc>()
        .await;
    let mut builder = Server::builder();
    if let Some(tls) = &config.tls {
        let cert = std::fs::read(&tls.cert)
            .with_context(|| format!("tls_cert_file {}", tls.cert.display()))?;
        let key = std::fs::read(&tls.key)
            .with_context(|| format!("tls_key_file {}", tls.key.display()))?;
        builder = builder
            .tls_config(ServerTlsConfig::new().identity(Identity::from_pem(cert, key)))
            .context("TLS")?;
    }
    // Agents sign their reports with keys of their own; only without any, the shared
    // agent secret (without agent_secret_file either, no report counts).
    let agent_keys = config.agent_keys.clone().filter(|keys| !keys.is_empty());
    let agent_secret = match (&agent_keys, &config.agent_secret_file) {
        (Some(keys), file) => {
            tracing::info!(agents = keys.len(), dir = %keys.dir.display(), "agents sign their reports with keys of their own");
            if let Some(file) = file {
                tracing::warn!(file = %file.display(), "agent_secret_file is not used: per-agent keys are configured (remove it from the config and from the terminal servers)");
            }
            None
        }
        (None, Some(file)) => {
            tracing::warn!(file = %file.display(), "agents share one secret (agent_secret_file): any agent can report, and vote, as any other; give each its own key (`standin agent-key add NAME`, agent_keys_dir; README \"Security\")");
            Some(agent_secret.unwrap_or_else(crate::wire::secret::unguessable))
        }
        (None, None) => Some(crate::wire::secret::unguessable()),
    };
    // An unknown user is checked against a dummy hash: compute it before the first.
    tokio::task::spawn_blocking(crate::site::prepare).await?;
    let router = builder.add_service(health_service);
    let agent_service = crate::servers::site_server::agent_grpc(node.clone(), agent_keys.clone());
    // Signed reports carry their own proof; a bearer token would only be one more
    // shared secret.
    let router = match agent_secret {
        None => router.add_service(agent_service),
        Some(secret) => router.add_service(tonic::service::interceptor::InterceptedService::new(
            agent_service,
            RequireSecret::new(secret),
        )),
    };
    let router = router
        .add_service(crate::servers::site_server::site_grpc(node.clone()))
        .add_service(
            // tonic's default encoding limit is unbounded; the server bounds its own
            // messages (see replication_server).
            tonic::service::interceptor::InterceptedService::new(
                crate::servers::replication_server::grpc(node.clone()),
                interceptor.clone(),
            ),
        )
        .add_service(
            // RestoreFile carries a whole file: allow the same bound as events.
            tonic::service::interceptor::InterceptedService::new(
                crate::servers::cluster_server::grpc(node.clone()),
                interceptor,
            ),
        );
    let mut grpc_stop = stop.clone();
    // Small replies (a FetchChunks answer of one chunk, a heartbeat) must not wait for
    // the peer's delayed ACK (Nagle's algorithm: about 40 ms a round trip). tonic sets
    // TCP_NODELAY only on listeners it binds itself.
    let incoming = tokio_stream::StreamExt::map(
        tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
        |accepted| {
            if let Ok(stream) = &accepted {
                if let Err(error) = stream.set_nodelay(true) {
                    tracing::warn!(%error, "could not set TCP_NODELAY on a connection");
                }
            }
            accepted
        },
    );
    tasks.spawn("grpc-server", async move {
        router
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = grpc_stop.wait_for(|stopped| *stopped).await;
            })
            .await
            .context("gRPC server")
    });

    if let Some(listener) = http_listener {
        let app = crate::servers::http::router(node.clone());
        let mut http_stop = stop.clone();
        tasks.spawn("http-server", async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .with_graceful_shutdown(async move {
                let _ = http_stop.wait_for(|stopped| *stopped).await;
            })
            .await
            .context("HTTP server")
        });
    }

    // The role state machine decides what this node does (capture or follow).
    let coordinator = crate::coordinator::Coordinator::new(node.clone());
    let coordinator_stop = stop.clone();
    tasks.spawn("coordinator", async move {
        coordinator.run(coordinator_stop).await;
        Ok(())
    });

    // On the active: chunks kept by reference (from its time as a passive) are copied
    // into the chunk store in the background.
    tasks.spawn(
        "absorb-references",
        crate::node::absorb::run(node.clone(), stop.clone()),
    );

    // Capture runs in a thread of its own (started and stopped by the coordinator): a
    // thread that ended while capture should run ends the node. So does a write that
    // could not be made durable, wherever it was (`Node::fatal`).
    let watched = node.clone();
    let mut watch_stop = stop.clone();
    tasks.spawn("capture-watch", async move {
        let mut ticker = tokio::time::interval(std::time::Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = watch_stop.wait_for(|stopped| *stopped) => return Ok(()),
            }
            if let Some(reason) = watched.fatal() {
                anyhow::bail!("{reason}");
            }
            if watched.capture_died() {
                anyhow::bail!("capture's thread ended: changes were no longer recorded");
            }
        }
    });

    // SIGHUP: reload what can be; log what needs a restart.
    tasks.spawn(
        "reload",
        crate::node::reload::on_hangup(reloader, hangups, node.clone(), stop.clone()),
    );

    // Compaction: keep `log_retention_events`, then collect the chunks nothing names.
    let compacting = node.clone();
    let mut compaction_stop = stop.clone();
    tasks.spawn("compaction", async move {
        let interval = std::time::Duration::from_secs(compacting.config.compaction_interval_s);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = compaction_stop.wait_for(|stopped| *stopped) => return Ok(()),
            }
            let _applying = compacting.apply_lock.write().await;
            let repository = compacting.repository.clone();
            let keep = compacting.config.log_retention_events;
            let result = tokio::task::spawn_blocking(
                move || -> standin_engine::Result<Option<standin_engine::chunk_store::GcReport>> {
                    if repository.compact(keep)? == 0 {
                        return Ok(None);
                    }
                    repository.collect_garbage().map(Some)
                },
            )
            .await;
            match result {
                Ok(Ok(Some(report))) => tracing::info!(
                    chunks = report.chunks_removed,
                    bytes = report.bytes_reclaimed,
                    "collected garbage"
                ),
                Ok(Ok(None)) => {}
                Ok(Err(error)) => {
                    if !compacting.fail_if_durability_lost("compaction", &error) {
                        tracing::error!(%error, "compaction failed");
                    }
                }
                Err(error) => tracing::error!(%error, "compaction task failed"),
            }
        }
    });

    let ended = tokio::select! {
        () = shutdown => None,
        ended = tasks.next_end() => Some(ended),
    };
    match &ended {
        None => tracing::info!("shutting down"),
        Some(ended) => tracing::error!("{ended}; stopping the node: logins and capture first"),
    }
    // Logins and capture first (`/active` answers 503 from here on), then the rest.
    node.end();
    let stopping = node.clone();
    tokio::task::spawn_blocking(move || stopping.stop_capture()).await?;
    let _ = stop_sender.send(true);
    let flushing = node.clone();
    let flushed = tokio::task::spawn_blocking(move || flushing.repository.flush()).await?;
    // Streams to a following passive end with the process; do not wait for them long.
    if !tasks.drain(std::time::Duration::from_secs(5)).await {
        tracing::warn!("some streams were still open after 5 s; closing them");
    }
    match (ended, flushed) {
        (None, flushed) => Ok(flushed?),
        (Some(ended), flushed) => {
            if let Err(error) = flushed {
                // Expected after a lost durability (every sync fails from then on).
                tracing::error!(%error, "the last flush of the store failed");
            }
            Err(anyhow::anyhow!(
                "{ended}; the node stopped (logins and capture first)"
            ))
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let mut terminate =
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}
