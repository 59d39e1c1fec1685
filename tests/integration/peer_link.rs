//! The peer link (`standin::peer`) against a real node behind the fault proxy: its
//! connections are made once and reused, and one that a partition left stuck
//! (black-holed: neither end hears of it, and keepalive is set too slow to notice here)
//! is dropped by the call that found it, so the next call works — for the control
//! calls (heartbeat) and the bulk ones (pull).

use std::time::Duration;

use standin::peer::{LinkTiming, PeerError, PeerLink, PullMessage};
use standin_engine::Head;

use crate::proxy::Proxy;
use crate::support::{wait_until, NodeProcess};

async fn heartbeat(link: &PeerLink) -> Result<String, PeerError> {
    link.heartbeat("beta", &Head::EMPTY, "passive", Vec::new(), None)
        .await
        .map(|answer| answer.node)
}

/// A non-following pull from the start: the number of events of its first batch.
async fn pull(link: &PeerLink) -> Result<usize, PeerError> {
    let mut stream = link.pull(&Head::EMPTY, 16, false).await?;
    match stream.next_within(Duration::from_secs(3)).await? {
        Some(PullMessage::Batch { events, .. }) => Ok(events.len()),
        other => panic!("expected a batch, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_reused_and_one_left_stuck_is_replaced() {
    let root = tempfile::tempdir().unwrap();
    let mut alpha = NodeProcess::configure(root.path(), "alpha", "active", None, "");
    alpha.start();
    std::fs::write(alpha.folder.join("x"), b"x").unwrap();
    wait_until("alpha to record", || alpha.head_seq() > 0);
    let proxy = Proxy::start(alpha.grpc);
    let secret = standin::wire::secret::read_secret(&root.path().join("pair.secret")).unwrap();
    // Keepalive far slower than the test: only the link's own rebuild can help.
    let timing = LinkTiming {
        call: Duration::from_secs(3),
        open: Duration::from_secs(3),
        keepalive: Duration::from_secs(600),
        keepalive_timeout: Duration::from_secs(60),
        ..LinkTiming::new(&standin_engine::role::timing::Timing::new(100, 1500).unwrap())
    };
    let link = PeerLink::new(
        &format!("http://127.0.0.1:{}", proxy.port),
        None,
        &secret,
        timing,
    )
    .unwrap();

    for _ in 0..3 {
        assert_eq!(heartbeat(&link).await.unwrap(), "alpha");
        assert!(pull(&link).await.unwrap() > 0);
    }
    assert_eq!(
        proxy.accepted(),
        2,
        "one control and one bulk connection, reused"
    );

    proxy.black_hole();
    let error = heartbeat(&link).await.unwrap_err();
    assert!(matches!(error, PeerError::TimedOut(_)), "{error:?}");
    assert_eq!(heartbeat(&link).await.unwrap(), "alpha", "a new connection");
    let error = pull(&link).await.unwrap_err();
    assert!(error.is_unreachable(), "{error:?}");
    assert!(pull(&link).await.unwrap() > 0, "a new connection");
    assert_eq!(proxy.accepted(), 4);
}
