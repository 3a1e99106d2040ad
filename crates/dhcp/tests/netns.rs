//! The real `run()` against real clients, in a pair of network namespaces
//! joined by a veth link. Needs root, `ip` (iproute2) and busybox `udhcpc`.
//!
//! The server runs on a thread of this process that has `setns`-ed into
//! the server namespace (a network namespace switch affects only the
//! calling thread, and sockets keep the namespace they were made in);
//! `udhcpc` runs under `ip netns exec` in the client namespace.

use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use diskless_dhcp::{
    fuzzing::TestPolicy, run, BootPolicy, DhcpConfig, DhcpEvent, DhcpSockets, EventAction,
    EventSink, Mode,
};

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Why these tests cannot run here, if they cannot.
fn missing_prerequisite() -> Option<String> {
    if !diskless_testkit::is_root() {
        return Some("not root".into());
    }
    diskless_testkit::missing_tools(&["ip", "udhcpc"])
}

macro_rules! require_netns {
    () => {
        if let Some(why) = missing_prerequisite() {
            return diskless_testkit::skip(&why);
        }
    };
}

fn sh(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("running {args:?}: {e}"));
    out
}

fn must(args: &[&str]) {
    diskless_testkit::run(Command::new(args[0]).args(&args[1..]));
}

/// Two namespaces and a veth pair; removed on drop, even when a test fails.
struct Net {
    srv: String,
    cli: String,
    subnet: u8,
    dir: tempfile::TempDir,
}

const SRV_IF: &str = "dsrv0";
const CLI_IF: &str = "dcli0";

impl Net {
    fn new() -> Net {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("dhcpt{}x{n}", std::process::id());
        let net = Net {
            srv: format!("{tag}s"),
            cli: format!("{tag}c"),
            subnet: (n % 200) as u8 + 20,
            dir: tempfile::tempdir().unwrap(),
        };
        must(&["ip", "netns", "add", &net.srv]);
        must(&["ip", "netns", "add", &net.cli]);
        must(&[
            "ip", "link", "add", SRV_IF, "netns", &net.srv, "type", "veth", "peer", "name", CLI_IF,
            "netns", &net.cli,
        ]);
        let srv_addr = format!("{}/24", net.server_ip());
        net.in_srv(&["ip", "addr", "add", &srv_addr, "dev", SRV_IF]);
        net.in_srv(&["ip", "link", "set", SRV_IF, "up"]);
        net.in_srv(&["ip", "link", "set", "lo", "up"]);
        net.in_cli(&["ip", "link", "set", CLI_IF, "up"]);
        net.in_cli(&["ip", "link", "set", "lo", "up"]);
        net
    }

    fn server_ip(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, 1)
    }

    fn ip(&self, last: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet, last)
    }

    fn in_srv(&self, args: &[&str]) {
        let mut a = vec!["ip", "netns", "exec", &self.srv];
        a.extend_from_slice(args);
        must(&a);
    }

    fn in_cli(&self, args: &[&str]) {
        let mut a = vec!["ip", "netns", "exec", &self.cli];
        a.extend_from_slice(args);
        must(&a);
    }

    fn set_client_mac(&self, mac: &str) {
        self.in_cli(&["ip", "link", "set", CLI_IF, "address", mac]);
    }

    fn config(&self, mode: Mode) -> DhcpConfig {
        DhcpConfig {
            mode,
            server_ip: self.server_ip(),
            netmask: Ipv4Addr::new(255, 255, 255, 0),
            router: Some(self.server_ip()),
            dns: vec![self.server_ip()],
            domain: Some("lab.test".into()),
            range: (mode == Mode::Full).then(|| (self.ip(100), self.ip(110))),
            lease_time: Duration::from_secs(3600),
            reservations: vec![],
        }
    }

    /// Run busybox udhcpc in the client namespace; the address it was
    /// offered and acked, or `None` if it got no lease.
    fn udhcpc(&self, tries: &str) -> Option<Ipv4Addr> {
        let script = self.dir.path().join("udhcpc.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\n[ \"$1\" = bound ] && echo \"BOUND $ip\"\nexit 0\n",
        )
        .unwrap();
        must(&["chmod", "+x", script.to_str().unwrap()]);
        let out = sh(&[
            "ip",
            "netns",
            "exec",
            &self.cli,
            "udhcpc",
            "-f",
            "-q",
            "-n",
            "-i",
            CLI_IF,
            "-t",
            tries,
            "-T",
            "1",
            "-s",
            script.to_str().unwrap(),
        ]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let bound = stdout
            .lines()
            .find_map(|l| l.strip_prefix("BOUND "))
            .map(|ip| ip.trim().parse().unwrap());
        assert_eq!(
            bound.is_some(),
            out.status.success(),
            "udhcpc: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        bound
    }

    /// Run `f` on a thread inside namespace `ns`.
    fn spawn_in<T: Send + 'static>(
        ns: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            diskless_testkit::enter_netns(&ns);
            f()
        })
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes the veth pair with it.
        let _ = sh(&["ip", "netns", "delete", &self.srv]);
        let _ = sh(&["ip", "netns", "delete", &self.cli]);
    }
}

/// A running server; stops and joins on drop.
struct Server {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<Result<(), diskless_dhcp::DhcpError>>>,
    events: mpsc::Receiver<DhcpEvent>,
}

impl Server {
    fn start(net: &Net, config: DhcpConfig, leases: Option<PathBuf>) -> Server {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (tx, events) = mpsc::channel();
        let (ready_tx, ready) = mpsc::channel();
        let policy: Arc<dyn BootPolicy> = Arc::new(TestPolicy::new(config.server_ip));
        let sink: EventSink = Arc::new(move |e: &DhcpEvent| {
            let _ = tx.send(e.clone());
        });
        let thread = Net::spawn_in(&net.srv, move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                // Bound before the test sends anything: no race with the first request.
                let sockets = DhcpSockets::bind(SRV_IF, config.mode);
                let _ = ready_tx.send(());
                run(sockets?, config, leases, policy, Some(sink), async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        ready.recv().unwrap();
        Server {
            stop: Some(stop),
            thread: Some(thread),
            events,
        }
    }

    fn stop(mut self) -> Result<(), diskless_dhcp::DhcpError> {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().unwrap()
    }

    fn events(&self) -> Vec<DhcpEvent> {
        self.events.try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
fn full_mode_udhcpc_gets_an_address() {
    require_netns!();
    let net = Net::new();
    let server = Server::start(&net, net.config(Mode::Full), None);
    let ip = net.udhcpc("3").expect("udhcpc got a lease");
    assert_eq!(ip, net.ip(100));
    let events = server.events();
    assert!(
        events.iter().any(|e| e.action
            == EventAction::Ack {
                ip: Some(ip),
                file: None
            }),
        "{events:?}"
    );
    server.stop().unwrap();
}

#[test]
fn proxy_mode_gives_udhcpc_nothing_but_answers_pxe() {
    require_netns!();
    let net = Net::new();
    let server = Server::start(&net, net.config(Mode::Proxy), None);
    assert_eq!(net.udhcpc("2"), None);
    assert!(server.events().is_empty());

    // A PXE DISCOVER from the client side gets a proxy offer with no address.
    net.in_cli(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", net.ip(50)),
        "dev",
        CLI_IF,
    ]);
    // A route for the limited broadcast 255.255.255.255.
    net.in_cli(&["ip", "route", "add", "default", "dev", CLI_IF]);
    let reply = Net::spawn_in(&net.cli, || {
        let s = client_socket(68);
        s.send_to(&pxe_discover(), SocketAddrV4::new(Ipv4Addr::BROADCAST, 67))
            .unwrap();
        recv(&s)
    })
    .join()
    .unwrap()
    .expect("a proxy offer");
    assert!(reply.len() >= 300);
    assert_eq!(reply[0], 2, "BOOTREPLY");
    assert_eq!(
        &reply[16..20],
        &[0, 0, 0, 0],
        "yiaddr must be empty in a proxy offer"
    );
    assert_eq!(&reply[108..121], b"undionly.kpxe");

    // The boot-server exchange: a UEFI client with its address asks port
    // 4011 and gets the ACK back at its own port.
    let (client_ip, server_ip) = (net.ip(50), net.server_ip());
    let ack = Net::spawn_in(&net.cli, move || {
        let s = client_socket(0);
        s.send_to(&uefi_request(client_ip), SocketAddrV4::new(server_ip, 4011))
            .unwrap();
        recv(&s)
    })
    .join()
    .unwrap()
    .expect("a 4011 ACK");
    assert_eq!(ack[0], 2);
    assert_eq!(&ack[12..16], &client_ip.octets(), "ciaddr echoed");
    assert_eq!(&ack[16..20], &[0, 0, 0, 0], "no address from a proxy");
    assert_eq!(&ack[108..117], b"ipxe.efi\0");
    // The event is recorded just after the reply is sent: give the server a moment.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut kinds: Vec<_> = Vec::new();
    while std::time::Instant::now() < deadline {
        // events() drains what arrived since the last call.
        kinds.extend(server.events().iter().map(|e| (e.port, e.kind)));
        if kinds.len() >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(
        kinds,
        vec![
            (67, diskless_dhcp::ClientKind::BiosPxe),
            (4011, diskless_dhcp::ClientKind::UefiPxe)
        ]
    );
    server.stop().unwrap();
}

#[test]
fn leases_survive_a_server_restart() {
    require_netns!();
    let net = Net::new();
    let leases = net.dir.path().join("leases.json");
    net.set_client_mac("02:77:00:00:00:01");
    let server = Server::start(&net, net.config(Mode::Full), Some(leases.clone()));
    let first = net.udhcpc("3").unwrap();
    server.stop().unwrap();
    assert!(std::fs::read_to_string(&leases)
        .unwrap()
        .contains("02:77:00:00:00:01"));

    let server = Server::start(&net, net.config(Mode::Full), Some(leases.clone()));
    // A newcomer asks first and must not be given the first client's address.
    net.set_client_mac("02:77:00:00:00:02");
    let other = net.udhcpc("3").unwrap();
    assert_ne!(other, first);
    net.set_client_mac("02:77:00:00:00:01");
    assert_eq!(net.udhcpc("3").unwrap(), first);
    server.stop().unwrap();
}

#[test]
fn a_lease_that_cannot_be_saved_is_not_acknowledged() {
    require_netns!();
    let net = Net::new();
    // The leases' directory does not exist yet: every save fails (as on a full disk or
    // with no descriptor left).
    let dir = net.dir.path().join("state");
    let leases = dir.join("leases.json");
    let server = Server::start(&net, net.config(Mode::Full), Some(leases.clone()));
    assert_eq!(net.udhcpc("2"), None, "a lease was acknowledged unsaved");
    assert!(
        !server
            .events()
            .iter()
            .any(|e| matches!(e.action, EventAction::Ack { .. })),
        "an ACK was reported"
    );
    // Once the file can be written, the same server acknowledges, and the lease is on disk.
    std::fs::create_dir(&dir).unwrap();
    let ip = net.udhcpc("3").expect("a lease once it can be saved");
    let saved = std::fs::read_to_string(&leases).unwrap();
    assert!(saved.contains(&ip.to_string()), "{saved}");
    server.stop().unwrap();
}

#[test]
fn garbage_and_truncated_packets_leave_the_server_running() {
    require_netns!();
    let net = Net::new();
    let server = Server::start(&net, net.config(Mode::Full), None);
    net.in_cli(&[
        "ip",
        "addr",
        "add",
        &format!("{}/24", net.ip(50)),
        "dev",
        CLI_IF,
    ]);
    let target = SocketAddrV4::new(net.server_ip(), 67);
    Net::spawn_in(&net.cli, move || {
        let s = client_socket(0);
        let good = pxe_discover();
        let mut bad: Vec<Vec<u8>> = vec![vec![], vec![0xff; 1], vec![0; 300], vec![0xa5; 1400]];
        // Cuts inside the header, the cookie, and options (243 would end
        // exactly after option 53 and be a valid DISCOVER).
        for cut in [1, 100, 239, 240, 241, 242, 250, good.len() - 2] {
            bad.push(good[..cut].to_vec());
        }
        let mut huge_len = good.clone();
        huge_len.truncate(240);
        huge_len.extend_from_slice(&[53, 1, 1, 60, 255, b'x']);
        bad.push(huge_len);
        for p in &bad {
            s.send_to(p, target).unwrap();
        }
    })
    .join()
    .unwrap();
    net.in_cli(&["ip", "addr", "flush", "dev", CLI_IF]);
    // The server is alive, and none of the garbage earned an offer.
    assert_eq!(net.udhcpc("3"), Some(net.ip(100)));
    let events = server.events();
    assert!(
        events
            .iter()
            .all(|e| e.mac.0 != [0x02, 0x77, 0, 0, 0, 0x99]),
        "{events:?}"
    );
    server.stop().unwrap();
}

fn client_socket(port: u16) -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_broadcast(true).unwrap();
    s.bind(&SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port).into())
        .unwrap();
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

fn recv(s: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 1500];
    match s.recv_from(&mut buf) {
        Ok((n, _)) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

/// A UEFI PXE client's REQUEST to the boot server on port 4011.
fn uefi_request(ciaddr: Ipv4Addr) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&0x0bad_f00d_u32.to_be_bytes());
    p[12..16].copy_from_slice(&ciaddr.octets());
    p[28..34].copy_from_slice(&[0x02, 0x77, 0, 0, 0, 0x98]);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 3, 93, 2, 0, 7]);
    p.extend_from_slice(&[60, 32]);
    p.extend_from_slice(b"PXEClient:Arch:00007:UNDI:003000");
    p.push(255);
    p
}

/// A BIOS PXE ROM's DISCOVER, built byte by byte.
fn pxe_discover() -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1; // BOOTREQUEST
    p[1] = 1; // Ethernet
    p[2] = 6;
    p[4..8].copy_from_slice(&0x0bad_cafe_u32.to_be_bytes());
    p[10] = 0x80; // broadcast flag
    p[28..34].copy_from_slice(&[0x02, 0x77, 0, 0, 0, 0x99]);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, 1, 93, 2, 0, 0, 94, 3, 1, 2, 1]);
    p.extend_from_slice(&[60, 32]);
    p.extend_from_slice(b"PXEClient:Arch:00000:UNDI:002001");
    p.push(255);
    p
}
