//! A loop-mounted XFS image with reflink, for the tests of the clone path (`FICLONE`):
//! made when the test runs as root with `mkfs.xfs` at hand (`.ci/run` installs
//! xfsprogs), unmounted on drop; otherwise the test skips, saying why. Shared by the
//! engine's tests and `tests/consistency` (included there by path).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A loop-mounted XFS image with reflink, unmounted (and its image removed) on drop.
pub struct Xfs {
    _image_dir: tempfile::TempDir,
    pub mount: PathBuf,
}

impl Xfs {
    /// Make and mount one of `bytes` (a sparse image), or say why not.
    pub fn mount(bytes: u64) -> Result<Xfs, String> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("the test does not run as root (mount needs it)".into());
        }
        let image_dir = tempfile::tempdir().map_err(|error| error.to_string())?;
        let image = image_dir.path().join("xfs.img");
        let file = std::fs::File::create(&image).map_err(|error| error.to_string())?;
        file.set_len(bytes).map_err(|error| error.to_string())?;
        drop(file);
        run("mkfs.xfs", &["-q", "-m", "reflink=1"], &image)?;
        let mount = image_dir.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|error| error.to_string())?;
        let output = Command::new("mount")
            .args(["-o", "loop"])
            .arg(&image)
            .arg(&mount)
            .output()
            .map_err(|error| format!("mount: {error}"))?;
        if !output.status.success() {
            return Err(format!(
                "mount -o loop failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(Xfs {
            _image_dir: image_dir,
            mount,
        })
    }
}

fn run(program: &str, args: &[&str], path: &Path) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .arg(path)
        .output()
        .map_err(|error| format!("{program}: {error} (is xfsprogs installed?)"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount")
            .arg(&self.mount)
            .status()
            .is_ok_and(|status| status.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.mount).status();
        }
    }
}

/// A mounted XFS image of 320 MiB, or `None` after saying why the test skips.
pub fn xfs_or_skip(test: &str) -> Option<Xfs> {
    xfs_of_or_skip(test, 320 << 20)
}

/// A mounted XFS image of `bytes`, or `None` after saying why the test skips.
pub fn xfs_of_or_skip(test: &str, bytes: u64) -> Option<Xfs> {
    match Xfs::mount(bytes) {
        Ok(xfs) => Some(xfs),
        Err(why) => {
            eprintln!("{test}: skipped, no loop-mounted XFS: {why}");
            None
        }
    }
}
