//! `diskless initrd`: look inside initrds made of several segments, each
//! plain or compressed (what lsinitramfs/unmkinitramfs do, in one pass and
//! for every segment).

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use diskless_initramfs::listing::{long_line, Names};
use diskless_initramfs::{extract, read_path, EntryKind, ExtractOptions, InitrdReader, Layout};

/// Inspect initrds.
#[derive(Debug, clap::Subcommand)]
pub enum InitrdCommand {
    /// Install the diskless hook and boot script into a root tree and regenerate its initrds,
    /// so one initrd boots boot=diskless (for pxelinux or GRUB).
    Install(super::initrd_install::InstallArgs),
    /// List the entries of every segment, one per line, as lsinitramfs does.
    Ls {
        /// The initrd file.
        file: PathBuf,
        /// Long listing, as `lsinitramfs -l` (mode, links, owner, size, date).
        #[arg(short, long)]
        long: bool,
        /// Print the segment table (offset, compression, entries) instead.
        #[arg(short, long, conflicts_with = "long")]
        segments: bool,
    },
    /// Unpack every segment into DIR, laid out as unmkinitramfs does
    /// (early/, early2/, main/ when there is early microcode).
    Extract {
        /// The initrd file.
        file: PathBuf,
        /// Destination directory (created if missing).
        dir: PathBuf,
        /// Unpack all segments into DIR itself, as the kernel does.
        #[arg(long)]
        merge: bool,
    },
    /// Print the file at PATH, as the booted system would see it (last copy
    /// wins, symlinks followed inside the initrd).
    Cat {
        /// The initrd file.
        file: PathBuf,
        /// Path inside the initrd, e.g. conf/initramfs.conf.
        path: String,
    },
}

/// Runs an `initrd` subcommand.
pub fn run(cmd: InitrdCommand) -> Result<()> {
    let result = match cmd {
        InitrdCommand::Ls {
            file,
            long,
            segments,
        } => ls(&file, long, segments),
        InitrdCommand::Extract { file, dir, merge } => extract_cmd(&file, &dir, merge),
        InitrdCommand::Cat { file, path } => cat(&file, &path),
        InitrdCommand::Install(args) => super::initrd_install::install(&args).map(|_| ()),
    };
    // `diskless initrd ls x | head` is not an error.
    match result {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain()
        .filter_map(|c| c.downcast_ref::<io::Error>())
        .any(|io| io.kind() == io::ErrorKind::BrokenPipe)
}

fn open(file: &Path) -> Result<File> {
    File::open(file).with_context(|| format!("opening {}", file.display()))
}

fn ls(file: &Path, long: bool, segments: bool) -> Result<()> {
    let mut reader = InitrdReader::new(open(file)?);
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(64 * 1024, stdout.lock());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut names = Names::new();
    let context = || format!("reading {}", file.display());
    while let Some(entry) = reader.next_entry().with_context(context)? {
        if segments {
            continue;
        }
        let h = &entry.header;
        if long {
            let target = if h.kind() == EntryKind::Symlink {
                Some(reader.read_data_to_vec().with_context(context)?)
            } else {
                None
            };
            out.write_all(&long_line(h, target.as_deref(), now, &mut names))?;
        } else {
            out.write_all(&h.name)?;
        }
        out.write_all(b"\n")?;
    }
    if segments {
        writeln!(
            out,
            "{:>7}  {:>10}  {:>10}  {:<11}  {:>8}  {:>7}  {:>10}",
            "SEGMENT", "OFFSET", "LENGTH", "COMPRESSION", "ARCHIVES", "ENTRIES", "UNPACKED"
        )?;
        for s in reader.segments() {
            writeln!(
                out,
                "{:>7}  {:>10}  {:>10}  {:<11}  {:>8}  {:>7}  {:>10}",
                s.index,
                s.offset,
                s.end - s.offset,
                s.compression.name(),
                s.archives,
                s.entries,
                s.unpacked
            )?;
        }
    }
    out.flush()?;
    Ok(())
}

fn extract_cmd(file: &Path, dir: &Path, merge: bool) -> Result<()> {
    let opts = ExtractOptions {
        layout: if merge {
            Layout::Merged
        } else {
            Layout::Unmkinitramfs
        },
        ..ExtractOptions::default()
    };
    let input = io::BufReader::new(open(file)?);
    let report = extract(input, dir, &opts)
        .with_context(|| format!("extracting {} into {}", file.display(), dir.display()))?;
    if report.skipped_devices > 0 {
        eprintln!(
            "diskless: {} device node(s) not created (creating them needs root)",
            report.skipped_devices
        );
    }
    Ok(())
}

fn cat(file: &Path, path: &str) -> Result<()> {
    let data = read_path(|| File::open(file), path)
        .with_context(|| format!("reading {path} from {}", file.display()))?;
    let stdout = io::stdout();
    let mut out = stdout.lock();
    out.write_all(&data)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: InitrdCommand,
    }

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_each_subcommand() {
        let c = Cli::parse_from(["x", "ls", "-l", "a.img"]);
        assert!(matches!(
            c.cmd,
            InitrdCommand::Ls {
                long: true,
                segments: false,
                ..
            }
        ));
        let c = Cli::parse_from(["x", "extract", "--merge", "a.img", "out"]);
        assert!(matches!(c.cmd, InitrdCommand::Extract { merge: true, .. }));
        let c = Cli::parse_from(["x", "cat", "a.img", "conf/initramfs.conf"]);
        assert!(
            matches!(c.cmd, InitrdCommand::Cat { ref path, .. } if path == "conf/initramfs.conf")
        );
        assert!(Cli::try_parse_from(["x", "ls", "-l", "-s", "a.img"]).is_err());
    }
}
