//! The record of every client's boot, and the one owner of each client's current boot: its
//! stages, its report token's boot and the stages that boot reported.
//!
//! Stages come from the DHCP server (offer, ack, nak), the TFTP server (files fetched), the
//! HTTP server (script, image files) and the client itself (its initramfs and booted system
//! report over HTTP). A protocol path hands its event to [`Recorder::record`], which applies it
//! to the table at once, under a lock held for the few map operations it takes: nothing is
//! queued, so nothing is dropped. The table
//!
//! - keeps each client's [`ClientRecord`] by [`Mac`] (shared as `Arc`: an unchanged record is
//!   never copied; a changed one is copied on write only while a reader still holds the old
//!   one) and which MAC holds which IP address (TFTP only sees addresses), bounded by
//!   `[record] max_clients` (the client seen longest ago goes first) and `client_expiry_days`;
//! - keeps each client's current boot ([`CurrentBoot`], `boot` in the record): the report
//!   tokens ([`crate::tokens::Boots`]) start one with [`Recorder::start_boot`] and check each
//!   report against it with [`Recorder::accept_stage`], so a restarted server takes them back
//!   from `clients.json`;
//! - is written to `STATE/clients.json` (read by `diskless clients`) by the saving task
//!   ([`RecorderTask`]) through the one atomic write ([`diskless_dhcp::state_file`]), at most
//!   once per [`SAVE_DELAY`] and on stop;
//! - is read as [`Recorder::published`] (the table with a version that counts its changes,
//!   made on the first read after a change: the records' `Arc`s, not copies of them),
//!   [`Recorder::snapshot`] and [`Recorder::get`].
//!
//! What happened is published as facts on [`Recorder::subscribe`] (a `broadcast`, for the
//! dashboard's live view and the metrics): every raw event ([`Recorded::Event`]) and each
//! stage a client reached with its record after it ([`Recorded::Stage`]), once per stage, in
//! the table's order. That channel is for observers only: a subscriber that falls behind
//! misses facts (`Lagged`), and nothing that decides a boot depends on it. The report tokens
//! ask the table directly, and the proxy-mode router advertisements are armed by the DHCP hook
//! itself ([`crate::ra::Answer::Booting`]).
//!
//! A `clients.json` that cannot be read at start is moved aside to
//! `clients.json.corrupt-UNIXTIME` with a warning, never silently emptied.

use crate::tokens::{BootId, CurrentBoot, Refusal};
use diskless_boot::{ImageFile, Stage};
use diskless_dhcp::{ClientKind, Mac};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, oneshot, Notify};

/// A boot that has not reached a final stage within this long is considered abandoned.
const BOOT_STALE_SECS: f64 = 600.0;
/// Stages kept per record (a client stuck in a retry loop does not grow without bound), and
/// stages a boot may report with its token ([`Refusal::TooManyStages`] beyond; the boot script
/// sends six).
pub const MAX_STAGES: usize = 64;
/// Facts a subscriber may fall behind by before it misses some (`Lagged`).
const FACTS: usize = 1024;
/// The file is written at most this often (and when the recorder stops).
pub const SAVE_DELAY: Duration = Duration::from_millis(500);

/// How a TFTP transfer ended, as the recorder and the metrics see it (the TFTP server's
/// `TransferOutcome` without its messages).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TftpOutcome {
    /// Every byte acknowledged.
    Complete,
    /// The server refused it (not found, not allowed, ...).
    Refused,
    /// The client ended it with an ERROR (e.g. a UEFI `tsize` probe).
    ClientAborted,
    /// The client stopped answering.
    TimedOut,
    /// Reading the file or the socket failed.
    Failed,
}

impl TftpOutcome {
    /// Its name in a record's detail.
    pub const fn label(self) -> &'static str {
        match self {
            TftpOutcome::Complete => "complete",
            TftpOutcome::Refused => "refused",
            TftpOutcome::ClientAborted => "client-aborted",
            TftpOutcome::TimedOut => "timed-out",
            TftpOutcome::Failed => "failed",
        }
    }

    /// Every byte was acknowledged.
    pub const fn is_complete(self) -> bool {
        matches!(self, TftpOutcome::Complete)
    }
}

impl From<&diskless_tftp::server::TransferOutcome> for TftpOutcome {
    fn from(outcome: &diskless_tftp::server::TransferOutcome) -> TftpOutcome {
        use diskless_tftp::server::TransferOutcome as T;
        match outcome {
            T::Complete => TftpOutcome::Complete,
            T::Refused { .. } => TftpOutcome::Refused,
            T::ClientAborted { .. } => TftpOutcome::ClientAborted,
            T::TimedOut { .. } => TftpOutcome::TimedOut,
            T::Failed(_) => TftpOutcome::Failed,
        }
    }
}

/// What a DHCP exchange ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DhcpAction {
    /// DHCPOFFER (or a proxyDHCP offer).
    Offer,
    /// DHCPACK.
    Ack,
    /// DHCPNAK.
    Nak,
}

/// Something a client did, as a protocol server saw it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum BootEvent {
    /// A DHCP answer.
    Dhcp {
        /// The client.
        mac: Mac,
        /// What its firmware said it is.
        #[serde(serialize_with = "kind_str")]
        firmware: ClientKind,
        /// Offer, ack or nak.
        action: DhcpAction,
        /// The address given (none in proxy mode).
        ip: Option<Ipv4Addr>,
        /// The boot file given, or the NAK's reason.
        detail: Option<String>,
    },
    /// A TFTP request ended.
    Tftp {
        /// The client's address.
        client: IpAddr,
        /// The file asked for.
        file: String,
        /// Bytes sent.
        bytes: u64,
        /// How it ended.
        outcome: TftpOutcome,
    },
    /// An image file is being sent over HTTP.
    HttpFile {
        /// The client's address.
        client: Option<IpAddr>,
        /// Image name.
        image: String,
        /// Version.
        version: String,
        /// Which file.
        #[serde(serialize_with = "file_str")]
        file: ImageFile,
        /// Bytes in the response (the range's, for a range request).
        bytes: u64,
    },
    /// A client got its iPXE script (or its GRUB config, on the Secure Boot chain).
    Script {
        /// The client.
        mac: Mac,
        /// Its address.
        client: Option<IpAddr>,
        /// Its host name.
        hostname: Option<String>,
        /// The image and version the script boots.
        image: String,
        /// Version.
        version: String,
        /// The boot the script's report token names (a new one for each script).
        boot: BootId,
        /// It boots through the Secure Boot chain (shim, GRUB).
        secure_boot: bool,
        /// On that chain: whether the version's kernel is signed (`None`: cannot tell).
        kernel_signed: Option<bool>,
    },
    /// A client reported a stage of its own (with its boot's token: [`crate::tokens`]).
    Report {
        /// The client.
        mac: Mac,
        /// Its address.
        client: Option<IpAddr>,
        /// The stage (`fetched`, `multi-user`, ...).
        stage: Stage,
        /// Its detail line.
        detail: String,
        /// The boot its token named.
        boot: BootId,
    },
    /// A report was refused: its token was missing, forged or replayed.
    ReportRefused {
        /// The MAC the report named.
        mac: Mac,
        /// The sender's address.
        client: Option<IpAddr>,
        /// Why.
        reason: Refusal,
    },
}

fn kind_str<S: serde::Serializer>(kind: &ClientKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(kind.as_str())
}

fn file_str<S: serde::Serializer>(file: &ImageFile, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(file.name())
}

/// One stage of a boot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEvent {
    pub stage: Stage,
    /// Seconds since the boot started.
    pub at: f64,
    pub detail: String,
}

/// What is known of one client and its last boot (an entry of `clients.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientRecord {
    /// `aa:bb:cc:dd:ee:ff` in the file.
    pub mac: Mac,
    pub ip: Option<IpAddr>,
    pub hostname: Option<String>,
    /// What its firmware said it is: bios-pxe, uefi-pxe, ipxe, ...
    pub firmware: Option<String>,
    pub image: Option<String>,
    pub version: Option<String>,
    /// Its last boot file was the Secure Boot chain's GRUB config (shim, GRUB, signed kernel).
    #[serde(default)]
    pub secure_boot: bool,
    /// For a Secure Boot client: whether the kernel of the version it got is signed. `false`
    /// means shim will refuse it (a custom kernel); `None`: not checked or cannot tell.
    #[serde(default)]
    pub kernel_signed: Option<bool>,
    /// Unix time (seconds) the current boot started.
    pub boot_started: f64,
    pub stages: Vec<StageEvent>,
    /// The boot its last script started, and the stages it reported: what a restarted server
    /// checks report tokens against ([`crate::tokens::Boots`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot: Option<CurrentBoot>,
}

impl ClientRecord {
    /// A client first heard of at `now` (Unix seconds), nothing known of it yet.
    pub fn new(mac: Mac, now: f64) -> ClientRecord {
        ClientRecord {
            mac,
            ip: None,
            hostname: None,
            firmware: None,
            image: None,
            version: None,
            secure_boot: false,
            kernel_signed: None,
            boot_started: now,
            stages: Vec::new(),
            boot: None,
        }
    }

    /// The last stage reached.
    pub fn last_stage(&self) -> Option<&Stage> {
        self.stages.last().map(|s| &s.stage)
    }

    /// The last stage reached as text, or `-`.
    pub fn stage(&self) -> &str {
        self.last_stage().map(Stage::as_str).unwrap_or("-")
    }

    /// Its boot ended: a final stage was reached (a lazy seat's `filled` and
    /// `network-released` may follow `multi-user`).
    pub fn finished(&self) -> bool {
        self.stages.iter().any(|s| s.stage.is_final())
    }

    /// Seconds from the start of the boot to `stage`, if it was reached.
    pub fn seconds_to(&self, stage: &Stage) -> Option<f64> {
        self.stages.iter().find(|s| s.stage == *stage).map(|s| s.at)
    }

    /// Unix time the client was last heard of.
    pub fn last_seen(&self) -> f64 {
        self.boot_started + self.stages.last().map(|s| s.at).unwrap_or(0.0)
    }
}

/// The table as published for readers ([`Recorder::published`]).
#[derive(Debug, Default)]
pub struct Published {
    /// Counts the table's changes since the recorder started: equal versions, equal tables
    /// (readers that serialize the table keep the text by it, [`crate::shared_json`]).
    pub version: u64,
    /// The records, shared with the table (not copies).
    pub records: BTreeMap<Mac, Arc<ClientRecord>>,
}

/// A fact [`Recorder::subscribe`] delivers.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// An event as a protocol server sent it (every one, recorded as a stage or not).
    Event(Arc<BootEvent>),
    /// A client reached a stage (each stage once): the stage, and the client's record after
    /// it, shared with the table and every other subscriber.
    Stage {
        mac: Mac,
        stage: StageEvent,
        record: Arc<ClientRecord>,
    },
}

/// Bounds of the table (`[record]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Clients kept; beyond it the one seen longest ago is dropped.
    pub max_clients: usize,
    /// Clients not seen for this long are dropped.
    pub expiry: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits::from(&diskless_boot::config::RecordSection::default())
    }
}

impl From<&diskless_boot::config::RecordSection> for Limits {
    fn from(r: &diskless_boot::config::RecordSection) -> Limits {
        Limits {
            max_clients: r.max_clients,
            expiry: Duration::from_secs(u64::from(r.client_expiry_days) * 86_400),
        }
    }
}

/// The handle protocol servers and readers hold; cheap to clone. It owns the client table:
/// every clone applies to and reads the same one.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
}

struct Shared {
    table: Mutex<Table>,
    /// The facts, for observers.
    facts: broadcast::Sender<Recorded>,
    /// Wakes the saving task: the table changed.
    changed: Notify,
}

/// The task that writes the table to its file: [`RecorderTask::stop`] writes it once more and
/// joins it.
pub struct RecorderTask {
    stop: oneshot::Sender<()>,
    handle: Option<tokio::task::JoinHandle<()>>,
}

impl RecorderTask {
    /// Stop the task after it has saved the table as it is now.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Some(handle) = self.handle {
            if let Err(e) = handle.await {
                tracing::warn!(error = %e, "the client records' saving task failed");
            }
        }
    }
}

/// Seconds since the Unix epoch.
fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Recorder {
    /// A recorder of the records at `path` (None: in memory only), with the task that saves
    /// them there. Call within a tokio runtime.
    pub fn start(path: Option<PathBuf>, limits: Limits) -> (Recorder, RecorderTask) {
        let records = path.as_deref().map(load_or_move_aside).unwrap_or_default();
        let recorder = Recorder::with_records(records, limits);
        let (stop, stopped) = oneshot::channel();
        let handle =
            path.map(|path| tokio::spawn(save_task(recorder.shared.clone(), path, stopped)));
        (recorder, RecorderTask { stop, handle })
    }

    /// A recorder of `records`, in memory only (no task, no runtime needed).
    pub fn with_records(records: BTreeMap<Mac, ClientRecord>, limits: Limits) -> Recorder {
        let mut table = Table {
            records: records
                .into_iter()
                .map(|(mac, record)| (mac, Arc::new(record)))
                .collect(),
            macs_by_ip: HashMap::new(),
            limits,
            version: 0,
            published: Arc::default(),
        };
        table.prune(unix_now());
        table.published = Arc::new(Published {
            version: 0,
            records: table.records.clone(),
        });
        Recorder {
            shared: Arc::new(Shared {
                table: Mutex::new(table),
                facts: broadcast::channel(FACTS).0,
                changed: Notify::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Every change is whole before the lock is released, except for a panic inside one
        // record's update, which leaves that record half updated but the table usable.
        self.shared.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Apply an event to the table and publish it, with the stage it made, to subscribers.
    /// Never waits on a subscriber.
    pub fn record(&self, event: BootEvent) {
        let event = Arc::new(event);
        let mut table = self.lock();
        // Sent under the lock: subscribers see the facts in the table's order.
        let _ = self.shared.facts.send(Recorded::Event(event.clone()));
        if let Some(fact) = table.apply(&event, unix_now()) {
            let _ = self.shared.facts.send(fact);
            self.shared.changed.notify_one();
        }
    }

    /// Start boot `id` of `mac` (its report token's): the stages reported before are
    /// forgotten, reports of other boots refused. Saved with the table like every change.
    pub fn start_boot(&self, mac: Mac, id: BootId) {
        self.lock().start_boot(mac, id, unix_now());
        self.shared.changed.notify_one();
    }

    /// Whether boot `id` of `mac` may report `stage` now; if so it counts as reported. See
    /// [`crate::tokens`] for each refusal.
    pub fn accept_stage(&self, mac: Mac, id: BootId, stage: &Stage) -> Result<(), Refusal> {
        let accepted = self.lock().accept_stage(mac, id, stage);
        if accepted.is_ok() {
            self.shared.changed.notify_one();
        }
        accepted
    }

    /// The current boot of `mac`.
    pub fn current_boot(&self, mac: Mac) -> Option<CurrentBoot> {
        self.lock().records.get(&mac)?.boot.clone()
    }

    /// Every client's record, as of now.
    pub fn snapshot(&self) -> Vec<Arc<ClientRecord>> {
        self.published().records.values().cloned().collect()
    }

    /// The table as of now, shared (not copied), with its version.
    pub fn published(&self) -> Arc<Published> {
        self.lock().published()
    }

    /// One client's record.
    pub fn get(&self, mac: Mac) -> Option<Arc<ClientRecord>> {
        self.lock().records.get(&mac).cloned()
    }

    /// Every fact from now on. A reader that falls behind by more than 1024 gets
    /// `RecvError::Lagged` and should take a [`snapshot`](Self::snapshot).
    pub fn subscribe(&self) -> broadcast::Receiver<Recorded> {
        self.shared.facts.subscribe()
    }
}

/// Save the table to `path` when it changed, at most once per [`SAVE_DELAY`], until `stop`;
/// then once more if it changed since.
async fn save_task(shared: Arc<Shared>, path: PathBuf, mut stop: oneshot::Receiver<()>) {
    let published = || {
        let mut table = shared.table.lock().unwrap_or_else(|e| e.into_inner());
        table.published()
    };
    // The table as loaded is version 0 (the task may first run after changes were made).
    let mut saved = 0;
    // A failed save is logged once per failing spell, not every SAVE_DELAY.
    let mut failing = diskless_dhcp::state_file::FailingSpell::default();
    loop {
        tokio::select! {
            _ = shared.changed.notified() => {}
            _ = &mut stop => break,
        }
        // The changes of the next SAVE_DELAY go into the same write.
        tokio::select! {
            _ = tokio::time::sleep(SAVE_DELAY) => {}
            _ = &mut stop => break,
        }
        let table = published();
        save(&path, &table, &mut failing).await;
        saved = table.version;
    }
    let table = published();
    if table.version != saved {
        save(&path, &table, &mut failing).await;
    }
}

async fn save(
    path: &Path,
    table: &Published,
    failing: &mut diskless_dhcp::state_file::FailingSpell,
) {
    let records: BTreeMap<&Mac, &ClientRecord> =
        table.records.iter().map(|(mac, r)| (mac, &**r)).collect();
    let mut json = serde_json::to_vec_pretty(&records).expect("records serialize");
    json.push(b'\n');
    let path = path.to_path_buf();
    let result =
        tokio::task::spawn_blocking(move || diskless_dhcp::state_file::write_atomic(&path, &json))
            .await;
    let error = match result {
        Ok(Ok(())) => {
            if failing.succeeded() {
                tracing::info!("the client records are saved again");
            }
            return;
        }
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("the saving task failed: {e}"),
    };
    if failing.failed() {
        tracing::warn!(%error, "cannot save the client records (said once until a save succeeds)");
    }
}

/// The recorder's state.
struct Table {
    records: BTreeMap<Mac, Arc<ClientRecord>>,
    /// Which MAC was last given which address, by DHCP: TFTP only sees addresses.
    macs_by_ip: HashMap<IpAddr, Mac>,
    limits: Limits,
    /// Counts the changes of `records`.
    version: u64,
    /// `records` as of some version, made again when a reader asks after a change.
    published: Arc<Published>,
}

/// What a stage updates besides the stage itself.
#[derive(Default)]
struct Update {
    ip: Option<IpAddr>,
    hostname: Option<String>,
    firmware: Option<String>,
    image: Option<(String, String)>,
    /// With `image`: the Secure Boot chain, and whether its kernel is signed.
    secure_boot: Option<(bool, Option<bool>)>,
}

impl Table {
    /// The table as of its last change.
    fn published(&mut self) -> Arc<Published> {
        if self.published.version != self.version {
            self.published = Arc::new(Published {
                version: self.version,
                records: self.records.clone(),
            });
        }
        self.published.clone()
    }

    /// `mac`'s record, made if there is none, to change: copied only if a reader holds it.
    fn record_mut(&mut self, mac: Mac, now: f64) -> &mut ClientRecord {
        self.version += 1;
        let record = self
            .records
            .entry(mac)
            .or_insert_with(|| Arc::new(ClientRecord::new(mac, now)));
        Arc::make_mut(record)
    }

    /// Boot `id` of `mac` starts (see [`Recorder::start_boot`]).
    fn start_boot(&mut self, mac: Mac, id: BootId, now: f64) {
        self.record_mut(mac, now).boot = Some(CurrentBoot {
            id,
            reported: Vec::new(),
        });
        self.prune(now);
    }

    /// See [`Recorder::accept_stage`].
    fn accept_stage(&mut self, mac: Mac, id: BootId, stage: &Stage) -> Result<(), Refusal> {
        let boot = self
            .records
            .get(&mac)
            .and_then(|r| r.boot.as_ref())
            .ok_or(Refusal::UnknownBoot)?;
        if boot.id != id || boot.reported.contains(stage) {
            return Err(Refusal::Replayed);
        }
        if boot.reported.len() >= MAX_STAGES {
            return Err(Refusal::TooManyStages);
        }
        self.version += 1;
        let record = Arc::make_mut(self.records.get_mut(&mac).expect("looked up above"));
        record
            .boot
            .as_mut()
            .expect("looked up above")
            .reported
            .push(stage.clone());
        Ok(())
    }

    /// Apply one event; the stage it made a client reach, if any, as a fact.
    fn apply(&mut self, event: &BootEvent, now: f64) -> Option<Recorded> {
        let (mac, stage, detail, starts_boot, update) = match event {
            BootEvent::Dhcp {
                mac,
                firmware,
                action,
                ip,
                detail,
            } => {
                if let Some(ip) = ip {
                    self.macs_by_ip.insert(IpAddr::V4(*ip), *mac);
                }
                let stage = match action {
                    DhcpAction::Offer => Stage::DhcpOffer,
                    DhcpAction::Ack => Stage::DhcpAck,
                    DhcpAction::Nak => Stage::DhcpNak,
                };
                let boot = firmware.is_boot();
                let detail = format!("{} {}", firmware.as_str(), detail.as_deref().unwrap_or(""))
                    .trim()
                    .to_string();
                let update = Update {
                    ip: ip.map(IpAddr::V4),
                    firmware: boot.then(|| firmware.as_str().to_string()),
                    ..Default::default()
                };
                let starts_boot = boot && *action == DhcpAction::Offer;
                (*mac, stage, detail, starts_boot, update)
            }
            BootEvent::Tftp {
                client,
                file,
                bytes,
                outcome,
            } => {
                let mac = *self.macs_by_ip.get(client)?;
                let detail = format!("{file} {bytes} bytes {}", outcome.label());
                (mac, Stage::Tftp, detail, false, Update::default())
            }
            // Image files and refused reports are counted (subscribers see the event), not
            // made stages: the client reports its own progress.
            BootEvent::HttpFile { .. } | BootEvent::ReportRefused { .. } => return None,
            BootEvent::Script {
                mac,
                client,
                hostname,
                image,
                version,
                boot: _,
                secure_boot,
                kernel_signed,
            } => {
                let update = Update {
                    ip: *client,
                    hostname: hostname.clone(),
                    image: Some((image.clone(), version.clone())),
                    secure_boot: Some((*secure_boot, *kernel_signed)),
                    ..Default::default()
                };
                let detail = format!("{image} {version}");
                // The Secure Boot chain's GRUB config is a boot file of its own kind.
                let stage = if *secure_boot {
                    Stage::GrubConfig
                } else {
                    Stage::IpxeScript
                };
                (*mac, stage, detail, false, update)
            }
            BootEvent::Report {
                mac,
                client,
                stage,
                detail,
                boot: _,
            } => {
                // The boot's stages were noted when its token was checked
                // ([`Recorder::accept_stage`]).
                let update = Update {
                    ip: *client,
                    ..Default::default()
                };
                (*mac, stage.clone(), detail.clone(), false, update)
            }
        };
        let stage = self.stage(mac, stage, detail, starts_boot, update, now);
        self.prune(now);
        // A client dropped at once (a bound of 0) has no record to publish.
        let record = self.records.get(&mac)?.clone();
        Some(Recorded::Stage { mac, stage, record })
    }

    /// Record that `mac` reached `stage`. `starts_boot` marks the first stage of a boot
    /// (a firmware's DHCP offer): it begins a new record unless one is under way.
    fn stage(
        &mut self,
        mac: Mac,
        stage: Stage,
        detail: String,
        starts_boot: bool,
        update: Update,
        now: f64,
    ) -> StageEvent {
        let record = self.record_mut(mac, now);
        let stale = now - record.boot_started > BOOT_STALE_SECS;
        if starts_boot && (record.finished() || stale || record.stages.is_empty()) {
            record.boot_started = now;
            record.stages.clear();
        }
        if record.stages.len() >= MAX_STAGES {
            record.stages.remove(0);
        }
        let reached = StageEvent {
            stage,
            at: ((now - record.boot_started) * 1000.0).round() / 1000.0,
            detail,
        };
        record.stages.push(reached.clone());
        if let Some(ip) = update.ip {
            record.ip = Some(ip);
        }
        if update.hostname.is_some() {
            record.hostname = update.hostname;
        }
        if update.firmware.is_some() {
            record.firmware = update.firmware;
        }
        if let Some((image, version)) = update.image {
            record.image = Some(image);
            record.version = Some(version);
        }
        if let Some((secure_boot, kernel_signed)) = update.secure_boot {
            record.secure_boot = secure_boot;
            record.kernel_signed = kernel_signed;
        }
        reached
    }

    /// Drop expired clients, then the ones seen longest ago beyond the bound.
    fn prune(&mut self, now: f64) {
        let expiry = self.limits.expiry.as_secs_f64();
        let before = self.records.len();
        self.records.retain(|_, r| now - r.last_seen() <= expiry);
        while self.records.len() > self.limits.max_clients {
            let oldest = self
                .records
                .values()
                .min_by(|a, b| a.last_seen().total_cmp(&b.last_seen()))
                .map(|r| r.mac)
                .expect("not empty");
            self.records.remove(&oldest);
        }
        if self.records.len() != before {
            self.version += 1;
        }
        let records = &self.records;
        self.macs_by_ip.retain(|_, mac| records.contains_key(mac));
    }
}

/// Read the records a server wrote (for `diskless clients`).
pub fn load(path: &Path) -> std::io::Result<BTreeMap<Mac, ClientRecord>> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// The records at `path` for a starting server: none when there is no file; a file that
/// cannot be read is moved aside (`clients.json.corrupt-UNIXTIME`) with a warning.
fn load_or_move_aside(path: &Path) -> BTreeMap<Mac, ClientRecord> {
    match load(path) {
        Ok(records) => records,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => {
            let mut aside = path.as_os_str().to_owned();
            aside.push(format!(".corrupt-{}", unix_now() as u64));
            let aside = PathBuf::from(aside);
            match std::fs::rename(path, &aside) {
                Ok(()) => tracing::warn!(
                    path = %path.display(), moved_to = %aside.display(), error = %e,
                    "the client records cannot be read: starting a new record"
                ),
                Err(mv) => tracing::warn!(
                    path = %path.display(), error = %e, rename_error = %mv,
                    "the client records cannot be read nor moved aside: starting a new record"
                ),
            }
            BTreeMap::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(last: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, last])
    }

    fn report(mac: Mac, stage: &str, detail: &str) -> BootEvent {
        BootEvent::Report {
            mac,
            client: None,
            stage: Stage::parse(stage).unwrap(),
            detail: detail.into(),
            boot: BootId(7),
        }
    }

    fn offer(mac: Mac, ip: Option<Ipv4Addr>) -> BootEvent {
        BootEvent::Dhcp {
            mac,
            firmware: ClientKind::Ipxe,
            action: DhcpAction::Offer,
            ip,
            detail: Some("http://x/boot/y.ipxe".into()),
        }
    }

    /// A lazy seat reports `filled` and `network-released` after `multi-user`: the boot is
    /// still finished, and the next firmware offer starts a new one.
    #[tokio::test]
    async fn stages_after_multi_user_keep_the_boot_finished() {
        let (recorder, task) = Recorder::start(None, Limits::default());
        let m = mac(2);
        recorder.record(offer(m, None));
        recorder.record(report(m, "multi-user", ""));
        recorder.record(report(m, "filled", "seconds=41.4"));
        recorder.record(report(m, "network-released", ""));
        let r = recorder.get(m).unwrap();
        assert_eq!(r.stage(), "network-released");
        assert!(r.finished());
        recorder.record(offer(m, None));
        assert_eq!(recorder.get(m).unwrap().stages.len(), 1);
        task.stop().await;
    }

    #[tokio::test]
    async fn a_boot_collects_stages_and_a_new_boot_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.json");
        let (recorder, task) = Recorder::start(Some(path.clone()), Limits::default());
        let m = mac(1);
        recorder.record(offer(m, Some(Ipv4Addr::new(10, 0, 0, 100))));
        recorder.record(BootEvent::Script {
            mac: m,
            client: None,
            hostname: None,
            image: "lab".into(),
            version: "v1".into(),
            boot: BootId(7),
            secure_boot: false,
            kernel_signed: None,
        });
        // TFTP knows the client by the address DHCP gave it.
        recorder.record(BootEvent::Tftp {
            client: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 100)),
            file: "ipxe/undionly.kpxe".into(),
            bytes: 70000,
            outcome: TftpOutcome::Complete,
        });
        // The initramfs does DHCP again: that is not a new boot.
        recorder.record(offer(m, None));
        recorder.record(report(m, "multi-user", ""));
        let r = recorder.get(m).unwrap();
        let stages: Vec<&str> = r.stages.iter().map(|s| s.stage.as_str()).collect();
        assert_eq!(
            stages,
            [
                "dhcp-offer",
                "ipxe-script",
                "tftp",
                "dhcp-offer",
                "multi-user"
            ]
        );
        assert_eq!(r.image.as_deref(), Some("lab"));
        assert_eq!(r.firmware.as_deref(), Some("ipxe"));
        assert!(r.seconds_to(&Stage::MultiUser).is_some());
        // After a final stage, the next firmware offer starts a new boot.
        recorder.record(offer(m, None));
        let fresh = recorder.get(m).unwrap();
        assert_eq!(fresh.stages.len(), 1);
        assert_eq!(
            fresh.firmware.as_deref(),
            Some("ipxe"),
            "what we know is kept"
        );
        // Saved on stop, and loaded by the next server.
        task.stop().await;
        assert_eq!(load(&path).unwrap()[&m], *fresh);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"52:54:00:00:00:01\""), "{text}");
        let (again, task) = Recorder::start(Some(path), Limits::default());
        assert_eq!(again.get(m), Some(fresh));
        task.stop().await;
    }

    #[tokio::test]
    async fn subscribers_get_events_and_stage_facts() {
        let (recorder, task) = Recorder::start(None, Limits::default());
        let mut updates = recorder.subscribe();
        let file = BootEvent::HttpFile {
            client: None,
            image: "lab".into(),
            version: "v1".into(),
            file: ImageFile::Squashfs,
            bytes: 10,
        };
        recorder.record(file.clone());
        recorder.record(report(mac(2), "fetched", "mbps=90"));
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(updates.recv().await.unwrap());
        }
        assert!(matches!(&got[0], Recorded::Event(e) if **e == file));
        assert!(matches!(&got[1], Recorded::Event(e) if matches!(**e, BootEvent::Report { .. })));
        assert!(
            matches!(&got[2], Recorded::Stage { stage, record, .. } if stage.stage == Stage::Fetched && record.stage() == "fetched")
        );
        assert_eq!(recorder.snapshot().len(), 1, "image files are not stages");
        task.stop().await;
    }

    #[tokio::test]
    async fn the_table_is_bounded_and_old_clients_expire() {
        let limits = Limits {
            max_clients: 3,
            expiry: Duration::from_secs(3600),
        };
        let mut table = Table {
            records: BTreeMap::new(),
            macs_by_ip: HashMap::new(),
            limits,
            version: 0,
            published: Arc::default(),
        };
        let now = 1_800_000_000.0;
        for i in 0..5u8 {
            table.apply(&report(mac(i), "x", ""), now + f64::from(i));
        }
        let kept: Vec<u8> = table.records.keys().map(|m| m.0[5]).collect();
        assert_eq!(kept, [2, 3, 4], "the clients seen longest ago go first");
        table.apply(&report(mac(9), "x", ""), now + 7200.0);
        let kept: Vec<u8> = table.records.keys().map(|m| m.0[5]).collect();
        assert_eq!(
            kept,
            [9],
            "clients not seen for the expiry time are dropped"
        );
        for i in 0..200 {
            table.apply(&report(mac(9), "retry", &i.to_string()), now + 7200.0);
        }
        let r = &table.records[&mac(9)];
        assert_eq!(r.stages.len(), MAX_STAGES);
        assert_eq!(r.stages.last().unwrap().detail, "199");
    }

    #[tokio::test]
    async fn a_record_is_shared_with_every_subscriber_not_copied() {
        let (recorder, task) = Recorder::start(None, Limits::default());
        let (mut one, mut two) = (recorder.subscribe(), recorder.subscribe());
        recorder.record(report(mac(1), "fetched", ""));
        let stage_record = |rx: &mut broadcast::Receiver<Recorded>| loop {
            if let Recorded::Stage { record, .. } = rx.try_recv().unwrap() {
                return record;
            }
        };
        let (a, b) = (stage_record(&mut one), stage_record(&mut two));
        assert!(Arc::ptr_eq(&a, &b), "two subscribers, one record");
        let table = recorder.published();
        assert!(Arc::ptr_eq(&a, &table.records[&mac(1)]), "and the table's");
        assert!(Arc::ptr_eq(&a, &recorder.get(mac(1)).unwrap()));
        // Another client's stage leaves this record as it was: shared, not copied.
        recorder.record(report(mac(2), "fetched", ""));
        assert!(Arc::ptr_eq(&a, &recorder.published().records[&mac(1)]));
        task.stop().await;
    }

    #[tokio::test]
    async fn each_stage_is_one_fact_in_the_tables_order() {
        let recorder = Recorder::with_records(BTreeMap::new(), Limits::default());
        let mut facts = recorder.subscribe();
        for stage in ["network-up", "fetching", "fetched"] {
            recorder.record(report(mac(1), stage, ""));
        }
        let mut stages = Vec::new();
        while let Ok(fact) = facts.try_recv() {
            if let Recorded::Stage {
                mac: m,
                stage,
                record,
            } = fact
            {
                assert_eq!(m, mac(1));
                assert_eq!(
                    record.stages.last(),
                    Some(&stage),
                    "the record after the stage"
                );
                stages.push(stage.stage.to_string());
            }
        }
        assert_eq!(stages, ["network-up", "fetching", "fetched"]);
    }

    #[tokio::test]
    async fn a_subscriber_that_does_not_read_loses_no_boot_and_no_token_stage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.json");
        let (recorder, task) = Recorder::start(Some(path.clone()), Limits::default());
        let mut stalled = recorder.subscribe();
        let flood = || {
            for _ in 0..3 * FACTS {
                recorder.record(BootEvent::HttpFile {
                    client: None,
                    image: "lab".into(),
                    version: "v1".into(),
                    file: ImageFile::Squashfs,
                    bytes: 1,
                });
            }
        };
        flood();
        recorder.start_boot(mac(1), BootId(7));
        flood();
        assert_eq!(
            recorder.accept_stage(mac(1), BootId(7), &Stage::Fetched),
            Ok(())
        );
        flood();
        assert!(
            matches!(
                stalled.try_recv(),
                Err(broadcast::error::TryRecvError::Lagged(_))
            ),
            "the subscriber missed facts"
        );
        let boot = CurrentBoot {
            id: BootId(7),
            reported: vec![Stage::Fetched],
        };
        assert_eq!(recorder.current_boot(mac(1)), Some(boot.clone()));
        assert_eq!(
            recorder.accept_stage(mac(1), BootId(7), &Stage::Fetched),
            Err(Refusal::Replayed)
        );
        task.stop().await;
        assert_eq!(load(&path).unwrap()[&mac(1)].boot, Some(boot), "saved");
    }

    #[tokio::test]
    async fn a_corrupt_file_is_moved_aside_not_emptied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.json");
        std::fs::write(&path, "{half a file").unwrap();
        let (recorder, task) = Recorder::start(Some(path.clone()), Limits::default());
        assert!(recorder.snapshot().is_empty());
        task.stop().await;
        let aside: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("clients.json.corrupt-"))
            .collect();
        assert_eq!(aside.len(), 1, "{aside:?}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(&aside[0])).unwrap(),
            "{half a file"
        );
    }
}
