//! `diskless initrd install`: make a root tree's own initrd boot `boot=diskless` by itself.

use crate::paths;
use anyhow::{Context, Result};
use clap::Args;
use diskless_image::initrd_install::{self, InstallOptions};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Debug)]
pub struct InstallArgs {
    /// The root tree (a chroot made by `diskless image bootstrap`, or / for this system).
    #[arg(long)]
    pub root: PathBuf,
    /// Only install the files; do not run update-initramfs.
    #[arg(long)]
    pub no_update: bool,
}

pub fn install(args: &InstallArgs) -> Result<ExitCode> {
    let opts = InstallOptions {
        root: args.root.clone(),
        fetch_helper: paths::fetch_helper()?,
        update: !args.no_update,
    };
    eprintln!(
        "diskless: installing the boot=diskless hook into {}",
        opts.root.display()
    );
    let done = initrd_install::install(&opts)
        .with_context(|| format!("installing the diskless hook into {}", opts.root.display()))?;
    for file in &done.files {
        eprintln!("diskless: installed {}", file.display());
    }
    if opts.update {
        for initrd in &done.initrds {
            eprintln!(
                "diskless: {} boots boot=diskless (its modules, /scripts/diskless and \
                 /diskless/bin/diskless-fetch are inside)",
                initrd.display()
            );
        }
    } else {
        eprintln!("diskless: run update-initramfs -u -k all in the tree to regenerate its initrds");
    }
    Ok(ExitCode::SUCCESS)
}
