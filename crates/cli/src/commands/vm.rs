//! `diskless vm`: boot a QEMU workstation from our server, as a user would try an image.

use crate::paths;
use anyhow::{bail, Context, Result};
use clap::Args;
use diskless_image::Store;
use diskless_vm::{Firmware, VmConfig};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args, Clone)]
pub struct VmArgs {
    /// Image to boot.
    #[arg(long, default_value = paths::DEFAULT_IMAGE)]
    pub image: String,
    /// The image store.
    #[arg(long, default_value = paths::DEFAULT_STORE)]
    pub store: PathBuf,
    /// Client RAM in MiB.
    #[arg(long, default_value_t = 1024)]
    pub memory: u32,
    /// Client CPUs.
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Give up after this many seconds without reaching multi-user.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Client firmware: bios (SeaBIOS + iPXE ROM) or uefi (OVMF's own PXE).
    #[arg(long, default_value = "bios", value_parser = ["bios", "uefi"])]
    pub firmware: String,
    /// Client MAC address.
    #[arg(long, default_value = "52:54:00:12:34:56")]
    pub mac: String,
    /// Run this command on the client once it is up (repeatable); its output is printed.
    #[arg(long = "run")]
    pub run: Vec<String>,
    /// Extra kernel options for the client.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// RAM disk size for the client (diskless.size=).
    #[arg(long, default_value = "75%")]
    pub size: String,
    /// http or tftp: how the initramfs fetches the image.
    #[arg(long, default_value = "http", value_parser = ["http", "tftp"])]
    pub image_protocol: String,
    /// Do not show the client's console.
    #[arg(long)]
    pub quiet: bool,
    /// Logs (console.log, server.log) go here; default /tmp/diskless-vm-PID.
    #[arg(long)]
    pub log_dir: Option<PathBuf>,
    /// Write the phases and command results as JSON to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
}

pub fn run(args: VmArgs) -> Result<ExitCode> {
    let store = Store::open(&args.store)?;
    let manifest = store.current(&args.image).with_context(|| {
        format!(
            "image {} is not in {}: build it first (diskless demo does)",
            args.image,
            args.store.display()
        )
    })?;
    let pid = std::process::id();
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/diskless-vm-{pid}")));
    std::fs::create_dir_all(&log_dir)?;
    let empty_config = log_dir.join("diskless.toml");
    std::fs::write(&empty_config, "# diskless vm: built-in settings only\n")?;
    let exe = std::env::current_exe()?;
    let tap = "dl0";
    let cmdline = format!(
        "console=ttyS0,115200n8 diskless.autologin=ttyS0 panic=5 {}",
        args.cmdline
    );
    let server: Vec<String> = [
        exe.display().to_string(),
        "serve".into(),
        "--config".into(),
        empty_config.display().to_string(),
        "--interface".into(),
        tap.into(),
        "--store".into(),
        args.store.display().to_string(),
        "--state".into(),
        log_dir.join("state").display().to_string(),
        "--image".into(),
        args.image.clone(),
        "--dhcp-range".into(),
        "10.77.0.100-10.77.0.150".into(),
        "--size".into(),
        args.size.clone(),
        "--image-protocol".into(),
        args.image_protocol.clone(),
        "--cmdline".into(),
        cmdline.trim().to_string(),
    ]
    .into();
    let cfg = VmConfig {
        server,
        namespace: format!("diskless-vm-{pid}"),
        tap: tap.into(),
        server_cidr: "10.77.0.1/24".into(),
        http_port: 80,
        memory_mib: args.memory,
        cpus: args.cpus,
        firmware: if args.firmware == "uefi" {
            Firmware::Uefi
        } else {
            Firmware::Bios
        },
        mac: args.mac.clone(),
        timeout: Duration::from_secs(args.timeout),
        commands: args.run.clone(),
        show_console: !args.quiet,
        log_dir: log_dir.clone(),
    };
    eprintln!(
        "diskless: booting {} {} in QEMU ({} MiB, {}, TCG); logs in {}",
        manifest.name,
        manifest.version,
        args.memory,
        args.firmware,
        log_dir.display()
    );
    diskless_vm::catch_signals();
    let result = diskless_vm::run(&cfg);
    let report = match result {
        Ok(report) => report,
        Err(e) => bail!("{e}\n(console and server logs: {})", log_dir.display()),
    };
    eprintln!();
    eprintln!("diskless: the client reached multi-user. Boot phases (seconds since power-on):");
    for (phase, secs) in &report.phases {
        eprintln!("diskless:   {phase:<14} {secs:6.1}");
    }
    let mut failed = false;
    for c in &report.commands {
        println!("--- {} (exit status {})", c.command, c.status);
        println!("{}", c.output);
        failed |= c.status != 0;
    }
    if let Some(path) = &args.report {
        let json = serde_json::json!({
            "image": manifest.name,
            "version": manifest.version,
            "phases": report.phases.iter().map(|(p, s)| serde_json::json!({"phase": p, "seconds": s})).collect::<Vec<_>>(),
            "commands": report.commands.iter().map(|c| serde_json::json!({"command": c.command, "output": c.output, "status": c.status})).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
