//! The HTTP side of a node (`http_listen`): `/healthz`, `/active`, `/metrics`, `/`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::node::Node;

pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/active", get(active))
        .route("/metrics", get(metrics))
        .route("/", get(status_page))
        .with_state(node)
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

async fn metrics(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let body = tokio::task::spawn_blocking(move || node.render_metrics())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
}

async fn status_page(State(node): State<Arc<Node>>) -> impl IntoResponse {
    let status = tokio::task::spawn_blocking(move || node.status())
        .await
        .unwrap_or_default();
    crate::cli::status::render_table(&[status])
}
