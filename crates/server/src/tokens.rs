//! Per-boot report tokens: a stage report is accepted only from the boot it names.
//!
//! Each time the boot decision hands a client its boot (the iPXE script or the GRUB config,
//! [`crate::booter::Booter::boot_file`]), [`Boots::issue`] starts a new boot for that MAC: a
//! fresh random [`BootId`] and the token `BOOTID.HMAC`, HMAC-SHA256 of the MAC and the boot id
//! under the server's [`ReportKey`]. The token goes on the client's kernel command line as
//! part of its report URL (`diskless.report=http://SERVER/api/report/MAC?token=TOKEN`), so the
//! boot script and the fetch helper send it with every report without knowing of it: an
//! image whose boot script predates tokens reports with them too.
//!
//! [`Boots::accept`] takes a report only when
//!
//! - it has a token ([`Refusal::Missing`] otherwise),
//! - the token is well formed and its HMAC is the one for the MAC the report names
//!   ([`Refusal::Forged`]: a made-up token, another client's, a truncated one),
//! - the MAC has a current boot ([`Refusal::UnknownBoot`]: none was issued, or it was
//!   dropped from the bounded table),
//! - the token is that boot's, not an earlier one's ([`Refusal::Replayed`]),
//! - and the stage was not accepted for this boot already ([`Refusal::Replayed`]: the boot
//!   script's stages only go forward, so a repeated stage, identical or not, is refused), with
//!   at most [`MAX_STAGES`](crate::recorder::MAX_STAGES) stages per boot ([`Refusal::TooManyStages`]).
//!
//! The current boots have one owner, the recorder: each lives in its client's record (`boot`
//! in `clients.json`), set by [`Boots::issue`] and checked by [`Boots::accept`] under the
//! table's lock, never through the recorder's fact channel (which drops facts for a reader
//! that falls behind). They are bounded with the records (`[record] max_clients`, the client
//! seen longest ago goes first), saved with them, and a restarted server takes them back: a
//! client that is mid-boot while the service restarts still reports. A reload does not touch
//! them.
//!
//! The key is 32 bytes from the kernel's CSPRNG (`getrandom`), made on the first start in
//! `STATE/report.key`, mode 0600, through the one atomic write
//! ([`diskless_dhcp::state_file`]). A key file of another size is an error naming it, never
//! replaced: replacing it would silently invalidate every boot under way.

use crate::recorder::Recorder;
use diskless_boot::Stage;
use diskless_dhcp::Mac;
use hmac::{Hmac, Mac as _};
use sha2::Sha256;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// The key file in the state directory.
pub const KEY_FILE: &str = "report.key";
/// Bytes of key.
pub const KEY_LEN: usize = 32;

type HmacSha256 = Hmac<Sha256>;

/// Why the report key cannot be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key file exists but cannot be read.
    #[error("reading the report key {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The key file is not a key.
    #[error(
        "the report key {path} is {len} bytes, not {KEY_LEN}: it is damaged; remove it to \
         make a new one (clients booted before then cannot report until they boot again)"
    )]
    Corrupt { path: PathBuf, len: usize },
    /// The system's random source failed.
    #[error("no random bytes for the report key: {0}")]
    Random(getrandom::Error),
    /// The new key cannot be written.
    #[error(transparent)]
    Write(#[from] diskless_dhcp::state_file::WriteError),
}

/// The server's secret: it signs the tokens of every boot.
#[derive(Clone)]
pub struct ReportKey([u8; KEY_LEN]);

impl fmt::Debug for ReportKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReportKey(..)")
    }
}

impl ReportKey {
    /// The key in `state`/[`KEY_FILE`], made there (mode 0600) if there is none.
    pub fn load_or_create(state: &Path) -> Result<ReportKey, KeyError> {
        let path = state.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let key: [u8; KEY_LEN] =
                    bytes.as_slice().try_into().map_err(|_| KeyError::Corrupt {
                        path: path.clone(),
                        len: bytes.len(),
                    })?;
                Ok(ReportKey(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; KEY_LEN];
                getrandom::getrandom(&mut key).map_err(KeyError::Random)?;
                diskless_dhcp::state_file::write_atomic_private(&path, &key)?;
                tracing::info!(path = %path.display(), "made a new report key");
                Ok(ReportKey(key))
            }
            Err(source) => Err(KeyError::Read { path, source }),
        }
    }

    /// A key from known bytes (tests, the fuzzer).
    pub fn from_bytes(key: [u8; KEY_LEN]) -> ReportKey {
        ReportKey(key)
    }

    fn hmac(&self, mac: Mac, boot: BootId) -> HmacSha256 {
        let mut h = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        h.update(&mac.0);
        h.update(&boot.0.to_be_bytes());
        h
    }

    /// The token of `boot` of `mac`.
    pub fn token(&self, mac: Mac, boot: BootId) -> Token {
        Token {
            boot,
            tag: self.hmac(mac, boot).finalize().into_bytes().into(),
        }
    }

    /// Whether `token` was made by this key for `mac` (compared in constant time).
    pub fn verify(&self, mac: Mac, token: &Token) -> bool {
        self.hmac(mac, token.boot).verify_slice(&token.tag).is_ok()
    }
}

/// One boot of one client: 64 random bits, written as 16 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BootId(pub u64);

impl BootId {
    /// A new boot id from the system's CSPRNG.
    pub fn random() -> BootId {
        let mut bytes = [0u8; 8];
        // The kernel's random source does not fail once the system has booted; a server
        // that cannot read it has bigger problems than a predictable boot id.
        getrandom::getrandom(&mut bytes).expect("the system's random source");
        BootId(u64::from_be_bytes(bytes))
    }
}

impl fmt::Display for BootId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl FromStr for BootId {
    type Err = ();
    fn from_str(s: &str) -> Result<BootId, ()> {
        if s.len() != 16 || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(());
        }
        u64::from_str_radix(s, 16).map(BootId).map_err(|_| ())
    }
}

impl serde::Serialize for BootId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for BootId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<BootId, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|()| serde::de::Error::custom(format!("{s:?} is not a boot id")))
    }
}

/// `BOOTID.HMAC`: 16 and 64 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub boot: BootId,
    tag: [u8; 32],
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.boot, hex::encode(self.tag))
    }
}

impl FromStr for Token {
    type Err = ();
    fn from_str(s: &str) -> Result<Token, ()> {
        let (boot, tag) = s.split_once('.').ok_or(())?;
        if tag.len() != 64 || !tag.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(());
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(tag, &mut bytes).map_err(|_| ())?;
        Ok(Token {
            boot: boot.parse()?,
            tag: bytes,
        })
    }
}

/// Why a report was refused (each is a value of the `reason` label of
/// `diskless_reports_refused_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No token.
    Missing,
    /// A token that is not this server's for this MAC.
    Forged,
    /// A genuine token of an earlier boot, or a stage this boot already reported.
    Replayed,
    /// A genuine token, but the MAC has no current boot (never issued, or dropped).
    UnknownBoot,
    /// The boot already reported [`MAX_STAGES`](crate::recorder::MAX_STAGES) stages.
    TooManyStages,
}

impl Refusal {
    /// Every reason.
    pub const ALL: [Refusal; 5] = [
        Refusal::Missing,
        Refusal::Forged,
        Refusal::Replayed,
        Refusal::UnknownBoot,
        Refusal::TooManyStages,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Missing => "missing",
            Refusal::Forged => "forged",
            Refusal::Replayed => "replayed",
            Refusal::UnknownBoot => "unknown_boot",
            Refusal::TooManyStages => "too_many_stages",
        }
    }

    /// What the refused client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Missing => "missing token",
            Refusal::Forged => "forged token",
            Refusal::Replayed => "replayed: not this boot's token, or a stage it already reported",
            Refusal::UnknownBoot => "unknown boot: boot again to get a new token",
            Refusal::TooManyStages => "too many stages for one boot",
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

/// A client's current boot, as kept in its record (`boot` in `clients.json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CurrentBoot {
    /// The boot its token names.
    pub id: BootId,
    /// The stages it reported, in order.
    pub reported: Vec<Stage>,
}

/// The gate of stage reports: issues each boot's token and checks the tokens with the key;
/// the boots themselves are the recorder's ([`Recorder::start_boot`], in each client's record).
#[derive(Clone)]
pub struct Boots {
    key: ReportKey,
    recorder: Recorder,
}

impl Boots {
    /// Check tokens with `key` against the boots `recorder` keeps (those a previous run
    /// recorded included).
    pub fn new(key: ReportKey, recorder: Recorder) -> Boots {
        Boots { key, recorder }
    }

    /// Start a new boot of `mac`: its earlier tokens are replays from now on.
    pub fn issue(&self, mac: Mac) -> Token {
        let id = BootId::random();
        self.recorder.start_boot(mac, id);
        self.key.token(mac, id)
    }

    /// Accept `stage` from `mac` with `token` (see the module docs), or say why not. On
    /// success the stage counts as reported for the boot, returned.
    pub fn accept(&self, mac: Mac, token: Option<&str>, stage: &Stage) -> Result<BootId, Refusal> {
        let token: Token = token
            .ok_or(Refusal::Missing)?
            .parse()
            .map_err(|()| Refusal::Forged)?;
        if !self.key.verify(mac, &token) {
            return Err(Refusal::Forged);
        }
        self.recorder.accept_stage(mac, token.boot, stage)?;
        Ok(token.boot)
    }

    /// The current boot of `mac`.
    pub fn current(&self, mac: Mac) -> Option<CurrentBoot> {
        self.recorder.current_boot(mac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::{ClientRecord, Limits, MAX_STAGES};

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    fn recorder(max_clients: usize) -> Recorder {
        let limits = Limits {
            max_clients,
            ..Limits::default()
        };
        Recorder::with_records(Default::default(), limits)
    }

    fn boots(max_clients: usize) -> Boots {
        Boots::new(ReportKey::from_bytes([7; KEY_LEN]), recorder(max_clients))
    }

    #[test]
    fn tokens_print_and_parse_back_and_odd_ones_do_not_parse() {
        let key = ReportKey::from_bytes([1; KEY_LEN]);
        let token = key.token(mac(1), BootId(0x0123_4567_89ab_cdef));
        let text = token.to_string();
        assert_eq!(text.len(), 16 + 1 + 64);
        assert!(text.starts_with("0123456789abcdef."), "{text}");
        assert_eq!(text.parse::<Token>(), Ok(token));
        for bad in [
            "",
            ".",
            &text[..text.len() - 1],
            &text[1..],
            &text.to_uppercase(),
            &format!("{text}0"),
            &text.replace('.', ":"),
            &format!("+{}", &text[1..]),
        ] {
            assert_eq!(bad.parse::<Token>(), Err(()), "{bad}");
        }
    }

    fn st(name: &str) -> Stage {
        Stage::parse(name).unwrap()
    }

    #[test]
    fn a_token_is_good_for_one_mac_one_key_one_boot() {
        let b = boots(10);
        let token = b.issue(mac(1)).to_string();
        // Another MAC's report with this token, another key's token, a changed bit.
        assert_eq!(
            b.accept(mac(2), Some(&token), &st("fetched")),
            Err(Refusal::Forged)
        );
        let other =
            ReportKey::from_bytes([8; KEY_LEN]).token(mac(1), b.current(mac(1)).unwrap().id);
        assert_eq!(
            b.accept(mac(1), Some(&other.to_string()), &st("fetched")),
            Err(Refusal::Forged)
        );
        let flipped = format!(
            "{}{}",
            &token[..20],
            if &token[20..21] == "0" { "1" } else { "0" }
        ) + &token[21..];
        assert_eq!(
            b.accept(mac(1), Some(&flipped), &st("fetched")),
            Err(Refusal::Forged)
        );
        assert_eq!(
            b.accept(mac(1), None, &st("fetched")),
            Err(Refusal::Missing)
        );
        // The right one, once per stage.
        let id = b.accept(mac(1), Some(&token), &st("network-up")).unwrap();
        assert_eq!(id, b.current(mac(1)).unwrap().id);
        assert_eq!(
            b.accept(mac(1), Some(&token), &st("network-up")),
            Err(Refusal::Replayed)
        );
        b.accept(mac(1), Some(&token), &st("fetched")).unwrap();
        // A new boot: the old token is a replay, the new one starts with no stage.
        let new = b.issue(mac(1)).to_string();
        assert_eq!(
            b.accept(mac(1), Some(&token), &st("multi-user")),
            Err(Refusal::Replayed)
        );
        b.accept(mac(1), Some(&new), &st("network-up")).unwrap();
        assert_eq!(b.current(mac(1)).unwrap().reported, [Stage::NetworkUp]);
    }

    #[test]
    fn boots_are_bounded_and_survive_a_restart() {
        let b = boots(2);
        let tokens: Vec<String> = (1..=3).map(|i| b.issue(mac(i)).to_string()).collect();
        assert_eq!(
            b.accept(mac(1), Some(&tokens[0]), &st("x")),
            Err(Refusal::UnknownBoot),
            "the boot issued longest ago is dropped"
        );
        b.accept(mac(3), Some(&tokens[2]), &st("x")).unwrap();
        // A new server with the same key and the recorded boots takes the tokens.
        let recorded = b
            .recorder
            .snapshot()
            .into_iter()
            .map(|r| (r.mac, ClientRecord::clone(&r)))
            .collect();
        let limits = Limits {
            max_clients: 2,
            ..Limits::default()
        };
        let again = Boots::new(
            ReportKey::from_bytes([7; KEY_LEN]),
            Recorder::with_records(recorded, limits),
        );
        assert_eq!(
            again.accept(mac(3), Some(&tokens[2]), &st("x")),
            Err(Refusal::Replayed)
        );
        again.accept(mac(3), Some(&tokens[2]), &st("y")).unwrap();
        for i in 0..MAX_STAGES - 2 {
            again
                .accept(mac(3), Some(&tokens[2]), &st(&format!("s{i}")))
                .unwrap();
        }
        assert_eq!(
            again.accept(mac(3), Some(&tokens[2]), &st("one-more")),
            Err(Refusal::TooManyStages)
        );
    }

    #[test]
    fn the_key_is_made_once_private_and_a_damaged_one_is_an_error() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = ReportKey::load_or_create(dir.path()).unwrap();
        let path = dir.path().join(KEY_FILE);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), KEY_LEN as u64);
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        let again = ReportKey::load_or_create(dir.path()).unwrap();
        assert_eq!(again.0, key.0, "the same key on the next start");
        assert_ne!(key.0, [0; KEY_LEN]);
        std::fs::write(&path, &key.0[..20]).unwrap();
        let err = ReportKey::load_or_create(dir.path()).unwrap_err();
        assert!(
            matches!(err, KeyError::Corrupt { len: 20, .. })
                && err.to_string().contains("report.key"),
            "{err}"
        );
        assert_eq!(std::fs::read(&path).unwrap().len(), 20, "not replaced");
    }
}
