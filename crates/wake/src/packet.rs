//! The magic packet: six `0xff` bytes, then the target's MAC sixteen times (102 bytes).
//!
//! The same payload goes in a UDP datagram (port 9, "discard", by custom) and after an
//! Ethernet header with ethertype 0x0842; a network card armed for Wake-on-LAN (`ethtool -s IF
//! wol g`) looks for the pattern anywhere in a frame, so either one wakes it.
//!
//! ```text
//!  0            6           12                    96          102
//!  +------------+-----------+-------  ...  -------+-----------+
//!  | ff x 6     | MAC       | MAC (repeated)      | MAC       |
//!  +------------+-----------+-------  ...  -------+-----------+
//! ```

use diskless_boot::Mac;

/// Ethertype of a Wake-on-LAN frame.
pub const ETHERTYPE: u16 = 0x0842;
/// The UDP port magic packets are sent to.
pub const UDP_PORT: u16 = 9;
/// How many times the MAC is repeated.
const REPEAT: usize = 16;

mod field {
    /// The synchronisation stream.
    pub const SYNC: std::ops::Range<usize> = 0..6;
    /// Where the repeated MAC starts.
    pub const MACS: usize = SYNC.end;
}

/// Length of a magic packet.
pub const LEN: usize = field::MACS + 6 * REPEAT;

/// The magic packet that wakes `mac`.
pub fn magic_packet(mac: Mac) -> [u8; LEN] {
    let mut packet = [0u8; LEN];
    packet[field::SYNC].fill(0xff);
    for copy in packet[field::MACS..].chunks_exact_mut(6) {
        copy.copy_from_slice(&mac.0);
    }
    packet
}

/// The MAC a magic packet wakes, if `bytes` starts with a well-formed one (a listener's
/// check: trailing bytes, such as a SecureOn password or Ethernet padding, are allowed).
pub fn parse_magic_packet(bytes: &[u8]) -> Option<Mac> {
    let packet = bytes.get(..LEN)?;
    if packet[field::SYNC].iter().any(|&b| b != 0xff) {
        return None;
    }
    let mut copies = packet[field::MACS..].chunks_exact(6);
    let first = copies.next()?;
    if copies.any(|c| c != first) {
        return None;
    }
    let mut mac = [0u8; 6];
    mac.copy_from_slice(first);
    Some(Mac(mac))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: Mac = Mac([0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);

    #[test]
    fn construct() {
        let packet = magic_packet(MAC);
        assert_eq!(packet.len(), 102);
        assert_eq!(&packet[..6], &[0xff; 6]);
        for i in 0..16 {
            let at = 6 + 6 * i;
            assert_eq!(&packet[at..at + 6], &MAC.0, "copy {i}");
        }
    }

    #[test]
    fn parse_round_trip_and_refusals() {
        let packet = magic_packet(MAC);
        assert_eq!(parse_magic_packet(&packet), Some(MAC));
        // Ethernet pads short frames; a SecureOn password may follow.
        let mut longer = packet.to_vec();
        longer.extend_from_slice(&[0; 6]);
        assert_eq!(parse_magic_packet(&longer), Some(MAC));
        assert_eq!(parse_magic_packet(&packet[..101]), None, "truncated");
        let mut bad_sync = packet;
        bad_sync[3] = 0xfe;
        assert_eq!(parse_magic_packet(&bad_sync), None, "broken sync stream");
        let mut bad_copy = packet;
        bad_copy[100] ^= 1;
        assert_eq!(parse_magic_packet(&bad_copy), None, "one copy differs");
    }
}
