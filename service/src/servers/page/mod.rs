//! The status page at `/`: both nodes of the pair, as this node sees them now — this
//! node's status and its peer's, asked through the peer link (a peer that does not
//! answer is shown as unreachable, never with figures from an earlier answer).
//!
//! A browser (its `Accept` names `text/html`) gets an HTML page, rendered here on the
//! server: no script, no framework, refreshed by `<meta http-equiv="refresh">`, every
//! value escaped. Anything else (`curl`) gets the text table of `standin status`.
//!
//! - `facts`: what the page shows of this node beyond its status (quarantines, the
//!   last promotion in its log), read when the page is asked.
//! - `judge`: the pure judgements — whether the authority can decide, the warnings,
//!   the terminal servers merged across both nodes.
//! - `render`: the HTML, and the escaping every value goes through.

mod facts;
mod judge;
mod render;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};

use crate::cli::status::Answer;
use crate::node::Node;

pub use facts::{LocalFacts, Promotion, QuarantineFacts};
pub use judge::{authority_verdict, warnings, Decision, Verdict, Warning};
pub use render::{escape, render};

/// How often a browser reloads the page (seconds).
pub const REFRESH_S: u64 = 5;

/// What one rendering of the page shows.
pub struct Page<'a> {
    /// This node's answer first, then its peer's, as `standin status` has them.
    pub answers: &'a [Answer],
    /// What this node knows beyond its status.
    pub local: &'a LocalFacts,
    /// When the page was made (ms since 1970, UTC).
    pub now_ms: u64,
}

/// Whether an `Accept` header asks for HTML: `text/html` (or XHTML) with a weight
/// above zero and at least that of `text/plain`. A bare `*/*` (curl) is not a request
/// for HTML.
pub fn wants_html(accept: &str) -> bool {
    let mut html_q = 0.0_f32;
    let mut text_q = 0.0_f32;
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|parameter| {
                let (name, value) = parameter.split_once('=')?;
                (name.trim().eq_ignore_ascii_case("q")).then(|| value.trim().parse::<f32>().ok())?
            })
            .next()
            .unwrap_or(1.0);
        match media.as_str() {
            "text/html" | "application/xhtml+xml" => html_q = html_q.max(q),
            "text/plain" => text_q = text_q.max(q),
            _ => {}
        }
    }
    html_q > 0.0 && html_q >= text_q
}

/// Both nodes' answers: this one's (computed here) and its peer's (asked through the
/// link, within the link's status deadline), asked at once.
async fn answers(node: &Arc<Node>) -> Vec<Answer> {
    let peer = async {
        let link = node.peer()?;
        let answer = link.status().await;
        Some(Answer {
            url: link.url().to_string(),
            unreachable: answer.as_ref().err().map(|error| error.to_string()),
            status: answer.ok(),
        })
    };
    let local = node.clone();
    let own = async move {
        tokio::task::spawn_blocking(move || local.status())
            .await
            .unwrap_or_default()
    };
    let (own, peer) = tokio::join!(own, peer);
    let own = Answer {
        url: node.config.local_url(),
        status: Some(own),
        unreachable: None,
    };
    std::iter::once(own).chain(peer).collect()
}

/// `/`: HTML for a browser, the text table otherwise.
pub async fn status_page(State(node): State<Arc<Node>>, headers: HeaderMap) -> Response {
    let html = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .any(wants_html);
    let answers = answers(&node).await;
    if !html {
        return (
            [
                (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
                (header::VARY, "Accept"),
            ],
            crate::cli::status::render_answers(&answers),
        )
            .into_response();
    }
    let local = node.clone();
    let facts = tokio::task::spawn_blocking(move || facts::gather(&local))
        .await
        .unwrap_or_else(|error| LocalFacts::unreadable(error.to_string()));
    let body = render(&Page {
        answers: &answers,
        local: &facts,
        now_ms: standin_engine::fsutil::now_ms(),
    });
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::VARY, "Accept"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
