//! The stages of a boot and why one failed: one type each, for every side that names them.
//!
//! The protocol servers record the stages they see (DHCP, TFTP, the iPXE script, the GRUB
//! config); the boot script (initramfs-tools/scripts/diskless) and the fetch helper
//! (crates/fetch) post the client's own as `stage=NAME&detail=...` to
//! [`Route::Report`](crate::Route::Report). The server parses the name once, into a
//! [`Stage`]; the recorder, the metrics, the report tokens and the dashboard's views work on
//! the type. A name no one here knows is kept as [`Stage::Other`] (bounded: 1 to
//! [`OTHER_MAX`] of `a-z`, `0-9`, `-`) and counted in the metrics under the label `other`, so
//! what a host invents cannot grow a label's values.
//!
//! ```text
//! dhcp-offer dhcp-ack dhcp-nak   the DHCP server's answers          server
//! tftp                           a TFTP transfer ended              server
//! ipxe-script                    a client got its iPXE script       server
//! grub-config                    ... or its GRUB config (Secure Boot chain)
//! network-up                     the initramfs has an address       boot script
//! fetching                       the image download starts          boot script
//! fetched                        downloaded and verified            fetch helper (FetchedDetail)
//! root-mounted                   the overlay root is mounted        boot script
//! accounts-missing               an accounts file could not be read boot script
//! multi-user                     the system started (final)         booted system
//! filled                         lazy: the RAM copy is whole        fetch helper (seconds=,
//!                                (often after multi-user)           bytes=, fetched=, demanded=,
//!                                                                   refused=: FilledDetail;
//!                                                                   + MulticastFetch's fields)
//! network-released               lazy: the root moved onto the copy fetch helper
//! failed                         the boot stopped (final)           boot script (FailureReason)
//! ```
//!
//! A failure's detail is `reason=CODE message` ([`FailureReason`]); images made before the
//! code was sent say only the message, which [`FailureReason::parse`] still reads (by the
//! wording the boot script used then).

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The longest stage name a client may send.
pub const OTHER_MAX: usize = 32;

/// A stage of a boot (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Stage {
    DhcpOffer,
    DhcpAck,
    DhcpNak,
    Tftp,
    IpxeScript,
    GrubConfig,
    NetworkUp,
    Fetching,
    Fetched,
    RootMounted,
    AccountsMissing,
    MultiUser,
    Failed,
    /// `fetch = "lazy"`: the RAM copy is whole (it may come after `multi-user`).
    Filled,
    /// `fetch = "lazy"`: the root reads the RAM copy; the network device is gone.
    NetworkReleased,
    /// A name none of the above, as a client sent it (checked: [`Stage::parse`]).
    Other(OtherStage),
}

/// A stage name no [`Stage`] variant has: 1 to [`OTHER_MAX`] of `a-z`, `0-9`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OtherStage(String);

impl OtherStage {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A stage name that is not one: empty, too long, or with other characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("stage must be 1-{OTHER_MAX} of a-z, 0-9, '-'")]
pub struct BadStage;

impl Stage {
    /// Every stage this server knows, in boot order.
    pub const KNOWN: [Stage; 15] = [
        Stage::DhcpOffer,
        Stage::DhcpAck,
        Stage::DhcpNak,
        Stage::Tftp,
        Stage::IpxeScript,
        Stage::GrubConfig,
        Stage::NetworkUp,
        Stage::Fetching,
        Stage::Fetched,
        Stage::RootMounted,
        Stage::AccountsMissing,
        Stage::MultiUser,
        Stage::Failed,
        Stage::Filled,
        Stage::NetworkReleased,
    ];

    /// The stage called `name`: a known one, or [`Stage::Other`] if the name is well formed.
    pub fn parse(name: &str) -> Result<Stage, BadStage> {
        if let Some(known) = Stage::KNOWN.iter().find(|s| s.as_str() == name) {
            return Ok(known.clone());
        }
        let well_formed = !name.is_empty()
            && name.len() <= OTHER_MAX
            && name
                .bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-');
        if well_formed {
            Ok(Stage::Other(OtherStage(name.to_string())))
        } else {
            Err(BadStage)
        }
    }

    /// Its name, as sent and recorded.
    pub fn as_str(&self) -> &str {
        match self {
            Stage::Other(other) => other.as_str(),
            known => known.label(),
        }
    }

    /// Its metric label: the name of a known stage, `other` for every other one.
    pub const fn label(&self) -> &'static str {
        match self {
            Stage::DhcpOffer => "dhcp-offer",
            Stage::DhcpAck => "dhcp-ack",
            Stage::DhcpNak => "dhcp-nak",
            Stage::Tftp => "tftp",
            Stage::IpxeScript => "ipxe-script",
            Stage::GrubConfig => "grub-config",
            Stage::NetworkUp => "network-up",
            Stage::Fetching => "fetching",
            Stage::Fetched => "fetched",
            Stage::RootMounted => "root-mounted",
            Stage::AccountsMissing => "accounts-missing",
            Stage::MultiUser => "multi-user",
            Stage::Failed => "failed",
            Stage::Filled => "filled",
            Stage::NetworkReleased => "network-released",
            Stage::Other(_) => "other",
        }
    }

    /// It ends a boot: `multi-user` or `failed`.
    pub const fn is_final(&self) -> bool {
        matches!(self, Stage::MultiUser | Stage::Failed)
    }

    /// Its detail says how a seat given a multicast session got its image
    /// ([`crate::multicast::MulticastFetch`]): `fetched` (whole) or `filled` (lazy: the
    /// session filled its RAM copy).
    pub const fn reports_multicast(&self) -> bool {
        matches!(self, Stage::Fetched | Stage::Filled)
    }

    /// The client got its boot file (iPXE script or GRUB config): what came after is Linux.
    pub const fn is_boot_file(&self) -> bool {
        matches!(self, Stage::IpxeScript | Stage::GrubConfig)
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Stage {
    type Err = BadStage;
    fn from_str(s: &str) -> Result<Stage, BadStage> {
        Stage::parse(s)
    }
}

impl Serialize for Stage {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Stage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Stage, D::Error> {
        let name = String::deserialize(d)?;
        Stage::parse(&name).map_err(|e| serde::de::Error::custom(format!("{name:?}: {e}")))
    }
}

/// Why a boot failed, as the boot script says it (`reason=CODE` in the `failed` report).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureCode {
    /// The initramfs got no address (no DHCP answer).
    NoAddress,
    /// No image source or digest on the kernel command line (or a parameter without its
    /// companion).
    NoImageUrl,
    /// No source could deliver the image.
    Fetch,
    /// The image did not match its sha256, or a block failed dm-verity's check.
    Verify,
    /// The RAM disk could not be mounted or is too small.
    Ram,
    /// A disk, loop device or the squashfs could not be mounted.
    Mount,
    /// The overlay root or its writable layer could not be set up.
    Overlay,
    /// A kernel module could not be loaded.
    Modules,
    /// The boot's report token was refused.
    Token,
    /// The booted system went to emergency mode.
    Emergency,
    /// The booted system did not finish starting in time.
    Timeout,
    /// Anything else, or a code this server does not know.
    Other,
}

impl FailureCode {
    /// Every code, `other` last.
    pub const ALL: [FailureCode; 12] = [
        FailureCode::NoAddress,
        FailureCode::NoImageUrl,
        FailureCode::Fetch,
        FailureCode::Verify,
        FailureCode::Ram,
        FailureCode::Mount,
        FailureCode::Overlay,
        FailureCode::Modules,
        FailureCode::Token,
        FailureCode::Emergency,
        FailureCode::Timeout,
        FailureCode::Other,
    ];

    /// As sent after `reason=`, and as the metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            FailureCode::NoAddress => "no-address",
            FailureCode::NoImageUrl => "no-image-url",
            FailureCode::Fetch => "fetch",
            FailureCode::Verify => "verify",
            FailureCode::Ram => "ram",
            FailureCode::Mount => "mount",
            FailureCode::Overlay => "overlay",
            FailureCode::Modules => "modules",
            FailureCode::Token => "token",
            FailureCode::Emergency => "emergency",
            FailureCode::Timeout => "timeout",
            FailureCode::Other => "other",
        }
    }

    /// The code called `name`; a name this server does not know is [`FailureCode::Other`].
    pub fn parse(name: &str) -> FailureCode {
        FailureCode::ALL
            .into_iter()
            .find(|c| c.as_str() == name)
            .unwrap_or(FailureCode::Other)
    }
}

impl fmt::Display for FailureCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The prefix of a failure's detail that carries its code.
pub const REASON_PREFIX: &str = "reason=";

/// Why a boot failed: its code and the message the boot script showed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailureReason {
    pub code: FailureCode,
    pub message: String,
}

/// The boot script's wording before it sent a code (`diskless_fail "..."` of images built
/// until then), and the code each message means; the first match wins, so the overlay's
/// messages come before the plain "cannot mount".
const LEGACY_WORDING: &[(&str, FailureCode)] = &[
    ("kernel command line", FailureCode::NoImageUrl),
    ("without diskless.sshfs", FailureCode::NoImageUrl),
    ("kernel module", FailureCode::Modules),
    ("network did not come up", FailureCode::NoAddress),
    ("ram disk", FailureCode::Ram),
    ("could not be fetched", FailureCode::Fetch),
    ("overlay root", FailureCode::Overlay),
    ("writable layer", FailureCode::Overlay),
    ("no disk with", FailureCode::Mount),
    ("cannot mount", FailureCode::Mount),
    ("loop device", FailureCode::Mount),
];

impl FailureReason {
    /// The reason a `failed` report's detail gives: `reason=CODE message`, or a message alone
    /// from an older image (its code read from the wording, [`FailureCode::Other`] if none
    /// matches).
    pub fn parse(detail: &str) -> FailureReason {
        let detail = detail.trim();
        if let Some(rest) = detail.strip_prefix(REASON_PREFIX) {
            let (code, message) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
            return FailureReason {
                code: FailureCode::parse(code),
                message: message.trim().to_string(),
            };
        }
        let lower = detail.to_ascii_lowercase();
        let code = LEGACY_WORDING
            .iter()
            .find(|(words, _)| lower.contains(words))
            .map(|(_, code)| *code)
            .unwrap_or(FailureCode::Other);
        FailureReason {
            code,
            message: detail.to_string(),
        }
    }

    /// The detail a `failed` report carries: `reason=CODE message`.
    pub fn detail(&self) -> String {
        format!("{REASON_PREFIX}{} {}", self.code, self.message)
            .trim_end()
            .to_string()
    }
}

/// What the fetch helper measured, the detail of its `fetched` report:
/// `bytes=N seconds=S mbps=M` (fields in any order, unknown ones ignored).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FetchedDetail {
    pub bytes: u64,
    pub seconds: f64,
}

impl FetchedDetail {
    /// The measure in a `fetched` detail; `None` without both `bytes=` and `seconds=`.
    pub fn parse(detail: &str) -> Option<FetchedDetail> {
        let field = |name: &str| {
            detail
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        };
        Some(FetchedDetail {
            bytes: field("bytes")?.parse().ok()?,
            seconds: field("seconds")?.parse().ok()?,
        })
    }

    /// Bytes per second; `None` for a zero or negative time.
    pub fn bytes_per_second(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.bytes as f64 / self.seconds)
    }

    /// Decimal megabytes per second (0 for no time).
    pub fn megabytes_per_second(&self) -> f64 {
        self.bytes_per_second().unwrap_or(0.0) / 1e6
    }
}

/// What a lazy seat's fetch helper measured when its RAM copy became whole, the detail of
/// its `filled` report: `seconds=S bytes=N fetched=F demanded=D [refused=R]` (fields in any
/// order, unknown ones ignored; crates/fetch's `lazy::filled_detail` writes it, a test there
/// parses it back). `bytes` is the image's size, `fetched` what the helper received for it
/// (the hash tree, refused blocks and chunks fetched twice included), `demanded` what of it
/// the kernel waited for, `refused` the blocks it refused because they did not match the
/// image's hash tree (a broken cache), 0 from a helper that does not say.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FilledDetail {
    pub seconds: f64,
    pub bytes: u64,
    pub fetched: u64,
    pub demanded: u64,
    pub refused: u64,
}

impl FilledDetail {
    /// The measure in a `filled` detail; `None` unless every field but `refused` is there.
    pub fn parse(detail: &str) -> Option<FilledDetail> {
        let field = |name: &str| {
            detail
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        };
        Some(FilledDetail {
            seconds: field("seconds")?.parse().ok()?,
            bytes: field("bytes")?.parse().ok()?,
            fetched: field("fetched")?.parse().ok()?,
            demanded: field("demanded")?.parse().ok()?,
            refused: match field("refused") {
                Some(n) => n.parse().ok()?,
                None => 0,
            },
        })
    }

    /// Bytes fetched for the fill itself, not because the kernel waited for them.
    pub fn fill_bytes(&self) -> u64 {
        self.fetched.saturating_sub(self.demanded)
    }
}

impl fmt::Display for FetchedDetail {
    /// The detail the fetch helper sends (crates/fetch builds the same text; a test there
    /// parses it back with [`FetchedDetail::parse`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bytes={} seconds={:.2} mbps={:.1}",
            self.bytes,
            self.seconds,
            self.megabytes_per_second()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_stages_parse_back_from_their_names() {
        for stage in Stage::KNOWN {
            assert_eq!(Stage::parse(stage.as_str()), Ok(stage.clone()));
            assert_eq!(stage.label(), stage.as_str());
            assert!(!matches!(stage, Stage::Other(_)));
        }
        let json = serde_json::to_string(&Stage::RootMounted).unwrap();
        assert_eq!(json, "\"root-mounted\"");
        assert_eq!(
            serde_json::from_str::<Stage>(&json).unwrap(),
            Stage::RootMounted
        );
    }

    #[test]
    fn unknown_names_are_other_bounded_and_labelled_other() {
        let invented = Stage::parse("made-up-7").unwrap();
        assert_eq!(invented.as_str(), "made-up-7");
        assert_eq!(invented.label(), "other");
        assert!(!invented.is_final());
        let longest = "a".repeat(OTHER_MAX);
        assert!(Stage::parse(&longest).is_ok());
        for bad in [
            "",
            "Fetched",
            "a b",
            "<script>",
            "é",
            &"a".repeat(OTHER_MAX + 1),
        ] {
            assert_eq!(Stage::parse(bad), Err(BadStage), "{bad:?}");
        }
        assert!(serde_json::from_str::<Stage>("\"no spaces\"").is_err());
    }

    #[test]
    fn failure_reasons_with_a_code_and_from_older_images() {
        let coded = FailureReason::parse("reason=no-address the network did not come up");
        assert_eq!(coded.code, FailureCode::NoAddress);
        assert_eq!(coded.message, "the network did not come up");
        assert_eq!(FailureReason::parse(&coded.detail()), coded);
        assert_eq!(
            FailureReason::parse("reason=emergency").code,
            FailureCode::Emergency
        );
        let unknown = FailureReason::parse("reason=gremlins ate it");
        assert_eq!(
            (unknown.code, unknown.message.as_str()),
            (FailureCode::Other, "ate it")
        );
        for code in FailureCode::ALL {
            assert_eq!(FailureCode::parse(code.as_str()), code);
        }
        // Today's wording of every diskless_fail in the boot script, as older images send it.
        for (message, code) in [
            (
                "no diskless.image= on the kernel command line",
                FailureCode::NoImageUrl,
            ),
            (
                "no diskless.sha256= on the kernel command line",
                FailureCode::NoImageUrl,
            ),
            (
                "diskless.accounts= without diskless.sshfs=HOST:PORT",
                FailureCode::NoImageUrl,
            ),
            ("cannot load kernel module squashfs", FailureCode::Modules),
            (
                "no disk with LABEL=x (from diskless.image=dev:LABEL=x:/i)",
                FailureCode::Mount,
            ),
            (
                "cannot mount /dev/sda1 (LABEL=x) to read the image",
                FailureCode::Mount,
            ),
            (
                "the network did not come up (no DHCP answer)",
                FailureCode::NoAddress,
            ),
            (
                "cannot mount the RAM disk (diskless.size=75%)",
                FailureCode::Ram,
            ),
            (
                "the image could not be fetched and verified (see the lines above)",
                FailureCode::Fetch,
            ),
            (
                "no disk with LABEL=w for the writable layer (diskless.upper=)",
                FailureCode::Overlay,
            ),
            (
                "cannot mount /dev/sdb1 (LABEL=w) for the writable layer",
                FailureCode::Overlay,
            ),
            (
                "cannot attach the image to a loop device",
                FailureCode::Mount,
            ),
            (
                "cannot mount the squashfs image from /dev/loop0",
                FailureCode::Mount,
            ),
            ("cannot mount the overlay root", FailureCode::Overlay),
            ("something new", FailureCode::Other),
        ] {
            let reason = FailureReason::parse(message);
            assert_eq!((reason.code, reason.message.as_str()), (code, message));
        }
    }

    #[test]
    fn filled_detail_parses() {
        let filled = FilledDetail::parse(
            "seconds=41.4 bytes=170000000 fetched=170500000 demanded=20000000 x=1",
        )
        .unwrap();
        assert_eq!(
            filled,
            FilledDetail {
                seconds: 41.4,
                bytes: 170_000_000,
                fetched: 170_500_000,
                demanded: 20_000_000,
                refused: 0
            }
        );
        assert_eq!(filled.fill_bytes(), 150_500_000);
        let refused = FilledDetail::parse("seconds=1 bytes=2 fetched=3 demanded=1 refused=64");
        assert_eq!(refused.map(|f| f.refused), Some(64));
        for bad in [
            "",
            "seconds=1 bytes=2 fetched=3",
            "seconds=x bytes=2 fetched=3 demanded=1",
            "seconds=1 bytes=2 fetched=3 demanded=1 refused=x",
        ] {
            assert_eq!(FilledDetail::parse(bad), None, "{bad:?}");
        }
        let odd = FilledDetail::parse("seconds=1 bytes=2 fetched=3 demanded=9").unwrap();
        assert_eq!(odd.fill_bytes(), 0);
    }

    #[test]
    fn fetched_detail_parses_back() {
        let measured = FetchedDetail {
            bytes: 100_000_000,
            seconds: 4.0,
        };
        let text = measured.to_string();
        assert_eq!(text, "bytes=100000000 seconds=4.00 mbps=25.0");
        assert_eq!(FetchedDetail::parse(&text), Some(measured));
        assert_eq!(measured.bytes_per_second(), Some(25e6));
        assert_eq!(
            FetchedDetail::parse("mbps=3 seconds=2 bytes=10 extra=x"),
            Some(FetchedDetail {
                bytes: 10,
                seconds: 2.0
            })
        );
        for bad in ["", "bytes=1", "seconds=1", "bytes=x seconds=1", "mbps=90.1"] {
            assert_eq!(FetchedDetail::parse(bad), None, "{bad:?}");
        }
        let zero = FetchedDetail::parse("bytes=1 seconds=0").unwrap();
        assert_eq!(zero.bytes_per_second(), None);
    }
}
