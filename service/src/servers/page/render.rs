//! The status page as HTML: one document, its style inline, no script. Every value
//! that comes from a node, a peer, an agent or the disk goes through `escape` (names,
//! addresses, paths and error texts are not trusted to be markup-free); only this
//! module's own literals are markup.

use std::fmt::Write as _;

use crate::cli::status::Answer;
use crate::node::status::NodeStatus;
use standin_engine::clock::utc;

use super::judge::{authority_verdict, servers, warnings};
use super::{Page, REFRESH_S};

/// `text` with `& < > " '` replaced by entities: safe in element content and in a
/// quoted attribute value.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            other => out.push(other),
        }
    }
    out
}

const STYLE: &str = "
:root{--fg:#1d2330;--muted:#5d6678;--line:#d9dee8;--card:#fff;--bg:#f3f5f9;
--ok:#1a7f37;--okbg:#e3f4e8;--bad:#b42318;--badbg:#fde8e6;--warn:#9a6700;--warnbg:#fff4d6;
--info:#0b5cad;--infobg:#e6f0fb}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;color:var(--fg);background:var(--bg)}
header{background:#1d2330;color:#fff;padding:14px 24px;display:flex;flex-wrap:wrap;align-items:baseline;gap:6px 18px}
header h1{margin:0;font-size:20px;letter-spacing:.02em}
header p{margin:0;color:#c5cbd8}
main{padding:16px 24px;max-width:1400px}
h2{font-size:15px;margin:18px 0 8px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.nodes{display:grid;grid-template-columns:repeat(auto-fit,minmax(340px,1fr));gap:14px}
.node{background:var(--card);border:1px solid var(--line);border-top:4px solid var(--muted);border-radius:6px;padding:10px 14px}
.node.role-active{border-top-color:var(--ok)}.node.role-passive{border-top-color:var(--info)}
.node.unreachable,.node.role-fenced,.node.role-suspended{border-top-color:var(--bad)}
.node h3{margin:0 0 2px;font-size:18px;display:flex;gap:8px;align-items:center}
.url{margin:0 0 8px;color:var(--muted);font-size:12px;word-break:break-all}
dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 14px;margin:0}
dt{color:var(--muted)}dd{margin:0;word-break:break-word}
code{font:12px ui-monospace,Menlo,Consolas,monospace}
.badge{font-size:12px;font-weight:600;padding:1px 8px;border-radius:10px;background:var(--line);color:var(--fg)}
.badge.role-active,.badge.up,.badge.can-decide{background:var(--okbg);color:var(--ok)}
.badge.role-passive{background:var(--infobg);color:var(--info)}
.badge.unreachable,.badge.down,.badge.role-fenced,.badge.cannot-decide{background:var(--badbg);color:var(--bad)}
.badge.unsafe,.badge.unknown,.badge.role-suspended{background:var(--warnbg);color:var(--warn)}
ul.warnings{list-style:none;margin:0;padding:0}
ul.warnings li{padding:6px 10px;margin:0 0 4px;border-radius:4px;background:var(--warnbg);border-left:4px solid var(--warn)}
ul.warnings li.severe{background:var(--badbg);border-left-color:var(--bad)}
p.none{margin:0;padding:6px 10px;border-radius:4px;background:var(--okbg);color:var(--ok)}
table{border-collapse:collapse;background:var(--card);border:1px solid var(--line);min-width:60%}
th,td{text-align:left;padding:5px 10px;border-bottom:1px solid var(--line)}
th{color:var(--muted);font-weight:600;font-size:12px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.down td{color:var(--bad)}
.panel{background:var(--card);border:1px solid var(--line);border-radius:6px;padding:10px 14px}
.muted{color:var(--muted)}
footer{padding:8px 24px 20px;color:var(--muted);font-size:12px}
";

/// A byte count for people.
fn bytes(count: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = count as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{count} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A duration in seconds for people.
fn seconds(value: f64) -> String {
    if !value.is_finite() || value < 0.0 {
        return "-".to_string();
    }
    if value < 60.0 {
        format!("{value:.1} s")
    } else if value < 3600.0 {
        format!("{} min {} s", (value / 60.0) as u64, (value % 60.0) as u64)
    } else {
        format!(
            "{} h {} min",
            (value / 3600.0) as u64,
            (value % 3600.0 / 60.0) as u64
        )
    }
}

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

/// A class name from a word the page chose or a node sent: letters, digits and `-`.
fn class(word: &str) -> String {
    word.chars()
        .map(|character| {
            if character.is_ascii_alphanumeric() {
                character.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

fn row(out: &mut String, label: &str, value_html: &str) {
    let _ = write!(out, "<dt>{}</dt><dd>{value_html}</dd>", escape(label));
}

fn text_or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_string()
    } else {
        escape(text)
    }
}

fn node_card(out: &mut String, answer: &Answer, named_by_peer: Option<&str>) {
    let Some(status) = &answer.status else {
        let name = named_by_peer.filter(|name| !name.is_empty());
        let _ = write!(
            out,
            "<article class=\"node unreachable\" data-node=\"{}\"><h3><span class=\"name\">{}</span> \
             <span class=\"badge unreachable\">unreachable</span></h3><p class=\"url\">{}</p><dl>",
            escape(name.unwrap_or("")),
            escape(name.unwrap_or(&answer.url)),
            escape(&answer.url)
        );
        row(
            out,
            "Why",
            &escape(answer.unreachable.as_deref().unwrap_or("no answer")),
        );
        row(
            out,
            "Figures",
            "none: it did not answer just now (nothing from an earlier answer is shown)",
        );
        out.push_str("</dl></article>");
        return;
    };
    let role = class(&status.role);
    let _ = write!(
        out,
        "<article class=\"node role-{role}\" data-node=\"{}\"><h3><span class=\"name\">{}</span> \
         <span class=\"badge role-{role}\">{}</span></h3><p class=\"url\">{}</p><dl>",
        escape(&status.node),
        escape(&status.node),
        escape(&status.role),
        escape(&answer.url)
    );
    row(out, "Epoch", &status.epoch.to_string());
    row(
        out,
        "Head",
        &format!(
            "seq {} <code>{}</code>",
            status.head_seq,
            escape(short(&status.head_hash))
        ),
    );
    row(
        out,
        "Digest",
        &format!("<code>{}</code>", escape(short(&status.head_digest))),
    );
    let behind = if status.role == "passive" || status.lag_events > 0 {
        format!(
            "{} events, {}",
            status.lag_events,
            seconds(status.lag_seconds)
        )
    } else {
        "-".to_string()
    };
    row(out, "Behind its active", &behind);
    let peer_behind = match (status.peer_lag_events, status.peer_lag_seconds) {
        (Some(events), Some(lag)) => format!("{events} events, {}", seconds(lag)),
        _ => "-".to_string(),
    };
    row(out, "Its passive behind it", &peer_behind);
    let peer = if status.peer_state.is_empty() {
        "no peer configured".to_string()
    } else {
        let mut text = format!(
            "<span class=\"badge {}\">{}</span> ",
            class(&status.peer_state),
            escape(&status.peer_state)
        );
        if !status.peer_node.is_empty() {
            let _ = write!(
                text,
                "{} ({})",
                escape(&status.peer_node),
                escape(&status.peer_role)
            );
        }
        if let Some(seq) = status.peer_head_seq {
            let _ = write!(text, " at seq {seq}");
        }
        match status.peer_last_contact_seconds {
            Some(ago) => {
                let _ = write!(text, ", last contact {} ago", seconds(ago));
            }
            None => text.push_str(", never heard from"),
        }
        text
    };
    row(out, "Sees its peer", &peer);
    row(
        out,
        "Replicated",
        &format!(
            "{} events, {}",
            status.events_replicated,
            bytes(status.bytes_replicated)
        ),
    );
    row(
        out,
        "Chunk store",
        &format!(
            "{} chunks, {}",
            status.chunk_count,
            bytes(status.chunk_bytes)
        ),
    );
    row(out, "Content", &text_or_dash(&status.content_mode));
    row(
        out,
        "Quarantined",
        &format!("{} events", status.quarantined_events),
    );
    row(out, "Authority", &text_or_dash(&status.authority_summary));
    row(out, "Folder", &text_or_dash(&status.folder));
    row(
        out,
        "Version",
        &if status.version.is_empty() {
            "-".to_string()
        } else {
            format!(
                "{} (build <code>{}</code>)",
                escape(&status.version),
                escape(&status.build)
            )
        },
    );
    row(out, "Last error", &text_or_dash(&status.last_error));
    out.push_str("</dl></article>");
}

fn warnings_section(out: &mut String, page: &Page) {
    let list = warnings(page.answers, page.local);
    out.push_str("<section id=\"warnings\"><h2>Warnings</h2>");
    if list.is_empty() {
        out.push_str("<p class=\"none\">None: both nodes answer, nothing to look at.</p>");
    } else {
        out.push_str("<ul class=\"warnings\">");
        for warning in list {
            let _ = write!(
                out,
                "<li{}>{}</li>",
                if warning.severe {
                    " class=\"severe\""
                } else {
                    ""
                },
                escape(&warning.text)
            );
        }
        out.push_str("</ul>");
    }
    out.push_str("</section>");
}

fn authority_section(out: &mut String, page: &Page) {
    out.push_str("<section id=\"authority\"><h2>Authority</h2><div class=\"panel\">");
    match authority_verdict(page.answers) {
        Some(verdict) => {
            let decision = class(verdict.decision.name());
            let _ = write!(
                out,
                "<p><b>{}</b> <span class=\"badge {decision}\">{}</span> {}</p>",
                escape(&verdict.mode),
                escape(verdict.decision.name()),
                escape(&verdict.why)
            );
        }
        None => out.push_str("<p>No node that answered names its authority.</p>"),
    }
    out.push_str("</div></section>");
}

fn servers_section(out: &mut String, page: &Page) {
    let rows = servers(page.answers);
    out.push_str("<section id=\"terminal-servers\"><h2>Terminal servers</h2>");
    if rows.is_empty() {
        out.push_str("<p class=\"panel\">No terminal server reports to the nodes that answered.</p></section>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Name</th><th>Address</th><th>CPU</th><th>Memory</th>\
         <th>Sessions</th>",
    );
    for answer in page.answers {
        let name = answer
            .status
            .as_ref()
            .map_or(answer.url.as_str(), |status| status.node.as_str());
        let _ = write!(out, "<th>Last report to {}</th>", escape(name));
    }
    out.push_str("</tr></thead><tbody>");
    for row in rows {
        let server = row.freshest;
        let _ = write!(
            out,
            "<tr class=\"agent{}\" data-agent=\"{}\"><td>{}</td><td>{}</td>\
             <td class=\"num\">{:.0} %</td><td class=\"num\">{:.0} %</td><td class=\"num\">{}</td>",
            if server.down { " down" } else { "" },
            escape(&server.name),
            escape(&server.name),
            escape(&server.address),
            server.cpu_percent,
            server.memory_percent,
            server.sessions
        );
        for (answer, seen) in page.answers.iter().zip(&row.per_node) {
            let cell = match (answer.status.is_some(), seen) {
                (false, _) => "-".to_string(),
                (true, None) => "<b>none</b>".to_string(),
                (true, Some(seen)) if seen.down => {
                    format!("<b>DOWN</b>, {} ago", seconds(seen.age_seconds))
                }
                (true, Some(seen)) => format!("{} ago", seconds(seen.age_seconds)),
            };
            let _ = write!(out, "<td>{cell}</td>");
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table></section>");
}

fn history_section(out: &mut String, page: &Page) {
    let local = page.local;
    out.push_str("<section id=\"failover\"><h2>Last promotion</h2><div class=\"panel\">");
    match &local.last_promotion {
        Some(promotion) => {
            let node = escape(&promotion.node);
            let when = format!(
                "in epoch {} at {}",
                promotion.epoch,
                escape(&utc(promotion.recorded_at_ms))
            );
            let _ = match (&promotion.previous_node, promotion.previous_epoch) {
                (Some(previous), Some(epoch)) if *previous != promotion.node => write!(
                    out,
                    "<p><b>{node}</b> took over from <b>{}</b> (epoch {epoch}) {when}: \
                     a failover or a switchover.</p>",
                    escape(previous)
                ),
                (Some(_), Some(epoch)) => write!(
                    out,
                    "<p><b>{node}</b> became the authority again {when}, after its own \
                     epoch {epoch}.</p>"
                ),
                (None, Some(epoch)) => write!(
                    out,
                    "<p><b>{node}</b> took over {when}, after epoch {epoch}: a failover or \
                     a switchover.</p>"
                ),
                (_, None) => write!(
                    out,
                    "<p><b>{node}</b> became the authority {when}, at the start of the log \
                     (no failover since).</p>"
                ),
            };
            let _ = write!(
                out,
                "<p class=\"muted\">From {}'s log (seq {}).</p>",
                escape(&local.node),
                promotion.seq
            );
        }
        None => {
            let _ = write!(
                out,
                "<p class=\"muted\">None in {}'s log since its epoch began (or it was \
                 compacted away).</p>",
                escape(&local.node)
            );
        }
    }
    out.push_str("</div></section>");
    let _ = write!(
        out,
        "<section id=\"quarantines\"><h2>Quarantines on {}</h2>",
        escape(&local.node)
    );
    if local.quarantines.is_empty() {
        out.push_str("<p class=\"panel muted\">None.</p></section>");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>Id</th><th>Quarantined at</th><th>Events</th>\
         <th>After seq</th><th>Paths</th></tr></thead><tbody>",
    );
    for quarantine in &local.quarantines {
        let _ = write!(
            out,
            "<tr><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            escape(&quarantine.id),
            escape(&utc(quarantine.quarantined_at_ms)),
            quarantine.events,
            quarantine.common_seq,
            escape(&quarantine.paths.join(", "))
        );
    }
    out.push_str("</tbody></table>");
    if local.quarantine_count > local.quarantines.len() {
        let _ = write!(
            out,
            "<p class=\"muted\">{} more: <code>standin quarantine list</code>.</p>",
            local.quarantine_count - local.quarantines.len()
        );
    }
    out.push_str("</section>");
}

/// The whole page.
pub fn render(page: &Page) -> String {
    let statuses: Vec<&NodeStatus> = page
        .answers
        .iter()
        .filter_map(|answer| answer.status.as_ref())
        .collect();
    let title = page
        .answers
        .iter()
        .map(|answer| match &answer.status {
            Some(status) => format!("{} {}", status.node, status.role),
            None => format!("{} unreachable", answer.url),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let own = statuses.first();
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_S}\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>standin: {}</title><style>{STYLE}</style></head><body>",
        escape(&title)
    );
    let _ = write!(
        out,
        "<header><h1>standin</h1><p>seen from <b>{}</b> at <time>{}</time> · {} · \
         refreshes every {REFRESH_S} s</p></header><main>",
        escape(own.map_or("", |status| status.node.as_str())),
        escape(&utc(page.now_ms)),
        escape(&own.map_or(String::new(), |status| format!(
            "standin {} (build {})",
            status.version, status.build
        )))
    );
    warnings_section(&mut out, page);
    out.push_str("<section id=\"nodes\"><h2>Nodes</h2><div class=\"nodes\">");
    for (index, answer) in page.answers.iter().enumerate() {
        // A node that did not answer is named as the other one last heard it.
        let named_by_peer = page
            .answers
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .find_map(|(_, other)| other.status.as_ref())
            .map(|status| status.peer_node.as_str());
        node_card(&mut out, answer, named_by_peer);
    }
    out.push_str("</div></section>");
    authority_section(&mut out, page);
    servers_section(&mut out, page);
    history_section(&mut out, page);
    out.push_str(
        "</main><footer>The same for scripts: <code>curl</code> this address for the text \
         table, <code>/metrics</code>, <code>/healthz</code>, <code>/active</code>, \
         <code>/passive</code>.</footer></body></html>\n",
    );
    out
}
