//! The diskless boot server: DHCP, TFTP and HTTP on one interface, and the record of every
//! client boot. This is the only crate that binds sockets.
//!
//! [`run`] resolves the site config into the three protocol servers and runs them until the
//! shutdown future completes or one fails:
//!
//! - DHCP ([`diskless_dhcp::run`]), full or proxy, with [`BootFiles`] deciding what each
//!   firmware gets: BIOS PXE `undionly.kpxe`, UEFI `ipxe.efi` (TFTP), UEFI HTTP boot the same
//!   over HTTP, and iPXE the URL of its per-client script.
//! - TFTP ([`diskless_tftp::server`]) over the store: iPXE binaries and, when
//!   `image_protocol = "tftp"`, the images.
//! - HTTP ([`http`]): scripts, image files, stage reports.
//!
//! Every stage a client reaches is kept in [`clients::Clients`].

pub mod clients;
pub mod http;
pub mod netif;
pub mod ra;

use clients::{Clients, Update};
use diskless_boot::config::{Config, Mode};
use diskless_boot::{Mac, Policy};
use diskless_dhcp::{
    BootOffer, BootPolicy, ClientInfo, ClientKind, DhcpEvent, EventAction, StandardPolicy,
};
use diskless_image::Store;
use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("{0}")]
    Setup(String),
    #[error("DHCP: {0}")]
    Dhcp(#[from] diskless_dhcp::DhcpError),
    #[error("TFTP: {0}")]
    Tftp(#[from] diskless_tftp::server::Error),
    #[error("HTTP on {addr}: {source}")]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] diskless_image::Error),
}

/// Where the iPXE binaries go inside the store (so TFTP serves them from one root).
pub const IPXE_SUBDIR: &str = "ipxe";

/// The DHCP boot decision: the site's policy says whether we boot a client at all, the
/// standard iPXE chainload rules say with what.
pub struct BootFiles {
    pub policy: Policy,
    pub standard: StandardPolicy,
}

impl BootPolicy for BootFiles {
    fn boot(&self, client: &ClientInfo) -> Option<BootOffer> {
        if !self.policy.serves(Mac(client.mac)) {
            return None;
        }
        self.standard.boot(client)
    }

    fn hostname(&self, mac: [u8; 6]) -> Option<String> {
        self.policy.hostname(Mac(mac))
    }
}

/// Copy the iPXE binaries clients need into the store, naming the package when one is missing.
pub fn install_ipxe_files(
    config: &Config,
    store: &Path,
) -> Result<(PathBuf, Vec<String>), ServerError> {
    let dir = store.join(IPXE_SUBDIR);
    std::fs::create_dir_all(&dir)
        .map_err(|e| ServerError::Setup(format!("creating {}: {e}", dir.display())))?;
    let mut names = vec![config.ipxe.bios.clone(), config.ipxe.uefi.clone()];
    names.dedup();
    for name in &names {
        let from = config.ipxe.dir.join(name);
        let data = std::fs::read(&from).map_err(|e| {
            ServerError::Setup(format!(
                "{}: {e}: install Debian's ipxe package (apt-get install ipxe), or set [ipxe] dir",
                from.display()
            ))
        })?;
        let to = dir.join(name);
        if std::fs::read(&to).ok().as_deref() != Some(&data[..]) {
            let tmp = dir.join(format!(".{name}.tmp"));
            std::fs::write(&tmp, &data)
                .map_err(|e| ServerError::Setup(format!("{}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, &to)
                .map_err(|e| ServerError::Setup(format!("{}: {e}", to.display())))?;
        }
    }
    Ok((dir, names))
}

/// The default pool: .100 to .199 of the interface's subnet, clipped to the subnet.
pub fn default_range(ip: Ipv4Addr, netmask: Ipv4Addr) -> Option<(Ipv4Addr, Ipv4Addr)> {
    let mask = u32::from(netmask);
    let network = u32::from(ip) & mask;
    let broadcast = network | !mask;
    let first = network + 100;
    let last = (network + 199).min(broadcast - 1);
    (first < broadcast && first <= last).then(|| (Ipv4Addr::from(first), Ipv4Addr::from(last)))
}

/// Run the boot server until `shutdown` completes.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    let interface = config.interface.clone().ok_or_else(|| {
        ServerError::Setup(
            "no interface given: use --interface or set interface in the config".into(),
        )
    })?;
    let addr = netif::ipv4_of(&interface).map_err(ServerError::Setup)?;
    let store = Store::open(&config.store)?;
    if let Some(image) = &config.boot.image {
        if let Err(e) = store.current(image) {
            tracing::warn!(%image, error = %e, "the default image is not in the store: clients will be told so");
        }
    }
    std::fs::create_dir_all(&config.state)
        .map_err(|e| ServerError::Setup(format!("creating {}: {e}", config.state.display())))?;
    let clients = Arc::new(Clients::persistent(config.state.join("clients.json")));
    let (ipxe_dir, ipxe_files) = install_ipxe_files(&config, &config.store)?;
    let policy = Policy::from_config(&config);

    let http_authority = if config.http_port == 80 {
        addr.ip.to_string()
    } else {
        format!("{}:{}", addr.ip, config.http_port)
    };
    let tftp_authority = if config.tftp_port == 69 {
        addr.ip.to_string()
    } else {
        format!("{}:{}", addr.ip, config.tftp_port)
    };

    // DHCP.
    let range = match &config.dhcp.range {
        Some(r) => Some(diskless_boot::config::parse_range(r).map_err(ServerError::Setup)?),
        None => default_range(addr.ip, addr.netmask),
    };
    let dhcp_config = diskless_dhcp::DhcpConfig {
        mode: match config.mode {
            Mode::Full => diskless_dhcp::Mode::Full,
            Mode::Proxy => diskless_dhcp::Mode::Proxy,
        },
        server_ip: addr.ip,
        netmask: addr.netmask,
        router: config.dhcp.router,
        dns: config.dhcp.dns.clone(),
        domain: config.dhcp.domain.clone(),
        range: if config.mode == Mode::Full {
            range
        } else {
            None
        },
        lease_time: std::time::Duration::from_secs(config.dhcp.lease_time.into()),
        reservations: config
            .clients
            .iter()
            .filter_map(|c| {
                Some(diskless_dhcp::Reservation {
                    mac: c.mac.0,
                    ip: c.ip?,
                    hostname: c.hostname.clone(),
                })
            })
            .collect(),
    };
    let mut standard = StandardPolicy::new(addr.ip);
    standard.bios_file = format!("{IPXE_SUBDIR}/{}", config.ipxe.bios);
    standard.uefi_file = format!("{IPXE_SUBDIR}/{}", config.ipxe.uefi);
    standard.script_url_template = format!("http://{http_authority}/boot/{{mac}}.ipxe");
    standard.http_boot_url = Some(format!(
        "http://{http_authority}/{IPXE_SUBDIR}/{}",
        config.ipxe.uefi
    ));
    let boot_files: Arc<dyn BootPolicy> = Arc::new(BootFiles {
        policy: policy.clone(),
        standard,
    });

    // Which MAC has which address: TFTP only sees addresses.
    let macs_by_ip: Arc<Mutex<HashMap<IpAddr, String>>> = Arc::default();
    let sink_clients = clients.clone();
    let sink_macs = macs_by_ip.clone();
    let on_dhcp: diskless_dhcp::EventSink = Arc::new(move |event: &DhcpEvent| {
        let mac = Mac(event.mac).to_string();
        let (stage, ip, file) = match &event.action {
            EventAction::Offer { ip, file } => ("dhcp-offer", *ip, file.clone()),
            EventAction::Ack { ip, file } => ("dhcp-ack", *ip, file.clone()),
            EventAction::Nak { reason, .. } => ("dhcp-nak", None, Some(reason.to_string())),
            _ => return,
        };
        if let Some(ip) = ip {
            sink_macs
                .lock()
                .expect("macs lock")
                .insert(IpAddr::V4(ip), mac.clone());
        }
        let firmware = event.kind.as_str();
        let starts_boot = event.kind != ClientKind::Plain && stage == "dhcp-offer";
        let detail = format!("{firmware} {}", file.unwrap_or_default())
            .trim()
            .to_string();
        sink_clients.record(
            &mac,
            stage,
            &detail,
            starts_boot,
            Update {
                ip: ip.map(IpAddr::V4),
                firmware: (event.kind != ClientKind::Plain).then(|| firmware.to_string()),
                ..Default::default()
            },
        );
    });

    // TFTP.
    let mut tftp_config = diskless_tftp::server::ServerConfig::new(&config.store);
    let tftp_clients = clients.clone();
    let tftp_macs = macs_by_ip.clone();
    tftp_config.on_transfer_done =
        Some(Arc::new(move |log: &diskless_tftp::server::TransferLog| {
            let mac = tftp_macs
                .lock()
                .expect("macs lock")
                .get(&log.client.ip())
                .cloned();
            if let Some(mac) = mac {
                let detail = format!("{} {} bytes {:?}", log.filename, log.bytes, log.outcome);
                tftp_clients.record(&mac, "tftp", &detail, false, Update::default());
            }
        }));

    // HTTP.
    let http_state = Arc::new(http::HttpState {
        store: store.clone(),
        policy,
        clients: clients.clone(),
        http_authority: http_authority.clone(),
        tftp_authority,
        protocol: config.boot.image_protocol,
        ipxe_dir,
        ipxe_files,
    });
    let http_addr = SocketAddr::new(IpAddr::V4(addr.ip), config.http_port);
    let listener = tokio::net::TcpListener::bind(http_addr)
        .await
        .map_err(|source| ServerError::Http {
            addr: http_addr,
            source,
        })?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tracing::info!(
        %interface, server = %addr.ip, mode = ?config.mode, store = %config.store.display(),
        http = %http_addr, tftp_port = config.tftp_port, "diskless server starting"
    );

    let lease_path = config.state.join("leases.json");
    let mut dhcp_task = tokio::spawn({
        let stopped = stopped();
        let interface = interface.clone();
        async move {
            diskless_dhcp::run(
                dhcp_config,
                &interface,
                Some(lease_path),
                boot_files,
                Some(on_dhcp),
                stopped,
            )
            .await
        }
    });
    let tftp_addr = SocketAddr::new(IpAddr::V4(addr.ip), config.tftp_port);
    if config.ipv6_ra.unwrap_or(config.mode == Mode::Full) {
        let interface = interface.clone();
        tokio::spawn(async move {
            if let Err(e) = ra::serve(interface).await {
                tracing::warn!(error = %e, "IPv6 router advertisements off: iPXE may wait ~13 s for one");
            }
        });
    }
    let mut tftp_task = tokio::spawn(diskless_tftp::server::serve_addr(
        tftp_addr,
        tftp_config,
        stopped(),
    ));
    let app = http::router(http_state).into_make_service_with_connect_info::<SocketAddr>();
    let mut http_task = tokio::spawn({
        let stopped = stopped();
        async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
    });

    // Stop everything on the shutdown signal or when any server fails.
    tokio::pin!(shutdown);
    let result: Result<(), ServerError> = tokio::select! {
        _ = &mut shutdown => Ok(()),
        r = &mut dhcp_task => r.map_err(|e| ServerError::Setup(format!("DHCP task: {e}")))?.map_err(ServerError::from),
        r = &mut tftp_task => r.map_err(|e| ServerError::Setup(format!("TFTP task: {e}")))?.map_err(ServerError::from),
        r = &mut http_task => r.map_err(|e| ServerError::Setup(format!("HTTP task: {e}")))?
            .map_err(|source| ServerError::Http { addr: http_addr, source }),
    };
    // Each server stops on the signal; give them a moment to finish what they are doing.
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let _ = (&mut dhcp_task).await;
        let _ = (&mut tftp_task).await;
        let _ = (&mut http_task).await;
    })
    .await;
    tracing::info!("diskless server stopped");
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_pool_is_inside_the_subnet() {
        let r =
            default_range(Ipv4Addr::new(10, 77, 0, 1), Ipv4Addr::new(255, 255, 255, 0)).unwrap();
        assert_eq!(
            r,
            (Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 199))
        );
        let r = default_range(
            Ipv4Addr::new(10, 77, 0, 1),
            Ipv4Addr::new(255, 255, 255, 128),
        )
        .unwrap();
        assert_eq!(
            r,
            (Ipv4Addr::new(10, 77, 0, 100), Ipv4Addr::new(10, 77, 0, 126))
        );
        assert_eq!(
            default_range(
                Ipv4Addr::new(10, 77, 0, 1),
                Ipv4Addr::new(255, 255, 255, 192)
            ),
            None
        );
    }

    #[test]
    fn missing_ipxe_binary_names_the_package() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config::default();
        config.ipxe.dir = dir.path().join("nothing");
        let err = install_ipxe_files(&config, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install ipxe"), "{err}");
    }
}
