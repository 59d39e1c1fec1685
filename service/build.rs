//! The build's identity, shown by `standin status` and `standin_build_info`: the
//! `STANDIN_BUILD` environment variable when the build sets it (a package build), else
//! the source's git commit, else "unknown". Rerun when either changes.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let text = String::from_utf8(output.stdout).ok()?.trim().to_string();
    (output.status.success() && !text.is_empty()).then_some(text)
}

/// Watch a file git keeps (relative paths are git's, from `dir`), if it exists: a
/// missing file would make cargo rerun this script on every build.
fn watch(dir: &Path, git_path: &str) {
    let path = dir.join(git_path);
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn commit(dir: &Path) -> Option<String> {
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    if let Some(head) = git(dir, &["rev-parse", "--git-path", "HEAD"]) {
        watch(dir, &head);
    }
    if let Some(reference) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        if let Some(path) = git(dir, &["rev-parse", "--git-path", &reference]) {
            watch(dir, &path);
        }
    }
    if let Some(packed) = git(dir, &["rev-parse", "--git-path", "packed-refs"]) {
        watch(dir, &packed);
    }
    Some(commit)
}

fn main() {
    println!("cargo:rerun-if-env-changed=STANDIN_BUILD");
    let dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let build = std::env::var("STANDIN_BUILD")
        .ok()
        .filter(|build| !build.is_empty())
        .or_else(|| commit(&dir))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=STANDIN_BUILD={build}");
}
