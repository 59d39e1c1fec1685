//! `standin generate man|completions DIR` (a parser of its own, in no help): files generated from the command
//! line's definition for the Debian package (`service/packaging/build-deb`): one man
//! page per command (`standin.1`, `standin-serve.1`, ...) and bash, zsh and fish
//! completions (`standin.bash`, `_standin`, `standin.fish`).

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{CommandFactory, Parser, Subcommand};
use clap_complete::Shell;

use super::{Cli, Failure};

/// `standin generate ...`: `cli::main` parses with it when the first argument is
/// `generate`.
#[derive(Parser, Debug)]
#[command(
    name = "standin-generate",
    bin_name = "standin generate",
    about = "Files generated from the command line for packaging: man pages, completions"
)]
pub struct GenerateCli {
    #[command(subcommand)]
    pub command: GenerateCommand,
}

#[derive(Subcommand, Debug)]
pub enum GenerateCommand {
    /// Man pages (roff), one per command, into DIR.
    Man { dir: PathBuf },
    /// Shell completions for bash, zsh and fish into DIR.
    Completions { dir: PathBuf },
}

pub fn run(cli: GenerateCli) -> Result<u8, Failure> {
    match cli.command {
        GenerateCommand::Man { dir } => man(&dir)?,
        GenerateCommand::Completions { dir } => completions(&dir)?,
    }
    Ok(0)
}

fn create(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}

fn man(dir: &Path) -> anyhow::Result<()> {
    create(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
        .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
    println!("wrote man pages to {}", dir.display());
    Ok(())
}

fn completions(dir: &Path) -> anyhow::Result<()> {
    create(dir)?;
    let mut command = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        let path = clap_complete::generate_to(shell, &mut command, "standin", dir)
            .with_context(|| format!("cannot write {shell} completions to {}", dir.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
