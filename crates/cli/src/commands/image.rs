//! `diskless image ...`

use crate::paths;
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use diskless_image::bootstrap::{self, BootstrapConfig, Desktop};
use diskless_image::build::{self, BuildConfig, Compression};
use diskless_image::tidy::TidyOptions;
use diskless_image::Store;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Debootstrap a workstation root into DIR (minbase, a kernel, systemd, udev, ...).
    Bootstrap(BootstrapArgs),
    /// Make a new image version from a root tree (a chroot, or / of this system).
    Build(BuildArgs),
    /// Make a new version of an image with this diskless's boot script and fetch helper.
    Refresh(NameArgs),
    /// List images and their versions.
    List(StoreArgs),
    /// Show an image version's manifest.
    Show(ShowArgs),
    /// Check a version's files against the sizes and sha256 sums of its manifest.
    Verify(ShowArgs),
    /// Make the version before the current one current again.
    Rollback(NameArgs),
    /// Delete old versions, keeping the newest N (and always the current one).
    Prune(PruneArgs),
    /// Copy a version to DIR/images/NAME/VERSION for a static web server, checking each
    /// file's sha256 while copying; an existing different file is never overwritten.
    Export(ExportArgs),
}

#[derive(Args)]
pub struct ExportArgs {
    /// Image name.
    pub name: String,
    /// [VERSION] DIR: the version (default: the current one) and the web root to write into.
    #[arg(value_name = "[VERSION] DIR", num_args = 1..=2, required = true)]
    pub rest: Vec<PathBuf>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args)]
pub struct StoreArgs {
    /// The image store.
    #[arg(long, default_value = paths::DEFAULT_STORE)]
    pub store: PathBuf,
}

#[derive(Args)]
pub struct BootstrapArgs {
    /// Where to create the root tree.
    pub dir: PathBuf,
    /// Debian suite: trixie (Debian 13) or bookworm (12), the releases diskless is tested on.
    #[arg(long, default_value = bootstrap::DEFAULT_SUITE)]
    pub suite: String,
    /// Debian mirror; default: the one in this host's apt sources.
    #[arg(long)]
    pub mirror: Option<String>,
    /// Extra packages to install (repeatable, or comma-separated).
    #[arg(long = "include", value_delimiter = ',')]
    pub include: Vec<String>,
    /// Where downloaded packages are kept between runs.
    #[arg(long, default_value = "/var/cache/diskless/debs")]
    pub cache: PathBuf,
    /// A desktop (its Debian task, display manager, firmware and Xorg drivers); the image
    /// boots to the display manager's greeter. Non-free firmware is added when this host's
    /// apt sources name the non-free-firmware component.
    #[arg(long, value_parser = desktop_name)]
    pub desktop: Option<Desktop>,
}

fn desktop_name(name: &str) -> Result<Desktop, String> {
    name.parse()
}

#[derive(Args)]
pub struct BuildArgs {
    /// The root tree: a chroot directory, or / for this running system. Never modified.
    pub source: PathBuf,
    /// Image name (letters, digits, '-', '_', '.').
    #[arg(long)]
    pub name: String,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Compression: zstd, xz, gzip or lz4.
    #[arg(long, default_value = "zstd")]
    pub compression: Compression,
    /// squashfs block size: a power of two from 4K to 1M (4096, 128K, 1M, ...).
    #[arg(long, value_parser = parse_block_size)]
    pub block_size: Option<u32>,
    /// More paths to leave out, relative to SOURCE (repeatable; wildcards allowed).
    #[arg(long = "exclude")]
    pub exclude: Vec<String>,
    /// mksquashfs processors (default: all cores).
    #[arg(long)]
    pub processors: Option<usize>,
    /// Read SOURCE as a running system even if it is not / (stay on its filesystem, leave
    /// out swap files and runtime state), e.g. another machine's root disk mounted here.
    #[arg(long)]
    pub running_system: bool,
    /// From a running system, keep the files in /home/* and /root (left out by default: the
    /// image is served to anyone on the boot network).
    #[arg(long)]
    pub include_home: bool,
    /// Keep the password hashes of /etc/shadow and /etc/gshadow (replaced by '!' by default:
    /// anyone who downloads the image could try passwords against them offline).
    #[arg(long)]
    pub keep_password_hashes: bool,
    /// The boot server's config, whose state directory and store are left out of the image
    /// (default /etc/diskless/diskless.toml when it exists; without one, the default
    /// directories).
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Args)]
pub struct NameArgs {
    /// Image name.
    pub name: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Args)]
pub struct ShowArgs {
    /// Image name.
    pub name: String,
    /// Version (default: the current one).
    // Not the id "version": that is the propagated --version flag.
    #[arg(id = "image_version", value_name = "VERSION")]
    pub version: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl ShowArgs {
    /// The version asked for, or the current one.
    fn version_in(&self, store: &Store) -> Result<String> {
        match &self.version {
            Some(v) => Ok(v.clone()),
            None => Ok(store.current_version(&self.name)?),
        }
    }
}

#[derive(Args)]
pub struct PruneArgs {
    /// Image name.
    pub name: String,
    /// How many of the newest versions to keep.
    #[arg(long, default_value_t = 3)]
    pub keep: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(cmd: ImageCommand) -> Result<ExitCode> {
    match cmd {
        ImageCommand::Bootstrap(args) => {
            run_bootstrap(&args)?;
        }
        ImageCommand::Build(args) => {
            run_build(&args)?;
        }
        ImageCommand::Refresh(args) => {
            let store = Store::open(&args.store.store)?;
            let report = build::refresh(&store, &args.name, &paths::fetch_helper()?)?;
            println!(
                "{}: new version {} with refreshed boot files",
                args.name, report.manifest.version
            );
        }
        ImageCommand::List(args) => {
            let store = Store::open(&args.store)?;
            for name in store.images()? {
                let current = store.current_version(&name)?;
                println!("{name}");
                for m in store.versions(&name)? {
                    let mark = if m.version == current { "*" } else { " " };
                    println!(
                        "  {mark} {}  {}  kernel {}  {:.1} MiB",
                        m.version,
                        m.created,
                        m.kernel_version,
                        m.squashfs().size as f64 / 1048576.0
                    );
                }
            }
        }
        ImageCommand::Export(args) => {
            let store = Store::open(&args.store.store)?;
            let (version, dir) = match args.rest.as_slice() {
                [dir] => (None, dir),
                [version, dir] => (Some(version.to_string_lossy()), dir),
                _ => unreachable!("clap takes 1 or 2"),
            };
            let done = diskless_image::export::export(&store, &args.name, version.as_deref(), dir)
                .with_context(|| format!("exporting image {}", args.name))?;
            println!(
                "{}: {} copied, {} already there",
                done.dir.display(),
                done.copied.len(),
                done.kept.len()
            );
        }
        ImageCommand::Show(args) => {
            let store = Store::open(&args.store.store)?;
            let version = args.version_in(&store)?;
            let manifest = store.manifest(&args.name, &version)?;
            println!("{}", serde_json::to_string_pretty(&manifest)?);
        }
        ImageCommand::Verify(args) => {
            let store = Store::open(&args.store.store)?;
            let version = args.version_in(&store)?;
            let manifest = store.manifest(&args.name, &version)?;
            manifest
                .verify(&store.version_dir(&args.name, &version))
                .with_context(|| format!("image {} version {version}", args.name))?;
            println!(
                "{} {version}: {} files match the manifest",
                args.name,
                manifest.files.len()
            );
        }
        ImageCommand::Rollback(args) => {
            let store = Store::open(&args.store.store)?;
            let version = store.rollback(&args.name)?;
            println!("{}: current version is now {version}", args.name);
        }
        ImageCommand::Prune(args) => {
            let store = Store::open(&args.store.store)?;
            for v in store.prune(&args.name, args.keep)? {
                println!("removed {} {v}", args.name);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `131072`, `128K`, `1M`: checked when the flags are read, before anything is built.
fn parse_block_size(text: &str) -> std::result::Result<u32, String> {
    let (digits, unit) = match text.strip_suffix(['K', 'k']) {
        Some(d) => (d, 1024),
        None => match text.strip_suffix(['M', 'm']) {
            Some(d) => (d, 1 << 20),
            None => (text, 1),
        },
    };
    let size = digits
        .parse::<u32>()
        .ok()
        .and_then(|n| n.checked_mul(unit))
        .ok_or_else(|| format!("{text:?} is not a size (examples: 131072, 128K, 1M)"))?;
    build::validate_block_size(size).map_err(|e| e.to_string())?;
    Ok(size)
}

pub fn run_bootstrap(args: &BootstrapArgs) -> Result<()> {
    let cfg = BootstrapConfig {
        target: args.dir.clone(),
        suite: args.suite.clone(),
        mirror: args.mirror.clone(),
        cache_dir: Some(args.cache.clone()),
        extra_packages: args.include.clone(),
        desktop: args.desktop,
        non_free_firmware: false,
    };
    let mirror = bootstrap::resolve_mirror(&cfg)?;
    let cfg = BootstrapConfig {
        non_free_firmware: bootstrap::host_offers_non_free_firmware(&mirror),
        ..cfg
    };
    if let Some(desktop) = cfg.desktop {
        eprintln!(
            "diskless: desktop {desktop}, display manager {}; components {}{}",
            desktop.display_manager(),
            cfg.components(),
            if cfg.non_free_firmware {
                ""
            } else {
                " (this host's apt sources do not name non-free-firmware: free firmware only)"
            }
        );
    }
    let started = std::time::Instant::now();
    eprintln!(
        "diskless: bootstrapping {} {} from {mirror} into {}",
        cfg.suite,
        cfg.packages().join(","),
        cfg.target.display()
    );
    match bootstrap::bootstrap(&cfg)
        .with_context(|| format!("bootstrapping {}", cfg.target.display()))?
    {
        bootstrap::Outcome::AlreadyThere => {
            eprintln!("diskless: {} is already bootstrapped", cfg.target.display())
        }
        bootstrap::Outcome::Created => {
            eprintln!(
                "diskless: bootstrapped {} in {:.0} s",
                cfg.target.display(),
                started.elapsed().as_secs_f64()
            )
        }
    }
    Ok(())
}

/// The boot server's state directory and store, to leave out of an image built from a tree
/// that holds them: the state has the report key (whoever has it can forge any client's
/// reports) and the leases; the store would put the images inside the image. A config that
/// cannot be read stops the build: the state could then be anywhere.
fn server_dirs(config: Option<&PathBuf>) -> Result<Vec<PathBuf>> {
    let config = match super::serve::config_path(config) {
        Some(path) => diskless_boot::Config::load(&path).with_context(|| {
            format!(
                "reading {} for the server's state directory, which holds the report key and \
                 must stay out of the image: fix the config, or name the server's with --config",
                path.display()
            )
        })?,
        None => diskless_boot::Config::default(),
    };
    Ok(vec![config.state, config.store])
}

pub fn run_build(args: &BuildArgs) -> Result<diskless_image::Manifest> {
    let store = Store::open(&args.store.store)?;
    let own_paths = server_dirs(args.config.as_ref())?;
    let cfg = BuildConfig {
        source: args.source.clone(),
        name: args.name.clone(),
        compression: args.compression,
        block_size: args.block_size,
        tidy: TidyOptions {
            extra_excludes: args.exclude.clone(),
            running_system: args.running_system,
            include_home: args.include_home,
            keep_password_hashes: args.keep_password_hashes,
            own_paths,
        },
        fetch_helper: paths::fetch_helper()?,
        processors: args.processors,
        progress_bar: std::io::stdout().is_terminal(),
    };
    eprintln!(
        "diskless: building image {} from {}",
        cfg.name,
        cfg.source.display()
    );
    let report =
        build::build(&store, &cfg).with_context(|| format!("building image {}", cfg.name))?;
    let m = &report.manifest;
    for change in &m.changes {
        eprintln!("diskless: in the image only: {change}");
    }
    if !report.secrets.is_empty() {
        eprintln!(
            "diskless: warning: the image still holds what looks like secrets, and anyone on \
             the boot network can download it:"
        );
        for secret in &report.secrets {
            eprintln!("diskless: warning:   {secret}");
        }
    }
    let mib = |bytes: u64| bytes as f64 / 1048576.0;
    let from = match (report.source_bytes, report.ratio()) {
        (Some(source), Some(ratio)) => {
            format!(" from {:.1} MiB (ratio {ratio:.3})", mib(source))
        }
        _ => String::new(),
    };
    eprintln!(
        "diskless: image {} version {}: {} {:.1} MiB{from}, kernel {}, in {:.0} s (mksquashfs {:.0} s): {}",
        m.name,
        m.version,
        m.compression,
        mib(m.squashfs().size),
        m.kernel_version,
        report.total_seconds,
        m.build_seconds,
        report.version_dir.display()
    );
    Ok(report.manifest)
}

/// Warn when an image's boot files (diskless.cpio) come from another diskless build: clients
/// would boot that build's script and helper. Silent when this build's helper is not found.
pub fn warn_if_boot_files_outdated(store: &Store, name: &str) {
    let Ok(helper) = paths::fetch_helper() else {
        return;
    };
    if let Ok(false) = build::boot_files_current(store, name, &helper) {
        eprintln!(
            "diskless: warning: image {name}'s boot script and fetch helper come from another \
             diskless build; `diskless image refresh {name}` gives it this build's"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_sizes_with_units() {
        assert_eq!(parse_block_size("131072"), Ok(131072));
        assert_eq!(parse_block_size("128K"), Ok(131072));
        assert_eq!(parse_block_size("1M"), Ok(1 << 20));
        assert_eq!(parse_block_size("4k"), Ok(4096));
        assert!(parse_block_size("2M").unwrap_err().contains("power of two"));
        assert!(parse_block_size("1000")
            .unwrap_err()
            .contains("power of two"));
        assert!(parse_block_size("big").unwrap_err().contains("not a size"));
        assert!(parse_block_size("9999999M")
            .unwrap_err()
            .contains("not a size"));
    }

    #[derive(clap::Parser)]
    struct Bootstrap {
        #[command(flatten)]
        args: BootstrapArgs,
    }

    #[test]
    fn bootstrap_makes_trixie_unless_told_otherwise() {
        use clap::Parser;
        let default = Bootstrap::try_parse_from(["x", "/srv/roots/t"]).unwrap();
        assert_eq!(default.args.suite, "trixie");
        let old = Bootstrap::try_parse_from(["x", "/srv/roots/b", "--suite", "bookworm"]).unwrap();
        assert_eq!(old.args.suite, "bookworm");
    }
}
