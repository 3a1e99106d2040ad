//! The tokio socket loop around [`Responder`]: receive, decide, send, save
//! leases. The caller binds ([`DhcpSockets::bind`], as root, before dropping
//! privileges) and owns the shutdown signal. Bad packets are logged at debug
//! and dropped; the loop ends only on `shutdown`.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tracing::{debug, info, warn};

use crate::responder::{Destination, DhcpEvent, EventAction, Handled};
use crate::{
    BootPolicy, DhcpConfig, DhcpError, LeaseStore, Mode, Responder, CLIENT_PORT, PXE_PORT,
    SERVER_PORT,
};

/// Receives every [`DhcpEvent`] (e.g. to record a client's DHCP stage).
/// Called on the server task: keep it short and non-blocking (hand the
/// event to a channel, never write a file here).
pub type EventSink = Arc<dyn Fn(&DhcpEvent) + Send + Sync>;

/// Largest datagram we read; DHCP messages are at most 576 bytes unless
/// the client allows more (option 57), and never near this.
const RECV_BUF: usize = 4096;

/// The sockets the DHCP server reads: port 67, and 4011 in proxy mode.
#[derive(Debug)]
pub struct DhcpSockets {
    /// 0.0.0.0:67.
    pub dhcp: UdpSocket,
    /// 0.0.0.0:4011, the PXE boot-server port (proxy mode only).
    pub pxe: Option<UdpSocket>,
    /// The interface they are tied to (for logs).
    pub interface: String,
}

impl DhcpSockets {
    /// Binds 0.0.0.0:67 (and 0.0.0.0:4011 in proxy mode) with SO_BROADCAST,
    /// SO_REUSEADDR and SO_BINDTODEVICE(`interface`); an empty `interface`
    /// skips SO_BINDTODEVICE. Needs CAP_NET_BIND_SERVICE (ports below 1024); SO_BINDTODEVICE
    /// on a socket not yet tied to a device needs no capability since Linux 5.7.
    pub fn bind(interface: &str, mode: Mode) -> Result<DhcpSockets, DhcpError> {
        Ok(DhcpSockets {
            dhcp: bind(interface, SERVER_PORT)?,
            pxe: match mode {
                Mode::Proxy => Some(bind(interface, PXE_PORT)?),
                Mode::Full => None,
            },
            interface: interface.to_string(),
        })
    }
}

/// Serve DHCP on `sockets` until `shutdown` completes.
///
/// Leases are loaded from `lease_path` (a missing file is empty) and saved
/// there atomically whenever they change, before the reply is sent; while they
/// cannot be saved no reply is sent (an unsaved lease is never acknowledged).
/// A proxy-mode `config` needs `sockets.pxe`.
pub async fn run(
    sockets: DhcpSockets,
    config: DhcpConfig,
    lease_path: Option<PathBuf>,
    policy: Arc<dyn BootPolicy>,
    on_event: Option<EventSink>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), DhcpError> {
    let leases = match &lease_path {
        Some(p) => LeaseStore::load(p)?,
        None => LeaseStore::new(),
    };
    let mode = config.mode;
    let mut responder = Responder::new(config, leases)?;
    let DhcpSockets {
        dhcp,
        pxe,
        interface,
    } = sockets;
    if mode == Mode::Proxy && pxe.is_none() {
        return Err(DhcpError::Io {
            what: "proxy mode needs the PXE port 4011 bound".into(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        });
    }
    info!(
        %interface,
        mode = ?mode,
        server = %responder.config().server_ip,
        leases = responder.leases().len(),
        "DHCP server listening"
    );

    tokio::pin!(shutdown);
    let mut buf67 = vec![0u8; RECV_BUF];
    let mut buf4011 = vec![0u8; RECV_BUF];
    // Failing: the leases in memory differ from the file (the last save failed).
    let mut unsaved = crate::state_file::FailingSpell::default();
    loop {
        let (sock, port, received) = tokio::select! {
            _ = &mut shutdown => break,
            r = dhcp.recv_from(&mut buf67) => (&dhcp, SERVER_PORT, r.map(|(n, a)| (&buf67[..n], a))),
            r = recv_opt(pxe.as_ref(), &mut buf4011) => {
                (pxe.as_ref().expect("only polled when bound"), PXE_PORT, r.map(|(n, a)| (&buf4011[..n], a)))
            }
        };
        let (packet, from) = match received {
            Ok(x) => x,
            Err(e) => {
                warn!(port, error = %e, "DHCP receive failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let SocketAddr::V4(from) = from else { continue };
        let handled = match responder.handle(SystemTime::now(), packet, port, from, policy.as_ref())
        {
            Ok(h) => h,
            Err(e) if e.is_packet_error() => {
                debug!(%from, port, len = packet.len(), error = %e, "ignoring packet");
                continue;
            }
            Err(e) => {
                warn!(%from, port, error = %e, "cannot answer packet");
                continue;
            }
        };
        let Handled {
            reply,
            event,
            leases_changed,
            ignored,
        } = handled;
        if let Some(reason) = ignored {
            debug!(%from, port, reason, "ignoring request");
        }
        if let Some(ev) = &event {
            log_event(ev);
        }
        // Saved before the reply goes: a lease that is not on disk is not acknowledged (a
        // restart would hand its address out again). A failed save stays pending, so the
        // client's retry tries again instead of getting the lease the memory holds.
        if leases_changed || unsaved.is_failing() {
            if let Some(path) = &lease_path {
                let store = responder.leases().clone();
                let path = path.clone();
                let saved = tokio::task::spawn_blocking(move || store.save(&path))
                    .await
                    .map_err(|e| e.to_string())
                    .and_then(|r| r.map_err(|e| e.to_string()));
                match saved {
                    Ok(()) => {
                        if unsaved.succeeded() {
                            info!("leases saved again: answering requests");
                        }
                    }
                    Err(e) => {
                        // Once per failing spell, not once per packet.
                        if unsaved.failed() {
                            warn!(error = %e, "saving leases failed: no request is answered until they are saved");
                        }
                    }
                }
            }
        }
        if unsaved.is_failing() {
            debug!(%from, port, "reply withheld: the leases are not saved");
            continue;
        }
        if let Some(reply) = reply {
            let dest = match reply.dest {
                Destination::Broadcast => SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT),
                Destination::Unicast(a) => a,
            };
            if let Err(e) = sock.send_to(&reply.bytes, dest).await {
                warn!(%dest, error = %e, "sending DHCP reply failed");
            }
        }
        if let (Some(ev), Some(sink)) = (&event, &on_event) {
            sink(ev);
        }
    }
    info!(%interface, "DHCP server stopped");
    Ok(())
}

async fn recv_opt(
    sock: Option<&UdpSocket>,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr)> {
    match sock {
        Some(s) => s.recv_from(buf).await,
        None => std::future::pending().await,
    }
}

fn log_event(ev: &DhcpEvent) {
    let mac = ev.mac;
    let kind = ev.kind.as_str();
    match &ev.action {
        EventAction::Offer { ip, file } => {
            info!(%mac, kind, arch = ?ev.arch, port = ev.port, ip = ?ip, file = ?file, "DHCPOFFER")
        }
        EventAction::Ack { ip, file } => {
            info!(%mac, kind, arch = ?ev.arch, port = ev.port, ip = ?ip, file = ?file, "DHCPACK")
        }
        EventAction::Nak { requested, reason } => {
            info!(%mac, kind, requested = ?requested, reason, "DHCPNAK")
        }
        EventAction::Release { ip } => info!(%mac, %ip, "DHCPRELEASE"),
        EventAction::Decline { ip } => warn!(%mac, %ip, "DHCPDECLINE: address in use, quarantined"),
        EventAction::PoolExhausted => warn!(%mac, kind, "no free address in the pool"),
    }
}

/// A UDP socket on 0.0.0.0:`port`, broadcast-capable, tied to `interface`.
fn bind(interface: &str, port: u16) -> Result<UdpSocket, DhcpError> {
    let err = |what: &str| {
        let what = format!("{what} (UDP port {port}, interface {interface:?})");
        move |source| DhcpError::Io { what, source }
    };
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("creating socket"))?;
    s.set_reuse_address(true)
        .map_err(err("setting SO_REUSEADDR"))?;
    s.set_broadcast(true).map_err(err("setting SO_BROADCAST"))?;
    // SO_BINDTODEVICE: receive only from, and send broadcasts out of, one
    // interface (a DHCP server answering on the wrong network is a hazard).
    if !interface.is_empty() {
        s.bind_device(Some(interface.as_bytes()))
            .map_err(err("setting SO_BINDTODEVICE"))?;
    }
    s.set_nonblocking(true)
        .map_err(err("setting non-blocking"))?;
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .map_err(err("binding"))?;
    UdpSocket::from_std(s.into()).map_err(err("registering with tokio"))
}
