//! A private network namespace with a tap device: the test client's whole network.
//!
//! The namespace has nothing but loopback and the tap, so DHCP and everything else the server
//! sends stays between it and the QEMU client. Dropping [`Netns`] deletes the namespace, and
//! with it the tap.

use crate::Error;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

pub struct Netns {
    pub name: String,
    pub tap: String,
}

fn ip(args: &[&str]) -> Result<(), Error> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            Error::Setup(format!(
                "running ip {}: {e} (install iproute2)",
                args.join(" ")
            ))
        })?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Netns {
    /// Create namespace `name` where the server's `interface` holds `address` (CIDR), up.
    /// With one tap, `interface` is that tap; with more, it is a bridge of them, so several
    /// clients share one network as in a lab. The server's IPv6 link-local address skips
    /// duplicate address detection, so its router advertisements (which spare iPXE a ~13 s
    /// wait) can go out as soon as a client's NIC comes up.
    pub fn create(
        name: &str,
        interface: &str,
        taps: &[String],
        address: &str,
    ) -> Result<Netns, Error> {
        // A namespace left by a run that was killed hard is ours to replace.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            tap: interface.to_string(),
        };
        ip_in(name, &["link", "set", "lo", "up"])?;
        let bridged = !(taps.len() == 1 && taps[0] == interface);
        if bridged {
            // No STP: ports forward at once, as on a plain switch.
            ip_in(
                name,
                &["link", "add", interface, "type", "bridge", "stp_state", "0"],
            )?;
        }
        for tap in taps {
            ip_in(name, &["tuntap", "add", "dev", tap, "mode", "tap"])?;
            if bridged {
                ip_in(name, &["link", "set", tap, "master", interface])?;
                ip_in(name, &["link", "set", tap, "up"])?;
            }
        }
        sysctl_in(name, &format!("net.ipv6.conf.{interface}.accept_dad=0"))?;
        ip_in(name, &["addr", "add", address, "dev", interface])?;
        ip_in(name, &["link", "set", interface, "up"])?;
        Ok(ns)
    }

    /// Move the calling thread into the namespace; processes it starts afterwards are inside.
    /// Call it from a single-threaded program, before starting any thread.
    pub fn enter(&self) -> Result<(), Error> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|e| Error::Setup(format!("opening {path}: {e}")))?;
        // SAFETY: a valid namespace fd.
        if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(Error::Setup(format!(
                "entering namespace {}: {}",
                self.name,
                std::io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}

/// Drop `percent` % of the packets arriving on `interface`, at random: a lossy network. Call
/// it inside the namespace (after [`Netns::enter`]); the rules go with the namespace.
pub fn drop_at_random(interface: &str, percent: u8) -> Result<(), Error> {
    nft_apply(&loss_rules(interface, percent))
}

/// Drop every multicast datagram (UDP to 224.0.0.0/4) on its way out of `tap` to its
/// client: a switch port that does not carry multicast (the fetch helper then hears nothing
/// and falls back to HTTP). A netdev egress hook on the tap itself (Linux 5.16, nftables
/// 1.0.1), so the same rule holds whether the tap is bridged (a datagram the server sends on
/// the bridge leaves through every port) or is the server's own interface; IGMP and the rest
/// of the client's traffic pass. Call it inside the namespace; the table goes with it.
pub fn block_multicast(tap: &str) -> Result<(), Error> {
    nft_apply(&block_multicast_rules(tap))
}

fn block_multicast_rules(tap: &str) -> String {
    // One table per tap: a netdev chain hooks one device.
    let table = format!(
        "diskless_vm_mcast_{}",
        tap.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    format!(
        "table netdev {table} {{\n\
         \tchain egress {{\n\
         \t\ttype filter hook egress device \"{tap}\" priority 0; policy accept;\n\
         \t\tether type ip ip daddr 224.0.0.0/4 meta l4proto udp counter drop\n\
         \t}}\n\
         }}\n"
    )
}

/// Send at most `rate` (tc's units, `40mbit`) out of `interface` towards its client: a link
/// slow enough that a download takes a while. Call it inside the namespace. Used for
/// [`crate::VmConfig::restart_server_during_fetch`]: with dm-verity the helper no longer
/// hashes while it downloads, and a 162 MiB image arrived in 0.9 s, before the harness could
/// stop the server (failures.rs saw no resume).
pub fn limit_rate(interface: &str, rate: &str) -> Result<(), Error> {
    let status = Command::new("tc")
        .args([
            "qdisc", "replace", "dev", interface, "root", "tbf", "rate", rate,
        ])
        .args(["burst", "64kb", "latency", "400ms"])
        .stdin(Stdio::null())
        .status()
        .map_err(|e| Error::Setup(format!("running tc: {e} (install iproute2)")))?;
    if !status.success() {
        return Err(Error::Setup(format!(
            "tc qdisc replace dev {interface} root tbf rate {rate} failed ({status})"
        )));
    }
    Ok(())
}

/// Count the TFTP read requests (UDP to `port`) arriving on `interface`, in a named nftables
/// counter read by [`tftp_requests`]. Every TFTP transfer starts with one, whichever client
/// or server implementation is involved, and the count does not depend on a capture being
/// up in time. Call it inside the namespace; the counter goes with it.
pub fn count_tftp_requests(interface: &str, port: u16) -> Result<(), Error> {
    nft_apply(&tftp_counter_rules(interface, port))
}

/// The counter of [`count_tftp_requests`]: how many TFTP requests arrived so far.
pub fn tftp_requests() -> Result<u64, Error> {
    let out = Command::new("nft")
        .args(["list", "counter", "inet", "diskless_vm_count", "tftp"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Setup(format!("running nft: {e} (install nftables)")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "nft list counter failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    packets_of(&text)
        .ok_or_else(|| Error::Setup(format!("no packet count in nft's answer: {text}")))
}

/// "packets N" in nft's listing of a counter.
fn packets_of(listing: &str) -> Option<u64> {
    let mut words = listing.split_whitespace();
    words.find(|w| *w == "packets")?;
    words.next()?.parse().ok()
}

fn tftp_counter_rules(interface: &str, port: u16) -> String {
    format!(
        "table inet diskless_vm_count {{\n\
         \tcounter tftp {{ }}\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority -10; policy accept;\n\
         \t\tiifname \"{interface}\" udp dport {port} counter name \"tftp\"\n\
         \t}}\n\
         }}\n"
    )
}

/// Load an nftables ruleset (`nft -f -`).
fn nft_apply(rules: &str) -> Result<(), Error> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Setup(format!("running nft: {e} (install nftables)")))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(rules.as_bytes())
        .map_err(|e| Error::Setup(format!("writing to nft: {e}")))?;
    let out = child
        .wait_with_output()
        .map_err(|e| Error::Setup(format!("running nft: {e}")))?;
    if !out.status.success() {
        return Err(Error::Setup(format!(
            "nft -f - failed: {}\n{rules}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Write the rules of [`drop_at_random`] with their counters to `path`.
pub fn save_loss_counters(path: &std::path::Path) -> Result<(), Error> {
    let out = Command::new("nft")
        .args(["list", "table", "inet", "diskless_vm"])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Setup(format!("running nft: {e}")))?;
    std::fs::write(path, &out.stdout)
        .map_err(|e| Error::Setup(format!("writing {}: {e}", path.display())))
}

/// An input hook: traffic between the clients and a server in the same namespace is local
/// delivery, never forwarded.
fn loss_rules(interface: &str, percent: u8) -> String {
    format!(
        "table inet diskless_vm {{\n\
         \tchain input {{\n\
         \t\ttype filter hook input priority 0; policy accept;\n\
         \t\tiifname \"{interface}\" numgen random mod 100 < {percent} counter drop\n\
         \t}}\n\
         }}\n"
    )
}

fn ip_in(ns: &str, args: &[&str]) -> Result<(), Error> {
    let mut all = vec!["-n", ns];
    all.extend_from_slice(args);
    ip(&all)
}

fn sysctl_in(ns: &str, setting: &str) -> Result<(), Error> {
    let status = Command::new("ip")
        .args(["netns", "exec", ns, "sysctl", "-q", "-w", setting])
        .stdin(Stdio::null())
        .status()
        .map_err(|e| Error::Setup(format!("sysctl {setting}: {e}")))?;
    if !status.success() {
        return Err(Error::Setup(format!(
            "sysctl -w {setting} failed in namespace {ns}"
        )));
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_rules_drop_only_on_the_interface() {
        let rules = loss_rules("br0", 5);
        assert!(rules.contains("hook input"), "{rules}");
        assert!(
            rules.contains("iifname \"br0\" numgen random mod 100 < 5 counter drop"),
            "{rules}"
        );
    }

    #[test]
    fn multicast_is_dropped_on_its_way_out_of_the_tap_only() {
        let rules = block_multicast_rules("dl1");
        assert!(
            rules.contains("table netdev diskless_vm_mcast_dl1"),
            "{rules}"
        );
        assert!(rules.contains("hook egress device \"dl1\""), "{rules}");
        assert!(
            rules.contains("ip daddr 224.0.0.0/4 meta l4proto udp counter drop"),
            "{rules}"
        );
    }

    #[test]
    fn tftp_counter_counts_requests_to_the_port() {
        let rules = tftp_counter_rules("dl0", 69);
        assert!(rules.contains("counter tftp"), "{rules}");
        assert!(
            rules.contains("iifname \"dl0\" udp dport 69 counter name \"tftp\""),
            "{rules}"
        );
        let listing =
            "table inet diskless_vm_count {\n\tcounter tftp {\n\t\tpackets 42 bytes 2310\n\t}\n}\n";
        assert_eq!(packets_of(listing), Some(42));
        assert_eq!(packets_of("table inet x {\n}\n"), None);
    }
}
