//! Free ports on 127.0.0.1, a plain HTTP/1.1 GET, and one sample out of a
//! Prometheus text exposition.

use std::io::{Read, Write};
use std::time::Duration;

/// A port nothing listens on right now, outside the kernel's ephemeral range, and
/// not handed out before by this process. A port the kernel picks (bind to port 0)
/// is ephemeral: between this call and the node's bind, any outgoing connection on
/// the machine may take it as its source port (a test failed so: "http_listen on
/// 127.0.0.1:34555: Address already in use"). Ports outside that range are only
/// taken by an explicit bind. Another process may still bind the same one in between
/// (see `NodeSpec::retry_taken_ports`).
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let (low, high) = usable_ports();
    let span = u64::from(high - low) + 1;
    let mut handed_out = HANDED_OUT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Start somewhere else in every process, so concurrent test binaries rarely meet.
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 20);
    let start = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11;
    for step in 0..span {
        let port = low + ((start + step * 7_919) % span) as u16;
        if handed_out.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    panic!("no free port on 127.0.0.1 in {low}..={high}")
}

/// The ports `free_port` chooses from: the larger stretch of 10000..=65535 outside
/// the ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`, Linux's default
/// 32768..=60999).
fn usable_ports() -> (u16, u16) {
    let (ephemeral_low, ephemeral_high) =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut words = text.split_whitespace().map(|word| word.parse::<u16>());
                Some((words.next()?.ok()?, words.next()?.ok()?))
            })
            .unwrap_or((32_768, 60_999));
    let below = (10_000, ephemeral_low.saturating_sub(1));
    let above = (ephemeral_high.saturating_add(1), 65_535);
    let size = |(low, high): (u16, u16)| high.saturating_sub(low);
    if size(below) >= size(above) && below.1 > below.0 {
        below
    } else if above.1 > above.0 {
        above
    } else {
        (10_000, 65_535)
    }
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
    use super::{free_port, metric_in, usable_ports};

    #[test]
    fn free_ports_are_outside_the_ephemeral_range_and_never_handed_out_twice() {
        let (low, high) = usable_ports();
        assert!(low >= 10_000 && low < high, "{low}..={high}");
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        for port in &ports {
            assert!((low..=high).contains(port), "{port} outside {low}..={high}");
        }
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(unique.len(), ports.len(), "a port handed out twice");
    }

    #[test]
    fn a_metric_is_found_by_its_whole_name_with_or_without_labels() {
        let text =
            "standin_head_seq_total 9\nstandin_head_seq 7\nstandin_role{role=\"active\"} 1\n";
        assert_eq!(metric_in(text, "standin_head_seq"), Some(7.0));
        assert_eq!(metric_in(text, "standin_role"), Some(1.0));
        assert_eq!(metric_in(text, "standin_missing"), None);
    }
}
