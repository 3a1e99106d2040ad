//! `diskless serve`: the config file, overridden by flags, then the server until Ctrl-C.
//!
//! Under systemd (`Type=notify`) it says READY=1 once every socket is bound, and SIGHUP
//! (`systemctl reload diskless`) re-reads the config and hands the new site to the running
//! server: [[client]] entries and the default image change for the next requests, leases and
//! transfers under way are kept.
//!
//! Started by hand as root it first becomes the service user, `diskless` (`--user` another),
//! with only the capabilities the server needs (CAP_NET_RAW only for router advertisements),
//! then binds its sockets: see [`crate::privileges`]. Under systemd it already is that user
//! and only gives up CAP_NET_RAW when `ipv6_ra` is off.

use anyhow::{Context, Result};
use clap::Args;
use diskless_boot::config::{
    self, AddressRange, AdminListen, Config, ImageProtocol, Mode, Size, UnknownClients,
};
use diskless_boot::routes::IPXE_DIR;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct ServeArgs {
    /// Config file; default /etc/diskless/diskless.toml when it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Interface to serve on (config: interface).
    #[arg(long)]
    pub interface: Option<String>,
    /// Image store (config: store).
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Leases and client records (config: state).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// full: hand out addresses; proxy: beside another DHCP server (config: mode).
    #[arg(long, value_parser = super::config_name::<Mode>)]
    pub mode: Option<Mode>,
    /// DHCP pool FIRST-LAST, full mode (config: dhcp.range).
    #[arg(long)]
    pub dhcp_range: Option<AddressRange>,
    /// Image clients boot by default (config: boot.image).
    #[arg(long, value_parser = checked(config::check_image_name))]
    pub image: Option<String>,
    /// boot or ignore clients without a [[client]] entry (config: boot.unknown_clients).
    #[arg(long, value_parser = super::config_name::<UnknownClients>)]
    pub unknown_clients: Option<UnknownClients>,
    /// Extra kernel options for every client (config: boot.cmdline).
    #[arg(long, value_parser = checked(config::check_cmdline))]
    pub cmdline: Option<String>,
    /// Each client's RAM disk size, e.g. 75% or 4G (config: boot.size).
    #[arg(long)]
    pub size: Option<Size>,
    /// http or tftp: how clients fetch the image (config: boot.image_protocol).
    #[arg(long, value_parser = super::config_name::<ImageProtocol>)]
    pub image_protocol: Option<ImageProtocol>,
    /// HTTP port (config: http_port).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub http_port: Option<u16>,
    /// TFTP port (config: tftp_port).
    #[arg(long)]
    pub tftp_port: Option<u16>,
    /// iPXE binary for UEFI clients: ipxe.efi or snponly.efi (config: ipxe.uefi).
    #[arg(long, value_parser = checked(config::check_ipxe_file))]
    pub uefi_file: Option<String>,
    /// Dashboard and /metrics: ADDR:PORT, or off (config: admin_listen).
    #[arg(long)]
    pub admin_listen: Option<AdminListen>,
    /// UEFI PXE and HTTP Boot clients boot through Debian's signed shim and GRUB, for Secure Boot
    /// (config: boot.secure_boot).
    #[arg(long)]
    pub secure_boot: bool,
    /// Started as root: the user to become before binding, keeping only CAP_NET_BIND_SERVICE
    /// (and CAP_NET_RAW unless ipv6_ra is off); the state directory becomes its own. `root`
    /// keeps root (not recommended). Not used when not started as root (systemd starts it as
    /// its user).
    #[arg(long, value_name = "NAME", default_value = crate::privileges::SERVICE_USER)]
    pub user: String,
    /// Check the config (file and flags) and exit: 0 when it is valid, 1 with FILE:LINE:
    /// reason when not.
    #[arg(long)]
    pub check: bool,
}

impl ServeArgs {
    /// The command line that gives these arguments (after `diskless serve`), for a server
    /// started as a child (`diskless vm`).
    pub fn to_args(&self) -> Vec<String> {
        use super::name_in_config;
        let mut args = Vec::new();
        // `--flag=VALUE`: a value that starts with `-` (kernel options may) stays a value.
        let mut flag = |name: &str, value: Option<String>| {
            if let Some(value) = value {
                args.push(format!("--{name}={value}"));
            }
        };
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        flag("config", path(&self.config));
        flag("interface", self.interface.clone());
        flag("store", path(&self.store));
        flag("state", path(&self.state));
        flag("mode", self.mode.as_ref().map(name_in_config));
        flag("dhcp-range", self.dhcp_range.map(|r| r.to_string()));
        flag("image", self.image.clone());
        flag(
            "unknown-clients",
            self.unknown_clients.as_ref().map(name_in_config),
        );
        flag("cmdline", self.cmdline.clone());
        flag("size", self.size.as_ref().map(Size::to_string));
        flag(
            "image-protocol",
            self.image_protocol.as_ref().map(name_in_config),
        );
        flag("http-port", self.http_port.map(|p| p.to_string()));
        flag("tftp-port", self.tftp_port.map(|p| p.to_string()));
        flag("uefi-file", self.uefi_file.clone());
        flag("admin-listen", self.admin_listen.map(|a| a.to_string()));
        flag("user", Some(self.user.clone()).filter(|u| !u.is_empty()));
        for (name, set) in [("secure-boot", self.secure_boot), ("check", self.check)] {
            if set {
                args.push(format!("--{name}"));
            }
        }
        args
    }
}

/// A flag's value checked by the rule of its config key.
fn checked(
    rule: fn(&str) -> Result<(), String>,
) -> impl Fn(&str) -> Result<String, String> + Clone {
    move |value| rule(value).map(|()| value.to_string())
}

/// The config file: `--config` (`explicit`), or the default one when it exists.
pub fn config_path(explicit: Option<&PathBuf>) -> Option<PathBuf> {
    explicit.cloned().or_else(|| {
        let default = PathBuf::from(config::DEFAULT_PATH);
        default.exists().then_some(default)
    })
}

/// The config file (if any) with the flags applied, validated.
pub fn resolve(args: &ServeArgs) -> Result<Config> {
    let path = config_path(args.config.as_ref());
    let mut cfg = match &path {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(v) = &args.interface {
        cfg.interface = Some(v.clone());
    }
    if let Some(v) = &args.store {
        cfg.store = v.clone();
    }
    if let Some(v) = &args.state {
        cfg.state = v.clone();
    }
    if let Some(v) = args.mode {
        cfg.mode = v;
    }
    if let Some(v) = &args.dhcp_range {
        cfg.dhcp.range = Some(*v);
    }
    if let Some(v) = &args.image {
        cfg.boot.image = Some(v.clone());
    }
    if let Some(v) = args.unknown_clients {
        cfg.boot.unknown_clients = v;
    }
    if let Some(v) = &args.cmdline {
        cfg.boot.cmdline = v.clone();
    }
    if let Some(v) = &args.size {
        cfg.boot.size = v.clone();
    }
    if let Some(v) = args.image_protocol {
        cfg.boot.image_protocol = v;
    }
    if let Some(v) = args.http_port {
        cfg.http_port = v;
    }
    if let Some(v) = args.tftp_port {
        cfg.tftp_port = v;
    }
    if let Some(v) = &args.uefi_file {
        cfg.ipxe.uefi = v.clone();
    }
    if let Some(v) = &args.admin_listen {
        cfg.admin_listen = *v;
    }
    if args.secure_boot {
        cfg.boot.secure_boot = true;
    }
    cfg.validate().context("checking the command-line flags")?;
    Ok(cfg)
}

pub fn run(args: ServeArgs) -> Result<ExitCode> {
    let cfg = resolve(&args)?;
    if args.check {
        match &args.config {
            Some(path) => println!("{}: valid", path.display()),
            None => println!("the config is valid"),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if let Ok(store) = diskless_image::Store::open(&cfg.store) {
        for name in store.images().unwrap_or_default() {
            super::image::warn_if_boot_files_outdated(&store, &name);
        }
    }
    // First: a second server on this state stops here, before it changes a thing.
    let _state_lock = crate::state_lock::lock(&cfg.state)?;
    // Before the runtime starts its threads: they are then all the user (see privileges).
    drop_privileges(&args, &cfg)?;
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        };
        // Bind (ports below 1024, raw sockets: the capabilities kept), then serve.
        let site = diskless_server::resolve_site(&cfg)?;
        let listeners = diskless_server::Listeners::bind(&site)?;
        let (handle, site) = diskless_server::site_channel(site);
        notify(&[sd_notify::NotifyState::Ready]);
        let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("installing the SIGHUP handler")?;
        tokio::spawn(async move {
            while hangup.recv().await.is_some() {
                notify(&[sd_notify::NotifyState::Reloading]);
                reload(&args, &handle);
                notify(&[sd_notify::NotifyState::Ready]);
            }
        });
        diskless_server::run(listeners, site, shutdown).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// As root: give the user the directories it writes, become it with the capabilities the
/// config needs, and check that it reaches what it reads later (the config on SIGHUP, the
/// store). Not root (under systemd): only give up the capabilities the config does not need.
/// Nothing when the user is root.
fn drop_privileges(args: &ServeArgs, cfg: &Config) -> Result<()> {
    use crate::privileges;
    let querier = cfg.multicast.resolve().is_some_and(|m| m.querier);
    let needed = privileges::needed(diskless_boot::site::Ipv6Ra::of(cfg), querier);
    if !privileges::is_root() {
        // Under the packaged unit capset(2) is refused: SystemCallFilter=~@privileged holds it
        // (EPERM, seen in the package test: the service failed to start). The unit's own sets
        // stay then; giving a capability up is a bonus, not a condition of serving.
        match privileges::keep_only(&needed) {
            Ok(kept) => tracing::info!("capabilities: {}", privileges::names(&kept)),
            Err(e) => tracing::warn!(
                error = %format!("{e:#}"),
                "cannot give up the capabilities this config does not need; keeping the unit's"
            ),
        }
        return Ok(());
    }
    if args.user == "root" {
        tracing::warn!("--user root: the server keeps every privilege of root");
        return Ok(());
    }
    let user = privileges::service_user(&args.user)?;
    let store = diskless_image::Store::open(&cfg.store)?;
    privileges::give_dir(&cfg.state, 0o700, &user)?;
    privileges::give_dir(&store.root().join(IPXE_DIR), 0o755, &user)?;
    privileges::drop_to(&user, &needed)?;
    tracing::info!(user = %user.name, uid = user.uid, "running as {} with {} only", user.name, privileges::names(&needed));
    let config = config_path(args.config.as_ref());
    let images = store.root().join("images");
    let mut readable = vec![images.as_path()];
    readable.extend(config.as_deref());
    privileges::check_access(&user, &[&cfg.state], &readable)
}

/// Re-read the config and hand the new site to the running server; a config with a mistake,
/// or one that changes what only a restart applies (interface, ports, ...), is refused with
/// its reason and the server carries on with the site it has.
fn reload(args: &ServeArgs, handle: &diskless_server::SiteHandle) {
    let site = resolve(args).and_then(|cfg| Ok(diskless_server::resolve_site(&cfg)?));
    match site.and_then(|site| Ok(handle.reload(site)?)) {
        Ok(()) => tracing::info!("config re-read on SIGHUP"),
        Err(e) => tracing::error!("reload refused, the server keeps its config: {e:#}"),
    }
}

/// Tell systemd (`Type=notify`); nothing when not started by it.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "could not notify systemd");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_config_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.toml");
        std::fs::write(
            &path,
            "interface = \"eth0\"\n[boot]\nimage = \"lab\"\nsize = \"2G\"\n",
        )
        .unwrap();
        let args = ServeArgs {
            config: Some(path),
            interface: Some("dl0".into()),
            mode: Some(Mode::Proxy),
            admin_listen: Some("0.0.0.0:9999".parse().unwrap()),
            ..Default::default()
        };
        let cfg = resolve(&args).unwrap();
        assert_eq!(cfg.interface.as_deref(), Some("dl0"));
        assert_eq!(cfg.admin_addr(), Some("0.0.0.0:9999".parse().unwrap()));
        assert_eq!(cfg.mode, Mode::Proxy);
        assert_eq!(
            (cfg.boot.image.as_deref(), cfg.boot.size.as_str()),
            (Some("lab"), "2G")
        );
    }

    #[test]
    fn check_accepts_a_valid_config_and_names_the_line_of_a_mistake() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.toml");
        std::fs::write(&good, "interface = \"eth0\"\n[boot]\nimage = \"lab\"\n").unwrap();
        let check = |config: &std::path::Path| {
            run(ServeArgs {
                config: Some(config.to_path_buf()),
                check: true,
                ..Default::default()
            })
        };
        assert_eq!(check(&good).unwrap(), ExitCode::SUCCESS);
        let bad = dir.path().join("bad.toml");
        std::fs::write(&bad, "interface = \"eth0\"\n[boot]\nsize = \"huge\"\n").unwrap();
        let err = format!("{:#}", check(&bad).unwrap_err());
        assert!(err.contains("bad.toml:3:8: boot.size: \"huge\""), "{err}");
    }

    #[test]
    fn bad_flags_and_bad_files_are_refused() {
        let args = ServeArgs {
            config: Some("/nonexistent.toml".into()),
            ..Default::default()
        };
        assert!(resolve(&args)
            .unwrap_err()
            .to_string()
            .contains("/nonexistent.toml"));
        let args = ServeArgs {
            store: Some("/srv/d".into()),
            state: Some("/srv/d/state".into()),
            ..Default::default()
        };
        let err = format!("{:#}", resolve(&args).unwrap_err());
        assert!(
            err.starts_with("checking the command-line flags: state: the state directory"),
            "{err}"
        );
    }

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        serve: ServeArgs,
    }

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        use clap::Parser;
        Flags::try_parse_from([&["serve"], args].concat()).map(|f| f.serve)
    }

    /// `to_args` writes what the flags parse back into: every field set, then none.
    #[test]
    fn to_args_gives_the_same_arguments_back() {
        let all = ServeArgs {
            config: Some("/etc/d.toml".into()),
            interface: Some("dl0".into()),
            store: Some("/srv/store".into()),
            state: Some("/srv/state".into()),
            mode: Some(Mode::Proxy),
            dhcp_range: Some("10.77.0.100-10.77.0.150".parse().unwrap()),
            image: Some("lab".into()),
            unknown_clients: Some(UnknownClients::Ignore),
            cmdline: Some("-v console=ttyS0 quiet".into()),
            size: Some("2G".parse().unwrap()),
            image_protocol: Some(ImageProtocol::Tftp),
            http_port: Some(8080),
            tftp_port: Some(6969),
            uefi_file: Some("snponly.efi".into()),
            admin_listen: Some(AdminListen::Off),
            secure_boot: true,
            user: "root".into(),
            check: true,
        };
        for args in [all, parse(&[]).unwrap()] {
            let argv = args.to_args();
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            assert_eq!(parse(&argv).unwrap(), args, "{argv:?}");
        }
    }

    /// Each flag goes through the parser or the rule of its config key.
    #[test]
    fn flags_are_parsed_as_their_config_keys() {
        let ok = parse(&["--size", "4G", "--dhcp-range", "10.0.0.10-10.0.0.20"]).unwrap();
        assert_eq!(ok.size.unwrap().as_str(), "4G");
        assert_eq!(ok.dhcp_range.unwrap().to_string(), "10.0.0.10-10.0.0.20");
        for (flag, value, why) in [
            ("--size", "huge", "\"huge\" is not a size"),
            ("--dhcp-range", "10.0.0.10", "is not a range FIRST-LAST"),
            ("--admin-listen", "localhost", "is not ADDR:PORT"),
            ("--image", "../etc", "image name"),
            ("--cmdline", "a ${x}", "must be one line without ${...}"),
            ("--uefi-file", "a/b.efi", "must be a plain file name"),
            ("--http-port", "0", "0 is not in 1..=65535"),
        ] {
            let err = parse(&[flag, value]).err().unwrap().to_string();
            assert!(err.contains(why), "{flag} {value}: {err}");
        }
    }
}
