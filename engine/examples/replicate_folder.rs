//! Capture a folder, replay it into another, and verify both — the engine end to end,
//! in one process (the service crate does the same between two machines).
//!
//! ```text
//! cargo run --release -p standin-engine --example replicate_folder            # a sample folder
//! cargo run --release -p standin-engine --example replicate_folder -- SRC DST # your own
//! ```
//!
//! `DST` must be empty or absent. Data directories go in a temp dir and are removed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use standin_engine::folder::scan::reconcile;
use standin_engine::folder::verify::verify_folder;
use standin_engine::replay::apply_batch;
use standin_engine::{Change, Repository};

fn main() {
    if let Err(error) = run() {
        eprintln!("error: {error}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let work = tempfile::tempdir()?;
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let (source, replica) = match args.as_slice() {
        [] => {
            let source = work.path().join("server-folder");
            make_sample(&source)?;
            (source, work.path().join("replica"))
        }
        [source, replica] => (source.clone(), replica.clone()),
        _ => return Err("usage: replicate_folder [SRC DST]".into()),
    };
    if replica.exists() && std::fs::read_dir(&replica)?.next().is_some() {
        return Err(format!("{} is not empty", replica.display()).into());
    }
    std::fs::create_dir_all(&replica)?;

    let active = Repository::open(&work.path().join("active-data"))?;
    let started = Instant::now();
    let events = reconcile(&source, &active, 1)?;
    let captured_in = started.elapsed();
    let bytes: u64 = events
        .iter()
        .map(|event| match &event.body.change {
            Change::Put { size, .. } => *size,
            _ => 0,
        })
        .sum();
    println!(
        "captured {} into {} events ({:.1} MB) in {:.2?}; head seq {} digest {}",
        source.display(),
        events.len(),
        bytes as f64 / 1e6,
        captured_in,
        active.head().seq,
        &active.head().digest.to_hex()[..16]
    );

    let passive = Repository::open(&work.path().join("passive-data"))?;
    let started = Instant::now();
    for batch in events.chunks(1024) {
        for event in batch {
            if let Change::Put { chunks, .. } = &event.body.change {
                for hash in passive
                    .chunks()
                    .missing(chunks.iter().map(|chunk| chunk.hash))?
                {
                    passive
                        .chunks()
                        .put_verified(hash, &active.chunks().get(&hash)?)?;
                }
            }
        }
        apply_batch(&replica, &passive, batch)?;
    }
    println!(
        "replayed into {} in {:.2?}",
        replica.display(),
        started.elapsed()
    );

    for (name, folder, repository) in [
        ("source", &source, &active),
        ("replica", &replica, &passive),
    ] {
        let report = verify_folder(folder, repository)?;
        match &report.first_difference {
            None => println!(
                "verify {name}: ok, {} entries, digest {}",
                report.entries_checked,
                &report.disk_digest.to_hex()[..16]
            ),
            Some(difference) => {
                return Err(format!(
                    "verify {name}: {} differs: expected {}, found {}",
                    difference.path, difference.expected, difference.found
                )
                .into())
            }
        }
    }
    Ok(())
}

fn make_sample(root: &Path) -> std::io::Result<()> {
    for dir in ["users", "apps", "logs/2026"] {
        std::fs::create_dir_all(root.join(dir))?;
    }
    for user in ["alice", "bob", "carol"] {
        std::fs::write(
            root.join("users").join(format!("{user}.toml")),
            format!("name = \"{user}\"\n"),
        )?;
    }
    std::fs::write(
        root.join("apps/word.toml"),
        "command = \"winword.exe\"\nusers = [\"alice\"]\n",
    )?;
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|index| (index.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    std::fs::write(root.join("logs/2026/archive.bin"), big)?;
    std::os::unix::fs::symlink("users/alice.toml", root.join("admin.toml"))?;
    Ok(())
}
