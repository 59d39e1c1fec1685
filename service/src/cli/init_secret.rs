//! `standin init-secret FILE`: a fresh shared secret (mode 0600), its directory
//! created (mode 0750) when missing, so `/etc/standin/pair.secret` works on a bare
//! machine.

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use super::Failure;

pub fn run(file: &Path, force: bool) -> Result<u8, Failure> {
    if let Some(parent) = file
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
    {
        if !parent.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(parent)
                .map_err(|error| {
                    Failure::failed(format!("cannot create {}: {error}", parent.display()))
                })?;
            println!("created {} (mode 0750)", parent.display());
        }
    }
    crate::wire::secret::init_secret(file, force).map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            Failure::usage(format!(
                "{} exists; use --force to replace it",
                file.display()
            ))
        } else {
            Failure::failed(format!("{}: {error}", file.display()))
        }
    })?;
    println!(
        "wrote a new secret to {} (mode 0600); copy it to the other node",
        file.display()
    );
    Ok(0)
}
