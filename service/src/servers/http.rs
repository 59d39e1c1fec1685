//! The HTTP side of a node (`http_listen`): `/healthz` (doing its job), `/active` (the
//! authority), `/passive` (a healthy, caught-up passive), `/metrics` (Prometheus text
//! 0.0.4, or OpenMetrics when the scraper asks for it), `/` (the status page, `page`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::node::{Node, Role};

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/active", get(active))
        .route("/passive", get(passive))
        .route("/metrics", get(metrics))
        .route("/", get(crate::servers::page::status_page))
        .with_state(node)
}

/// 200 with what the node is doing when it does its job, 503 with why not.
fn answer(result: Result<String, String>) -> (StatusCode, String) {
    match result {
        Ok(doing) => (StatusCode::OK, format!("{doing}\n")),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Whether the node does its job: capture running on an active, the pull loop on a
/// passive; never fenced, starting or ending. A node between roles (handing over,
/// rejoining, suspended by its authority) is doing what it must.
pub fn health(node: &Node) -> Result<String, String> {
    let name = &node.config.node_name;
    if node.is_ending() {
        return Err(format!("{name}: stopping"));
    }
    match node.role() {
        Role::Active if node.capture_running() => Ok(format!("{name}: active, capture running")),
        Role::Active => Err(format!("{name}: active, but capture is not running")),
        Role::Passive if node.pulling() => Ok(format!("{name}: passive, pull running")),
        Role::Passive => Err(format!("{name}: passive, but the pull loop is not running")),
        Role::Fenced { reason } => Err(format!("{name}: fenced: {reason}")),
        Role::Starting => Err(format!("{name}: starting (asking its peer)")),
        Role::Suspended { reason } => Ok(format!("{name}: suspended: {reason}")),
        role => Ok(format!("{name}: {}", role.name())),
    }
}

/// Whether this is a passive a load balancer may send readers to: healthy, its last
/// pull succeeded, nothing known to apply.
pub fn passive_ready(node: &Node) -> Result<String, String> {
    let name = &node.config.node_name;
    if node.role() != Role::Passive {
        return Err(format!("{name}: {}, not a passive", node.role().name()));
    }
    health(node)?;
    if let Some(error) = node.last_error() {
        return Err(format!("{name}: passive, not following: {error}"));
    }
    let (lag_events, lag_seconds) = node.lag();
    if lag_events > 0 {
        return Err(format!(
            "{name}: passive, {lag_events} events behind ({lag_seconds:.1} s)"
        ));
    }
    Ok(format!(
        "{name}: passive, caught up at seq {}",
        node.repository.head().seq
    ))
}

async fn healthz(State(node): State<Arc<Node>>) -> impl IntoResponse {
    answer(
        tokio::task::spawn_blocking(move || health(&node))
            .await
            .unwrap_or_else(|error| Err(error.to_string())),
    )
}

async fn passive(State(node): State<Arc<Node>>) -> impl IntoResponse {
    answer(
        tokio::task::spawn_blocking(move || passive_ready(&node))
            .await
            .unwrap_or_else(|error| Err(error.to_string())),
    )
}

/// 200 on the authoritative node, 503 elsewhere (with where the active is).
async fn active(State(node): State<Arc<Node>>) -> impl IntoResponse {
    match node.role() {
        _ if node.accepts_logins() => (
            StatusCode::OK,
            format!("active: {}\n", node.config.node_name),
        ),
        role => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "{}: {}; the active is {}\n",
                node.config.node_name,
                role.name(),
                node.config.peer_url.as_deref().unwrap_or("unknown")
            ),
        ),
    }
}

async fn metrics(State(node): State<Arc<Node>>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_string();
    let openmetrics = crate::node::metrics::wants_openmetrics(&accept);
    let body = tokio::task::spawn_blocking(move || node.render_metrics())
        .await
        .unwrap_or_default();
    if openmetrics {
        (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
    } else {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            crate::node::metrics::openmetrics_to_text(&body),
        )
    }
}
