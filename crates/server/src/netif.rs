//! The IPv4 address and netmask of a network interface.

use std::ffi::CStr;
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InterfaceAddr {
    pub ip: Ipv4Addr,
    pub netmask: Ipv4Addr,
}

/// Call `visit` with each address entry of `interface` (one per address family) until it
/// returns Some; also says whether the interface exists at all.
fn find_address<T>(
    interface: &str,
    mut visit: impl FnMut(&libc::sockaddr, &libc::ifaddrs) -> Option<T>,
) -> Result<(Option<T>, bool), String> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list`, freed below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut list) } != 0 {
        return Err(format!(
            "listing interfaces: {}",
            std::io::Error::last_os_error()
        ));
    }
    let (mut found, mut exists) = (None, false);
    let mut cursor = list;
    while !cursor.is_null() && found.is_none() {
        // SAFETY: cursor walks the list getifaddrs returned.
        let entry = unsafe { &*cursor };
        cursor = entry.ifa_next;
        // SAFETY: ifa_name is a NUL-terminated string for every entry.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) };
        if name.to_bytes() != interface.as_bytes() {
            continue;
        }
        exists = true;
        if !entry.ifa_addr.is_null() {
            // SAFETY: a non-null address of this entry.
            found = visit(unsafe { &*entry.ifa_addr }, entry);
        }
    }
    // SAFETY: list came from getifaddrs.
    unsafe { libc::freeifaddrs(list) };
    Ok((found, exists))
}

pub fn ipv4_of(interface: &str) -> Result<InterfaceAddr, String> {
    let (found, exists) = find_address(interface, |addr, entry| {
        if addr.sa_family as i32 != libc::AF_INET || entry.ifa_netmask.is_null() {
            return None;
        }
        // SAFETY: the family is AF_INET, so both are sockaddr_in.
        let (addr, mask) = unsafe {
            (
                &*(addr as *const _ as *const libc::sockaddr_in),
                &*(entry.ifa_netmask as *const libc::sockaddr_in),
            )
        };
        Some(InterfaceAddr {
            ip: Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            netmask: Ipv4Addr::from(u32::from_be(mask.sin_addr.s_addr)),
        })
    })?;
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
    let (found, _) = find_address(interface, |addr, _| {
        if addr.sa_family as i32 != libc::AF_PACKET {
            return None;
        }
        // SAFETY: the family is AF_PACKET, so this is a sockaddr_ll.
        let ll = unsafe { &*(addr as *const _ as *const libc::sockaddr_ll) };
        (ll.sll_halen == 6).then(|| {
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&ll.sll_addr[..6]);
            mac
        })
    })?;
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
    fn loopback_has_an_all_zero_ethernet_address() {
        // lo's AF_PACKET entry has a 6-byte all-zero address.
        assert_eq!(mac_of("lo").unwrap(), [0; 6]);
        assert!(mac_of("nosuchif0").is_err());
    }

    #[test]
    fn missing_interface_is_named() {
        assert!(ipv4_of("nosuchif0")
            .unwrap_err()
            .contains("no interface named nosuchif0"));
    }
}
