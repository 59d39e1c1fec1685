//! `standin check-config` against real files and real nodes (issue 20 item 7): TLS
//! files from `standin tls init` (a key that is not the certificate's refused), the
//! data_dir lock of a running node (said; a failure only with `--stopped`), `--peer`
//! with the peer down (exit 1) and up (exit 0); and SIGHUP on a running pair: the
//! nodes keep running and replicating, log the reload, apply a new hook at once and
//! name the changed keys that need a restart; a broken config on SIGHUP is not used.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::{standin, wait_until, NodeProcess, Pair};

fn check_config(config: &std::path::Path, args: &[&str]) -> Output {
    Command::new(standin())
        .arg("check-config")
        .arg(config)
        .args(args)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn tls_files_are_checked_and_a_foreign_key_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("tls");
    let init = Command::new(standin())
        .args(["tls", "init"])
        .arg(&dir)
        .args(["--node", "alpha=127.0.0.1", "--node", "beta=127.0.0.1"])
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", text(&init));
    let tls = |cert: &str, key: &str| {
        format!(
            "tls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_ca_file = \"{}\"\n",
            dir.join(cert).display(),
            dir.join(key).display(),
            dir.join("ca.pem").display()
        )
    };
    let good = NodeProcess::configure(
        root.path(),
        "alpha",
        "active",
        None,
        &tls("alpha.pem", "alpha.key"),
    );
    let output = check_config(&good.config, &[]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(0), "{said}");
    for line in [
        "ok    tls_key_file: ",
        "ok    tls_ca_file: ",
        "ok    tls_cert_file: ",
    ] {
        assert!(said.contains(line), "{line}: {said}");
    }
    assert!(said.contains("current, signed by tls_ca_file"), "{said}");

    let foreign = NodeProcess::configure(
        root.path(),
        "beta",
        "active",
        None,
        &tls("alpha.pem", "beta.key"),
    );
    let output = check_config(&foreign.config, &[]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(
        said.contains("FAIL  tls_key_file: ") && said.contains("is not the key of the certificate"),
        "{said}"
    );
}

#[test]
fn a_running_node_is_said_and_fails_only_with_stopped() {
    let root = tempfile::tempdir().unwrap();
    let mut node = NodeProcess::configure(root.path(), "alpha", "active", None, "");
    node.start();
    let output = check_config(&node.config, &[]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(0), "{said}");
    let pid = node.pid().unwrap();
    assert!(
        said.contains(&format!(
            "warn  data_dir: is locked by a running standin serve (pid {pid})"
        )),
        "{said}"
    );
    assert!(
        said.contains("warn  listen: ")
            && said.contains("is in use (by the node running on this data_dir"),
        "{said}"
    );
    let output = check_config(&node.config, &["--stopped"]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(said.contains("FAIL  data_dir: is locked"), "{said}");
    assert!(node.stop(), "the node stops cleanly");
    let output = check_config(&node.config, &["--stopped"]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    assert!(text(&output).contains("ok    data_dir: no node is running on it"));
}

#[test]
fn a_port_taken_by_another_program_fails() {
    let root = tempfile::tempdir().unwrap();
    let node = NodeProcess::configure(root.path(), "alpha", "active", None, "");
    let _taken = std::net::TcpListener::bind(("127.0.0.1", node.http)).unwrap();
    let output = check_config(&node.config, &[]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(2), "{said}");
    assert!(
        said.contains(&format!(
            "FAIL  http_listen: 127.0.0.1:{} cannot be bound",
            node.http
        )),
        "{said}"
    );
}

#[test]
fn peer_down_exits_1_and_up_exits_0() {
    let mut pair = Pair::new("", false);
    let output = check_config(&pair.beta.config, &["--peer", "--peer-deadline-ms", "3000"]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("FAIL  peer_url: "), "{said}");
    assert!(
        said.contains("serve would start, but key `peer_url`"),
        "{said}"
    );
    // Without --peer the same config passes: the peer is not asked.
    assert_eq!(check_config(&pair.beta.config, &[]).status.code(), Some(0));

    pair.alpha.start();
    let output = check_config(&pair.beta.config, &["--peer"]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(0), "{said}");
    assert!(
        said.contains("ok    peer_url: ")
            && said.contains("answers with the pair secret: alpha is"),
        "{said}"
    );
    // The wrong secret: the peer answers, but refuses it.
    std::fs::write(pair.root.path().join("other.secret"), "").unwrap();
    let other = pair.root.path().join("other.secret");
    std::fs::remove_file(&other).unwrap();
    let made = Command::new(standin())
        .arg("init-secret")
        .arg(&other)
        .output()
        .unwrap();
    assert!(made.status.success());
    let config = std::fs::read_to_string(&pair.beta.config).unwrap();
    let secret = pair.root.path().join("pair.secret");
    std::fs::write(
        &pair.beta.config,
        config.replace(&secret.display().to_string(), &other.display().to_string()),
    )
    .unwrap();
    let output = check_config(&pair.beta.config, &["--peer"]);
    let said = text(&output);
    assert_eq!(output.status.code(), Some(1), "{said}");
    assert!(said.contains("FAIL  peer_url: "), "{said}");
}

/// SIGHUP: the nodes keep running and replicating, the reload is logged, a new hook
/// is used at once (beta's on_promote, run when it takes over), the changed keys that
/// need a restart are named, and a broken config is not used.
#[test]
fn sighup_reloads_and_never_kills_a_node() {
    let mut pair = Pair::new(
        "heartbeat_interval_ms = 100\nfailover_after_ms = 1500\nreplication_period = 0\n",
        true,
    );
    std::fs::write(pair.alpha.folder.join("before.txt"), b"before the reload").unwrap();
    pair.wait_in_sync();

    // beta: a hook that was not there at start, and a key that needs a restart.
    let marker = pair.root.path().join("promoted");
    let hook = pair.root.path().join("promoted.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\necho \"$STANDIN_EVENT $STANDIN_NODE\" >> {}\n",
            marker.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let beta_config = std::fs::read_to_string(&pair.beta.config).unwrap();
    std::fs::write(
        &pair.beta.config,
        format!(
            "{beta_config}on_promote = \"{}\"\nrescan_interval_s = 300\nlog_filter = \"info\"\n",
            hook.display()
        ),
    )
    .unwrap();
    pair.beta.signal(libc::SIGHUP);
    wait_until("beta to log the reload", || {
        pair.beta.log_text().contains("config reloaded")
    });
    let log = pair.beta.log_text();
    let reloaded = log
        .lines()
        .find(|line| line.contains("config reloaded") && line.contains("applied"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        reloaded.contains("on_promote") && reloaded.contains("log_filter"),
        "{reloaded}"
    );
    let restart = log
        .lines()
        .find(|line| line.contains("need a restart"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(restart.contains("rescan_interval_s"), "{restart}");
    assert!(!restart.contains("on_promote"), "{restart}");

    // alpha: a config that does not parse is not used; the node runs on.
    let alpha_config = std::fs::read_to_string(&pair.alpha.config).unwrap();
    std::fs::write(&pair.alpha.config, format!("{alpha_config}listen = [\n")).unwrap();
    pair.alpha.signal(libc::SIGHUP);
    wait_until("alpha to log the refused reload", || {
        pair.alpha
            .log_text()
            .contains("the config was not reloaded")
    });
    std::fs::write(&pair.alpha.config, &alpha_config).unwrap();
    pair.alpha.signal(libc::SIGHUP);
    wait_until("alpha to log an unchanged reload", || {
        pair.alpha
            .log_text()
            .contains("config reloaded: nothing changed")
    });

    // Both still run and replicate.
    assert!(pair.alpha.wait_exit(Duration::from_millis(200)).is_none());
    assert!(pair.beta.wait_exit(Duration::from_millis(200)).is_none());
    std::fs::write(pair.alpha.folder.join("after.txt"), b"after the reload").unwrap();
    pair.wait_in_sync();
    pair.assert_verified();

    // The hook beta got by the reload runs when it takes over.
    pair.alpha.kill();
    wait_until("beta's reloaded on_promote hook", || {
        std::fs::read_to_string(&marker).is_ok_and(|text| text.contains("promote beta"))
    });
}
