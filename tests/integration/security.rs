//! Only a caller with the pair's secret gets anything.

use standin_proto::v1 as wire;
use standin_proto::v1::replication_client::ReplicationClient;

use crate::support::Pair;

#[test]
fn a_wrong_or_missing_secret_is_refused_and_nothing_is_served() {
    let pair = Pair::new("replication_period = 1", true);
    std::fs::write(pair.alpha.folder.join("private.txt"), b"not for strangers").unwrap();
    pair.wait_in_sync();
    // Beta has every event; what it was served may count one twice (a one-event probe
    // of the active's log, or a round tried again, can meet the first change now that
    // a closed file is recorded at once), so the strangers are judged by what changes
    // while they call.
    let served = || {
        pair.alpha
            .metric("standin_events_served_total")
            .unwrap_or(0.0) as u64
    };
    let served_before = served();
    assert!(served_before >= pair.alpha.head_seq());

    let wrong = pair.root.path().join("wrong.secret");
    std::fs::write(&wrong, "0123456789abcdef0123456789abcdef\n").unwrap();
    let url = format!("http://127.0.0.1:{}", pair.alpha.grpc);
    let output = std::process::Command::new(crate::support::standin())
        .args(["status", "--url", &url, "--secret-file"])
        .arg(&wrong)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Unauthenticated"), "{stderr}");

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        // No secret at all: Pull and FetchChunks are refused before anything is read.
        let mut client = ReplicationClient::connect(url.clone()).await.unwrap();
        let pull = client
            .pull(wire::PullRequest {
                after_seq: 0,
                after_hash: vec![0; 32],
                max_events: 10,
                follow: false,
                inline_content: false,
            })
            .await;
        assert_eq!(
            pull.err().map(|status| status.code()),
            Some(tonic::Code::Unauthenticated)
        );
        let fetch = client
            .fetch_chunks(wire::FetchChunksRequest {
                hashes: vec![vec![0; 32]],
            })
            .await;
        assert_eq!(
            fetch.err().map(|status| status.code()),
            Some(tonic::Code::Unauthenticated)
        );
        // A wrong secret: the same.
        let channel = standin::wire::client::channel(&url, None).unwrap();
        let mut client =
            standin::wire::client::replication(channel, "0123456789abcdef0123456789abcdef")
                .unwrap();
        let pull = client
            .pull(wire::PullRequest {
                after_seq: 0,
                after_hash: vec![0; 32],
                max_events: 10,
                follow: false,
                inline_content: false,
            })
            .await;
        assert_eq!(
            pull.err().map(|status| status.code()),
            Some(tonic::Code::Unauthenticated)
        );
    });
    assert_eq!(
        served(),
        served_before,
        "nothing was served to the strangers (beta, in sync, is served nothing new)"
    );
    // The refusals are logged with the caller's address.
    crate::support::wait_until("the refusal in alpha's log", || {
        pair.alpha.log_text().contains("refused a call")
    });
    assert!(
        pair.alpha.log_text().contains("caller=127.0.0.1"),
        "{}",
        pair.alpha.log_text()
    );
}

/// With certificate and key configured, the pair talks TLS; a plain-text client gets
/// nothing.
#[test]
fn a_tls_pair_replicates_and_refuses_plain_text() {
    let certs = tempfile::tempdir().unwrap();
    let generated =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = certs.path().join("node.pem");
    let key = certs.path().join("node.key");
    std::fs::write(&cert, generated.cert.pem()).unwrap();
    std::fs::write(&key, generated.signing_key.serialize_pem()).unwrap();
    let tls = format!(
        "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_ca_file = \"{}\"\n",
        cert.display(),
        key.display(),
        cert.display()
    );
    let pair = Pair::with_extra(&tls, &format!("replication_period = 0\n{tls}"), true);
    std::fs::write(
        pair.alpha.folder.join("over-tls.txt"),
        b"encrypted on the wire",
    )
    .unwrap();
    pair.wait_in_sync();
    pair.assert_verified();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let url = format!("http://127.0.0.1:{}", pair.alpha.grpc);
        let channel = standin::wire::client::channel(&url, None).unwrap();
        let mut client = standin::wire::client::replication(
            channel,
            &standin::wire::secret::read_secret(&pair.root.path().join("pair.secret")).unwrap(),
        )
        .unwrap();
        let pull = client
            .pull(wire::PullRequest {
                after_seq: 0,
                after_hash: vec![0; 32],
                max_events: 10,
                follow: false,
                inline_content: false,
            })
            .await;
        let Err(status) = pull else {
            panic!("a plain-text client must not be served")
        };
        assert_ne!(status.code(), tonic::Code::Ok);
    });
}

/// Every call of the pair's services — the data ones (Pull, FetchChunks, Snapshot) and
/// the control ones (Heartbeat with a higher epoch, Promote, Switchover, TakeOver,
/// RestoreFile, Status, Verify) — is refused to a caller without the secret and to one
/// with a wrong secret, and none of them changes anything: the active stays active in
/// its epoch, no file is planted, nothing is served.
#[test]
fn every_pair_call_is_refused_without_the_right_secret_and_changes_nothing() {
    use standin_proto::v1::cluster_client::ClusterClient;

    let pair = Pair::new("replication_period = 1", true);
    std::fs::write(pair.alpha.folder.join("private.txt"), b"not for strangers").unwrap();
    pair.wait_in_sync();
    let served_before = pair.alpha.metric("standin_events_served_total");
    let chunks_before = pair.alpha.metric("standin_chunk_bytes_served_total");
    let epoch_before = pair.alpha.metric("standin_epoch");
    let url = format!("http://127.0.0.1:{}", pair.alpha.grpc);

    /// Each call of both services on `$replication` and `$cluster`: (name, code).
    macro_rules! every_call {
        ($replication:expr, $cluster:expr) => {{
            let (mut replication, mut cluster) = ($replication, $cluster);
            let code = |result: Result<_, tonic::Status>| match result {
                Ok(_) => tonic::Code::Ok,
                Err(status) => status.code(),
            };
            let head = wire::Head {
                seq: 1_000,
                hash: vec![7; 32],
                epoch: 1_000,
                digest: vec![7; 32],
                recorded_at_ms: 1,
            };
            vec![
                (
                    "Pull",
                    code(
                        replication
                            .pull(wire::PullRequest {
                                after_seq: 0,
                                after_hash: vec![0; 32],
                                max_events: 10,
                                follow: false,
                                inline_content: false,
                            })
                            .await
                            .map(|_| ()),
                    ),
                ),
                (
                    "FetchChunks",
                    code(
                        replication
                            .fetch_chunks(wire::FetchChunksRequest {
                                hashes: vec![vec![0; 32]],
                            })
                            .await
                            .map(|_| ()),
                    ),
                ),
                (
                    "Snapshot",
                    code(
                        replication
                            .snapshot(wire::SnapshotRequest {})
                            .await
                            .map(|_| ()),
                    ),
                ),
                (
                    "Heartbeat",
                    code(
                        cluster
                            .heartbeat(wire::HeartbeatRequest {
                                node: "mallory".to_string(),
                                head: Some(head.clone()),
                                role: "active".to_string(),
                                ..Default::default()
                            })
                            .await
                            .map(|_| ()),
                    ),
                ),
                (
                    "Status",
                    code(cluster.status(wire::StatusRequest {}).await.map(|_| ())),
                ),
                (
                    "Verify",
                    code(cluster.verify(wire::VerifyRequest {}).await.map(|_| ())),
                ),
                (
                    "Promote",
                    code(
                        cluster
                            .promote(wire::PromoteRequest { force: true })
                            .await
                            .map(|_| ()),
                    ),
                ),
                (
                    "Switchover",
                    code(
                        cluster
                            .switchover(wire::SwitchoverRequest {})
                            .await
                            .map(|_| ()),
                    ),
                ),
                (
                    "TakeOver",
                    code(
                        cluster
                            .take_over(wire::TakeOverRequest {
                                head_seq: 1,
                                from_node: "mallory".to_string(),
                                epoch: 1,
                                switchover_id: 1,
                            })
                            .await
                            .map(|_| ()),
                    ),
                ),
                (
                    "RestoreFile",
                    code(
                        cluster
                            .restore_file(wire::RestoreFileRequest {
                                path: "planted.txt".to_string(),
                                content: b"planted".to_vec(),
                                mode: 0o644,
                                overwrite: true,
                            })
                            .await
                            .map(|_| ()),
                    ),
                ),
                (
                    "Drill",
                    code(
                        cluster
                            .drill(wire::DrillRequest {
                                peer_head_seq: Some(0),
                            })
                            .await
                            .map(|_| ()),
                    ),
                ),
                (
                    "AcknowledgeFailover",
                    code(
                        cluster
                            .acknowledge_failover(wire::AcknowledgeFailoverRequest { epoch: 0 })
                            .await
                            .map(|_| ()),
                    ),
                ),
            ]
        }};
    }

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let results = runtime.block_on(async {
        let mut results = Vec::new();
        // No secret at all.
        let channel = standin::wire::client::channel(&url, None).unwrap();
        for (name, code) in every_call!(
            ReplicationClient::new(channel.clone()),
            ClusterClient::new(channel)
        ) {
            results.push(("no secret", name, code));
        }
        // A wrong secret (of the right form).
        let wrong = "0123456789abcdef0123456789abcdef";
        let channel = standin::wire::client::channel(&url, None).unwrap();
        for (name, code) in every_call!(
            standin::wire::client::replication(channel.clone(), wrong).unwrap(),
            standin::wire::client::cluster(channel, wrong).unwrap()
        ) {
            results.push(("a wrong secret", name, code));
        }
        results
    });
    assert_eq!(results.len(), 24);
    for (who, name, code) in &results {
        assert_eq!(*code, tonic::Code::Unauthenticated, "{name} with {who}");
    }
    // Nothing changed and nothing was served.
    assert!(crate::support::http_get(pair.alpha.http, "/active")
        .is_some_and(|(status, _)| status == 200));
    assert_eq!(pair.alpha.metric("standin_epoch"), epoch_before);
    assert_eq!(
        pair.alpha.metric("standin_events_served_total"),
        served_before
    );
    assert_eq!(
        pair.alpha.metric("standin_chunk_bytes_served_total"),
        chunks_before
    );
    assert!(!pair.alpha.folder.join("planted.txt").exists());
    assert!(!pair.beta.folder.join("planted.txt").exists());
}

/// `standin tls init` makes a pair CA and one certificate per node: keys private, no
/// file overwritten without `--force`, and a pair configured with them replicates
/// over TLS.
#[test]
fn tls_init_makes_certificates_a_pair_replicates_with() {
    use std::os::unix::fs::PermissionsExt;
    let certs = tempfile::tempdir().unwrap();
    let dir = certs.path().join("tls");
    let init = || {
        std::process::Command::new(crate::support::standin())
            .args(["tls", "init"])
            .arg(&dir)
            .args([
                "--node",
                "alpha=127.0.0.1,localhost",
                "--node",
                "beta=127.0.0.1",
            ])
            .output()
            .unwrap()
    };
    let first = init();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    for key in ["ca.key", "alpha.key", "beta.key"] {
        let mode = std::fs::metadata(dir.join(key))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{key}");
    }
    let again = init();
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let tls = |node: &str| {
        format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_ca_file = \"{}\"\n",
            dir.join(format!("{node}.pem")).display(),
            dir.join(format!("{node}.key")).display(),
            dir.join("ca.pem").display()
        )
    };
    let pair = Pair::with_extra(
        &tls("alpha"),
        &format!("replication_period = 0\n{}", tls("beta")),
        true,
    );
    std::fs::write(pair.alpha.folder.join("signed.txt"), b"by our own CA").unwrap();
    pair.wait_in_sync();
    pair.assert_verified();
}
