//! `/etc/diskless/diskless.toml`: the site's settings, every `diskless serve` flag included.
//!
//! Parsing is strict (unknown keys are errors, so a typo is not silently ignored) and every
//! error names the file, the line and the reason.

use diskless_dhcp::Mac;
pub use diskless_dhcp::Mode;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/diskless/diskless.toml";
pub const DEFAULT_STORE: &str = "/var/lib/diskless/store";
pub const DEFAULT_STATE: &str = "/var/lib/diskless/state";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9180";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UnknownClients {
    /// Clients without a `[[client]]` entry boot the default image.
    #[default]
    Boot,
    /// Clients without a `[[client]]` entry get no boot offer.
    Ignore,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImageProtocol {
    /// The fetch helper downloads the image over HTTP (fastest).
    #[default]
    Http,
    /// The fetch helper downloads the image over TFTP.
    Tftp,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The network interface to serve on; its IPv4 address is the server address.
    pub interface: Option<String>,
    pub mode: Mode,
    pub store: PathBuf,
    /// Leases and the record of client boots.
    pub state: PathBuf,
    pub http_port: u16,
    pub tftp_port: u16,
    /// `ADDR:PORT` of the admin listener (dashboard, its API, `/metrics`), or `off`. Default
    /// 127.0.0.1:9180: the boot network does not reach it unless the admin says so.
    pub admin_listen: String,
    /// Host names the admin listener answers to besides its address (`boot.lab.example`, a
    /// reverse proxy's name): requests naming any other host are refused, as a page of a DNS
    /// rebinding attack would (docs/SECURITY.md).
    pub admin_names: Vec<String>,
    /// Answer IPv6 router solicitations with "no router here", so iPXE does not wait ~13 s
    /// for one. true: everyone's; false: nobody's. Default: everyone's in full mode (a network
    /// we own); in proxy mode only those of the iPXE clients the server is booting, unicast
    /// ([`crate::site::Ipv6Ra`]).
    pub ipv6_ra: Option<bool>,
    pub dhcp: DhcpSection,
    pub ipxe: IpxeSection,
    pub boot: BootSection,
    pub record: RecordSection,
    /// The lab's accounts and homes; None: clients know only their image's accounts.
    pub accounts: Option<AccountsSection>,
    #[serde(rename = "client")]
    pub clients: Vec<ClientConfig>,
    /// `[[subnet]]`: settings for the clients whose address is in a subnet.
    #[serde(rename = "subnet")]
    pub subnets: Vec<SubnetConfig>,
    /// `[multicast]`: the image by multicast (off by default).
    pub multicast: crate::multicast::MulticastSection,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DhcpSection {
    /// `FIRST-LAST`, in full mode; None: the interface's subnet from .100 to .199 (or less).
    pub range: Option<String>,
    /// Default: none (an isolated lab network has no router).
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    /// Seconds.
    pub lease_time: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpxeSection {
    /// Where Debian's `ipxe` package puts its binaries.
    pub dir: PathBuf,
    /// For legacy BIOS PXE clients.
    pub bios: String,
    /// For UEFI x64 PXE clients: `ipxe.efi` (own drivers) or `snponly.efi` (firmware's NIC).
    pub uefi: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootSection {
    /// The image clients boot unless their `[[client]]` entry names another.
    pub image: Option<String>,
    pub unknown_clients: UnknownClients,
    /// Size of each client's RAM disk (image + writes): `75%`, `4G`, `2048M`.
    pub size: String,
    /// Extra kernel options for every client.
    pub cmdline: String,
    pub image_protocol: ImageProtocol,
    /// UEFI PXE clients boot through the Secure Boot chain (Debian's signed shim and GRUB)
    /// instead of iPXE; a `[[client]]` entry's `secure_boot` overrides it.
    pub secure_boot: bool,
    /// Where clients fetch the kernel, initrds and image from, in order, before this server:
    /// each the base URL of a store layout (`diskless image export`), e.g. a room's cache.
    /// This server comes last unless the list names it. A `[[subnet]]` or `[[client]]`
    /// entry's list replaces this one.
    pub image_urls: Vec<String>,
}

/// `[[subnet]]`: the clients whose address is in `cidr` (the most specific subnet wins).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    /// `10.1.0.0/16`.
    pub cidr: String,
    /// Replaces `[boot] image_urls` for these clients.
    pub image_urls: Vec<String>,
}

/// The record of client boots (`STATE/clients.json`, `diskless clients`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordSection {
    /// Clients kept; beyond it the one seen longest ago is dropped.
    pub max_clients: usize,
    /// A client not seen for this many days is dropped.
    pub client_expiry_days: u32,
}

impl Default for RecordSection {
    fn default() -> Self {
        RecordSection {
            max_clients: 1000,
            client_expiry_days: 30,
        }
    }
}

/// How the users' homes reach the clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Homes {
    /// Mounted at login with sshfs, as the user, from the SSH server that checked the password.
    #[default]
    Sshfs,
}

/// `[accounts]`: the server's users on every client, checked at login against the server
/// (see `crate::accounts`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsSection {
    /// `FIRST-LAST`: the users (and groups) with an ID in it are the lab's.
    pub uids: String,
    /// Exactly these users instead, when not empty.
    pub users: Vec<String>,
    /// Where the entries are read (at each client's boot).
    pub passwd: PathBuf,
    pub group: PathBuf,
    /// Every served home lies below it: a user whose home is elsewhere (`/usr/local`, the
    /// PAM helper's directory) is not served, nor one whose primary group is outside `uids`.
    pub home_prefix: PathBuf,
    pub homes: Homes,
    /// `HOST:PORT` of the SSH server; default: the boot server's address, port 22.
    pub ssh_server: Option<String>,
    /// Its public host keys, pinned on the clients.
    pub ssh_host_keys: Vec<PathBuf>,
}

impl Default for AccountsSection {
    fn default() -> Self {
        AccountsSection {
            uids: "1000-59999".into(),
            users: Vec::new(),
            passwd: "/etc/passwd".into(),
            group: "/etc/group".into(),
            home_prefix: "/home".into(),
            homes: Homes::Sshfs,
            ssh_server: None,
            ssh_host_keys: vec!["/etc/ssh/ssh_host_ed25519_key.pub".into()],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    pub mac: Mac,
    pub hostname: Option<String>,
    /// A reserved address (full mode).
    pub ip: Option<Ipv4Addr>,
    pub image: Option<String>,
    /// Extra kernel options, after the site's.
    pub cmdline: Option<String>,
    pub size: Option<String>,
    /// This client boots through the Secure Boot chain (or not), whatever `[boot]` says.
    pub secure_boot: Option<bool>,
    /// Replaces `[boot] image_urls` and its subnet's for this client.
    pub image_urls: Option<Vec<String>>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            interface: None,
            mode: Mode::Full,
            store: DEFAULT_STORE.into(),
            state: DEFAULT_STATE.into(),
            http_port: 80,
            tftp_port: 69,
            admin_listen: DEFAULT_ADMIN_LISTEN.into(),
            admin_names: Vec::new(),
            ipv6_ra: None,
            dhcp: DhcpSection::default(),
            ipxe: IpxeSection::default(),
            boot: BootSection::default(),
            record: RecordSection::default(),
            accounts: None,
            clients: Vec::new(),
            subnets: Vec::new(),
            multicast: Default::default(),
        }
    }
}

impl Default for DhcpSection {
    fn default() -> Self {
        DhcpSection {
            range: None,
            router: None,
            dns: Vec::new(),
            domain: None,
            lease_time: 12 * 3600,
        }
    }
}

impl Default for IpxeSection {
    fn default() -> Self {
        IpxeSection {
            dir: "/usr/lib/ipxe".into(),
            bios: "undionly.kpxe".into(),
            uefi: "ipxe.efi".into(),
        }
    }
}

impl Default for BootSection {
    fn default() -> Self {
        BootSection {
            image: None,
            unknown_clients: UnknownClients::Boot,
            size: "75%".into(),
            cmdline: String::new(),
            image_protocol: ImageProtocol::Http,
            secure_boot: false,
            image_urls: Vec::new(),
        }
    }
}

/// A config that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; None when the problem is not on one line (or the file could not be read).
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}", self.path.display(), self.message),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Read and validate a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| s.start);
            let mut message = e.message().trim().to_string();
            if message.is_empty() {
                // toml 0.8 gives no message for a control character in a comment (found by
                // the config fuzz target: a NUL after `#`); name the character instead.
                let found = at
                    .and_then(|at| text.get(at..))
                    .and_then(|t| t.chars().next());
                message = match found {
                    Some(c) => format!("the character {c:?} is not allowed here"),
                    None => "not valid TOML here".to_string(),
                };
            }
            ConfigError {
                path: path.to_path_buf(),
                line: at.map(|at| line_of_offset(text, at)),
                message,
            }
        })?;
        config.validate().map_err(|(needle, message)| ConfigError {
            path: path.to_path_buf(),
            line: needle.and_then(|n| line_of_text(text, &n)),
            message,
        })?;
        Ok(config)
    }

    /// Check what TOML types cannot: sizes, ranges, duplicates. The error carries a piece
    /// of text to find the offending line by.
    pub fn validate(&self) -> Result<(), (Option<String>, String)> {
        check_apart(&self.store, &self.state)?;
        if let Some(range) = &self.dhcp.range {
            parse_range(range).map_err(|m| (Some(range.clone()), m))?;
        }
        check_size(&self.boot.size).map_err(|m| (Some(self.boot.size.clone()), m))?;
        check_cmdline(&self.boot.cmdline).map_err(|m| (None, m))?;
        if let Some(image) = &self.boot.image {
            crate::names::check_name("image name", image).map_err(|m| (Some(image.clone()), m))?;
        }
        for file in [&self.ipxe.bios, &self.ipxe.uefi] {
            if file.is_empty() || file.contains('/') {
                return Err((
                    Some(file.clone()),
                    format!("ipxe file {file:?} must be a plain file name"),
                ));
            }
        }
        check_image_urls(&self.boot.image_urls)?;
        let mut cidrs = HashSet::new();
        for subnet in &self.subnets {
            let net = parse_cidr(&subnet.cidr).map_err(|m| (Some(subnet.cidr.clone()), m))?;
            if !cidrs.insert(net) {
                return Err((
                    Some(subnet.cidr.clone()),
                    format!("subnet {net} is listed twice"),
                ));
            }
            check_image_urls(&subnet.image_urls)?;
        }
        let mut macs = HashSet::new();
        let mut ips = HashSet::new();
        let mut names = HashSet::new();
        for client in &self.clients {
            let mac = client.mac.to_string();
            if !macs.insert(client.mac) {
                return Err((Some(mac.clone()), format!("client {mac} is listed twice")));
            }
            if let Some(ip) = client.ip {
                if !ips.insert(ip) {
                    return Err((
                        Some(ip.to_string()),
                        format!("address {ip} is reserved for two clients"),
                    ));
                }
            }
            if let Some(name) = &client.hostname {
                check_hostname(name).map_err(|m| (Some(name.clone()), m))?;
                if !names.insert(name.to_ascii_lowercase()) {
                    return Err((
                        Some(name.clone()),
                        format!("hostname {name} is given to two clients"),
                    ));
                }
            }
            if let Some(image) = &client.image {
                crate::names::check_name("image name", image)
                    .map_err(|m| (Some(image.clone()), m))?;
            }
            if let Some(size) = &client.size {
                check_size(size).map_err(|m| (Some(size.clone()), m))?;
            }
            if let Some(cmdline) = &client.cmdline {
                check_cmdline(cmdline).map_err(|m| (Some(mac.clone()), m))?;
            }
            if let Some(urls) = &client.image_urls {
                check_image_urls(urls)?;
            }
        }
        if let Some(accounts) = &self.accounts {
            crate::accounts::parse_uid_range(&accounts.uids)
                .map_err(|m| (Some(accounts.uids.clone()), m))?;
            check_home_prefix(&accounts.home_prefix)
                .map_err(|m| (Some(accounts.home_prefix.display().to_string()), m))?;
            for user in &accounts.users {
                if !crate::accounts::valid_name(user) {
                    return Err((
                        Some(user.clone()),
                        format!(
                            "[accounts] users: {user:?} is not a user name ([a-z_][a-z0-9_-]*)"
                        ),
                    ));
                }
            }
            if let Some(server) = &accounts.ssh_server {
                crate::accounts::split_host_port(server).ok_or_else(|| {
                    (
                        Some(server.clone()),
                        format!("ssh_server {server:?} must be HOST:PORT, like 10.0.0.1:22"),
                    )
                })?;
            }
            if accounts.ssh_host_keys.is_empty() {
                return Err((
                    Some("ssh_host_keys".into()),
                    "[accounts] ssh_host_keys is empty: clients need the SSH server's host key \
                     to pin"
                        .into(),
                ));
            }
        }
        if self.record.max_clients == 0 {
            return Err((
                Some("max_clients".into()),
                "max_clients must be at least 1".into(),
            ));
        }
        if self.http_port == 0 {
            return Err((Some("http_port".into()), "http_port must not be 0".into()));
        }
        self.admin_addr()
            .map_err(|m| (Some(self.admin_listen.clone()), m))?;
        if let Some(bad) = self.admin_names.iter().find(|n| {
            n.is_empty() || n.contains(|c: char| c == ':' || c == '/' || c.is_whitespace())
        }) {
            return Err((
                Some("admin_names".into()),
                format!("admin_names: {bad:?} is not a host name (no port, no scheme)"),
            ));
        }
        Ok(())
    }

    /// Where the admin listener listens, or None when `admin_listen = "off"`.
    pub fn admin_addr(&self) -> Result<Option<SocketAddr>, String> {
        if self.admin_listen == "off" {
            return Ok(None);
        }
        self.admin_listen.parse().map(Some).map_err(|_| {
            format!(
                "admin_listen {:?} is not ADDR:PORT (e.g. 127.0.0.1:9180) or off",
                self.admin_listen
            )
        })
    }
}

/// `path` as the filesystem resolves it: absolute (from the working directory), `.` and `..`
/// taken lexically, and its longest existing ancestor through its symlinks.
fn resolved(path: &Path) -> PathBuf {
    let absolute = std::env::current_dir()
        .map(|cwd| cwd.join(path))
        .unwrap_or_else(|_| path.to_path_buf());
    let mut lexical = PathBuf::new();
    for part in absolute.components() {
        match part {
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                lexical.pop();
            }
            other => lexical.push(other),
        }
    }
    for existing in lexical.ancestors() {
        if let Ok(real) = existing.canonicalize() {
            let rest = lexical.strip_prefix(existing).unwrap_or(Path::new(""));
            return if rest.as_os_str().is_empty() {
                real
            } else {
                real.join(rest)
            };
        }
    }
    lexical
}

/// The state directory (the report key, leases) and the store (served over TFTP to anyone on
/// the boot network, and read whole by `image build` from `/`) must not hold one another:
/// TFTP would hand out `state/report.key`.
fn check_apart(store: &Path, state: &Path) -> Result<(), (Option<String>, String)> {
    let (store_real, state_real) = (resolved(store), resolved(state));
    let (inner, message) = if state_real.starts_with(&store_real) {
        (
            state,
            format!(
                "the state directory {} lies inside the store {}: TFTP serves the store to \
                 anyone on the boot network, and the state holds the report key; choose a \
                 state directory outside it",
                state.display(),
                store.display()
            ),
        )
    } else if store_real.starts_with(&state_real) {
        (
            store,
            format!(
                "the store {} lies inside the state directory {}: the state must be the \
                 server's alone; choose a store outside it",
                store.display(),
                state.display()
            ),
        )
    } else {
        return Ok(());
    };
    Err((Some(inner.display().to_string()), message))
}

/// `[accounts] home_prefix`: an absolute directory, not `/`, without `.` or `..`.
fn check_home_prefix(prefix: &Path) -> Result<(), String> {
    let plain = prefix.components().all(|c| {
        matches!(
            c,
            std::path::Component::RootDir | std::path::Component::Normal(_)
        )
    });
    if !prefix.is_absolute() || !plain || prefix == Path::new("/") {
        return Err(format!(
            "[accounts] home_prefix {:?} must be an absolute directory other than /, \
             without . or .. (like /home)",
            prefix.display().to_string()
        ));
    }
    Ok(())
}

/// `10.0.0.100-10.0.0.200` into its two ends, first <= last.
pub fn parse_range(text: &str) -> Result<(Ipv4Addr, Ipv4Addr), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("range {text:?} must be FIRST-LAST, like 10.0.0.100-10.0.0.200"))?;
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
    Ok((first, last))
}

/// `10.1.0.0/16`: a network address and its prefix length, without host bits.
pub fn parse_cidr(text: &str) -> Result<ipnet::Ipv4Net, String> {
    let net: ipnet::Ipv4Net = text
        .parse()
        .map_err(|_| format!("cidr {text:?} must be an IPv4 network like 10.1.0.0/16"))?;
    if net.trunc() != net {
        return Err(format!(
            "cidr {text:?} has host bits set: the network is {}",
            net.trunc()
        ));
    }
    Ok(net)
}

/// The most bytes a list of image URLs may take: each file's URLs go on the kernel command
/// line (`diskless.image=`), which the x86 kernel cuts at 2048 bytes.
pub const IMAGE_URLS_MAX_BYTES: usize = 1024;

/// An `image_urls` list: plain `http://HOST[:PORT][/PATH]` base URLs (the initramfs helper
/// speaks HTTP; a comma would split `diskless.image=`, a space the command line, `${` is
/// expanded by iPXE), short enough for the kernel command line. The error carries the
/// offending URL to find its line by.
pub fn check_image_urls(urls: &[String]) -> Result<(), (Option<String>, String)> {
    for url in urls {
        let bad = |why: &str| {
            Err((
                Some(url.clone()),
                format!("image_urls: {url:?} {why} (e.g. \"http://cache-room1/diskless\")"),
            ))
        };
        let Some(rest) = url.strip_prefix("http://") else {
            return bad("must start with http:// (the initramfs fetches over plain HTTP)");
        };
        let host = rest.split('/').next().unwrap_or("");
        if host.is_empty() || host.starts_with(':') {
            return bad("has no host");
        }
        if let Some((_, port)) = host.rsplit_once(':') {
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return bad("has a bad port");
            }
        }
        if url.contains(|c: char| c.is_whitespace() || c.is_control() || ",?#\"'\\".contains(c))
            || url.contains("${")
        {
            return bad("must not contain spaces, commas, quotes, ?, # or ${");
        }
    }
    let total: usize = urls.iter().map(|u| u.len() + 1).sum();
    if total > IMAGE_URLS_MAX_BYTES {
        return Err((
            urls.first().cloned(),
            format!(
                "image_urls: {total} bytes of URLs, more than {IMAGE_URLS_MAX_BYTES}: each file's \
                 URLs go on the kernel command line, which holds 2048 bytes"
            ),
        ));
    }
    Ok(())
}

/// A tmpfs size: a number with an optional k, m, g or % suffix.
pub fn check_size(size: &str) -> Result<(), String> {
    let digits = size.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G', '%']);
    let suffix_len = size.len() - digits.len();
    let ok = !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) && suffix_len <= 1;
    let percent_ok =
        !size.ends_with('%') || digits.parse::<u32>().is_ok_and(|p| (1..=100).contains(&p));
    if ok && percent_ok && digits.parse::<u64>().is_ok_and(|n| n > 0) {
        Ok(())
    } else {
        Err(format!("size {size:?} must be like 75%, 4G or 2048M"))
    }
}

/// Kernel options go into an iPXE script line: no line breaks, no iPXE variable expansion.
pub fn check_cmdline(cmdline: &str) -> Result<(), String> {
    if cmdline.contains(['\n', '\r']) || cmdline.contains("${") {
        Err(format!(
            "kernel options {cmdline:?} must be one line without ${{...}}"
        ))
    } else {
        Ok(())
    }
}

pub fn check_hostname(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "hostname {name:?} must be 1-63 letters, digits or '-' (not at either end)"
        ))
    }
}

fn line_of_offset(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn line_of_text(text: &str, needle: &str) -> Option<usize> {
    // The last line mentioning it: for duplicates, that is the second occurrence.
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.contains(needle) && !l.trim_start().starts_with('#'))
        .map(|(i, _)| i + 1)
        .last()
}

#[cfg(test)]
mod tests {
    use super::*;

    pub const EXAMPLE: &str = include_str!("../../../docs/diskless.example.toml");

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/diskless/diskless.toml"))
    }

    #[test]
    fn the_documented_example_parses() {
        let c = parse(EXAMPLE).unwrap();
        assert_eq!(c.interface.as_deref(), Some("enp3s0"));
        assert_eq!(c.clients.len(), 2);
        assert_eq!(c.clients[0].hostname.as_deref(), Some("pc01"));
        assert_eq!(c.boot.image.as_deref(), Some("trixie"));
        assert_eq!(c.subnets[0].cidr, "10.0.1.0/24");
        assert_eq!(c.clients[1].image_urls.as_deref(), Some(&[][..]));
        assert_eq!(c.admin_names, ["boot.lab.example"]);
    }

    #[test]
    fn admin_names_are_host_names() {
        let err = parse("admin_names = [\"boot.lab.example:9180\"]\n").unwrap_err();
        assert!(err.to_string().contains("not a host name"), "{err}");
        assert!(parse("admin_names = [\"http://boot\"]\n").is_err());
    }

    #[test]
    fn a_control_character_in_a_comment_is_named() {
        let err = parse("interface = \"eth0\"\n# a comment \0 with a NUL\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(err.message.contains("'\\0'"), "{err}");
    }

    #[test]
    fn empty_config_is_all_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
    }

    #[test]
    fn syntax_error_names_file_and_line() {
        let err = parse("interface = \"eth0\"\nmode = full\n").unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(
            err.to_string()
                .starts_with("/etc/diskless/diskless.toml:2: "),
            "{err}"
        );
    }

    #[test]
    fn unknown_key_is_an_error() {
        let err = parse("[boot]\nimgae = \"x\"\n").unwrap_err();
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("imgae"), "{err}");
    }

    #[test]
    fn bad_mac_and_mode_are_explained() {
        let err = parse("[[client]]\nmac = \"52:54:00\"\n").unwrap_err();
        assert!(err.message.contains("not a MAC address"), "{err}");
        assert_eq!(err.line, Some(2));
        let err = parse("mode = \"relay\"\n").unwrap_err();
        assert!(err.message.contains("relay"), "{err}");
    }

    #[test]
    fn duplicates_point_at_the_second_entry() {
        let text =
            "[[client]]\nmac = \"52:54:00:00:00:01\"\n[[client]]\nmac = \"52:54:00:00:00:01\"\n";
        let err = parse(text).unwrap_err();
        assert_eq!(err.line, Some(4));
        assert!(err.message.contains("listed twice"), "{err}");
    }

    #[test]
    fn admin_listen_is_an_address_or_off() {
        let cfg = parse("").unwrap();
        assert_eq!(
            cfg.admin_addr().unwrap(),
            Some("127.0.0.1:9180".parse().unwrap())
        );
        let cfg = parse("admin_listen = \"off\"\n").unwrap();
        assert_eq!(cfg.admin_addr().unwrap(), None);
        let err = parse("admin_listen = \"localhost\"\n").unwrap_err();
        assert_eq!(err.line, Some(1));
        assert!(err.message.contains("not ADDR:PORT"), "{err}");
    }

    #[test]
    fn semantic_checks() {
        assert!(parse("[dhcp]\nrange = \"10.0.0.9-10.0.0.1\"\n")
            .unwrap_err()
            .message
            .contains("ends before"));
        assert!(parse("[boot]\nsize = \"lots\"\n")
            .unwrap_err()
            .message
            .contains("75%"));
        assert!(parse("[boot]\ncmdline = \"a ${x}\"\n").is_err());
        assert!(parse("[boot]\nimage = \"../etc\"\n").is_err());
        assert!(
            parse("[[client]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"bad_name\"\n").is_err()
        );
    }

    #[test]
    fn image_urls_and_subnets_are_checked() {
        let c = parse(
            "[boot]\nimage_urls = [\"http://cache:8080/d\"]\n\
             [[subnet]]\ncidr = \"10.1.0.0/16\"\nimage_urls = [\"http://c1\"]\n",
        )
        .unwrap();
        assert_eq!(c.boot.image_urls, ["http://cache:8080/d"]);
        assert_eq!(c.subnets[0].image_urls, ["http://c1"]);
        for (text, line, why) in [
            (
                "[boot]\nimage_urls = [\"https://c\"]\n",
                2,
                "must start with http://",
            ),
            ("[boot]\nimage_urls = [\"http:///x\"]\n", 2, "has no host"),
            ("[boot]\nimage_urls = [\"http://c:0\"]\n", 2, "bad port"),
            ("[boot]\nimage_urls = [\"http://a,b\"]\n", 2, "commas"),
            ("[boot]\nimage_urls = [\"http://c/${x}\"]\n", 2, "${"),
            (
                "[[subnet]]\ncidr = \"10.1.2.3/16\"\nimage_urls = []\n",
                2,
                "host bits set: the network is 10.1.0.0/16",
            ),
            (
                "[[subnet]]\ncidr = \"10.1.0.0\"\nimage_urls = []\n",
                2,
                "like 10.1.0.0/16",
            ),
            (
                "[[subnet]]\ncidr = \"10.1.0.0/16\"\nimage_urls = []\n\
                 [[subnet]]\ncidr = \"10.1.0.0/16\"\nimage_urls = []\n",
                5,
                "listed twice",
            ),
            (
                "[[subnet]]\ncidr = \"10.1.0.0/16\"\n",
                1,
                "missing field `image_urls`",
            ),
            (
                "[[client]]\nmac = \"52:54:00:00:00:01\"\nimage_urls = [\"ftp://x\"]\n",
                3,
                "must start with http://",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert!(err.message.contains(why), "{text}: {err}");
            assert_eq!(err.line, Some(line), "{text}: {err}");
        }
        let long = format!("\"http://cache/{}\"", "x".repeat(300));
        let err = parse(&format!(
            "[boot]\nimage_urls = [{long}, {long}, {long}, {long}]\n"
        ))
        .unwrap_err();
        assert!(err.message.contains("2048"), "{err}");
    }

    #[test]
    fn state_and_store_must_not_hold_one_another() {
        let err = parse("store = \"/srv/diskless\"\nstate = \"/srv/diskless/./images/../state\"\n")
            .unwrap_err();
        assert_eq!(err.line, Some(2), "{err}");
        assert!(
            err.message.starts_with(
                "the state directory /srv/diskless/./images/../state lies inside the store \
                 /srv/diskless: TFTP serves the store"
            ),
            "{err}"
        );
        let err = parse("store = \"/var/lib/diskless/state/store\"\n").unwrap_err();
        assert_eq!(err.line, Some(1), "{err}");
        assert!(
            err.message.starts_with(
                "the store /var/lib/diskless/state/store lies inside the state directory \
                 /var/lib/diskless/state"
            ),
            "{err}"
        );
        assert!(parse("store = \"/srv/d\"\nstate = \"/srv/d\"\n").is_err());
        // Side by side, one name the prefix of the other's: apart.
        assert!(parse("store = \"/srv/d\"\nstate = \"/srv/d-state\"\n").is_ok());

        // Through a symlink: the store reached by a link inside the state directory.
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::os::unix::fs::symlink(&state, dir.path().join("link")).unwrap();
        let text = format!(
            "store = \"{0}/link/store\"\nstate = \"{0}/state\"\n",
            dir.path().display()
        );
        assert!(parse(&text)
            .unwrap_err()
            .message
            .contains("lies inside the state directory"));
    }

    #[test]
    fn home_prefix_is_an_absolute_directory() {
        let c = parse("[accounts]\n").unwrap();
        assert_eq!(c.accounts.unwrap().home_prefix, Path::new("/home"));
        for bad in ["home", "/", "/home/../usr", "./home"] {
            let err = parse(&format!("[accounts]\nhome_prefix = \"{bad}\"\n")).unwrap_err();
            assert!(err.message.contains("home_prefix"), "{bad}: {err}");
            assert_eq!(err.line, Some(2), "{bad}: {err}");
        }
        assert!(parse("[accounts]\nhome_prefix = \"/srv/homes\"\n").is_ok());
    }

    #[test]
    fn sizes() {
        for ok in ["75%", "4G", "2048M", "1000000k", "100%"] {
            assert!(check_size(ok).is_ok(), "{ok}");
        }
        for bad in ["", "0", "101%", "4GB", "G", "-1G", "1.5G"] {
            assert!(check_size(bad).is_err(), "{bad}");
        }
    }
}
