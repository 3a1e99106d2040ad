//! `diskless vm`: boot a QEMU workstation from our server, as a user would try an image.

use crate::paths;
use anyhow::{bail, Context, Result};
use clap::Args;
use diskless_image::Store;
use diskless_vm::{ClientConfig, ClientReport, Firmware, Server, SiteDhcp, VmConfig};
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
    /// Client firmware: bios (SeaBIOS + iPXE ROM), uefi (OVMF's own PXE), uefi-http (OVMF's
    /// HTTP Boot, PXE off), uefi-secureboot (OVMF with Secure Boot enforced, Microsoft keys).
    #[arg(long, default_value = "bios", value_parser = firmware_name)]
    pub firmware: Firmware,
    /// Client MAC address; repeat it to boot several clients together on one bridge.
    #[arg(long, default_value = "52:54:00:12:34:56")]
    pub mac: Vec<String>,
    /// full: our server hands out addresses; proxy: dnsmasq does, as a site's DHCP server
    /// would, and our server answers only the boot questions.
    #[arg(long, default_value = "full", value_parser = ["full", "proxy"])]
    pub mode: String,
    /// A site config for the server ([[client]] entries, [boot], ...); the vm's network,
    /// store, image, size and cmdline flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Drop this percentage of the packets the server receives, at random (nftables).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub loss: u8,
    /// Kill the server once the image download is under way and start it again 3 s later:
    /// the client has to resume the download.
    #[arg(long)]
    pub restart_server_during_fetch: bool,
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
    /// Attach this raw disk image to the client (repeatable): an image on a local disk
    /// (diskless.image=dev:LABEL=...), a persistent writable layer (diskless.upper=).
    #[arg(long = "disk")]
    pub disks: Vec<PathBuf>,
    /// Give the client a VGA display (not shown: read it with --screendump), for a desktop
    /// image's display manager.
    #[arg(long)]
    pub display: bool,
    /// Once the --run commands ran, save the first client's display to FILE (repeatable; PNG
    /// for a .png name, else PPM). Implies --display.
    #[arg(long, value_name = "FILE")]
    pub screendump: Vec<PathBuf>,
    /// Run this shell command in the namespace instead of `diskless serve`: another boot
    /// server to compare with (scripts/bench-boot's reference chain). The interface, the
    /// server's address (10.77.0.1) and the log directory are appended to it; it must answer HTTP
    /// on port 80, and is stopped with SIGTERM. The client's console marks the phases the same
    /// way.
    #[arg(long, conflicts_with_all = ["config", "restart_server_during_fetch"])]
    pub server_command: Option<String>,
}

fn firmware_name(name: &str) -> Result<Firmware, String> {
    name.parse()
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
    super::image::warn_if_boot_files_outdated(&store, &args.image);
    let pid = std::process::id();
    let log_dir = args
        .log_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/tmp/diskless-vm-{pid}")));
    std::fs::create_dir_all(&log_dir)?;
    let config = match &args.config {
        Some(path) => path.clone(),
        None => {
            let empty = log_dir.join("diskless.toml");
            std::fs::write(&empty, "# diskless vm: built-in settings only\n")?;
            empty
        }
    };
    let exe = std::env::current_exe()?;
    let taps: Vec<String> = (0..args.mac.len()).map(|i| format!("dl{i}")).collect();
    // One client sits on its tap; several share a bridge, as machines share a lab switch.
    let interface = if taps.len() == 1 {
        taps[0].clone()
    } else {
        "dlbr0".to_string()
    };
    let cmdline = format!(
        "console=ttyS0,115200n8 diskless.autologin=ttyS0 panic=5 {}",
        args.cmdline
    );
    let mut server: Vec<String> = [
        exe.display().to_string(),
        "serve".into(),
        "--config".into(),
        config.display().to_string(),
        "--interface".into(),
        interface.clone(),
        "--mode".into(),
        args.mode.clone(),
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
        // A throwaway server for one VM, in a namespace of its own, over a store and logs
        // that may sit in private (0700) directories: it stays root.
        "--user".into(),
        "root".into(),
    ]
    .into();
    // A Secure Boot machine runs only signed binaries: the server hands it Debian's shim and
    // GRUB instead of iPXE (which OVMF refuses: "Access Denied").
    if args.firmware == Firmware::SecureBoot {
        server.push("--secure-boot".into());
    }
    let firmware = args.firmware;
    let clients = args
        .mac
        .iter()
        .zip(&taps)
        .map(|(mac, tap)| ClientConfig {
            mac: mac.clone(),
            tap: tap.clone(),
            memory_mib: args.memory,
            cpus: args.cpus,
            firmware,
            disks: args.disks.clone(),
            display: args.display || !args.screendump.is_empty(),
        })
        .collect();
    if let Some(command) = &args.server_command {
        if args.mode != "full" {
            bail!("--server-command is the network's only server: it cannot run in proxy mode");
        }
        // The command's own arguments, then the interface, address and log directory; exec,
        // so the SIGTERM that stops the server reaches the command itself.
        let script = format!("exec {command} \"$@\"");
        server = [
            "sh",
            "-c",
            &script,
            "diskless-vm-server",
            &interface,
            "10.77.0.1",
        ]
        .map(str::to_string)
        .into();
        server.push(log_dir.display().to_string());
    }
    let cfg = VmConfig {
        server: Server::Command(server),
        namespace: format!("diskless-vm-{pid}"),
        interface,
        server_cidr: "10.77.0.1/24".into(),
        http_port: 80,
        tftp_port: 69,
        clients,
        timeout: Duration::from_secs(args.timeout),
        commands: args.run.clone(),
        show_console: !args.quiet,
        log_dir: log_dir.clone(),
        site_dhcp: (args.mode == "proxy").then(|| SiteDhcp {
            range: ("10.77.0.100".into(), "10.77.0.150".into()),
        }),
        loss_percent: args.loss,
        restart_server_during_fetch: args
            .restart_server_during_fetch
            .then_some(Duration::from_secs(3)),
        screendumps: args.screendump.clone(),
    };
    eprintln!(
        "diskless: booting {} {} in QEMU ({} client(s), {} MiB, {}, {} mode, TCG); logs in {}",
        manifest.name,
        manifest.version,
        args.mac.len(),
        args.memory,
        args.firmware,
        args.mode,
        log_dir.display()
    );
    diskless_vm::catch_signals();
    let result = diskless_vm::run(&cfg);
    let report = match result {
        Ok(report) => report,
        Err(e) => bail!("{e}\n(console and server logs: {})", log_dir.display()),
    };
    let many = report.clients.len() > 1;
    eprintln!();
    let mut failed = false;
    for client in &report.clients {
        let who = if many {
            format!("client {}", client.mac)
        } else {
            "the client".to_string()
        };
        eprintln!("diskless: {who} reached multi-user. Boot phases (seconds since power-on):");
        for (phase, secs) in &client.phases {
            eprintln!("diskless:   {phase:<16} {secs:6.1}");
        }
        for c in &client.commands {
            if many {
                println!(
                    "--- {}: {} (exit status {})",
                    client.mac, c.command, c.status
                );
            } else {
                println!("--- {} (exit status {})", c.command, c.status);
            }
            println!("{}", c.output);
            failed |= c.status != 0;
        }
    }
    eprintln!(
        "diskless: TFTP requests the server received: {}",
        report.tftp_requests
    );
    if let Some(path) = &args.report {
        let phases = |c: &ClientReport| {
            c.phases
                .iter()
                .map(|(p, s)| serde_json::json!({"phase": p, "seconds": s}))
                .collect::<Vec<_>>()
        };
        let commands = |c: &ClientReport| {
            c.commands
                .iter()
                .map(|c| serde_json::json!({"command": c.command, "output": c.output, "status": c.status}))
                .collect::<Vec<_>>()
        };
        let first = &report.clients[0];
        let json = serde_json::json!({
            "image": manifest.name,
            "version": manifest.version,
            "firmware": args.firmware.as_str(),
            "mode": args.mode,
            // Read requests to the server's TFTP port (an nftables counter): 0, nothing went
            // over TFTP.
            "tftp_requests": report.tftp_requests,
            // The first client's, as before there could be several.
            "phases": phases(first),
            "commands": commands(first),
            "clients": report.clients.iter().map(|c| serde_json::json!({
                "mac": c.mac,
                "phases": phases(c),
                "commands": commands(c),
            })).collect::<Vec<_>>(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
