//! `/etc/diskless/diskless.toml`: the site's settings, every `diskless serve` flag included.
//!
//! Parsing is strict and typed: unknown keys are errors (a typo is not silently ignored), and
//! every value that is more than text (a range, a network, a size, an address) is parsed into
//! its type while the TOML is read ([`values`]), so a mistake carries the span of the value
//! that made it. What one value cannot say alone (two clients with one MAC, the state inside
//! the store) is checked afterwards by [`Config::validate`], whose error names the [`Field`];
//! [`Config::parse`] finds that field's span in the parsed document. Every error names the
//! file, the line and column, the field and the value.

mod values;

use diskless_dhcp::Mac;
pub use diskless_dhcp::Mode;
use serde::{Deserialize, Deserializer, Serialize};
use std::collections::HashSet;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
pub use values::{
    AddressRange, AdminListen, FetchMode, HostPort, MulticastGroups, Network, Size, UidRange,
};

pub const DEFAULT_PATH: &str = "/etc/diskless/diskless.toml";
pub const DEFAULT_STORE: &str = "/var/lib/diskless/store";
pub const DEFAULT_STATE: &str = "/var/lib/diskless/state";
pub const DEFAULT_ADMIN_LISTEN: SocketAddr =
    SocketAddr::V4(std::net::SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9180));

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
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
    #[serde(deserialize_with = "port")]
    pub http_port: u16,
    pub tftp_port: u16,
    /// The admin listener (dashboard, its API, `/metrics`), or `off`. Default
    /// 127.0.0.1:9180: the boot network does not reach it unless the admin says so.
    pub admin_listen: AdminListen,
    /// Host names the admin listener answers to besides its address (`boot.lab.example`, a
    /// reverse proxy's name): requests naming any other host are refused, as a page of a DNS
    /// rebinding attack would (docs/SECURITY.md).
    #[serde(deserialize_with = "admin_names")]
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
    /// The pool, in full mode; None: the interface's subnet from .100 to .199 (or less).
    pub range: Option<AddressRange>,
    /// Default: none (an isolated lab network has no router).
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    #[serde(deserialize_with = "domain")]
    pub domain: Option<String>,
    /// Seconds.
    #[serde(deserialize_with = "lease_time")]
    pub lease_time: u32,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IpxeSection {
    /// Where Debian's `ipxe` package puts its binaries.
    pub dir: PathBuf,
    /// For legacy BIOS PXE clients.
    #[serde(deserialize_with = "ipxe_file")]
    pub bios: String,
    /// For UEFI x64 PXE clients: `ipxe.efi` (own drivers) or `snponly.efi` (firmware's NIC).
    #[serde(deserialize_with = "ipxe_file")]
    pub uefi: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BootSection {
    /// The image clients boot unless their `[[client]]` entry names another.
    #[serde(deserialize_with = "image_name")]
    pub image: Option<String>,
    pub unknown_clients: UnknownClients,
    /// Size of each client's RAM disk (image + writes): `75%`, `4G`, `2048M`.
    pub size: Size,
    /// How clients get the image: `whole` (default), `lazy` or `network` ([`FetchMode`]).
    pub fetch: FetchMode,
    /// Extra kernel options for every client.
    #[serde(deserialize_with = "kernel_options")]
    pub cmdline: String,
    pub image_protocol: ImageProtocol,
    /// UEFI PXE clients (and UEFI HTTP Boot clients, when the GRUB served has http) boot
    /// through the Secure Boot chain (Debian's signed shim and GRUB) instead of iPXE; a
    /// `[[client]]` entry's `secure_boot` overrides it.
    pub secure_boot: bool,
    /// Where clients fetch the kernel, initrds and image from, in order, before this server:
    /// each the base URL of a store layout (`diskless image export`), e.g. a room's cache.
    /// This server comes last unless the list names it. A `[[subnet]]` or `[[client]]`
    /// entry's list replaces this one.
    #[serde(deserialize_with = "image_urls")]
    pub image_urls: Vec<String>,
}

/// `[[subnet]]`: the clients whose address is in `cidr` (the most specific subnet wins).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    /// `10.1.0.0/16`.
    pub cidr: Network,
    /// Replaces `[boot] image_urls` for these clients.
    #[serde(deserialize_with = "image_urls")]
    pub image_urls: Vec<String>,
    /// `[subnet.multicast]`: these clients' multicast values in place of `[multicast]`'s.
    #[serde(default)]
    pub multicast: Option<crate::multicast::SubnetMulticast>,
    /// Replaces `[boot] fetch` for these clients.
    #[serde(default)]
    pub fetch: Option<FetchMode>,
}

/// The record of client boots (`STATE/clients.json`, `diskless clients`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecordSection {
    /// Clients kept; beyond it the one seen longest ago is dropped.
    #[serde(deserialize_with = "at_least_one")]
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
    /// The users (and groups) with an ID in it are the lab's.
    pub uids: UidRange,
    /// Exactly these users instead, when not empty.
    #[serde(deserialize_with = "user_names")]
    pub users: Vec<String>,
    /// Where the entries are read (at each client's boot).
    pub passwd: PathBuf,
    pub group: PathBuf,
    /// Every served home lies below it: a user whose home is elsewhere (`/usr/local`, the
    /// PAM helper's directory) is not served, nor one whose primary group is outside `uids`.
    #[serde(deserialize_with = "home_prefix")]
    pub home_prefix: PathBuf,
    pub homes: Homes,
    /// The SSH server; default: the boot server's address, port 22.
    pub ssh_server: Option<HostPort>,
    /// Its public host keys, pinned on the clients.
    #[serde(deserialize_with = "ssh_host_keys")]
    pub ssh_host_keys: Vec<PathBuf>,
}

impl Default for AccountsSection {
    fn default() -> Self {
        AccountsSection {
            uids: UidRange::default(),
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
    #[serde(default, deserialize_with = "hostname")]
    pub hostname: Option<String>,
    /// A reserved address (full mode).
    pub ip: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "image_name")]
    pub image: Option<String>,
    /// Extra kernel options, after the site's.
    #[serde(default, deserialize_with = "some_kernel_options")]
    pub cmdline: Option<String>,
    pub size: Option<Size>,
    /// Replaces `[boot] fetch` and its subnet's for this client.
    #[serde(default)]
    pub fetch: Option<FetchMode>,
    /// This client boots through the Secure Boot chain (or not), whatever `[boot]` says.
    pub secure_boot: Option<bool>,
    /// Replaces `[boot] image_urls` and its subnet's for this client.
    #[serde(default, deserialize_with = "some_image_urls")]
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
            admin_listen: AdminListen::At(DEFAULT_ADMIN_LISTEN),
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
            size: Size::default(),
            fetch: FetchMode::default(),
            cmdline: String::new(),
            image_protocol: ImageProtocol::Http,
            secure_boot: false,
            image_urls: Vec::new(),
        }
    }
}

// The checks of plain strings, run while they are read (`deserialize_with`), so the error
// carries the value's span.

fn image_name<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    values::checked_str(d, check_image_name).map(Some)
}

fn kernel_options<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    values::checked_str(d, check_cmdline)
}

fn some_kernel_options<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    kernel_options(d).map(Some)
}

fn hostname<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    values::checked_str(d, check_hostname).map(Some)
}

fn ipxe_file<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    values::checked_str(d, check_ipxe_file)
}

fn admin_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    values::checked_list(d, check_admin_name)
}

fn user_names<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    values::checked_list(d, |user| {
        if crate::accounts::valid_name(user) {
            Ok(())
        } else {
            Err(format!("{user:?} is not a user name ([a-z_][a-z0-9_-]*)"))
        }
    })
}

fn image_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let urls = values::checked_list(d, check_image_url)?;
    check_image_urls_length(&urls).map_err(serde::de::Error::custom)?;
    Ok(urls)
}

fn some_image_urls<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    image_urls(d).map(Some)
}

fn home_prefix<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
    values::checked_str(d, |p| check_home_prefix(Path::new(p))).map(PathBuf::from)
}

fn ssh_host_keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
    let keys = Vec::<PathBuf>::deserialize(d)?;
    if keys.is_empty() {
        return Err(serde::de::Error::custom(
            "the list is empty: clients need the SSH server's host key to pin",
        ));
    }
    Ok(keys)
}

fn domain<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    values::checked_str(d, |name| {
        diskless_dhcp::config::check_name("domain", name).map_err(|e| e.to_string())
    })
    .map(Some)
}

fn lease_time<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let secs = u32::deserialize(d)?;
    diskless_dhcp::config::check_lease_time(std::time::Duration::from_secs(secs.into()))
        .map_err(serde::de::Error::custom)?;
    Ok(secs)
}

fn port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    match u16::deserialize(d)? {
        0 => Err(serde::de::Error::custom("the port must not be 0")),
        port => Ok(port),
    }
}

fn at_least_one<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("must be at least 1")),
        n => Ok(n),
    }
}

/// Where a value sits in the config, as TOML would write its key: `store`, `boot.size`,
/// `client[1].mac` (the second `[[client]]`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Field(Vec<FieldPart>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum FieldPart {
    Key(String),
    Index(usize),
}

impl Field {
    /// A top-level key.
    pub fn new(key: &str) -> Field {
        Field(vec![FieldPart::Key(key.into())])
    }

    /// The `index`th entry of the array of tables `key`.
    pub fn entry(key: &str, index: usize) -> Field {
        Field(vec![FieldPart::Key(key.into()), FieldPart::Index(index)])
    }

    /// The key `key` inside this one.
    pub fn key(mut self, key: &str) -> Field {
        self.0.push(FieldPart::Key(key.into()));
        self
    }

    /// The span of the field's value in `doc` (or of the nearest enclosing one it has).
    fn span_in(&self, doc: &toml_edit::ImDocument<String>) -> Option<std::ops::Range<usize>> {
        let mut item = doc.as_item();
        let mut span = None;
        for part in &self.0 {
            let next = match part {
                FieldPart::Key(k) => item.get(k.as_str()),
                FieldPart::Index(i) => item.get(*i),
            };
            let Some(next) = next else { break };
            item = next;
            span = item.span().or(span);
        }
        span
    }

    /// The field whose key or value holds byte `offset` of `doc`'s text, the innermost one.
    fn at(doc: &toml_edit::ImDocument<String>, offset: usize) -> Field {
        fn inside(span: Option<std::ops::Range<usize>>, offset: usize) -> bool {
            span.is_some_and(|s| s.contains(&offset) || s.start == offset)
        }
        fn walk(item: &toml_edit::Item, offset: usize, path: &mut Vec<FieldPart>) -> bool {
            use toml_edit::{Item, Value};
            let mut try_child = |part: FieldPart, child: &Item, here: bool| {
                path.push(part);
                if walk(child, offset, path) || here {
                    return true;
                }
                path.pop();
                false
            };
            match item {
                Item::Table(t) => t.iter().any(|(k, v)| {
                    let here =
                        inside(t.key(k).and_then(|k| k.span()), offset) || inside(v.span(), offset);
                    try_child(FieldPart::Key(k.into()), v, here)
                }),
                Item::ArrayOfTables(a) => a.iter().enumerate().any(|(i, t)| {
                    let here = inside(t.span(), offset);
                    try_child(FieldPart::Index(i), &Item::Table(t.clone()), here)
                }),
                Item::Value(Value::InlineTable(t)) => t.iter().any(|(k, _)| {
                    let Some((key, v)) = t.get_key_value(k) else {
                        return false;
                    };
                    let here = inside(key.span(), offset) || inside(v.span(), offset);
                    try_child(FieldPart::Key(k.into()), v, here)
                }),
                Item::Value(Value::Array(a)) => a.iter().enumerate().any(|(i, v)| {
                    let here = inside(v.span(), offset);
                    try_child(FieldPart::Index(i), &Item::Value(v.clone()), here)
                }),
                _ => false,
            }
        }
        let mut path = Vec::new();
        walk(doc.as_item(), offset, &mut path);
        Field(path)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.0.iter().enumerate() {
            if i > 0 && matches!(part, FieldPart::Key(_)) {
                f.write_str(".")?;
            }
            match part {
                // A key TOML would quote is quoted (`""`, `"a b"`: found by the config fuzz
                // target, an empty key named nothing).
                FieldPart::Key(k)
                    if k.is_empty()
                        || !k
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c)) =>
                {
                    write!(f, "{k:?}")?
                }
                FieldPart::Key(k) => f.write_str(k)?,
                FieldPart::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A config that parses but cannot be used, found by [`Config::validate`]: which field, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub field: Field,
    pub message: String,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for Invalid {}

/// A config that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: PathBuf,
    /// 1-based; None when the problem is not on one line (or the file could not be read).
    pub line: Option<usize>,
    /// 1-based, in characters; with `line`.
    pub column: Option<usize>,
    /// The key the mistake is in (`boot.size`, `client[1].mac`), when it is in one.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        match &self.field {
            Some(field) => write!(f, ": {field}: {}", self.message),
            None => write!(f, ": {}", self.message),
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
            column: None,
            field: None,
            message: format!("cannot read: {e}"),
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate config text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let error = |span: Option<std::ops::Range<usize>>, field: Option<Field>, message: &str| {
            let at = span.map(|s| s.start);
            // One line: toml's syntax errors put what it expected on a second one.
            let mut message = message.trim().replace('\n', "; ");
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
            let (line, column) = at.map(|at| line_and_column(text, at)).unzip();
            ConfigError {
                path: path.to_path_buf(),
                line,
                column,
                field: field.filter(|f| !f.0.is_empty()).map(|f| f.to_string()),
                message,
            }
        };
        let doc = toml_edit::ImDocument::parse(text.to_string())
            .map_err(|e| error(e.span(), None, e.message()))?;
        let config: Config = toml_edit::de::from_document(doc.clone()).map_err(|e| {
            let field = e.span().map(|s| Field::at(&doc, s.start));
            error(e.span(), field, e.message())
        })?;
        config
            .validate()
            .map_err(|e| error(e.field.span_in(&doc), Some(e.field), &e.message))?;
        Ok(config)
    }

    /// Check what one value cannot say alone: the store and the state apart, no subnet,
    /// MAC, reserved address or host name twice. (Each value was checked when it was read.)
    pub fn validate(&self) -> Result<(), Invalid> {
        check_apart(&self.store, &self.state)?;
        let mut cidrs = HashSet::new();
        for (i, subnet) in self.subnets.iter().enumerate() {
            if !cidrs.insert(subnet.cidr) {
                return Err(Invalid {
                    field: Field::entry("subnet", i).key("cidr"),
                    message: format!("subnet {} is listed twice", subnet.cidr),
                });
            }
        }
        let mut macs = HashSet::new();
        let mut ips = HashSet::new();
        let mut names = HashSet::new();
        for (i, client) in self.clients.iter().enumerate() {
            let field = |key| Field::entry("client", i).key(key);
            if !macs.insert(client.mac) {
                return Err(Invalid {
                    field: field("mac"),
                    message: format!("client {} is listed twice", client.mac),
                });
            }
            if let Some(ip) = client.ip {
                if !ips.insert(ip) {
                    return Err(Invalid {
                        field: field("ip"),
                        message: format!("address {ip} is reserved for two clients"),
                    });
                }
            }
            if let Some(name) = &client.hostname {
                if !names.insert(name.to_ascii_lowercase()) {
                    return Err(Invalid {
                        field: field("hostname"),
                        message: format!("hostname {name} is given to two clients"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Where the admin listener listens, or None when `admin_listen = "off"`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_listen.addr()
    }
}

/// The 1-based line and column (in characters) of byte `offset` of `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    // Count the bytes that start a character (not UTF-8 continuation bytes, 0b10xxxxxx).
    let column = before[line_start..]
        .iter()
        .filter(|&&b| b & 0xc0 != 0x80)
        .count();
    (
        before.iter().filter(|&&b| b == b'\n').count() + 1,
        column + 1,
    )
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
fn check_apart(store: &Path, state: &Path) -> Result<(), Invalid> {
    let (store_real, state_real) = (resolved(store), resolved(state));
    let (inner, message) = if state_real.starts_with(&store_real) {
        (
            "state",
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
            "store",
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
    Err(Invalid {
        field: Field::new(inner),
        message,
    })
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
            "{:?} must be an absolute directory other than /, without . or .. (like /home)",
            prefix.display().to_string()
        ));
    }
    Ok(())
}

/// The most bytes a list of image URLs may take: each file's URLs go on the kernel command
/// line (`diskless.image=`), which the x86 kernel cuts at 2048 bytes.
pub const IMAGE_URLS_MAX_BYTES: usize = 1024;

/// One of `image_urls`: a plain `http://HOST[:PORT][/PATH]` base URL (the initramfs helper
/// speaks HTTP; a comma would split `diskless.image=`, a space the command line, `${` is
/// expanded by iPXE).
pub fn check_image_url(url: &str) -> Result<(), String> {
    let bad = |why: &str| {
        Err(format!(
            "{url:?} {why} (e.g. \"http://cache-room1/diskless\")"
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
    Ok(())
}

/// An `image_urls` list short enough for the kernel command line.
fn check_image_urls_length(urls: &[String]) -> Result<(), String> {
    let total: usize = urls.iter().map(|u| u.len() + 1).sum();
    if total > IMAGE_URLS_MAX_BYTES {
        return Err(format!(
            "{total} bytes of URLs, more than {IMAGE_URLS_MAX_BYTES}: each file's URLs go on \
             the kernel command line, which holds 2048 bytes"
        ));
    }
    Ok(())
}

/// An image name (`[boot] image`, `[[client]] image`, `--image`).
pub fn check_image_name(name: &str) -> Result<(), String> {
    crate::names::check_name("image name", name)
}

/// An iPXE binary's name in `[ipxe] dir`: a plain file name.
pub fn check_ipxe_file(file: &str) -> Result<(), String> {
    if file.is_empty() || file.contains('/') {
        return Err(format!("{file:?} must be a plain file name"));
    }
    Ok(())
}

/// A name the admin listener answers to: a host name, no port, no scheme.
pub fn check_admin_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains(|c: char| c == ':' || c == '/' || c.is_whitespace()) {
        return Err(format!("{name:?} is not a host name (no port, no scheme)"));
    }
    Ok(())
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
        assert_eq!(c.subnets[0].cidr.to_string(), "10.0.1.0/24");
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
                .starts_with("/etc/diskless/diskless.toml:2:8: invalid string; expected"),
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
        assert_eq!(cfg.admin_addr(), Some("127.0.0.1:9180".parse().unwrap()));
        let cfg = parse("admin_listen = \"off\"\n").unwrap();
        assert_eq!(cfg.admin_addr(), None);
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
            assert_eq!(err.field.as_deref(), Some("accounts.home_prefix"), "{err}");
            assert_eq!(err.line, Some(2), "{bad}: {err}");
        }
        assert!(parse("[accounts]\nhome_prefix = \"/srv/homes\"\n").is_ok());
    }

    #[test]
    fn each_mistake_names_the_line_column_field_and_value() {
        for (text, (line, column), field, why) in [
            (
                "[dhcp]\nrange = \"10.0.0.1/24\"\n",
                (2, 9),
                "dhcp.range",
                "\"10.0.0.1/24\" is not a range FIRST-LAST",
            ),
            (
                "[dhcp]\nrange = \"10.0.0.300-10.0.0.9\"\n",
                (2, 9),
                "dhcp.range",
                "range start \"10.0.0.300\" is not an IPv4 address",
            ),
            (
                "[dhcp]\nrouter = \"10.0.0\"\n",
                (2, 10),
                "dhcp.router",
                "invalid IPv4 address syntax",
            ),
            (
                "[dhcp]\ndns = [\"10.0.0.1\",\n  \"10.0.0.256\"]\n",
                (3, 3),
                "dhcp.dns[1]",
                "invalid IPv4 address syntax",
            ),
            (
                "[[subnet]]\ncidr = \"10.1.0.0/33\"\nimage_urls = []\n",
                (2, 8),
                "subnet[0].cidr",
                "\"10.1.0.0/33\" is not an IPv4 network",
            ),
            (
                "[boot]\nimage = \"lab\"\nsize = \"4GB\"\n",
                (3, 8),
                "boot.size",
                "\"4GB\" is not a size",
            ),
            (
                "[[client]]\nmac = \"52:54:00:00:00:01\"\nsize = \"lots\"\n",
                (3, 8),
                "client[0].size",
                "\"lots\" is not a size",
            ),
            (
                "[boot]\nfetch = \"lazily\"\n",
                (2, 9),
                "boot.fetch",
                "\"lazily\" is not a fetch mode: whole, lazy or network",
            ),
            (
                "[[subnet]]\ncidr = \"10.1.0.0/16\"\nimage_urls = []\nfetch = \"all\"\n",
                (4, 9),
                "subnet[0].fetch",
                "\"all\" is not a fetch mode",
            ),
            (
                "[[client]]\nmac = \"52:54:00:00:00:01\"\nfetch = \"Lazy\"\n",
                (3, 9),
                "client[0].fetch",
                "\"Lazy\" is not a fetch mode",
            ),
            (
                "[accounts]\nuids = \"1000\"\n",
                (2, 8),
                "accounts.uids",
                "\"1000\" is not a range FIRST-LAST, like 1000-59999",
            ),
            (
                "[accounts]\nuids = \"0-100\"\n",
                (2, 8),
                "accounts.uids",
                "\"0-100\": the range must start above 0",
            ),
            (
                "[accounts]\nssh_server = \"files.lab\"\n",
                (2, 14),
                "accounts.ssh_server",
                "\"files.lab\" is not HOST:PORT",
            ),
            (
                "[accounts]\nusers = [\"alice\", \"Bob\"]\n",
                (2, 19),
                "accounts.users[1]",
                "\"Bob\" is not a user name",
            ),
            (
                "[accounts]\nssh_host_keys = []\n",
                (2, 17),
                "accounts.ssh_host_keys",
                "the list is empty",
            ),
            (
                "[boot]\nimgae = \"x\"\n",
                (2, 1),
                "boot.imgae",
                "unknown field `imgae`",
            ),
            (
                "[dhcp]\ndomain = \"lab_example\"\n",
                (2, 10),
                "dhcp.domain",
                "domain \"lab_example\" is not a valid host name",
            ),
            (
                "[dhcp]\nlease_time = 30\n",
                (2, 14),
                "dhcp.lease_time",
                "lease time 30s is out of range",
            ),
            (
                "[boot]\n\"\" = 1\n",
                (2, 1),
                "boot.\"\"",
                "unknown field ``",
            ),
            (
                "[boot]\n\"a b\" = 1\n",
                (2, 1),
                "boot.\"a b\"",
                "unknown field `a b`",
            ),
            (
                "http_port = 0\n",
                (1, 13),
                "http_port",
                "the port must not be 0",
            ),
            (
                "[record]\nmax_clients = 0\n",
                (2, 15),
                "record.max_clients",
                "must be at least 1",
            ),
            (
                "[ipxe]\nuefi = \"efi/ipxe.efi\"\n",
                (2, 8),
                "ipxe.uefi",
                "\"efi/ipxe.efi\" must be a plain file name",
            ),
            (
                "[[client]]\nmac = \"52:54:00:00:00:01\"\nip = \"10.0.0.5\"\n\
                 [[client]]\nmac = \"52:54:00:00:00:02\"\nip = \"10.0.0.5\"\n",
                (6, 6),
                "client[1].ip",
                "address 10.0.0.5 is reserved for two clients",
            ),
            (
                "[[client]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"PC1\"\n\
                 [[client]]\nmac = \"52:54:00:00:00:02\"\nhostname = \"pc1\"\n",
                (6, 12),
                "client[1].hostname",
                "hostname pc1 is given to two clients",
            ),
        ] {
            let err = parse(text).unwrap_err();
            assert_eq!(
                (err.line, err.column, err.field.as_deref()),
                (Some(line), Some(column), Some(field)),
                "{text}: {err}"
            );
            assert!(err.message.contains(why), "{text}: {err}");
            assert!(
                err.to_string().starts_with(&format!(
                    "/etc/diskless/diskless.toml:{line}:{column}: {field}: "
                )),
                "{err}"
            );
        }
    }

    #[test]
    fn fields_are_found_by_their_span_and_their_name() {
        let text = "store = \"/srv/d\"\n[boot]\nimage = \"lab\"\n\
                    [[client]]\nmac = \"52:54:00:00:00:01\"\n[[client]]\n\
                    mac = \"52:54:00:00:00:02\"\nimage_urls = [\"http://a\", \"http://b\"]\n";
        let doc = toml_edit::ImDocument::parse(text.to_string()).unwrap();
        for field in [
            Field::new("store"),
            Field::new("boot").key("image"),
            Field::entry("client", 1).key("mac"),
        ] {
            let span = field.span_in(&doc).unwrap();
            assert_eq!(Field::at(&doc, span.start), field, "{field}");
        }
        let second = text.find("\"http://b").unwrap();
        assert_eq!(
            Field::at(&doc, second).to_string(),
            "client[1].image_urls[1]"
        );
        assert_eq!(line_and_column("a\näb = 1", 6), (2, 4));
    }

    #[test]
    fn serde_types_the_values() {
        let c = parse(
            "admin_listen = \"off\"\n[dhcp]\nrange = \"10.0.0.10-10.0.0.20\"\n\
             [accounts]\nuids = \"2000-2999\"\nssh_server = \"files:2222\"\n",
        )
        .unwrap();
        assert_eq!(c.admin_listen, AdminListen::Off);
        assert_eq!(
            c.dhcp.range,
            Some(AddressRange {
                first: Ipv4Addr::new(10, 0, 0, 10),
                last: Ipv4Addr::new(10, 0, 0, 20)
            })
        );
        let accounts = c.accounts.unwrap();
        assert_eq!(
            accounts.uids,
            UidRange {
                first: 2000,
                last: 2999
            }
        );
        assert_eq!(accounts.ssh_server.unwrap().to_string(), "files:2222");
    }
}
