//! A private network namespace with a tap device: the test client's whole network.
//!
//! The namespace has nothing but loopback and the tap, so DHCP and everything else the server
//! sends stays between it and the QEMU client. Dropping [`Netns`] deletes the namespace, and
//! with it the tap.

use crate::Error;
use std::fs::File;
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
    /// Create namespace `name` with tap `tap` holding `address` (CIDR), up. Its IPv6 link-local
    /// address skips duplicate address detection, so the server's router advertisements (which
    /// spare iPXE a ~13 s wait) can go out as soon as the client's NIC comes up.
    pub fn create(name: &str, tap: &str, address: &str) -> Result<Netns, Error> {
        // A namespace left by a run that was killed hard is ours to replace.
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
            tap: tap.to_string(),
        };
        ip_in(name, &["link", "set", "lo", "up"])?;
        ip_in(name, &["tuntap", "add", "dev", tap, "mode", "tap"])?;
        sysctl_in(name, &format!("net.ipv6.conf.{tap}.accept_dad=0"))?;
        ip_in(name, &["addr", "add", address, "dev", tap])?;
        ip_in(name, &["link", "set", tap, "up"])?;
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
