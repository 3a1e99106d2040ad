//! The record of every client's boot: typed [`BootEvent`]s from every protocol go to one task
//! that owns the client table and its file.
//!
//! Stages come from the DHCP server (offer, ack, nak), the TFTP server (files fetched), the
//! HTTP server (script, image files) and the client itself (its initramfs and booted system
//! report over HTTP). A protocol path hands its event to [`Recorder::record`], which never
//! waits: a bounded channel, and an event that does not fit is dropped with a warning. The
//! recorder task alone
//!
//! - keeps the table ([`ClientRecord`] by [`Mac`]) and which MAC holds which IP address (TFTP
//!   only sees addresses), bounded by `[record] max_clients` (the client seen longest ago goes
//!   first) and `client_expiry_days`;
//! - writes `STATE/clients.json` (read by `diskless clients`) through the one atomic write
//!   ([`diskless_dhcp::state_file`]), at most once per [`SAVE_DELAY`] and on stop;
//! - publishes the table for readers: [`Recorder::published`] (a `watch` channel, never
//!   blocked by the task: the table shared, with a version that counts its changes),
//!   [`Recorder::snapshot`] (a copy of it) and [`Recorder::subscribe`] (a `broadcast` of every raw event and of
//!   each client record after it changed: the dashboard's live view and the metrics' counts).
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
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot, watch};

/// A boot that has not reached a final stage within this long is considered abandoned.
const BOOT_STALE_SECS: f64 = 600.0;
/// Stages kept per boot; a client stuck in a retry loop does not grow without bound.
const MAX_STAGES: usize = 64;
/// Events waiting for the recorder task; beyond this they are dropped (and counted).
const QUEUE: usize = 4096;
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

    /// Its boot ended: the last stage is a final one.
    pub fn finished(&self) -> bool {
        self.last_stage().is_some_and(Stage::is_final)
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

/// The table as the recorder task last published it.
#[derive(Debug, Default)]
pub struct Published {
    /// Counts the table's changes since the recorder started: equal versions, equal tables
    /// (readers that serialize the table keep the text by it, [`crate::shared_json`]).
    pub version: u64,
    pub records: BTreeMap<Mac, ClientRecord>,
}

/// What [`Recorder::subscribe`] delivers.
#[derive(Debug, Clone)]
pub enum Recorded {
    /// An event as a protocol server sent it (every one, recorded as a stage or not).
    Event(Arc<BootEvent>),
    /// A client's record after an event changed it.
    Client(Arc<ClientRecord>),
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

enum Message {
    Event(BootEvent),
    /// Answered once every earlier message is applied.
    Sync(oneshot::Sender<()>),
}

/// The handle protocol servers and readers hold; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Message>,
    table: watch::Receiver<Arc<Published>>,
    updates: broadcast::Sender<Recorded>,
}

/// The running recorder task: [`RecorderTask::stop`] applies what is queued, writes the file
/// and joins it.
pub struct RecorderTask {
    stop: oneshot::Sender<()>,
    handle: tokio::task::JoinHandle<()>,
}

impl RecorderTask {
    /// Stop the task after it has applied every queued event and saved the file.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        if let Err(e) = self.handle.await {
            tracing::warn!(error = %e, "the client recorder task failed");
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
    /// Start the recorder task with the records at `path` (None: in memory only). Call
    /// within a tokio runtime.
    pub fn start(path: Option<PathBuf>, limits: Limits) -> (Recorder, RecorderTask) {
        let records = path.as_deref().map(load_or_move_aside).unwrap_or_default();
        let mut table = Table {
            records,
            macs_by_ip: HashMap::new(),
            limits,
        };
        table.prune(unix_now());
        let (tx, rx) = mpsc::channel(QUEUE);
        let (table_tx, table_rx) = watch::channel(Arc::new(Published {
            version: 0,
            records: table.records.clone(),
        }));
        let (updates, _) = broadcast::channel(1024);
        let (stop_tx, stop_rx) = oneshot::channel();
        let handle = tokio::spawn(run_task(
            table,
            path,
            rx,
            stop_rx,
            table_tx,
            updates.clone(),
        ));
        (
            Recorder {
                tx,
                table: table_rx,
                updates,
            },
            RecorderTask {
                stop: stop_tx,
                handle,
            },
        )
    }

    /// Hand an event to the recorder; never waits (a full queue drops it, with a warning).
    pub fn record(&self, event: BootEvent) {
        if let Err(e) = self.tx.try_send(Message::Event(event)) {
            tracing::warn!(error = %e, "client recorder busy: a boot event is not recorded");
        }
    }

    /// Wait until every event recorded before this call is in the table.
    pub async fn sync(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Sync(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Every client's record, as of the last event applied.
    pub fn snapshot(&self) -> Vec<ClientRecord> {
        self.table.borrow().records.values().cloned().collect()
    }

    /// The table as of the last event applied, shared (not copied), with its version.
    pub fn published(&self) -> Arc<Published> {
        self.table.borrow().clone()
    }

    /// One client's record.
    pub fn get(&self, mac: Mac) -> Option<ClientRecord> {
        self.table.borrow().records.get(&mac).cloned()
    }

    /// Every event and every changed record from now on. A reader that falls behind by more
    /// than 1024 messages gets `RecvError::Lagged` and should take a [`snapshot`](Self::snapshot).
    pub fn subscribe(&self) -> broadcast::Receiver<Recorded> {
        self.updates.subscribe()
    }
}

async fn run_task(
    mut table: Table,
    path: Option<PathBuf>,
    mut rx: mpsc::Receiver<Message>,
    mut stop: oneshot::Receiver<()>,
    table_tx: watch::Sender<Arc<Published>>,
    updates: broadcast::Sender<Recorded>,
) {
    let mut version = 0;
    let mut publish = |records: &BTreeMap<Mac, ClientRecord>| {
        version += 1;
        table_tx.send_replace(Arc::new(Published {
            version,
            records: records.clone(),
        }));
    };
    let mut dirty = false;
    // A failed save is logged once per failing spell, not every SAVE_DELAY.
    let mut save_failing = diskless_dhcp::state_file::FailingSpell::default();
    let save_timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(save_timer);
    loop {
        tokio::select! {
            message = rx.recv() => {
                let Some(message) = message else { break };
                match message {
                    Message::Sync(done) => {
                        let _ = done.send(());
                    }
                    Message::Event(event) => {
                        let event = Arc::new(event);
                        let _ = updates.send(Recorded::Event(event.clone()));
                        if let Some(record) = table.apply(&event, unix_now()) {
                            let _ = updates.send(Recorded::Client(Arc::new(record)));
                            publish(&table.records);
                            if !dirty {
                                dirty = true;
                                save_timer.as_mut().reset(tokio::time::Instant::now() + SAVE_DELAY);
                            }
                        }
                    }
                }
            }
            _ = &mut save_timer, if dirty => {
                dirty = false;
                save(path.as_deref(), &table.records, &mut save_failing).await;
            }
            _ = &mut stop => break,
        }
    }
    // Apply what is still queued, then save once more.
    rx.close();
    while let Ok(message) = rx.try_recv() {
        if let Message::Event(event) = message {
            dirty |= table.apply(&event, unix_now()).is_some();
        }
    }
    publish(&table.records);
    if dirty {
        save(path.as_deref(), &table.records, &mut save_failing).await;
    }
}

async fn save(
    path: Option<&Path>,
    records: &BTreeMap<Mac, ClientRecord>,
    failing: &mut diskless_dhcp::state_file::FailingSpell,
) {
    let Some(path) = path else { return };
    let mut json = serde_json::to_vec_pretty(records).expect("records serialize");
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

/// The recorder task's state.
struct Table {
    records: BTreeMap<Mac, ClientRecord>,
    /// Which MAC was last given which address, by DHCP: TFTP only sees addresses.
    macs_by_ip: HashMap<IpAddr, Mac>,
    limits: Limits,
}

/// What a stage updates besides the stage itself.
#[derive(Default)]
struct Update {
    ip: Option<IpAddr>,
    hostname: Option<String>,
    firmware: Option<String>,
    image: Option<(String, String)>,
    /// A script started this boot.
    new_boot: Option<BootId>,
    /// The boot reported this stage.
    reported: Option<BootId>,
    /// With `image`: the Secure Boot chain, and whether its kernel is signed.
    secure_boot: Option<(bool, Option<bool>)>,
}

impl Table {
    /// Apply one event; the changed record, if the event is a stage of a client.
    fn apply(&mut self, event: &BootEvent, now: f64) -> Option<ClientRecord> {
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
                boot,
                secure_boot,
                kernel_signed,
            } => {
                let update = Update {
                    ip: *client,
                    hostname: hostname.clone(),
                    image: Some((image.clone(), version.clone())),
                    new_boot: Some(*boot),
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
                boot,
            } => {
                let update = Update {
                    ip: *client,
                    reported: Some(*boot),
                    ..Default::default()
                };
                (*mac, stage.clone(), detail.clone(), false, update)
            }
        };
        let record = self.stage(mac, stage, detail, starts_boot, update, now);
        self.prune(now);
        Some(record)
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
    ) -> ClientRecord {
        let record = self
            .records
            .entry(mac)
            .or_insert_with(|| ClientRecord::new(mac, now));
        let stale = now - record.boot_started > BOOT_STALE_SECS;
        if starts_boot && (record.finished() || stale || record.stages.is_empty()) {
            record.boot_started = now;
            record.stages.clear();
        }
        if record.stages.len() >= MAX_STAGES {
            record.stages.remove(0);
        }
        if let Some(id) = update.new_boot {
            record.boot = Some(CurrentBoot {
                id,
                reported: Vec::new(),
            });
        }
        if let Some(id) = update.reported {
            // A script event dropped on a full queue leaves another boot here: the report's
            // own boot is the current one (the token checker accepted it).
            let boot = record.boot.get_or_insert_with(|| CurrentBoot {
                id,
                reported: Vec::new(),
            });
            if boot.id != id {
                *boot = CurrentBoot {
                    id,
                    reported: Vec::new(),
                };
            }
            boot.reported.push(stage.clone());
        }
        record.stages.push(StageEvent {
            stage,
            at: ((now - record.boot_started) * 1000.0).round() / 1000.0,
            detail,
        });
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
        record.clone()
    }

    /// Drop expired clients, then the ones seen longest ago beyond the bound.
    fn prune(&mut self, now: f64) {
        let expiry = self.limits.expiry.as_secs_f64();
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
        recorder.sync().await;
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
        recorder.sync().await;
        let fresh = recorder.get(m).unwrap();
        assert_eq!(fresh.stages.len(), 1);
        assert_eq!(
            fresh.firmware.as_deref(),
            Some("ipxe"),
            "what we know is kept"
        );
        // Saved on stop, and loaded by the next server.
        task.stop().await;
        assert_eq!(load(&path).unwrap()[&m], fresh);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\"52:54:00:00:00:01\""), "{text}");
        let (again, task) = Recorder::start(Some(path), Limits::default());
        assert_eq!(again.get(m), Some(fresh));
        task.stop().await;
    }

    #[tokio::test]
    async fn subscribers_get_events_and_changed_records() {
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
        assert!(matches!(&got[2], Recorded::Client(r) if r.stage() == "fetched"));
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
