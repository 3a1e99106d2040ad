//! `diskless generate`: the man pages and shell completions, made from the command-line
//! definition itself when the package is built (scripts/package), so they always match the
//! binary. Hidden from `--help`: it is for packagers.

use anyhow::{Context, Result};
use clap::Subcommand;
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum GenerateCommand {
    /// Write a man page per subcommand into DIR (diskless.1, diskless-serve.1,
    /// diskless-image-build.1, ...), uncompressed.
    Man {
        /// The directory the pages go to (created if missing).
        dir: PathBuf,
    },
    /// Print the completion script for SHELL on stdout.
    Complete {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// `cli` is the whole command line (`diskless` and its subcommands).
pub fn run(cmd: GenerateCommand, cli: clap::Command) -> Result<()> {
    match cmd {
        GenerateCommand::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(cli, &dir)
                .with_context(|| format!("writing man pages to {}", dir.display()))
        }
        GenerateCommand::Complete { shell } => {
            let mut cli = cli;
            let name = cli.get_name().to_string();
            clap_complete::generate(shell, &mut cli, name, &mut std::io::stdout());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli() -> clap::Command {
        clap::Command::new("diskless")
            .about("Boot workstations")
            .subcommand(clap::Command::new("serve").about("Run the server"))
            .subcommand(
                clap::Command::new("image")
                    .about("Images")
                    .subcommand(clap::Command::new("build").about("Build one")),
            )
            .subcommand(clap::Command::new("generate").hide(true))
    }

    #[test]
    fn a_page_per_visible_subcommand_and_none_for_hidden_ones() {
        let dir = tempfile::tempdir().unwrap();
        run(
            GenerateCommand::Man {
                dir: dir.path().join("man1"),
            },
            cli(),
        )
        .unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(dir.path().join("man1"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        assert_eq!(
            pages,
            [
                "diskless-image-build.1",
                "diskless-image.1",
                "diskless-serve.1",
                "diskless.1"
            ]
        );
        let serve = std::fs::read_to_string(dir.path().join("man1/diskless-serve.1")).unwrap();
        assert!(serve.contains("Run the server"), "{serve}");
    }
}
