//! The sans-IO DHCP server: bytes and the time in, a reply (and what
//! happened) out. No sockets, no clock.
//!
//! Full mode follows RFC 2131 section 4.3; proxy mode the PXE 2.1
//! specification's proxyDHCP (section 2.2.4) and boot-server exchange on
//! port 4011.
//!
//! Decisions worth knowing:
//! - No address is pinged before it is offered (RFC 2131 4.4.1 says
//!   SHOULD): a ping costs the client ~3 s per offer and the lease store
//!   and DECLINE handle the conflicts it would find.
//! - In full mode, PXE clients get a plain DHCP offer with `siaddr` and a
//!   boot file, and no option 60 "PXEClient": with it, a ROM expects a
//!   PXE boot server on port 4011 (Intel ROMs fail with PXE-E55, UEFI does
//!   a BINL request), which full mode does not run.
//! - iPXE in full mode gets option 175.176 ("no-pxedhcp") = 1, otherwise
//!   it waits ~3 s for proxyDHCP offers that will never come.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::SystemTime;

use dhcproto::v4::{DhcpOption, Message, MessageType, Opcode, OptionCode, UnknownOption};

use crate::classify::{arch, classify, ClientInfo, ClientKind};
use crate::config::{DhcpConfig, Mode};
use crate::lease::{unix_secs, Lease, LeaseState, LeaseStore, OFFER_HOLD_SECS};
use crate::policy::{BootOffer, BootPolicy};
use crate::wire::{self, ReplyRepr};
use crate::Mac;
use crate::{DhcpError, CLIENT_PORT, PXE_PORT, SERVER_PORT};

/// Where a reply goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// 255.255.255.255:68 on the served interface.
    Broadcast,
    /// A unicast address and port.
    Unicast(SocketAddrV4),
}

/// An encoded reply and its destination. Send it from the socket the
/// request arrived on (port 67 or 4011).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The BOOTP message, at least 300 bytes.
    pub bytes: Vec<u8>,
    /// Where to send it.
    pub dest: Destination,
}

/// What the server did for a client, for logs and the boot record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DhcpEvent {
    /// Client MAC.
    pub mac: Mac,
    /// Firmware kind.
    pub kind: ClientKind,
    /// Option 93.
    pub arch: Option<u16>,
    /// Port the request arrived on (67 or 4011).
    pub port: u16,
    /// What was done.
    pub action: EventAction,
}

/// The action in a [`DhcpEvent`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventAction {
    /// DHCPOFFER sent; `ip` is `None` for a proxy offer.
    Offer {
        /// Offered address.
        ip: Option<Ipv4Addr>,
        /// Boot file or URL.
        file: Option<String>,
    },
    /// DHCPACK sent; `ip` is `None` for INFORM and port-4011 replies.
    Ack {
        /// Leased address.
        ip: Option<Ipv4Addr>,
        /// Boot file or URL.
        file: Option<String>,
    },
    /// DHCPNAK sent.
    Nak {
        /// Address the client asked for.
        requested: Option<Ipv4Addr>,
        /// Why.
        reason: &'static str,
    },
    /// The client released its address.
    Release {
        /// Released address.
        ip: Ipv4Addr,
    },
    /// The client found its address in use.
    Decline {
        /// Declined address.
        ip: Ipv4Addr,
    },
    /// DISCOVER with no free address in the pool.
    PoolExhausted,
}

/// Result of [`Responder::handle`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Handled {
    /// Reply to send, if any.
    pub reply: Option<Reply>,
    /// What was done for the client, if anything.
    pub event: Option<DhcpEvent>,
    /// The lease store changed in a way that should be saved.
    pub leases_changed: bool,
    /// Why the packet was ignored (for debug logs).
    pub ignored: Option<&'static str>,
}

impl Handled {
    fn ignore(reason: &'static str) -> Self {
        Handled {
            ignored: Some(reason),
            ..Default::default()
        }
    }
}

/// The DHCP state machine: configuration plus leases.
#[derive(Debug, Clone)]
pub struct Responder {
    config: DhcpConfig,
    leases: LeaseStore,
}

/// Encapsulated iPXE option 175, sub-option 176 "no-pxedhcp" = 1.
const IPXE_NO_PXEDHCP: [u8; 3] = [176, 1, 1];
/// PXE vendor option 43, sub-option 6 (discovery control) = 8: "boot file
/// name present: download it, skip boot-server discovery"; then End.
const PXE_BYPASS_DISCOVERY: [u8; 4] = [6, 1, 8, 255];

impl Responder {
    /// Check `config` and start with `leases`.
    pub fn new(config: DhcpConfig, leases: LeaseStore) -> Result<Self, DhcpError> {
        config.validate()?;
        Ok(Responder { config, leases })
    }

    /// The configuration.
    pub fn config(&self) -> &DhcpConfig {
        &self.config
    }

    /// The leases (save them when [`Handled::leases_changed`]).
    pub fn leases(&self) -> &LeaseStore {
        &self.leases
    }

    /// Handle one packet that arrived on `port` (67 or 4011) from `source`.
    ///
    /// Errors are for packets that are malformed or unusable; the caller
    /// logs and drops them.
    pub fn handle(
        &mut self,
        now: SystemTime,
        packet: &[u8],
        port: u16,
        source: SocketAddrV4,
        policy: &dyn BootPolicy,
    ) -> Result<Handled, DhcpError> {
        let msg = wire::parse(packet)?;
        if msg.opcode() != Opcode::BootRequest {
            return Ok(Handled::ignore("not a BOOTREQUEST"));
        }
        let client = classify(&msg)?;
        let now = unix_secs(now);
        self.leases.expire_declined(now);
        let mut handled = if port == PXE_PORT {
            self.boot_server(&msg, &client, source, policy)?
        } else {
            match self.config.mode {
                // We serve one subnet: a relay on another one needs
                // addresses we do not have (RFC 2131 4.3.1 picks the pool
                // by giaddr).
                Mode::Full
                    if !client.giaddr.is_unspecified() && !self.config.in_subnet(client.giaddr) =>
                {
                    Handled::ignore("relayed from a subnet we do not serve")
                }
                Mode::Proxy => self.proxy(&msg, &client, policy)?,
                Mode::Full => match client.msg_type {
                    MessageType::Discover => self.discover(&msg, &client, now, policy)?,
                    MessageType::Request => self.request(&msg, &client, now, policy)?,
                    MessageType::Release => self.release(&client),
                    MessageType::Decline => self.decline(&client, now),
                    MessageType::Inform => self.inform(&msg, &client, policy)?,
                    _ => Handled::ignore("message type not handled by a server"),
                },
            }
        };
        if let Some(ev) = handled.event.as_mut() {
            ev.port = port;
        }
        handled.leases_changed = self.leases.take_dirty();
        Ok(handled)
    }

    fn event(client: &ClientInfo, action: EventAction) -> Option<DhcpEvent> {
        Some(DhcpEvent {
            mac: client.mac,
            kind: client.kind,
            arch: client.arch,
            port: SERVER_PORT,
            action,
        })
    }

    /// The host name for `mac`: its reservation's, else the policy's.
    fn hostname(&self, mac: Mac, policy: &dyn BootPolicy) -> Option<String> {
        self.config
            .reservation(mac)
            .and_then(|r| r.hostname.clone())
            .or_else(|| policy.hostname(mac))
    }

    /// Whether `mac` may hold `ip` at `now`.
    fn assignable(&self, mac: Mac, ip: Ipv4Addr, now: u64) -> bool {
        let c = &self.config;
        if !c.is_client_address(ip) || self.leases.is_declined(ip, now) {
            return false;
        }
        match (c.reservation(mac), c.reservation_of_ip(ip)) {
            // A reserved client gets its address and no other.
            (Some(r), _) => return r.ip == ip,
            (None, Some(_)) => return false,
            (None, None) => {}
        }
        if !c.in_range(ip) {
            return false;
        }
        match self.leases.holder_of(ip) {
            Some(l) => l.mac == mac || l.expires <= now,
            None => true,
        }
    }

    /// Pick an address for `mac` (RFC 2131 4.3.1): its reservation, its
    /// previous address, the one it asks for, a never-used one, then one
    /// whose lease ran out.
    fn choose(&self, mac: Mac, requested: Option<Ipv4Addr>, now: u64) -> Option<Ipv4Addr> {
        if let Some(r) = self.config.reservation(mac) {
            return self.assignable(mac, r.ip, now).then_some(r.ip);
        }
        let previous = self.leases.get(mac).map(|l| l.ip);
        for ip in previous.into_iter().chain(requested) {
            if self.assignable(mac, ip, now) {
                return Some(ip);
            }
        }
        let (lo, hi) = self.config.range?;
        let used = self.leases.by_ip();
        let pool = || (u32::from(lo)..=u32::from(hi)).map(Ipv4Addr::from);
        pool()
            .find(|ip| !used.contains_key(ip) && self.assignable(mac, *ip, now))
            .or_else(|| pool().find(|ip| self.assignable(mac, *ip, now)))
    }

    /// Options every full-mode OFFER/ACK carries (RFC 2132 numbers).
    fn config_options(&self, hostname: Option<String>, with_lease: bool) -> Vec<DhcpOption> {
        let c = &self.config;
        let mut o = vec![DhcpOption::ServerIdentifier(c.server_ip)];
        if with_lease {
            let t = c.lease_time.as_secs() as u32;
            o.push(DhcpOption::AddressLeaseTime(t));
            o.push(DhcpOption::Renewal(t / 2));
            o.push(DhcpOption::Rebinding(t / 8 * 7));
        }
        o.push(DhcpOption::SubnetMask(c.netmask));
        if let Some(r) = c.router {
            o.push(DhcpOption::Router(vec![r]));
        }
        if !c.dns.is_empty() {
            o.push(DhcpOption::DomainNameServer(c.dns.clone()));
        }
        if let Some(h) = hostname {
            o.push(DhcpOption::Hostname(h));
        }
        if let Some(d) = &c.domain {
            o.push(DhcpOption::DomainName(d.clone()));
        }
        o
    }

    /// Boot fields for `client`: sets `siaddr`, `file`, and adds options
    /// 66/67 and the firmware-specific ones.
    fn add_boot(&self, r: &mut ReplyRepr, client: &ClientInfo, boot: &BootOffer, proxy: bool) {
        let server = self.config.server_ip;
        r.siaddr = server;
        // The `file` field is 128 bytes with a NUL; longer URLs travel in
        // option 67 only (iPXE and UEFI HTTP read it).
        let file = boot.file();
        if file.len() < 128 {
            r.file = Some(file.to_string());
        }
        if let BootOffer::Tftp(_) = boot {
            r.options
                .push(DhcpOption::TFTPServerName(server.to_string().into_bytes()));
        }
        r.options
            .push(DhcpOption::BootfileName(file.as_bytes().to_vec()));
        match client.kind {
            // UEFI HTTP boot accepts only offers that say "HTTPClient"
            // (UEFI spec 2.5+, "HTTP Boot", DHCP offer types).
            ClientKind::UefiHttp => r
                .options
                .push(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec())),
            // A proxy offer identifies itself as PXE with option 60
            // (PXE 2.1 spec, table 2-1).
            _ if proxy => r
                .options
                .push(DhcpOption::ClassIdentifier(b"PXEClient".to_vec())),
            _ => {}
        }
        let efi = client.arch.is_some_and(|a| a != arch::BIOS_X86);
        if proxy && !efi {
            // BIOS ROMs: skip boot-server discovery and download the file
            // named in this offer. EFI clients get no option 43: some UEFI
            // firmware ignores proxy offers that bypass discovery and only
            // works when it must ask port 4011 (pixiecore's dhcp.go notes
            // this, from TianoCore's PxeBcDhcp4 offer parsing).
            r.options
                .push(DhcpOption::VendorExtensions(PXE_BYPASS_DISCOVERY.to_vec()));
        }
        if let Some(g) = client.guid {
            if client.kind != ClientKind::Plain {
                r.options
                    .push(DhcpOption::ClientMachineIdentifier(g.to_vec()));
            }
        }
        if client.kind == ClientKind::Ipxe && !proxy {
            r.options.push(DhcpOption::Unknown(UnknownOption::new(
                OptionCode::Unknown(175),
                IPXE_NO_PXEDHCP.to_vec(),
            )));
        }
    }

    fn base_reply(&self, msg: &Message, client: &ClientInfo, msg_type: MessageType) -> ReplyRepr {
        ReplyRepr {
            msg_type,
            xid: msg.xid(),
            flags_broadcast: client.broadcast,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            yiaddr: Ipv4Addr::UNSPECIFIED,
            siaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: client.giaddr,
            mac: client.mac.0,
            sname: None,
            file: None,
            options: Vec::new(),
        }
    }

    /// RFC 2131 4.1: to the relay if relayed; to `ciaddr` if the client has
    /// an address; else broadcast (we cannot unicast to a host with no
    /// address without writing the ARP cache).
    fn destination(client: &ClientInfo, nak: bool) -> Destination {
        if !client.giaddr.is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(client.giaddr, SERVER_PORT))
        } else if !nak && !client.ciaddr.is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(client.ciaddr, CLIENT_PORT))
        } else {
            Destination::Broadcast
        }
    }

    fn reply(r: ReplyRepr, dest: Destination) -> Result<Option<Reply>, DhcpError> {
        Ok(Some(Reply {
            bytes: r.emit()?,
            dest,
        }))
    }

    fn discover(
        &mut self,
        msg: &Message,
        client: &ClientInfo,
        now: u64,
        policy: &dyn BootPolicy,
    ) -> Result<Handled, DhcpError> {
        let Some(ip) = self.choose(client.mac, client.requested_ip, now) else {
            return Ok(Handled {
                event: Self::event(client, EventAction::PoolExhausted),
                ..Default::default()
            });
        };
        let hostname = self.hostname(client.mac, policy);
        let keep_bound = self
            .leases
            .get(client.mac)
            .is_some_and(|l| l.ip == ip && l.state == LeaseState::Bound && l.expires > now);
        if !keep_bound {
            self.leases.insert(Lease {
                mac: client.mac,
                ip,
                expires: now + OFFER_HOLD_SECS,
                state: LeaseState::Offered,
                hostname: hostname.clone(),
            });
        }
        let mut r = self.base_reply(msg, client, MessageType::Offer);
        r.yiaddr = ip;
        r.options = self.config_options(hostname, true);
        self.answer_with_boot(r, client, policy, Some(ip))
    }

    fn request(
        &mut self,
        msg: &Message,
        client: &ClientInfo,
        now: u64,
        policy: &dyn BootPolicy,
    ) -> Result<Handled, DhcpError> {
        let ours = self.config.server_ip;
        let ciaddr = (!client.ciaddr.is_unspecified()).then_some(client.ciaddr);
        let wanted = match client.server_id {
            // SELECTING, answering another server's offer: free ours.
            Some(sid) if sid != ours => {
                if self
                    .leases
                    .get(client.mac)
                    .is_some_and(|l| l.state == LeaseState::Offered)
                {
                    self.leases.remove(client.mac);
                }
                return Ok(Handled::ignore("REQUEST for another server"));
            }
            // SELECTING our offer; INIT-REBOOT; RENEWING/REBINDING.
            _ => client.requested_ip.or(ciaddr),
        };
        let Some(ip) = wanted else {
            return self.nak(msg, client, None, "no address requested");
        };
        if client.server_id.is_none() && !self.config.in_subnet(ip) {
            return self.nak(msg, client, Some(ip), "address is not on this network");
        }
        if !self.assignable(client.mac, ip, now) {
            return self.nak(
                msg,
                client,
                Some(ip),
                "address not available to this client",
            );
        }
        let hostname = self.hostname(client.mac, policy);
        self.leases.insert(Lease {
            mac: client.mac,
            ip,
            expires: now + self.config.lease_time.as_secs(),
            state: LeaseState::Bound,
            hostname: hostname.clone(),
        });
        let mut r = self.base_reply(msg, client, MessageType::Ack);
        r.ciaddr = client.ciaddr;
        r.yiaddr = ip;
        r.options = self.config_options(hostname, true);
        self.answer_with_boot(r, client, policy, Some(ip))
    }

    fn nak(
        &mut self,
        msg: &Message,
        client: &ClientInfo,
        requested: Option<Ipv4Addr>,
        reason: &'static str,
    ) -> Result<Handled, DhcpError> {
        let mut r = self.base_reply(msg, client, MessageType::Nak);
        // RFC 2131 4.3.2: through a relay, ask it to broadcast.
        r.flags_broadcast = !client.giaddr.is_unspecified() || client.broadcast;
        r.options = vec![
            DhcpOption::ServerIdentifier(self.config.server_ip),
            DhcpOption::Message(reason.to_string()),
        ];
        Ok(Handled {
            reply: Self::reply(r, Self::destination(client, true))?,
            event: Self::event(client, EventAction::Nak { requested, reason }),
            ..Default::default()
        })
    }

    fn release(&mut self, client: &ClientInfo) -> Handled {
        if client.server_id.is_some_and(|s| s != self.config.server_ip) {
            return Handled::ignore("RELEASE for another server");
        }
        match self.leases.get(client.mac) {
            Some(l) if l.ip == client.ciaddr => {
                let ip = l.ip;
                self.leases.remove(client.mac);
                Handled {
                    event: Self::event(client, EventAction::Release { ip }),
                    ..Default::default()
                }
            }
            _ => Handled::ignore("RELEASE of an address the client does not hold"),
        }
    }

    fn decline(&mut self, client: &ClientInfo, now: u64) -> Handled {
        if client.server_id.is_some_and(|s| s != self.config.server_ip) {
            return Handled::ignore("DECLINE for another server");
        }
        let Some(ip) = client.requested_ip else {
            return Handled::ignore("DECLINE without option 50");
        };
        // Only an address we gave this client can be declined by it:
        // otherwise anyone could blacklist the pool.
        if self.leases.get(client.mac).map(|l| l.ip) != Some(ip) {
            return Handled::ignore("DECLINE of an address not leased to the client");
        }
        self.leases
            .decline(ip, now + self.config.lease_time.as_secs());
        Handled {
            event: Self::event(client, EventAction::Decline { ip }),
            ..Default::default()
        }
    }

    /// RFC 2131 4.3.5: configuration without an address or lease time.
    fn inform(
        &mut self,
        msg: &Message,
        client: &ClientInfo,
        policy: &dyn BootPolicy,
    ) -> Result<Handled, DhcpError> {
        let mut r = self.base_reply(msg, client, MessageType::Ack);
        r.ciaddr = client.ciaddr;
        r.options = self.config_options(self.hostname(client.mac, policy), false);
        self.answer_with_boot(r, client, policy, None)
    }

    /// The end of every full-mode answer: the boot file the policy gives the client (if
    /// any), the reply to where the client listens, and the event saying what it got.
    fn answer_with_boot(
        &self,
        mut r: ReplyRepr,
        client: &ClientInfo,
        policy: &dyn BootPolicy,
        ip: Option<Ipv4Addr>,
    ) -> Result<Handled, DhcpError> {
        let boot = policy.boot(client);
        if let Some(b) = &boot {
            self.add_boot(&mut r, client, b, false);
        }
        let file = boot.map(BootOffer::into_file);
        let action = match r.msg_type {
            MessageType::Offer => EventAction::Offer { ip, file },
            _ => EventAction::Ack { ip, file },
        };
        Ok(Handled {
            reply: Self::reply(r, Self::destination(client, false))?,
            event: Self::event(client, action),
            ..Default::default()
        })
    }

    /// ProxyDHCP on port 67: answer DISCOVERs of boot firmware with boot
    /// information and no address; everything else is the real DHCP
    /// server's business.
    fn proxy(
        &mut self,
        msg: &Message,
        client: &ClientInfo,
        policy: &dyn BootPolicy,
    ) -> Result<Handled, DhcpError> {
        if client.msg_type != MessageType::Discover {
            return Ok(Handled::ignore(
                "proxy mode answers DISCOVER only on port 67",
            ));
        }
        if !client.kind.is_boot() {
            return Ok(Handled::ignore("proxy mode: not a network-boot client"));
        }
        let Some(boot) = policy.boot(client) else {
            return Ok(Handled::ignore("policy gives this client no boot file"));
        };
        let mut r = self.base_reply(msg, client, MessageType::Offer);
        r.options = vec![DhcpOption::ServerIdentifier(self.config.server_ip)];
        self.add_boot(&mut r, client, &boot, true);
        Ok(Handled {
            reply: Self::reply(r, Self::destination(client, true))?,
            event: Self::event(
                client,
                EventAction::Offer {
                    ip: None,
                    file: Some(boot.into_file()),
                },
            ),
            ..Default::default()
        })
    }

    /// The PXE boot-server exchange on port 4011: a client that got a
    /// proxy offer without option 43 (UEFI) or iPXE after a proxy offer
    /// sends a REQUEST here, and gets an ACK with the boot file, sent back
    /// to where it came from.
    fn boot_server(
        &mut self,
        msg: &Message,
        client: &ClientInfo,
        source: SocketAddrV4,
        policy: &dyn BootPolicy,
    ) -> Result<Handled, DhcpError> {
        if !matches!(client.msg_type, MessageType::Request | MessageType::Inform) {
            return Ok(Handled::ignore("port 4011 answers REQUEST and INFORM only"));
        }
        if !client.kind.is_boot() {
            return Ok(Handled::ignore("port 4011: not a network-boot client"));
        }
        let Some(boot) = policy.boot(client) else {
            return Ok(Handled::ignore("policy gives this client no boot file"));
        };
        let mut r = self.base_reply(msg, client, MessageType::Ack);
        r.ciaddr = client.ciaddr;
        r.options = vec![DhcpOption::ServerIdentifier(self.config.server_ip)];
        // Same content as the proxy offer, but never option 43 to EFI
        // (handled in add_boot) and the client now has an address.
        self.add_boot(&mut r, client, &boot, true);
        let dest = if !source.ip().is_unspecified() {
            Destination::Unicast(source)
        } else if !client.ciaddr.is_unspecified() {
            Destination::Unicast(SocketAddrV4::new(client.ciaddr, source.port()))
        } else {
            Destination::Unicast(SocketAddrV4::new(Ipv4Addr::BROADCAST, source.port()))
        };
        Ok(Handled {
            reply: Self::reply(r, dest)?,
            event: Self::event(
                client,
                EventAction::Ack {
                    ip: None,
                    file: Some(boot.into_file()),
                },
            ),
            ..Default::default()
        })
    }
}

#[cfg(test)]
#[path = "responder_tests.rs"]
mod tests;
