//! `standin quarantine list|show|restore`: what a rejoin kept aside (events this node
//! recorded that never reached the authority), and bringing a file back as a new change
//! on the authoritative node.
//!
//! The quarantine is plain files under `data_dir/quarantine/` on this node, so `list`
//! and `show` read them directly (the node need not run). `restore` sends the file to
//! the authoritative node (this node if it is active, else its `peer_url`), which
//! writes it into its folder; capture records it and it replicates like any change.

pub use standin_engine::clock::utc;
use std::path::PathBuf;

use clap::Subcommand;
use standin_engine::log::quarantine::{list_quarantines, Manifest};

use super::{Failure, Target};
use crate::config::Config;

#[derive(Subcommand, Debug)]
pub enum QuarantineCommand {
    /// Every quarantine of this node: when, how many events, the common point.
    List {
        #[command(flatten)]
        target: Target,
    },
    /// The events of one quarantine (ID as `list` prints it).
    Show {
        #[command(flatten)]
        target: Target,
        id: String,
    },
    /// Bring back the file a quarantined `put` recorded, as a new change on the
    /// authoritative node.
    Restore {
        #[command(flatten)]
        target: Target,
        id: String,
        /// The seq of the quarantined event (see `show`).
        seq: u64,
        /// Restore under another path (relative to the folder).
        #[arg(long)]
        to: Option<String>,
        /// Replace a file that exists there now.
        #[arg(long)]
        overwrite: bool,
    },
}

fn quarantines(target: &Target) -> Result<(Config, Vec<(PathBuf, Manifest)>), Failure> {
    let config = Config::load_for_client(&target.config)?;
    let list =
        list_quarantines(&config.data_dir).map_err(|error| Failure::failed(error.to_string()))?;
    Ok((config, list))
}

fn find(list: &[(PathBuf, Manifest)], id: &str) -> Result<(PathBuf, Manifest), Failure> {
    list.iter()
        .find(|(dir, _)| {
            dir.file_name()
                .is_some_and(|name| name.to_string_lossy() == id)
        })
        .cloned()
        .ok_or_else(|| {
            Failure::usage(format!(
                "no quarantine {id:?}; see `standin quarantine list`"
            ))
        })
}

pub async fn run(command: QuarantineCommand) -> Result<u8, Failure> {
    match command {
        QuarantineCommand::List { target } => {
            let (_, list) = quarantines(&target)?;
            if list.is_empty() {
                println!("no quarantined events");
            }
            for (dir, manifest) in &list {
                let name = dir
                    .file_name()
                    .map(|name| name.to_string_lossy().into_owned())
                    .unwrap_or_default();
                println!(
                    "{name}  {} events after common seq {}  quarantined at {}",
                    manifest.events.len(),
                    manifest.common_seq,
                    utc(manifest.quarantined_at_ms)
                );
            }
            Ok(0)
        }
        QuarantineCommand::Show { target, id } => {
            let (_, list) = quarantines(&target)?;
            let (dir, manifest) = find(&list, &id)?;
            println!("{} (common seq {})", dir.display(), manifest.common_seq);
            for event in &manifest.events {
                println!(
                    "{:>8}  e{}  {:<8} {}{}{}",
                    event.seq,
                    event.epoch,
                    event.kind,
                    event.path,
                    event
                        .to
                        .as_ref()
                        .map(|to| format!(" -> {to}"))
                        .unwrap_or_default(),
                    event
                        .size
                        .map(|size| format!("  {size} bytes"))
                        .unwrap_or_default()
                );
            }
            Ok(0)
        }
        QuarantineCommand::Restore {
            target,
            id,
            seq,
            to,
            overwrite,
        } => {
            let (config, list) = quarantines(&target)?;
            let (dir, manifest) = find(&list, &id)?;
            let event = manifest
                .events
                .iter()
                .find(|event| event.seq == seq)
                .ok_or_else(|| Failure::usage(format!("quarantine {id} has no event {seq}")))?;
            let file = event.file.as_ref().ok_or_else(|| {
                Failure::usage(format!(
                    "event {seq} is a {}, not a file's content",
                    event.kind
                ))
            })?;
            let content = std::fs::read(dir.join(file)).map_err(|error| {
                Failure::failed(format!("{}: {error}", dir.join(file).display()))
            })?;
            let path = to.unwrap_or_else(|| event.path.clone());
            let secret =
                crate::wire::secret::read_secret(&config.secret_file).map_err(Failure::usage)?;
            // The authoritative node: this one if it is active, else its peer.
            let local = config.local_url();
            let mut last_refusal = String::new();
            for url in std::iter::once(local).chain(config.peer_url.clone()) {
                let channel = crate::wire::client::channel(&url, config.tls.as_ref())
                    .map_err(Failure::usage)?;
                let mut client = crate::wire::client::cluster(channel, &secret)
                    .map_err(Failure::usage)?
                    .max_encoding_message_size(crate::wire::client::MAX_MESSAGE_BYTES);
                let request = standin_proto::v1::RestoreFileRequest {
                    path: path.clone(),
                    content: content.clone(),
                    mode: event.mode.unwrap_or(0o644),
                    overwrite,
                };
                match client.restore_file(request).await {
                    Ok(reply) => {
                        println!(
                            "{} (as a new change; it replicates like any other)",
                            reply.into_inner().message
                        );
                        return Ok(0);
                    }
                    Err(status)
                        if status.code() == tonic::Code::FailedPrecondition
                            || status.code() == tonic::Code::Unavailable =>
                    {
                        last_refusal = format!("{url}: {}", status.message());
                    }
                    Err(status) => {
                        return Err(Failure::failed(format!(
                            "{url}: {:?}: {}",
                            status.code(),
                            status.message()
                        )))
                    }
                }
            }
            Err(Failure::failed(format!(
                "no authoritative node took the file ({last_refusal})"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::utc;

    #[test]
    fn quarantine_times_read_as_utc_dates() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        // `date -u -d @1709210096`: a leap day.
        assert_eq!(utc(1_709_210_096_789), "2024-02-29 12:34:56 UTC");
        assert_eq!(utc(951_868_800_000), "2000-03-01 00:00:00 UTC");
        assert_eq!(utc(4_102_444_799_000), "2099-12-31 23:59:59 UTC");
    }
}
