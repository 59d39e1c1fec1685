//! The programs a pair benchmark runs: the `standin` binary (the release build, made
//! first) and the peers it is measured beside (rsync, lsyncd), installed with apt-get
//! when missing.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Outcome;

/// The `standin` binary: `given`, or the one next to this binary, built first (release)
/// when missing or stale.
pub fn standin_binary(given: Option<&Path>) -> Outcome<PathBuf> {
    if let Some(given) = given {
        if !given.exists() {
            return Err(format!("{} not found", given.display()).into());
        }
        return Ok(given.to_path_buf());
    }
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let status = Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "standin"])
        .status()?;
    if !status.success() {
        return Err("cargo build --release -p standin failed".into());
    }
    let exe = std::env::current_exe()?;
    let binary = exe
        .parent()
        .ok_or("no directory for the bench binary")?
        .join("standin");
    if !binary.exists() {
        return Err(format!("{} not found", binary.display()).into());
    }
    Ok(binary)
}

/// rsync on the PATH, installed with apt-get when missing.
pub fn rsync_binary() -> Outcome<PathBuf> {
    find_or_install("rsync", "rsync")
}

/// `program` on the PATH, installed with apt-get (Debian package `package`) when
/// missing.
pub fn find_or_install(program: &str, package: &str) -> Outcome<PathBuf> {
    let find = || {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(program))
                .find(|candidate| candidate.exists())
        })
    };
    if let Some(found) = find() {
        return Ok(found);
    }
    eprintln!("{program} is missing; installing {package} with apt-get ...");
    let _ = Command::new("apt-get").args(["update", "-qq"]).status();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .status()?;
    if !status.success() {
        return Err(format!("apt-get install {package} failed; install it and run again").into());
    }
    find().ok_or_else(|| format!("{program} still not found after installing {package}").into())
}
