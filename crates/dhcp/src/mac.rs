//! [`Mac`]: the client identity every part of diskless is keyed by.
//!
//! It lives here, in the lowest crate that needs it: the DHCP packet's `chaddr` is where a
//! client's identity first appears. Its one formatter is [`Display`](fmt::Display) (colon
//! form, used in logs, files and the config); [`Mac::hyphenated`] is the form in URLs and
//! kernel options; [`FromStr`] is its one parser and takes both.

use std::fmt;
use std::str::FromStr;

/// A client's Ethernet address. Displayed as `aa:bb:cc:dd:ee:ff`; parsed from that, from
/// `aa-bb-cc-dd-ee-ff` (iPXE's `hexhyp`, pxelinux) and upper case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// `aa-bb-cc-dd-ee-ff`: safe in URLs and file names (iPXE's `${net0/mac:hexhyp}`).
    pub fn hyphenated(&self) -> String {
        self.to_string().replace(':', "-")
    }
}

impl From<[u8; 6]> for Mac {
    fn from(bytes: [u8; 6]) -> Mac {
        Mac(bytes)
    }
}

impl From<Mac> for [u8; 6] {
    fn from(mac: Mac) -> [u8; 6] {
        mac.0
    }
}

/// Text that is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (expected aa:bb:cc:dd:ee:ff)")]
pub struct BadMac(pub String);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = BadMac;
    fn from_str(s: &str) -> Result<Mac, BadMac> {
        let parts: Vec<&str> = s.split([':', '-']).collect();
        let bad = || BadMac(s.to_string());
        if parts.len() != 6 {
            return Err(bad());
        }
        let mut mac = [0u8; 6];
        for (byte, part) in mac.iter_mut().zip(&parts) {
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        Ok(Mac(mac))
    }
}

impl serde::Serialize for Mac {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Mac {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Mac, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display() {
        let mac: Mac = "52-54-00-AB-cd-01".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
        assert_eq!(mac.hyphenated(), "52-54-00-ab-cd-01");
        for bad in [
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:zz",
            "525400abcd01",
            "52:54:00:ab:cd:0001",
            "52:54:00:ab:cd:ef:00",
            "5:54:00:ab:cd:eff",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }
}
