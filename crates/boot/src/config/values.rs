//! The config's values that are more than text (address ranges, networks, sizes, UID ranges,
//! listen addresses, `HOST:PORT`), each parsed once, while the TOML is read: a mistake is a
//! deserialization error at the value's own span, and nothing downstream parses it again.
//!
//! Each type is also `FromStr`, so a `diskless serve` flag goes through the same parser as
//! its config key. The plain strings with a syntax rule (image names, host names, kernel
//! options, URLs) stay `String`s, checked while they are read ([`checked_str`]).

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use std::fmt;
use std::marker::PhantomData;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;

/// `10.0.0.100-10.0.0.200`: the two ends of a pool, `first <= last` (`[dhcp] range`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRange {
    /// The first address handed out.
    pub first: Ipv4Addr,
    /// The last one.
    pub last: Ipv4Addr,
}

impl FromStr for AddressRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (a, b) = text.split_once('-').ok_or_else(|| {
            format!("{text:?} is not a range FIRST-LAST, like 10.0.0.100-10.0.0.200")
        })?;
        let first: Ipv4Addr = a
            .trim()
            .parse()
            .map_err(|_| format!("range start {a:?} is not an IPv4 address"))?;
        let last: Ipv4Addr = b
            .trim()
            .parse()
            .map_err(|_| format!("range end {b:?} is not an IPv4 address"))?;
        if first > last {
            return Err(format!("range {text:?} ends before it starts"));
        }
        Ok(AddressRange { first, last })
    }
}

impl fmt::Display for AddressRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// `10.1.0.0/16`: an IPv4 network without host bits (`[[subnet]] cidr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Network(ipnet::Ipv4Net);

impl Network {
    /// The network.
    pub fn net(&self) -> ipnet::Ipv4Net {
        self.0
    }
}

impl FromStr for Network {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let net: ipnet::Ipv4Net = text
            .parse()
            .map_err(|_| format!("{text:?} is not an IPv4 network like 10.1.0.0/16"))?;
        if net.trunc() != net {
            return Err(format!(
                "{text:?} has host bits set: the network is {}",
                net.trunc()
            ));
        }
        Ok(Network(net))
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `239.255.77.0/24`: the groups multicast sessions take (`[multicast] groups`), an IPv4
/// network inside 239.0.0.0/8, the administratively scoped groups (RFC 2365: a site's routers
/// do not forward them off the site).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MulticastGroups(Network);

impl MulticastGroups {
    /// The network.
    pub fn net(&self) -> ipnet::Ipv4Net {
        self.0.net()
    }
}

impl FromStr for MulticastGroups {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let net: Network = text.parse()?;
        let scoped: ipnet::Ipv4Net = "239.0.0.0/8".parse().expect("a network");
        if !scoped.contains(&net.net()) {
            return Err(format!(
                "{text:?} is outside 239.0.0.0/8, the administratively scoped groups"
            ));
        }
        Ok(MulticastGroups(net))
    }
}

impl fmt::Display for MulticastGroups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A tmpfs size (`[boot] size`): a number with an optional k, M, G or % suffix, `75%`,
/// `4G`, `2048M`. Kept as written: it goes to the client's kernel command line as is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Size(String);

impl Size {
    /// As written in the config.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Size {
    fn default() -> Self {
        Size("75%".into())
    }
}

impl FromStr for Size {
    type Err = String;

    fn from_str(size: &str) -> Result<Self, String> {
        let digits = size.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
        let suffix_len = size.len() - digits.len();
        let ok =
            !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) && suffix_len <= 1;
        let percent_ok =
            !size.ends_with('%') || digits.parse::<u32>().is_ok_and(|p| (1..=100).contains(&p));
        if ok && percent_ok && digits.parse::<u64>().is_ok_and(|n| n > 0) {
            Ok(Size(size.to_string()))
        } else {
            Err(format!(
                "{size:?} is not a size: a number with k, M, G or % (like 75%, 4G or 2048M)"
            ))
        }
    }
}

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a client gets its image (`fetch` in `[boot]`, `[[subnet]]`, `[[client]]`; the
/// command line's `diskless.fetch=`): `whole` into RAM before the root is mounted; `lazy`,
/// the root mounted at once over NBD while a RAM copy fills behind the boot; `network`,
/// over NBD with no copy (an image bigger than RAM boots; the seat needs the server).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FetchMode {
    #[default]
    Whole,
    Lazy,
    Network,
}

impl FetchMode {
    pub const fn as_str(self) -> &'static str {
        match self {
            FetchMode::Whole => "whole",
            FetchMode::Lazy => "lazy",
            FetchMode::Network => "network",
        }
    }
}

impl FromStr for FetchMode {
    type Err = String;

    fn from_str(mode: &str) -> Result<Self, String> {
        [FetchMode::Whole, FetchMode::Lazy, FetchMode::Network]
            .into_iter()
            .find(|m| m.as_str() == mode)
            .ok_or_else(|| format!("{mode:?} is not a fetch mode: whole, lazy or network"))
    }
}

impl fmt::Display for FetchMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `1000-59999` (`[accounts] uids`): the IDs of the lab's users and groups, inclusive, never 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    /// The first ID served, above 0.
    pub first: u32,
    /// The last one.
    pub last: u32,
}

impl UidRange {
    /// Whether `id` is in the range.
    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

impl Default for UidRange {
    fn default() -> Self {
        UidRange {
            first: 1000,
            last: 59999,
        }
    }
}

impl FromStr for UidRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a range FIRST-LAST, like 1000-59999");
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let first: u32 = a.trim().parse().map_err(|_| bad())?;
        let last: u32 = b.trim().parse().map_err(|_| bad())?;
        if first == 0 || first > last {
            return Err(format!(
                "{text:?}: the range must start above 0 (root is never served) and not end \
                 before it starts"
            ));
        }
        Ok(UidRange { first, last })
    }
}

impl fmt::Display for UidRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// Where the admin listener listens (`admin_listen`): `ADDR:PORT`, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminListen {
    /// No admin listener.
    Off,
    /// This address.
    At(SocketAddr),
}

impl AdminListen {
    /// The address, or None when off.
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            AdminListen::Off => None,
            AdminListen::At(addr) => Some(*addr),
        }
    }
}

impl FromStr for AdminListen {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "off" {
            return Ok(AdminListen::Off);
        }
        text.parse()
            .map(AdminListen::At)
            .map_err(|_| format!("{text:?} is not ADDR:PORT (e.g. 127.0.0.1:9180) or off"))
    }
}

impl fmt::Display for AdminListen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AdminListen::Off => f.write_str("off"),
            AdminListen::At(addr) => addr.fmt(f),
        }
    }
}

/// `HOST:PORT`, the port required (`[accounts] ssh_server`); the host has no space or comma
/// (it goes on the kernel command line, `diskless.sshfs=HOST:PORT`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    /// A name or an address.
    pub host: String,
    /// The port.
    pub port: u16,
}

impl FromStr for HostPort {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not HOST:PORT, like 10.0.0.1:22");
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port = port.parse().map_err(|_| bad())?;
        if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == ',') {
            return Err(bad());
        }
        Ok(HostPort {
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

/// Deserializes each type above from its text by its `FromStr`.
macro_rules! deserialize_from_str {
    ($($ty:ty),*) => {$(
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                d.deserialize_str(FromText(PhantomData))
            }
        }
    )*};
}

deserialize_from_str!(
    AddressRange,
    Network,
    MulticastGroups,
    Size,
    FetchMode,
    UidRange,
    AdminListen,
    HostPort
);

/// Parses a string by `T::from_str` inside the visitor: the error is raised where the
/// deserializer still knows the value's span (an element's own, in an array).
struct FromText<T>(PhantomData<T>);

impl<T: FromStr<Err = String>> Visitor<'_> for FromText<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        v.parse().map_err(E::custom)
    }
}

/// A rule a plain string must follow, with the error naming the string.
pub(crate) type Rule = fn(&str) -> Result<(), String>;

/// Checks a string by its rule inside the visitor (see [`FromText`]).
#[derive(Clone, Copy)]
struct Checked(Rule);

impl Visitor<'_> for Checked {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        (self.0)(v).map_err(E::custom)?;
        Ok(v.to_string())
    }
}

impl<'de> DeserializeSeed<'de> for Checked {
    type Value = String;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<String, D::Error> {
        d.deserialize_str(self)
    }
}

/// A string that follows `rule`.
pub(crate) fn checked_str<'de, D: Deserializer<'de>>(d: D, rule: Rule) -> Result<String, D::Error> {
    d.deserialize_str(Checked(rule))
}

/// A list of strings that each follow `rule`; a mistake is reported at its element.
pub(crate) fn checked_list<'de, D: Deserializer<'de>>(
    d: D,
    rule: Rule,
) -> Result<Vec<String>, D::Error> {
    struct List(Rule);
    impl<'de> Visitor<'de> for List {
        type Value = Vec<String>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of strings")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut all = Vec::new();
            while let Some(s) = seq.next_element_seed(Checked(self.0))? {
                all.push(s);
            }
            Ok(all)
        }
    }
    d.deserialize_seq(List(rule))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        for ok in ["75%", "4G", "2048M", "1000000k", "100%"] {
            assert_eq!(ok.parse::<Size>().unwrap().as_str(), ok);
        }
        for bad in ["", "0", "101%", "4GB", "G", "-1G", "1.5G"] {
            assert!(bad.parse::<Size>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ranges_networks_and_addresses() {
        let r: AddressRange = "10.0.0.9 - 10.0.0.20".parse().unwrap();
        assert_eq!(r.to_string(), "10.0.0.9-10.0.0.20");
        assert!("10.0.0.9-10.0.0.1".parse::<AddressRange>().is_err());
        assert_eq!("1000-59999".parse::<UidRange>(), Ok(UidRange::default()));
        for bad in ["0-100", "2000-1000", "1000", "a-b"] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad}");
        }
        assert!("10.1.2.0/24".parse::<Network>().is_ok());
        assert!("10.1.2.3/24".parse::<Network>().is_err());
        assert_eq!("off".parse::<AdminListen>(), Ok(AdminListen::Off));
        assert!("localhost".parse::<AdminListen>().is_err());
        let hp: HostPort = "files.lab:2222".parse().unwrap();
        assert_eq!((hp.host.as_str(), hp.port), ("files.lab", 2222));
        for bad in ["files.lab", ":22", "a b:22", "h:x"] {
            assert!(bad.parse::<HostPort>().is_err(), "{bad}");
        }
    }
}
