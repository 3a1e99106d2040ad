//! Responder behaviour, driven with hand-built packets and a fixed clock.

use std::time::{Duration, UNIX_EPOCH};

use dhcproto::{Decodable, Decoder};

use super::*;
use crate::classify::tests::*;
use crate::config::tests::full;
use crate::fuzzing::TestPolicy;
use crate::wire::tests::raw_request;
use crate::wire::BOOTP_MIN_LEN;

const T0: u64 = 1_750_000_000;
const SERVER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
const FROM_NOWHERE: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 68);

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(T0 + secs)
}

fn policy() -> TestPolicy {
    TestPolicy::new(SERVER)
}

fn responder() -> Responder {
    Responder::new(full(), LeaseStore::new()).unwrap()
}

fn proxy_responder() -> Responder {
    let mut c = full();
    c.mode = Mode::Proxy;
    c.range = None;
    c.reservations.clear();
    Responder::new(c, LeaseStore::new()).unwrap()
}

fn mac(n: u8) -> Mac {
    Mac([2, 0, 0, 0, 1, n])
}

fn discover(m: impl Into<Mac>) -> Vec<u8> {
    let m = m.into();
    raw_request(0xd15c_0000 | u32::from(m.0[5]), m.0, [0; 4], &[(53, &[1])])
}

fn request(m: impl Into<Mac>, ip: Ipv4Addr, server: Option<Ipv4Addr>) -> Vec<u8> {
    let m = m.into();
    let ip = ip.octets();
    let sid = server.map(|s| s.octets());
    let mut o: Vec<(u8, &[u8])> = vec![(53, &[3]), (50, &ip)];
    if let Some(s) = &sid {
        o.push((54, s));
    }
    raw_request(0x5e1e_0000, m.0, [0; 4], &o)
}

fn handle(r: &mut Responder, t: u64, p: &[u8]) -> Handled {
    r.handle(at(t), p, SERVER_PORT, FROM_NOWHERE, &policy())
        .unwrap()
}

fn decode(h: &Handled) -> Message {
    let bytes = &h.reply.as_ref().expect("a reply").bytes;
    assert!(
        bytes.len() >= BOOTP_MIN_LEN,
        "reply is {} bytes",
        bytes.len()
    );
    Message::decode(&mut Decoder::new(bytes)).unwrap()
}

/// The `file` field up to its NUL, read from the raw message (dhcproto's
/// decoder keeps the NUL).
fn file(m: &Message) -> Option<String> {
    m.fname()
        .map(|f| String::from_utf8_lossy(f.split(|&b| b == 0).next().unwrap()).into_owned())
}

fn opt(m: &Message, code: u8) -> Option<&DhcpOption> {
    m.opts().get(OptionCode::from(code))
}

/// Full exchange: DISCOVER, OFFER, REQUEST, ACK. Returns the address.
fn lease(r: &mut Responder, t: u64, m: Mac) -> Ipv4Addr {
    let offer = decode(&handle(r, t, &discover(m)));
    let ip = offer.yiaddr();
    let ack = handle(r, t, &request(m, ip, Some(SERVER)));
    assert_eq!(decode(&ack).opts().msg_type(), Some(MessageType::Ack));
    ip
}

#[test]
fn offer_carries_address_and_network_options() {
    let mut r = responder();
    let h = handle(&mut r, 0, &udhcpc_discover());
    let m = decode(&h);
    assert_eq!(m.opcode(), Opcode::BootReply);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
    assert_eq!(m.xid(), 0x5555_0001);
    assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 9, 0, 100));
    assert_eq!(m.chaddr(), &MAC);
    assert_eq!(
        opt(&m, 1),
        Some(&DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 255, 0)))
    );
    assert_eq!(
        opt(&m, 3),
        Some(&DhcpOption::Router(vec![Ipv4Addr::new(10, 9, 0, 254)]))
    );
    assert_eq!(
        opt(&m, 6),
        Some(&DhcpOption::DomainNameServer(vec![SERVER]))
    );
    assert_eq!(
        opt(&m, 15),
        Some(&DhcpOption::DomainName("lab.example".into()))
    );
    assert_eq!(opt(&m, 51), Some(&DhcpOption::AddressLeaseTime(3600)));
    assert_eq!(opt(&m, 54), Some(&DhcpOption::ServerIdentifier(SERVER)));
    // A plain client gets no boot file.
    assert_eq!(opt(&m, 67), None);
    assert_eq!(m.fname(), None);
    assert_eq!(h.reply.as_ref().unwrap().dest, Destination::Broadcast);
    // An offer is not worth saving.
    assert!(!h.leases_changed);
    assert_eq!(
        h.event.unwrap().action,
        EventAction::Offer {
            ip: Some(Ipv4Addr::new(10, 9, 0, 100)),
            file: None
        }
    );
}

#[test]
fn request_binds_and_acks() {
    let mut r = responder();
    handle(&mut r, 0, &discover(mac(1)));
    let h = handle(
        &mut r,
        1,
        &request(mac(1), Ipv4Addr::new(10, 9, 0, 100), Some(SERVER)),
    );
    let m = decode(&h);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 9, 0, 100));
    assert!(h.leases_changed);
    let l = r.leases().get(mac(1)).unwrap();
    assert_eq!(l.state, LeaseState::Bound);
    assert_eq!(l.expires, T0 + 1 + 3600);
}

#[test]
fn reservation_gets_its_address_and_hostname() {
    let mut r = responder();
    let m = decode(&handle(&mut r, 0, &discover([2, 0, 0, 0, 0, 7])));
    assert_eq!(m.yiaddr(), Ipv4Addr::new(10, 9, 0, 7));
    assert_eq!(opt(&m, 12), Some(&DhcpOption::Hostname("ws7".into())));
    // Another client may not take the reserved address.
    let h = handle(
        &mut r,
        0,
        &request(mac(1), Ipv4Addr::new(10, 9, 0, 7), None),
    );
    assert_eq!(decode(&h).opts().msg_type(), Some(MessageType::Nak));
}

#[test]
fn nak_on_wrong_requested_address() {
    let mut r = responder();
    let a = lease(&mut r, 0, mac(1));
    // Another client asks for a's address (INIT-REBOOT).
    let h = handle(&mut r, 5, &request(mac(2), a, None));
    let m = decode(&h);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Nak));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(h.reply.unwrap().dest, Destination::Broadcast);
    // Off-subnet address, as after moving networks.
    let h = handle(
        &mut r,
        5,
        &request(mac(3), Ipv4Addr::new(192, 168, 1, 50), None),
    );
    assert!(matches!(
        h.event.unwrap().action,
        EventAction::Nak {
            reason: "address is not on this network",
            ..
        }
    ));
    // In-subnet but outside the pool.
    let h = handle(
        &mut r,
        5,
        &request(mac(3), Ipv4Addr::new(10, 9, 0, 50), Some(SERVER)),
    );
    assert_eq!(decode(&h).opts().msg_type(), Some(MessageType::Nak));
}

#[test]
fn relayed_requests_go_back_to_the_relay_and_foreign_subnets_are_ignored() {
    let mut r = responder();
    let mut p = discover(mac(1));
    p[24..28].copy_from_slice(&[10, 9, 0, 254]); // giaddr
    let h = handle(&mut r, 0, &p);
    assert_eq!(decode(&h).giaddr(), Ipv4Addr::new(10, 9, 0, 254));
    assert_eq!(
        h.reply.unwrap().dest,
        Destination::Unicast(SocketAddrV4::new(Ipv4Addr::new(10, 9, 0, 254), 67))
    );
    p[24..28].copy_from_slice(&[192, 168, 5, 1]);
    let h = handle(&mut r, 0, &p);
    assert!(h.reply.is_none());
    assert!(h.ignored.is_some());
}

#[test]
fn renew_is_unicast_to_ciaddr() {
    let mut r = responder();
    let ip = lease(&mut r, 0, mac(1));
    let p = raw_request(9, mac(1), ip.octets(), &[(53, &[3])]);
    let h = handle(&mut r, 1800, &p);
    let m = decode(&h);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.ciaddr(), ip);
    assert_eq!(
        h.reply.unwrap().dest,
        Destination::Unicast(SocketAddrV4::new(ip, 68))
    );
    assert_eq!(r.leases().get(mac(1)).unwrap().expires, T0 + 1800 + 3600);
}

#[test]
fn request_for_another_server_frees_our_offer() {
    let mut r = responder();
    let offered = decode(&handle(&mut r, 0, &discover(mac(1)))).yiaddr();
    let h = handle(
        &mut r,
        1,
        &request(
            mac(1),
            Ipv4Addr::new(10, 9, 0, 222),
            Some(Ipv4Addr::new(10, 9, 0, 2)),
        ),
    );
    assert!(h.reply.is_none());
    // The address is free again for the next client at once.
    assert_eq!(
        decode(&handle(&mut r, 2, &discover(mac(2)))).yiaddr(),
        offered
    );
}

#[test]
fn offers_are_held_then_expire() {
    let mut r = responder();
    let a = decode(&handle(&mut r, 0, &discover(mac(1)))).yiaddr();
    let b = decode(&handle(&mut r, 1, &discover(mac(2)))).yiaddr();
    assert_ne!(a, b);
    // Same client asks again: same offer.
    assert_eq!(decode(&handle(&mut r, 2, &discover(mac(1)))).yiaddr(), a);
    // Long after the hold, a third client may take a once both offers
    // expired and the never-used address is gone.
    let c = decode(&handle(&mut r, 3, &discover(mac(3)))).yiaddr();
    assert!(c != a && c != b);
    let d = decode(&handle(&mut r, 3 + OFFER_HOLD_SECS + 1, &discover(mac(4)))).yiaddr();
    assert_eq!(d, a);
}

#[test]
fn pool_exhaustion_is_reported_not_answered() {
    let mut r = responder();
    for n in 1..=3 {
        lease(&mut r, 0, mac(n));
    }
    let h = handle(&mut r, 1, &discover(mac(9)));
    assert!(h.reply.is_none());
    assert_eq!(h.event.unwrap().action, EventAction::PoolExhausted);
}

#[test]
fn release_frees_the_address() {
    let mut r = responder();
    let ip = lease(&mut r, 0, mac(1));
    let p = raw_request(
        9,
        mac(1),
        ip.octets(),
        &[(53, &[7]), (54, &SERVER.octets())],
    );
    let h = handle(&mut r, 10, &p);
    assert!(h.reply.is_none());
    assert!(h.leases_changed);
    assert_eq!(h.event.unwrap().action, EventAction::Release { ip });
    assert!(r.leases().get(mac(1)).is_none());
    assert_eq!(decode(&handle(&mut r, 11, &discover(mac(2)))).yiaddr(), ip);
}

#[test]
fn decline_marks_the_address_bad() {
    let mut r = responder();
    let ip = lease(&mut r, 0, mac(1));
    let p = raw_request(
        9,
        mac(1),
        [0; 4],
        &[(53, &[4]), (50, &ip.octets()), (54, &SERVER.octets())],
    );
    let h = handle(&mut r, 10, &p);
    assert!(h.reply.is_none());
    assert!(h.leases_changed);
    assert_eq!(h.event.unwrap().action, EventAction::Decline { ip });
    for n in 1..=2 {
        assert_ne!(decode(&handle(&mut r, 11, &discover(mac(n)))).yiaddr(), ip);
    }
    // Nobody may request it either, until the quarantine (a lease time) ends.
    let h = handle(&mut r, 12, &request(mac(5), ip, None));
    assert_eq!(decode(&h).opts().msg_type(), Some(MessageType::Nak));
    let h = handle(&mut r, 10 + 3600 + 1, &request(mac(5), ip, None));
    assert_eq!(decode(&h).opts().msg_type(), Some(MessageType::Ack));
}

#[test]
fn decline_of_someone_elses_address_is_ignored() {
    let mut r = responder();
    let ip = lease(&mut r, 0, mac(1));
    let p = raw_request(9, mac(2), [0; 4], &[(53, &[4]), (50, &ip.octets())]);
    let h = handle(&mut r, 10, &p);
    assert!(h.ignored.is_some());
    assert_eq!(r.leases().get(mac(1)).unwrap().ip, ip);
}

#[test]
fn inform_gets_options_but_no_lease() {
    let mut r = responder();
    let ciaddr = Ipv4Addr::new(10, 9, 0, 77);
    let p = raw_request(9, mac(1), ciaddr.octets(), &[(53, &[8])]);
    let h = handle(&mut r, 0, &p);
    let m = decode(&h);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.ciaddr(), ciaddr);
    assert_eq!(opt(&m, 51), None);
    assert!(opt(&m, 1).is_some() && opt(&m, 54).is_some());
    assert_eq!(
        h.reply.unwrap().dest,
        Destination::Unicast(SocketAddrV4::new(ciaddr, 68))
    );
    assert!(r.leases().is_empty());
}

#[test]
fn bios_pxe_full_mode_gets_undionly_over_tftp() {
    let mut r = responder();
    let m = decode(&handle(&mut r, 0, &bios_pxe_discover()));
    assert_eq!(file(&m).as_deref(), Some("undionly.kpxe"));
    assert_eq!(m.siaddr(), SERVER);
    assert_eq!(
        opt(&m, 66),
        Some(&DhcpOption::TFTPServerName(b"10.9.0.1".to_vec()))
    );
    assert_eq!(
        opt(&m, 67),
        Some(&DhcpOption::BootfileName(b"undionly.kpxe".to_vec()))
    );
    // No "PXEClient": that would send the ROM looking for port 4011.
    assert_eq!(opt(&m, 60), None);
    assert!(opt(&m, 97).is_some());
}

#[test]
fn uefi_full_mode_gets_ipxe_efi() {
    let mut r = responder();
    let m = decode(&handle(&mut r, 0, &uefi_pxe_discover()));
    assert_eq!(file(&m).as_deref(), Some("ipxe.efi"));
    assert_eq!(opt(&m, 60), None);
    assert_eq!(opt(&m, 43), None);
}

#[test]
fn uefi_http_gets_url_and_httpclient() {
    let mut r = responder();
    let m = decode(&handle(&mut r, 0, &uefi_http_discover()));
    assert_eq!(
        opt(&m, 67),
        Some(&DhcpOption::BootfileName(
            b"http://10.9.0.1/ipxe.efi".to_vec()
        ))
    );
    assert_eq!(
        opt(&m, 60),
        Some(&DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()))
    );
    assert_eq!(opt(&m, 66), None);
}

#[test]
fn ipxe_gets_script_and_no_pxedhcp_never_the_chainloader() {
    let mut r = responder();
    let script = "http://10.9.0.1/boot/52-54-00-ab-cd-ef.ipxe";
    let offer = decode(&handle(&mut r, 0, &ipxe_discover()));
    let ack_pkt = raw_request(
        0x4444_0001,
        MAC,
        [0; 4],
        &[
            (53, &[3]),
            (50, &offer.yiaddr().octets()),
            (54, &SERVER.octets()),
            (77, b"iPXE"),
            (93, &[0, 0]),
        ],
    );
    let ack = decode(&handle(&mut r, 1, &ack_pkt));
    for m in [&offer, &ack] {
        assert_eq!(file(m).as_deref(), Some(script));
        assert_eq!(
            opt(m, 67),
            Some(&DhcpOption::BootfileName(script.as_bytes().to_vec()))
        );
        let no_pxedhcp = DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            vec![176, 1, 1],
        ));
        assert_eq!(opt(m, 175), Some(&no_pxedhcp));
    }
    // Whatever architecture iPXE reports, it never gets a chainloader.
    for arch in [[0u8, 0], [0, 7], [0, 9]] {
        let p = raw_request(1, MAC, [0; 4], &[(53, &[1]), (93, &arch), (77, b"iPXE")]);
        let m = decode(&handle(&mut r, 2, &p));
        assert_eq!(file(&m).as_deref(), Some(script));
    }
}

#[test]
fn long_url_goes_in_option_67_only() {
    let mut p = policy();
    p.script_url = Some(format!(
        "http://10.9.0.1/{}/52-54-00-ab-cd-ef.ipxe",
        "x".repeat(150)
    ));
    let mut r = responder();
    let h = r
        .handle(at(0), &ipxe_discover(), 67, FROM_NOWHERE, &p)
        .unwrap();
    let m = decode(&h);
    assert_eq!(m.fname(), None);
    match opt(&m, 67) {
        Some(DhcpOption::BootfileName(f)) => assert!(f.len() > 150),
        other => panic!("option 67 is {other:?}"),
    }
}

#[test]
fn proxy_never_sets_yiaddr_and_ignores_plain_clients() {
    let mut r = proxy_responder();
    let h = handle(&mut r, 0, &udhcpc_discover());
    assert!(h.reply.is_none());
    assert!(h.ignored.is_some());
    for p in [
        bios_pxe_discover(),
        uefi_pxe_discover(),
        ipxe_discover(),
        uefi_http_discover(),
    ] {
        let h = handle(&mut r, 0, &p);
        let m = decode(&h);
        assert_eq!(m.opts().msg_type(), Some(MessageType::Offer));
        assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert_eq!(opt(&m, 51), None);
        assert_eq!(opt(&m, 54), Some(&DhcpOption::ServerIdentifier(SERVER)));
        assert!(m.fname().is_some());
    }
    // REQUESTs on port 67 belong to the real DHCP server.
    let h = handle(
        &mut r,
        0,
        &request(
            MAC,
            Ipv4Addr::new(10, 9, 0, 100),
            Some(Ipv4Addr::new(10, 9, 0, 2)),
        ),
    );
    assert!(h.reply.is_none());
    assert!(r.leases().is_empty());
}

#[test]
fn proxy_option_43_for_bios_only() {
    let mut r = proxy_responder();
    let bios = decode(&handle(&mut r, 0, &bios_pxe_discover()));
    assert_eq!(
        opt(&bios, 60),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(
        opt(&bios, 43),
        Some(&DhcpOption::VendorExtensions(vec![6, 1, 8, 255]))
    );
    assert_eq!(
        opt(&bios, 97),
        Some(&DhcpOption::ClientMachineIdentifier((0..17).collect()))
    );
    let uefi = decode(&handle(&mut r, 0, &uefi_pxe_discover()));
    assert_eq!(
        opt(&uefi, 60),
        Some(&DhcpOption::ClassIdentifier(b"PXEClient".to_vec()))
    );
    assert_eq!(opt(&uefi, 43), None);
    // No no-pxedhcp in proxy mode: there, we are the proxy iPXE waits for.
    let ipxe = decode(&handle(&mut r, 0, &ipxe_discover()));
    assert_eq!(opt(&ipxe, 175), None);
}

#[test]
fn port_4011_request_gets_boot_file_unicast_back() {
    let mut r = proxy_responder();
    let client = Ipv4Addr::new(10, 9, 0, 123);
    let p = raw_request(
        0x2222_0002,
        MAC,
        client.octets(),
        &[
            (53, &[3]),
            (93, &[0, 7]),
            (60, b"PXEClient:Arch:00007:UNDI:003000"),
        ],
    );
    let from = SocketAddrV4::new(client, 4011);
    let h = r.handle(at(0), &p, PXE_PORT, from, &policy()).unwrap();
    let m = decode(&h);
    assert_eq!(m.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(m.yiaddr(), Ipv4Addr::UNSPECIFIED);
    assert_eq!(m.ciaddr(), client);
    assert_eq!(file(&m).as_deref(), Some("ipxe.efi"));
    assert_eq!(m.siaddr(), SERVER);
    assert_eq!(h.reply.unwrap().dest, Destination::Unicast(from));
    assert_eq!(h.event.unwrap().port, PXE_PORT);
    // A plain client on 4011 gets nothing.
    let p = raw_request(1, MAC, client.octets(), &[(53, &[3])]);
    assert!(r
        .handle(at(0), &p, PXE_PORT, from, &policy())
        .unwrap()
        .reply
        .is_none());
}

#[test]
fn leases_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("leases.json");
    let mut r = responder();
    let a = lease(&mut r, 0, mac(1));
    let b = lease(&mut r, 0, mac(2));
    r.leases().save(&path).unwrap();

    let mut r = Responder::new(full(), LeaseStore::load(&path).unwrap()).unwrap();
    // Order reversed: each still gets its own address back.
    assert_eq!(decode(&handle(&mut r, 100, &discover(mac(2)))).yiaddr(), b);
    assert_eq!(decode(&handle(&mut r, 100, &discover(mac(1)))).yiaddr(), a);
    // And a newcomer does not get either.
    let c = decode(&handle(&mut r, 100, &discover(mac(3)))).yiaddr();
    assert!(c != a && c != b);
}

#[test]
fn returning_client_gets_expired_address_back() {
    let mut r = responder();
    let a = lease(&mut r, 0, mac(1));
    assert_eq!(
        decode(&handle(&mut r, 10 * 3600, &discover(mac(1)))).yiaddr(),
        a
    );
}

#[test]
fn malformed_packets_are_errors_and_the_responder_goes_on() {
    let mut r = responder();
    let good = udhcpc_discover();
    let mut bad: Vec<Vec<u8>> = vec![vec![], vec![0; 10], vec![0xff; 600]];
    for cut in [1, 100, 239, 240, 241, 245] {
        bad.push(good[..cut].to_vec());
    }
    let mut reply_op = good.clone();
    reply_op[0] = 2;
    for p in &bad {
        let e = r.handle(at(0), p, 67, FROM_NOWHERE, &policy());
        assert!(
            e.as_ref().is_err_and(|e| e.is_packet_error()),
            "{:?} -> {e:?}",
            p.len()
        );
    }
    assert!(handle(&mut r, 0, &reply_op).ignored.is_some());
    assert!(handle(&mut r, 0, &good).reply.is_some());
}

/// A small deterministic mutation fuzzer over the fixtures: byte flips,
/// truncations, length-byte rewrites, and splices, through the whole
/// responder (see `crate::fuzzing` for the invariants checked).
#[test]
fn mutated_packets_keep_the_invariants() {
    let seeds = [
        bios_pxe_discover(),
        uefi_pxe_discover(),
        uefi_http_discover(),
        ipxe_discover(),
        udhcpc_discover(),
        request(mac(1), Ipv4Addr::new(10, 9, 0, 100), Some(SERVER)),
        raw_request(9, MAC, [10, 9, 0, 100], &[(53, &[7])]),
        raw_request(9, MAC, [10, 9, 0, 77], &[(53, &[8])]),
        raw_request(9, MAC, [0; 4], &[(53, &[4]), (50, &[10, 9, 0, 100])]),
    ];
    let mut h = crate::fuzzing::Harness::new();
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let mut rand = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in &seeds {
        h.packet(seed);
    }
    for _ in 0..20_000 {
        let mut p = seeds[rand() as usize % seeds.len()].clone();
        for _ in 0..(rand() % 4 + 1) {
            let i = rand() as usize % p.len();
            match rand() % 5 {
                0 => p[i] ^= 1 << (rand() % 8),
                1 => p[i] = rand() as u8,
                2 => p.truncate(i),
                3 => {
                    let j = rand() as usize % p.len();
                    let other = seeds[rand() as usize % seeds.len()].clone();
                    p.extend_from_slice(&other[j.min(other.len())..]);
                }
                _ => p.insert(i.min(p.len()), rand() as u8),
            }
            if p.is_empty() {
                break;
            }
        }
        h.packet(&p);
    }
}

/// The seed corpus of the fuzz target (`fuzz/seeds/dhcp_packet/`, copies of the fixtures above)
/// is made of packets the parser accepts, so the fuzzer starts past the BOOTP header and the
/// magic cookie; each file is split on "DHCP" as the target does.
#[test]
fn fuzz_seeds_are_packets_the_responder_answers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/dhcp_packet");
    let mut answered = 0;
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/dhcp_packet") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        files += 1;
        let mut r = responder();
        let mut rest = &bytes[..];
        loop {
            let end = rest
                .windows(4)
                .position(|w| w == b"DHCP")
                .unwrap_or(rest.len());
            let packet = &rest[..end];
            assert!(
                wire::parse(packet).is_ok(),
                "{} does not parse",
                path.display()
            );
            if r.handle(at(0), packet, 67, FROM_NOWHERE, &policy())
                .is_ok_and(|h| h.reply.is_some())
            {
                answered += 1;
            }
            if end == rest.len() {
                break;
            }
            rest = &rest[end + 4..];
        }
    }
    assert!(files >= 8, "{files} seeds in {}", dir.display());
    assert!(answered >= 6, "only {answered} seed packets were answered");
}
