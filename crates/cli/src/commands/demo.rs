//! `diskless demo`: the whole path on built-in defaults.

use super::image::{run_bootstrap, run_build, BootstrapArgs, BuildArgs, StoreArgs};
use super::vm::VmArgs;
use crate::paths;
use anyhow::Result;
use clap::Args;
use diskless_image::bootstrap;
use diskless_image::build::{self, Compression};
use diskless_image::Store;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct DemoArgs {
    /// The image store.
    #[arg(long, default_value = paths::DEFAULT_STORE)]
    pub store: PathBuf,
    /// Downloads and the bootstrapped tree are kept here between runs.
    #[arg(long, default_value = paths::DEFAULT_CACHE)]
    pub cache: PathBuf,
    /// Debian suite of the image.
    #[arg(long, default_value = bootstrap::DEFAULT_SUITE)]
    pub suite: String,
    /// Build a new image version even if the store has one.
    #[arg(long)]
    pub rebuild: bool,
    /// Client RAM in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Give up after this many seconds without reaching multi-user.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
}

pub fn run(args: DemoArgs) -> Result<ExitCode> {
    let name = args.suite.clone();
    let store = Store::open(&args.store)?;
    if args.rebuild || store.current(&name).is_err() {
        let root = args.cache.join("roots").join(&args.suite);
        run_bootstrap(&BootstrapArgs {
            dir: root.clone(),
            suite: args.suite.clone(),
            mirror: None,
            include: vec![],
            cache: args.cache.join("debs"),
            desktop: None,
        })?;
        run_build(&BuildArgs {
            source: root,
            name: name.clone(),
            store: StoreArgs {
                store: args.store.clone(),
            },
            compression: Compression::Zstd,
            block_size: None,
            exclude: vec![],
            processors: None,
            running_system: false,
            include_home: false,
            keep_password_hashes: false,
            config: None,
        })?;
    } else {
        eprintln!(
            "diskless: using image {name} from {} (--rebuild makes a new one)",
            args.store.display()
        );
        // An image made by another diskless build carries that build's boot script and helper.
        let helper = paths::fetch_helper()?;
        if !build::boot_files_current(&store, &name, &helper)? {
            let report = build::refresh(&store, &name, &helper)?;
            eprintln!(
                "diskless: its boot files came from another diskless build: refreshed them \
                 (new version {})",
                report.manifest.version
            );
        }
    }
    super::vm::run(VmArgs {
        image: name,
        store: args.store,
        memory: args.memory,
        cpus: 2,
        timeout: args.timeout,
        firmware: diskless_vm::Firmware::Bios,
        mac: vec!["52:54:00:12:34:56".parse().expect("a MAC address")],
        mode: diskless_boot::Mode::Full,
        config: None,
        loss: 0,
        restart_server_during_fetch: false,
        block_multicast: vec![],
        limit_rate: vec![],
        power_off: vec![],
        run: vec![],
        cmdline: String::new(),
        size: diskless_boot::config::Size::default(),
        image_protocol: diskless_boot::config::ImageProtocol::Http,
        quiet: false,
        log_dir: None,
        report: None,
        disks: vec![],
        display: false,
        screendump: vec![],
        server_command: None,
    })
}
