//! Free ports on 127.0.0.1, a plain HTTP/1.1 GET, and one sample out of a
//! Prometheus text exposition.

use std::io::{Read, Write};
use std::time::Duration;

/// A port nothing listens on right now (it can be taken before it is bound: see
/// `NodeSpec::retry_taken_ports`).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port on 127.0.0.1")
}

/// GET on 127.0.0.1:`port`: (status code, body); None when nothing answers.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let status = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    Some((status, body))
}

/// The value of metric `name` in a text exposition: the first sample whose line is
/// `name` followed by a space or its labels.
pub fn metric_in(exposition: &str, name: &str) -> Option<f64> {
    exposition
        .lines()
        .find(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::metric_in;

    #[test]
    fn a_metric_is_found_by_its_whole_name_with_or_without_labels() {
        let text =
            "standin_head_seq_total 9\nstandin_head_seq 7\nstandin_role{role=\"active\"} 1\n";
        assert_eq!(metric_in(text, "standin_head_seq"), Some(7.0));
        assert_eq!(metric_in(text, "standin_role"), Some(1.0));
        assert_eq!(metric_in(text, "standin_missing"), None);
    }
}
