//! The IPv4 address and netmask of a network interface.

use std::ffi::CStr;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub ip: Ipv4Addr,
    pub netmask: Ipv4Addr,
}

pub fn ipv4_of(interface: &str) -> Result<InterfaceAddr, String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(format!(
            "listing interfaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut found = None;
    let mut exists = false;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string for every entry.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) };
        if name.to_bytes() != interface.as_bytes() {
            continue;
        }
        exists = true;
        if entry.ifa_addr.is_null() || entry.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddr; we check the family before reading it as sockaddr_in.
        unsafe {
            if (*entry.ifa_addr).sa_family as i32 != libc::AF_INET {
                continue;
            }
            let addr = &*(entry.ifa_addr as *const libc::sockaddr_in);
            let mask = &*(entry.ifa_netmask as *const libc::sockaddr_in);
            found = Some(InterfaceAddr {
                ip: Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
                netmask: Ipv4Addr::from(u32::from_be(mask.sin_addr.s_addr)),
            });
        }
        break;
    }
    // SAFETY: list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    match (found, exists) {
        (Some(a), _) => Ok(a),
        (None, true) => Err(format!(
            "interface {interface} has no IPv4 address: give it one (ip addr add ...)"
        )),
        (None, false) => Err(format!("no interface named {interface}")),
    }
}

/// The interface's Ethernet address, from getifaddrs (AF_PACKET): sysfs may belong to another
/// network namespace than ours.
pub fn mac_of(interface: &str) -> Result<[u8; 6], String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(format!(
            "listing interfaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    let mut found = None;
    let mut cursor = list;
    while !cursor.is_null() {
        // SAFETY: cursor walks the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string for every entry.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) };
        if name.to_bytes() != interface.as_bytes() || entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: non-null sockaddr; the family is checked before reading it as sockaddr_ll.
        unsafe {
            if (*entry.ifa_addr).sa_family as i32 != libc::AF_PACKET {
                continue;
            }
            let ll = &*(entry.ifa_addr as *const libc::sockaddr_ll);
            if ll.sll_halen == 6 {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&ll.sll_addr[..6]);
                found = Some(mac);
            }
        }
        break;
    }
    // SAFETY: list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    found.ok_or_else(|| format!("interface {interface} has no Ethernet address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_has_its_address() {
        let lo = ipv4_of("lo").unwrap();
        assert_eq!(lo.ip, Ipv4Addr::LOCALHOST);
        assert_eq!(lo.netmask, Ipv4Addr::new(255, 0, 0, 0));
    }

    #[test]
    fn missing_interface_is_named() {
        assert!(ipv4_of("nosuchif0")
            .unwrap_err()
            .contains("no interface named nosuchif0"));
    }
}
