//! `diskless vm`: boot a QEMU workstation from our server, as a user would try an image.

use super::name_in_config;
use super::serve::ServeArgs;
use crate::paths;
use anyhow::{bail, Context, Result};
use clap::Args;
use diskless_boot::config::{AddressRange, ImageProtocol, Size};
use diskless_boot::{Mac, Mode};
use diskless_image::Store;
use diskless_vm::{ClientConfig, Firmware, Report, Server, SiteDhcp, VmConfig, VmReport};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
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
    /// HTTP Boot, PXE off), uefi-secureboot (OVMF with Secure Boot enforced, Microsoft keys),
    /// uefi-secureboot-http (the same by HTTP Boot).
    #[arg(long, default_value = "bios", value_parser = firmware_name)]
    pub firmware: Firmware,
    /// Client MAC address; repeat it to boot several clients together on one bridge.
    #[arg(long, default_value = "52:54:00:12:34:56", value_parser = clap::value_parser!(Mac))]
    pub mac: Vec<Mac>,
    /// full: our server hands out addresses; proxy: dnsmasq does, as a site's DHCP server
    /// would, and our server answers only the boot questions.
    #[arg(long, default_value = "full", value_parser = super::config_name::<Mode>)]
    pub mode: Mode,
    /// A site config for the server ([[client]] entries, [boot], ...); the vm's network,
    /// store, image, size and cmdline flags override its keys.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Drop this percentage of the packets the server receives, at random (nftables).
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub loss: u8,
    /// Kill the server once the image download is under way (diskless.fetch=lazy: once the
    /// root is served from the network, while the RAM copy fills) and start it again 3 s
    /// later: the client has to resume the download.
    #[arg(long)]
    pub restart_server_during_fetch: bool,
    /// The port of the client with this MAC drops multicast (repeatable): every UDP datagram
    /// to 224.0.0.0/4 on its way to it is dropped (nftables, a netdev egress hook on its
    /// tap), as on a switch port that does not carry the group. With [multicast] on, its
    /// image comes by HTTP.
    #[arg(long, value_name = "MAC", value_parser = clap::value_parser!(Mac))]
    pub block_multicast: Vec<Mac>,
    /// The port of the client with this MAC is slow once its image download starts (its boot
    /// files come at full speed): what reaches it is limited to RATE (tc's units, e.g. 2mbit;
    /// a tbf on its tap), as MAC=RATE (repeatable). E.g. a lazy seat whose RAM copy must
    /// still be filling when it reaches multi-user.
    #[arg(long, value_name = "MAC=RATE", value_parser = mac_and_rate)]
    pub limit_rate: Vec<(Mac, String)>,
    /// Once the client with this MAC reaches multi-user, power it off from its console
    /// (`systemctl poweroff`, after listing its root-storage daemons) instead of running the
    /// --run commands on it (repeatable). Its boot is done when its kernel says "reboot: Power
    /// down" or QEMU exits; a shutdown that hangs past --timeout fails.
    #[arg(long, value_name = "MAC", value_parser = clap::value_parser!(Mac))]
    pub power_off: Vec<Mac>,
    /// Run this command on the client once it is up (repeatable); its output is printed.
    #[arg(long = "run")]
    pub run: Vec<String>,
    /// Extra kernel options for the client.
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// RAM disk size for the client (diskless.size=).
    #[arg(long, default_value = "75%")]
    pub size: Size,
    /// http or tftp: how the initramfs fetches the image.
    #[arg(long, default_value = "http", value_parser = super::config_name::<ImageProtocol>)]
    pub image_protocol: ImageProtocol,
    /// Do not show the client's console.
    #[arg(long)]
    pub quiet: bool,
    /// Logs (console.log, server.log, and metrics.txt: the server's /metrics once the clients
    /// are done) go here; default /tmp/diskless-vm-PID.
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

/// `MAC=RATE` of `--limit-rate`: a MAC and a rate in tc's units (digits, a unit: 10mbit).
fn mac_and_rate(text: &str) -> Result<(Mac, String), String> {
    let (mac, rate) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: MAC=RATE expected, e.g. 52:54:00:00:00:03=10mbit"))?;
    let mac = mac.parse::<Mac>().map_err(|e| format!("{mac:?}: {e}"))?;
    let digits = rate.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!(
            "{rate:?}: a rate in tc's units expected, e.g. 10mbit"
        ));
    }
    Ok((mac, rate.to_string()))
}

/// The address of `host` on the vm's network, 10.77.0.0/24 (inside its own namespace).
fn vm_address(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 77, 0, host)
}

/// The server's address on the vm's network.
const SERVER_HOST: u8 = 1;
/// The first and last address of the clients' pool, whoever hands them out.
const POOL: (u8, u8) = (100, 150);

/// The clients' pool on the vm's network.
fn pool() -> AddressRange {
    AddressRange {
        first: vm_address(POOL.0),
        last: vm_address(POOL.1),
    }
}

/// The command that starts the vm's server: `diskless serve` on `interface` with the vm's
/// settings, or `--server-command`; and the address of its admin listener, if it has one
/// (`--server-command` has none we know of).
fn server_argv(
    args: &VmArgs,
    config: PathBuf,
    interface: &str,
    log_dir: &Path,
) -> Result<(Vec<String>, Option<SocketAddr>)> {
    if let Some(command) = &args.server_command {
        if args.mode != Mode::Full {
            bail!("--server-command is the network's only server: it cannot run in proxy mode");
        }
        // The command's own arguments, then the interface, address and log directory; exec,
        // so the SIGTERM that stops the server reaches the command itself.
        let argv = vec![
            "sh".into(),
            "-c".into(),
            format!("exec {command} \"$@\""),
            "diskless-vm-server".into(),
            interface.into(),
            vm_address(SERVER_HOST).to_string(),
            log_dir.display().to_string(),
        ];
        return Ok((argv, None));
    }
    let cmdline = format!(
        "console=ttyS0,115200n8 diskless.autologin=ttyS0 panic=5 {}",
        args.cmdline
    );
    let serve = ServeArgs {
        config: Some(config),
        interface: Some(interface.into()),
        mode: Some(args.mode),
        store: Some(args.store.clone()),
        state: Some(log_dir.join("state")),
        image: Some(args.image.clone()),
        dhcp_range: Some(pool()),
        size: Some(args.size.clone()),
        image_protocol: Some(args.image_protocol),
        cmdline: Some(cmdline.trim().to_string()),
        // A throwaway server for one VM, in a namespace of its own, over a store and logs
        // that may sit in private (0700) directories: it stays root.
        user: "root".into(),
        // A Secure Boot machine runs only signed binaries: the server hands it Debian's shim
        // and GRUB instead of iPXE (which OVMF refuses: "Access Denied").
        secure_boot: args.firmware.secure_boot(),
        ..ServeArgs::default()
    };
    // The server's own reading of the config and flags: where its admin listener will be.
    let admin = super::serve::resolve(&serve)
        .context("the vm's server config")?
        .admin_addr();
    let exe = std::env::current_exe()?;
    let mut argv = vec![exe.display().to_string(), "serve".into()];
    argv.extend(serve.to_args());
    Ok((argv, admin))
}

/// Each client's phases on stderr, its commands' output on stdout; whether a command failed.
fn print_results(report: &VmReport) -> bool {
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
        for phase in &client.phases {
            eprintln!("diskless:   {:<16} {:6.1}", phase.phase, phase.seconds);
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
    failed
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
    let taps: Vec<String> = (0..args.mac.len()).map(|i| format!("dl{i}")).collect();
    // One client sits on its tap; several share a bridge, as machines share a lab switch.
    let interface = if taps.len() == 1 {
        taps[0].clone()
    } else {
        "dlbr0".to_string()
    };
    let (server, admin) = server_argv(&args, config, &interface, &log_dir)?;
    for (flag, macs) in [
        ("--block-multicast", args.block_multicast.clone()),
        ("--power-off", args.power_off.clone()),
        (
            "--limit-rate",
            args.limit_rate.iter().map(|(mac, _)| *mac).collect(),
        ),
    ] {
        if let Some(mac) = macs.iter().find(|m| !args.mac.contains(m)) {
            bail!("{flag} {mac}: no client has that MAC (--mac)");
        }
    }
    let firmware = args.firmware;
    let clients = args
        .mac
        .iter()
        .zip(&taps)
        .map(|(mac, tap)| ClientConfig {
            mac: *mac,
            tap: tap.clone(),
            memory_mib: args.memory,
            cpus: args.cpus,
            firmware,
            disks: args.disks.clone(),
            display: args.display || !args.screendump.is_empty(),
            block_multicast: args.block_multicast.contains(mac),
            rate_limit: args
                .limit_rate
                .iter()
                .find(|(m, _)| m == mac)
                .map(|(_, rate)| rate.clone()),
            power_off: args.power_off.contains(mac),
        })
        .collect();
    let cfg = VmConfig {
        server: Server::Command(server),
        namespace: format!("diskless-vm-{pid}"),
        interface,
        server_cidr: format!("{}/24", vm_address(SERVER_HOST)),
        http_port: 80,
        tftp_port: 69,
        clients,
        timeout: Duration::from_secs(args.timeout),
        commands: args.run.clone(),
        show_console: !args.quiet,
        log_dir: log_dir.clone(),
        site_dhcp: (args.mode == Mode::Proxy).then(|| SiteDhcp { range: pool() }),
        loss_percent: args.loss,
        restart_server_during_fetch: args
            .restart_server_during_fetch
            .then_some(Duration::from_secs(3)),
        screendumps: args.screendump.clone(),
        metrics: admin,
    };
    eprintln!(
        "diskless: booting {} {} in QEMU ({} client(s), {} MiB, {}, {} mode, TCG); logs in {}",
        manifest.name,
        manifest.version,
        args.mac.len(),
        args.memory,
        args.firmware,
        name_in_config(&args.mode),
        log_dir.display()
    );
    diskless_vm::catch_signals();
    let result = diskless_vm::run(&cfg);
    let report = match result {
        Ok(report) => report,
        Err(e) => bail!("{e}\n(console and server logs: {})", log_dir.display()),
    };
    let failed = print_results(&report);
    if let Some(path) = &args.report {
        let report = Report {
            image: manifest.name.clone(),
            version: manifest.version.clone(),
            firmware: args.firmware,
            mode: args.mode,
            tftp_requests: report.tftp_requests,
            clients: report.clients,
        };
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::config_name;

    #[test]
    fn mode_and_image_protocol_go_by_the_site_configs_names() {
        for (name, mode) in [("full", Mode::Full), ("proxy", Mode::Proxy)] {
            assert_eq!(config_name::<Mode>(name), Ok(mode));
            assert_eq!(name_in_config(&mode), name);
        }
        for (name, protocol) in [("http", ImageProtocol::Http), ("tftp", ImageProtocol::Tftp)] {
            assert_eq!(config_name::<ImageProtocol>(name), Ok(protocol));
            assert_eq!(name_in_config(&protocol), name);
        }
        let (mac, rate) = mac_and_rate("52:54:00:00:00:03=10mbit").unwrap();
        assert_eq!(
            (mac.to_string().as_str(), rate.as_str()),
            ("52:54:00:00:00:03", "10mbit")
        );
        for bad in [
            "52:54:00:00:00:03",
            "x=10mbit",
            "52:54:00:00:00:03=fast",
            "52:54:00:00:00:03=1;0",
        ] {
            assert!(mac_and_rate(bad).is_err(), "{bad}");
        }
        let wrong = config_name::<Mode>("Proxy").unwrap_err();
        assert!(
            wrong.contains("Proxy") && wrong.contains("proxy"),
            "{wrong}"
        );
    }
}
