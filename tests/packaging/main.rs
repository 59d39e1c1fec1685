//! The packaging test target (issue 21): the Debian package and what an operator
//! installs with it. Modules:
//!
//! - `deb`: the one heavy test: `service/packaging/build-deb` (the release build and
//!   cargo-deb, minutes on a fresh clone), then the package unpacked with
//!   `dpkg-deb -x` and checked: its files, the unpacked `standin --version`, man pages,
//!   completions, maintainer scripts, `systemd-analyze verify` of the units.
//! - `examples`: the example configs shipped in `/etc/standin/` load (paths moved into
//!   a temp dir), each node names the other, the units' writable paths match them, and
//!   the agent starts with the example environment.
//! - `cli`: quick checks of what the install walk-through relies on: `init-secret`
//!   creates its directory; `--log-format json`, `STANDIN_LOG_FORMAT`, `STANDIN_LOG`.

mod cli;
mod deb;
mod examples;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace's root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the service crate sits in the workspace")
        .to_path_buf()
}

/// The debug `standin` cargo built for this test.
pub fn standin() -> &'static str {
    env!("CARGO_BIN_EXE_standin")
}

/// Run `command`, panicking with its output unless it exits 0.
pub fn run_ok(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|error| panic!("cannot run {command:?}: {error}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}):\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Whether `program` is on the PATH.
pub fn installed(program: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program}"))
        .output()
        .is_ok_and(|output| output.status.success())
}
