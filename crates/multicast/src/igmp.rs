//! The IGMPv2 General Query a server sends when it acts as its network's querier
//! (`[multicast] querier`, docs/SCALING.md says why a network needs one).
//!
//! RFC 2236, section 2: type 0x11, a maximum response time in tenths of a second, the
//! internet checksum of the 8 bytes, group 0.0.0.0 (every group). Sent to 224.0.0.1 (all
//! systems) with TTL 1 and the IP Router Alert option (RFC 2113), as routers send it.

/// Where a General Query goes: every system on the link.
pub const ALL_SYSTEMS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(224, 0, 0, 1);
/// The IP Router Alert option (RFC 2113): type 148, length 4, value 0.
pub const ROUTER_ALERT: [u8; 4] = [0x94, 0x04, 0x00, 0x00];

/// An IGMPv2 General Query asking for reports within `max_response_tenths` tenths of a
/// second.
pub fn general_query(max_response_tenths: u8) -> [u8; 8] {
    let mut query = [0x11, max_response_tenths, 0, 0, 0, 0, 0, 0];
    let sum = checksum(&query);
    query[2..4].copy_from_slice(&sum.to_be_bytes());
    query
}

/// The internet checksum (RFC 1071) of `data` (of even length).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_general_query_is_rfc_2236s() {
        // 0x11 0x64 (10 s): checksum !0x1164 = 0xee9b.
        assert_eq!(general_query(100), [0x11, 0x64, 0xee, 0x9b, 0, 0, 0, 0]);
        // A receiver's check: the checksum over the whole message, checksum included, is 0.
        assert_eq!(checksum(&general_query(100)), 0);
        assert_eq!(checksum(&general_query(0)), 0);
    }
}
