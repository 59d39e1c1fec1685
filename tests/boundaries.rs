//! The boundaries ARCHITECTURE.md names, checked on the source tree (the `boundaries`
//! test target of the service crate; it reads files and starts nothing):
//!
//! - **Wire types stop at the edge.** Protobuf types (`standin_proto`) appear in
//!   `service/src` only in the peer link (`peer/`), the servers, `convert.rs`, and the
//!   clients that build their own requests (the CLI, its channels in `client.rs`, the
//!   agent); the engine does not depend on `proto` at all.
//! - **The engine reads the clock in one place.** Its production code (test modules
//!   left out) calls `SystemTime::now` / `Instant::now` only in `engine/src/clock.rs`;
//!   its pure state machines (the role machine, the authority, the switchover,
//!   `Timing`) read no clock at all — time reaches them as inputs.
//!
//! Each rule runs on a function that takes the files, so a test below also shows it
//! catching a violation.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where `standin_proto` may appear in `service/src` (paths relative to it; a
/// trailing `/` is a folder).
const PROTO_ALLOWED: &[&str] = &[
    // The peer link: every call this node makes to its peer.
    "peer/",
    // The servers.
    "servers/cluster_server.rs",
    "servers/replication_server.rs",
    "servers/site_server.rs",
    // Wire types <-> engine types.
    "wire/convert.rs",
    // Clients with requests of their own: the CLI, its channels, the agent.
    "cli/",
    "wire/client.rs",
    "site/agent.rs",
    // Allowed by exception: an agent's report is signed over its protobuf encoding,
    // so the signature is made and checked on the wire form, before any conversion.
    "site/report_auth.rs",
];

/// The only file of the engine's production code that reads the clock.
const CLOCK_MODULE: &str = "clock.rs";

/// The engine's pure parts: no clock at all, not even through `clock`.
const PURE: &[&str] = &[
    "role/",
    "role/authority/",
    "role/switchover.rs",
    "role/timing.rs",
];

/// What reading the clock looks like.
const CLOCK_READS: &[&str] = &["SystemTime::now", "Instant::now"];

/// What reaching the engine's clock looks like (for the pure parts).
const CLOCK_USES: &[&str] = &[
    "SystemTime::now",
    "Instant::now",
    "clock::",
    "fsutil::now_ms",
    "fsutil::monotonic_ms",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the service crate sits in the workspace")
        .to_path_buf()
}

/// Every `.rs` file under `dir`, with its path relative to `dir` ('/'-separated).
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|extension| extension == "rs") {
                let relative = path.strip_prefix(dir).unwrap();
                let name = relative.to_string_lossy().replace('\\', "/");
                files.push((name, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files.sort();
    assert!(!files.is_empty(), "no sources under {}", dir.display());
    files
}

fn allowed(path: &str, list: &[&str]) -> bool {
    list.iter().any(|entry| match entry.strip_suffix('/') {
        Some(folder) => path.starts_with(&format!("{folder}/")),
        None => path == *entry,
    })
}

/// The files that are test code: declared behind `#[cfg(test)] mod NAME;` by a
/// sibling module (`NAME.rs` or `NAME/`, next to it or under its folder).
fn test_files(files: &[(String, String)]) -> BTreeSet<String> {
    let mut tests = BTreeSet::new();
    for (path, text) in files {
        let lines: Vec<&str> = text.lines().collect();
        for pair in lines.windows(2) {
            if pair[0].trim() != "#[cfg(test)]" {
                continue;
            }
            let Some(name) = pair[1]
                .trim()
                .strip_prefix("mod ")
                .and_then(|rest| rest.strip_suffix(';'))
            else {
                continue;
            };
            // A module file `a/b.rs` or `a/mod.rs` declares children in `a/b/` or `a/`.
            let folder = match path.rsplit_once('/') {
                Some((folder, "mod.rs")) => format!("{folder}/"),
                Some((folder, file)) if file == "lib.rs" || file == "main.rs" => {
                    format!("{folder}/")
                }
                None if path == "lib.rs" || path == "main.rs" => String::new(),
                Some(_) | None => format!("{}/", path.trim_end_matches(".rs")),
            };
            tests.insert(format!("{folder}{name}.rs"));
            tests.insert(format!("{folder}{name}/"));
        }
    }
    tests
}

/// `text` without whole-line comments and without inline `#[cfg(test)] mod … { … }`
/// blocks (rustfmt closes a top-level block with a `}` in the first column).
fn production_lines(text: &str) -> Vec<(usize, &str)> {
    let mut lines = Vec::new();
    let mut in_test_module = false;
    let mut previous_cfg_test = false;
    for (number, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if in_test_module {
            if line.starts_with('}') {
                in_test_module = false;
            }
            continue;
        }
        if previous_cfg_test && trimmed.starts_with("mod ") && trimmed.ends_with('{') {
            in_test_module = true;
            continue;
        }
        previous_cfg_test = trimmed == "#[cfg(test)]";
        if trimmed.starts_with("//") {
            continue;
        }
        lines.push((number + 1, line));
    }
    lines
}

/// Files (other than those allowed) in which the wire types appear.
fn proto_violations(service_files: &[(String, String)]) -> Vec<String> {
    service_files
        .iter()
        .filter(|(path, _)| !allowed(path, PROTO_ALLOWED))
        .flat_map(|(path, text)| {
            production_lines(text)
                .into_iter()
                .filter(|(_, line)| line.contains("standin_proto"))
                .map(move |(number, line)| format!("service/src/{path}:{number}: {}", line.trim()))
        })
        .collect()
}

/// Lines of the engine's production code that read the clock outside `clock.rs`, or
/// reach any clock from a pure part.
fn clock_violations(engine_files: &[(String, String)]) -> Vec<String> {
    let tests = test_files(engine_files);
    let mut found = Vec::new();
    for (path, text) in engine_files {
        if tests.contains(path)
            || tests
                .iter()
                .any(|test| test.ends_with('/') && path.starts_with(test))
        {
            continue;
        }
        let forbidden: &[&str] = if allowed(path, PURE) {
            CLOCK_USES
        } else if path == CLOCK_MODULE {
            &[]
        } else {
            CLOCK_READS
        };
        for (number, line) in production_lines(text) {
            if forbidden.iter().any(|pattern| line.contains(pattern)) {
                found.push(format!("engine/src/{path}:{number}: {}", line.trim()));
            }
        }
    }
    found
}

#[test]
fn protobuf_types_stay_in_the_peer_link_the_servers_convert_and_the_clients() {
    let violations = proto_violations(&sources(&root().join("service/src")));
    assert!(
        violations.is_empty(),
        "protobuf types outside the peer link, the servers, convert.rs and the clients \
         (convert to engine types at the boundary, ARCHITECTURE.md \"Boundaries\"):\n{}",
        violations.join("\n")
    );
    let engine_manifest = std::fs::read_to_string(root().join("engine/Cargo.toml")).unwrap();
    assert!(
        !engine_manifest.contains("standin-proto"),
        "the engine depends on the proto crate"
    );
}

#[test]
fn the_engine_reads_the_clock_only_in_its_clock_module() {
    let violations = clock_violations(&sources(&root().join("engine/src")));
    assert!(
        violations.is_empty(),
        "the engine reads the clock outside engine/src/clock.rs, or a pure part reads it \
         at all (take the time as an input, ARCHITECTURE.md \"Boundaries\"):\n{}",
        violations.join("\n")
    );
}

/// The rules catch what they are for (each check is a function of the files, so
/// a violation can be planted without touching the tree).
#[test]
fn the_checks_catch_a_planted_violation() {
    let file = |path: &str, text: &str| (path.to_string(), text.to_string());
    assert_eq!(
        proto_violations(&[file("coordinator.rs", "use standin_proto::v1 as wire;\n")]).len(),
        1
    );
    assert!(
        proto_violations(&[file("peer/calls.rs", "use standin_proto::v1 as wire;\n")]).is_empty()
    );
    assert!(proto_violations(&[file("node.rs", "/// not `standin_proto` here\n")]).is_empty());

    let engine = [
        file("lib.rs", "pub mod scan;\npub mod clock;\n#[cfg(test)]\nmod tests;\n"),
        file("clock.rs", "pub fn instant() -> Instant { Instant::now() }\n"),
        file("scan/mod.rs", "fn f() { let t = std::time::Instant::now(); }\n#[cfg(test)]\nmod tests {\n    fn g() { SystemTime::now(); }\n}\n"),
        file("tests.rs", "fn h() { SystemTime::now(); }\n"),
        file("role/active.rs", "fn tick() { let now = crate::clock::now_ms(); }\n"),
        file("replay/mod.rs", "fn timed() { let t = crate::clock::instant(); }\n"),
    ];
    let mut found = clock_violations(&engine);
    found.sort();
    assert_eq!(found.len(), 2, "{found:#?}");
    assert!(
        found[0].starts_with("engine/src/role/active.rs:1"),
        "{found:#?}"
    );
    assert!(
        found[1].starts_with("engine/src/scan/mod.rs:1"),
        "{found:#?}"
    );
}
