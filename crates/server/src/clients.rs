//! The record of every client's boot: which stages it reached, when, and with what.
//!
//! Stages come from the DHCP server (offer, ack), the TFTP server (files fetched), the HTTP
//! server (script, kernel) and the client itself (its initramfs and booted system report over
//! HTTP). The record is kept in memory and written atomically to `STATE/clients.json`, which
//! `diskless clients` reads.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// A boot that has not reached a final stage within this long is considered abandoned.
const BOOT_STALE_SECS: f64 = 600.0;
/// Stages kept per boot; a client stuck in a retry loop does not grow without bound.
const MAX_STAGES: usize = 64;

/// The stages that end a boot.
pub const FINAL_STAGES: &[&str] = &["multi-user", "failed"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageEvent {
    pub stage: String,
    /// Seconds since the boot started.
    pub at: f64,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ClientRecord {
    /// `aa:bb:cc:dd:ee:ff`.
    pub mac: String,
    pub ip: Option<IpAddr>,
    pub hostname: Option<String>,
    /// What its firmware said it is: bios-pxe, uefi-pxe, ipxe, ...
    pub firmware: Option<String>,
    pub image: Option<String>,
    pub version: Option<String>,
    /// Unix time (seconds) the current boot started.
    pub boot_started: f64,
    pub stages: Vec<StageEvent>,
}

impl ClientRecord {
    pub fn stage(&self) -> &str {
        self.stages.last().map(|s| s.stage.as_str()).unwrap_or("-")
    }

    fn finished(&self) -> bool {
        FINAL_STAGES.contains(&self.stage())
    }

    /// Seconds from the start of the boot to `stage`, if it was reached.
    pub fn seconds_to(&self, stage: &str) -> Option<f64> {
        self.stages.iter().find(|s| s.stage == stage).map(|s| s.at)
    }
}

/// What a stage report may update besides the stage.
#[derive(Debug, Default, Clone)]
pub struct Update {
    pub ip: Option<IpAddr>,
    pub hostname: Option<String>,
    pub firmware: Option<String>,
    pub image: Option<(String, String)>,
}

pub struct Clients {
    path: Option<PathBuf>,
    records: Mutex<BTreeMap<String, ClientRecord>>,
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

impl Clients {
    /// Records kept in memory only.
    pub fn in_memory() -> Clients {
        Clients {
            path: None,
            records: Mutex::new(BTreeMap::new()),
        }
    }

    /// Records persisted at `path`; the previous run's records are loaded.
    pub fn persistent(path: PathBuf) -> Clients {
        let records = load(&path).unwrap_or_default();
        Clients {
            path: Some(path),
            records: Mutex::new(records),
        }
    }

    /// Record that `mac` reached `stage`. `starts_boot` marks the first stage of a boot
    /// (a firmware's DHCP request): it begins a new record unless one is under way.
    pub fn record(&self, mac: &str, stage: &str, detail: &str, starts_boot: bool, update: Update) {
        let now = now();
        let snapshot = {
            let mut records = self.records.lock().expect("clients lock");
            let record = records
                .entry(mac.to_string())
                .or_insert_with(|| ClientRecord {
                    mac: mac.to_string(),
                    boot_started: now,
                    ..Default::default()
                });
            let stale = now - record.boot_started > BOOT_STALE_SECS;
            if starts_boot && (record.finished() || stale || record.stages.is_empty()) {
                record.boot_started = now;
                record.stages.clear();
            }
            if record.stages.len() >= MAX_STAGES {
                record.stages.remove(0);
            }
            record.stages.push(StageEvent {
                stage: stage.to_string(),
                at: ((now - record.boot_started) * 1000.0).round() / 1000.0,
                detail: detail.to_string(),
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
            self.path.as_ref().map(|_| records.clone())
        };
        if let (Some(path), Some(records)) = (&self.path, snapshot) {
            if let Err(e) = save(path, &records) {
                tracing::warn!(path = %path.display(), error = %e, "cannot save the client records");
            }
        }
    }

    pub fn get(&self, mac: &str) -> Option<ClientRecord> {
        self.records.lock().expect("clients lock").get(mac).cloned()
    }

    pub fn all(&self) -> Vec<ClientRecord> {
        self.records
            .lock()
            .expect("clients lock")
            .values()
            .cloned()
            .collect()
    }
}

/// Read the records a server wrote (for `diskless clients`).
pub fn load(path: &Path) -> std::io::Result<BTreeMap<String, ClientRecord>> {
    let text = std::fs::read_to_string(path)?;
    serde_json::from_str(&text).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn save(path: &Path, records: &BTreeMap<String, ClientRecord>) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(records).expect("records serialize"),
    )?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_boot_collects_stages_and_a_new_boot_starts_fresh() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clients.json");
        let clients = Clients::persistent(path.clone());
        let mac = "52:54:00:00:00:01";
        clients.record(
            mac,
            "dhcp-offer",
            "",
            true,
            Update {
                firmware: Some("ipxe".into()),
                ..Default::default()
            },
        );
        clients.record(
            mac,
            "ipxe-script",
            "",
            false,
            Update {
                image: Some(("lab".into(), "v1".into())),
                ..Default::default()
            },
        );
        // The initramfs does DHCP again: that is not a new boot.
        clients.record(mac, "dhcp-offer", "", true, Update::default());
        clients.record(mac, "multi-user", "", false, Update::default());
        let r = clients.get(mac).unwrap();
        assert_eq!(r.stages.len(), 4);
        assert_eq!(r.stage(), "multi-user");
        assert_eq!(r.image.as_deref(), Some("lab"));
        assert!(r.seconds_to("multi-user").is_some());
        // Persisted, and loaded by a new server.
        assert_eq!(Clients::persistent(path.clone()).get(mac).unwrap(), r);
        // After a final stage, the next firmware request starts a new boot.
        clients.record(mac, "dhcp-offer", "", true, Update::default());
        let r = clients.get(mac).unwrap();
        assert_eq!(r.stages.len(), 1);
        assert_eq!(
            r.firmware.as_deref(),
            Some("ipxe"),
            "what we know of the client is kept"
        );
    }

    #[test]
    fn stages_are_bounded() {
        let clients = Clients::in_memory();
        for i in 0..200 {
            clients.record("m", "retry", &i.to_string(), false, Update::default());
        }
        let r = clients.get("m").unwrap();
        assert_eq!(r.stages.len(), MAX_STAGES);
        assert_eq!(r.stages.last().unwrap().detail, "199");
    }
}
