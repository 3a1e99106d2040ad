//! `diskless wake` in a network namespace, against a listener in another one joined by a veth
//! pair: the listener takes UDP port 9 and every Ethernet frame of type 0x0842 (a raw
//! `AF_PACKET` socket), and must see one well-formed magic packet of each kind for exactly
//! each MAC asked. Needs root and `ip` (iproute2).

mod common;

use diskless_boot::Mac;
use diskless_wake::packet::{parse_magic_packet, ETHERTYPE};
use socket2::{Domain, Protocol, Socket, Type};
use std::collections::BTreeSet;
use std::mem::MaybeUninit;
use std::net::UdpSocket;
use std::process::{Command, Output};
use std::time::Duration;

const SEND_IF: &str = "wksend0";
const LISTEN_IF: &str = "wklisten0";

/// Whether the test can run; under CI=true a missing prerequisite fails it.
fn prerequisites() -> bool {
    diskless_testkit::root_with_tools(&["ip"])
}

fn must(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A sender and a listener namespace joined by a veth pair; deleted on drop.
struct Net {
    send: String,
    listen: String,
}

impl Net {
    fn new() -> Net {
        let tag = format!("wake{}", std::process::id());
        let net = Net {
            send: format!("{tag}s"),
            listen: format!("{tag}l"),
        };
        must(&["ip", "netns", "add", &net.send]);
        must(&["ip", "netns", "add", &net.listen]);
        must(&[
            "ip",
            "link",
            "add",
            SEND_IF,
            "netns",
            &net.send,
            "type",
            "veth",
            "peer",
            "name",
            LISTEN_IF,
            "netns",
            &net.listen,
        ]);
        for (ns, dev, addr) in [
            (&net.send, SEND_IF, "10.79.0.1/24"),
            (&net.listen, LISTEN_IF, "10.79.0.2/24"),
        ] {
            must(&["ip", "-n", ns, "addr", "add", addr, "dev", dev]);
            must(&["ip", "-n", ns, "link", "set", dev, "up"]);
        }
        net
    }

    /// `diskless wake ARGS` run in the sender namespace.
    fn wake(&self, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.send])
            .arg(env!("CARGO_BIN_EXE_diskless"))
            .arg("wake")
            .args(args)
            .output()
            .unwrap()
    }

    fn sender_mac(&self) -> [u8; 6] {
        let out = must(&["ip", "-n", &self.send, "-br", "link", "show", SEND_IF]);
        let text = String::from_utf8_lossy(&out.stdout);
        let mac: Mac = text.split_whitespace().nth(2).unwrap().parse().unwrap();
        mac.0
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and so the pair.
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.send])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.listen])
            .output();
    }
}

/// The listener's sockets, made inside the listener namespace (a socket keeps the namespace
/// it was made in).
struct Listener {
    udp: UdpSocket,
    raw: Socket,
}

impl Listener {
    fn open(ns: &str) -> Listener {
        let ns = ns.to_string();
        std::thread::spawn(move || {
            common::enter_netns(&ns);
            let udp = UdpSocket::bind("0.0.0.0:9").unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let protocol = Protocol::from(i32::from(ETHERTYPE.to_be()));
            let raw = Socket::new(Domain::PACKET, Type::RAW, Some(protocol)).unwrap();
            raw.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            Listener { udp, raw }
        })
        .join()
        .unwrap()
    }

    /// The MACs of the magic packets received until the line is quiet, per kind; panics on a
    /// malformed packet or frame.
    fn received(&self, sender_mac: [u8; 6]) -> (Vec<Mac>, Vec<Mac>) {
        let mut udp = Vec::new();
        let mut buf = [0u8; 2048];
        while let Ok(n) = self.udp.recv(&mut buf) {
            udp.push(parse_magic_packet(&buf[..n]).expect("a well-formed UDP magic packet"));
        }
        let mut ethernet = Vec::new();
        let mut frame = [MaybeUninit::<u8>::uninit(); 2048];
        while let Ok(n) = self.raw.recv(&mut frame) {
            // SAFETY: recv initialised the first n bytes.
            let frame: Vec<u8> = frame[..n]
                .iter()
                .map(|b| unsafe { b.assume_init() })
                .collect();
            assert_eq!(&frame[0..6], &[0xff; 6], "sent to the Ethernet broadcast");
            assert_eq!(&frame[6..12], &sender_mac, "sent from the sender's MAC");
            assert_eq!(&frame[12..14], &ETHERTYPE.to_be_bytes(), "ethertype");
            ethernet.push(parse_magic_packet(&frame[14..]).expect("a well-formed frame"));
        }
        (udp, ethernet)
    }
}

fn macs(list: &[&str]) -> Vec<Mac> {
    list.iter().map(|m| m.parse().unwrap()).collect()
}

fn sorted(list: Vec<Mac>) -> Vec<Mac> {
    let set: BTreeSet<Mac> = list.iter().copied().collect();
    assert_eq!(set.len(), list.len(), "one packet per MAC: {list:?}");
    set.into_iter().collect()
}

#[test]
fn wake_sends_one_udp_and_one_ethernet_magic_packet_per_mac_asked() {
    if !prerequisites() {
        return;
    }
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("diskless.toml");
    std::fs::write(
        &config,
        format!(
            "interface = \"{SEND_IF}\"\n\
             [[client]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"pc1\"\n\
             [[client]]\nmac = \"52:54:00:00:00:02\"\nhostname = \"pc2\"\n\
             [[client]]\nmac = \"52:54:00:00:00:03\"\n"
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let listener = Listener::open(&net.listen);
    let sender_mac = net.sender_mac();

    // A hostname of the config and a MAC that is not in it.
    let out = net.wake(&["--config", config, "pc2", "aa-bb-cc-dd-ee-0f"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("woke pc2 (52:54:00:00:00:02) on wksend0"),
        "{stdout}"
    );
    let (udp, ethernet) = listener.received(sender_mac);
    let asked = macs(&["52:54:00:00:00:02", "aa:bb:cc:dd:ee:0f"]);
    assert_eq!(sorted(udp), asked);
    assert_eq!(sorted(ethernet), asked);

    // Every client of the config; the interface given by flag wins over the config's.
    let out = net.wake(&["--config", config, "--all", "--interface", SEND_IF]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (udp, ethernet) = listener.received(sender_mac);
    let all = macs(&[
        "52:54:00:00:00:01",
        "52:54:00:00:00:02",
        "52:54:00:00:00:03",
    ]);
    assert_eq!(sorted(udp), all);
    assert_eq!(sorted(ethernet), all);

    // A name the config does not have: an error naming it, and nothing sent.
    let out = net.wake(&["--config", config, "pc1", "pc9"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("\"pc9\" is neither"), "{stderr}");
    assert_eq!(listener.received(sender_mac), (vec![], vec![]));

    // An interface that is not there.
    let out = net.wake(&["--config", config, "--interface", "nosuch0", "pc1"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no interface named nosuch0"), "{stderr}");
}
