//! A boot as the dashboard and the metrics see it: a client record with its phases.
//!
//! A phase is the time between two stages, named after what happened in it; consecutive
//! intervals of one phase merge (an offer then an ack: one `dhcp` phase):
//!
//! ```text
//! stage reached   phase that ends there
//! dhcp-*          dhcp        the firmware or iPXE waiting for an address (after the
//!                             script: kernel, the initramfs's DHCP comes after Linux started)
//! tftp            tftp        iPXE loaded by the firmware
//! ipxe-script     ipxe        iPXE started, its script fetched
//! grub-config     grub        shim and GRUB loaded (Secure Boot chain), their config fetched
//! network-up      kernel      kernel and initrds downloaded, Linux started, initramfs network
//! fetching        initramfs   RAM disk mounted
//! fetched         image       the image downloaded and its sha256 checked
//! root-mounted    mount       the squashfs and overlay mounted
//! multi-user      systemd     the system started
//! failed          failed
//! anything else   other
//! ```

use crate::recorder::ClientRecord;
use diskless_boot::multicast::MulticastFetch;
use diskless_boot::{FailureReason, FilledDetail, Stage};
use serde::Serialize;
use std::collections::VecDeque;

/// One phase of a boot.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Phase {
    pub phase: &'static str,
    /// Seconds since the boot started.
    pub start: f64,
    pub seconds: f64,
}

/// Every phase name, in boot order.
pub const PHASES: &[&str] = &[
    "dhcp",
    "tftp",
    "ipxe",
    "grub",
    "kernel",
    "initramfs",
    "image",
    "mount",
    "systemd",
    "failed",
    "other",
];

/// The phase that ends when `stage` is reached.
pub fn phase_ending_at(stage: &Stage) -> &'static str {
    match stage {
        Stage::DhcpOffer | Stage::DhcpAck | Stage::DhcpNak => "dhcp",
        Stage::Tftp => "tftp",
        Stage::IpxeScript => "ipxe",
        Stage::GrubConfig => "grub",
        Stage::NetworkUp => "kernel",
        Stage::Fetching => "initramfs",
        Stage::Fetched => "image",
        Stage::RootMounted => "mount",
        Stage::MultiUser => "systemd",
        Stage::Failed => "failed",
        Stage::AccountsMissing | Stage::Filled | Stage::NetworkReleased | Stage::Other(_) => {
            "other"
        }
    }
}

/// The phases of `record`'s boot, in order.
pub fn phases(record: &ClientRecord) -> Vec<Phase> {
    let mut out: Vec<Phase> = Vec::new();
    let mut script_fetched = false;
    for pair in record.stages.windows(2) {
        let (from, to) = (&pair[0], &pair[1]);
        script_fetched |= from.stage.is_boot_file();
        let name = match phase_ending_at(&to.stage) {
            // After the script, the next DHCP is the initramfs's own: until then iPXE fetched
            // the kernel and initrds and Linux started (seen on a QEMU boot: 31 s that the
            // dashboard first called "DHCP").
            "dhcp" if script_fetched => "kernel",
            name => name,
        };
        let seconds = (to.at - from.at).max(0.0);
        match out.last_mut() {
            Some(last) if last.phase == name => last.seconds += seconds,
            _ => out.push(Phase {
                phase: name,
                start: from.at,
                seconds,
            }),
        }
    }
    for p in &mut out {
        p.seconds = (p.seconds * 1000.0).round() / 1000.0;
    }
    out
}

/// A client record with what the page shows beside it.
#[derive(Debug, Clone, Serialize)]
pub struct ClientView {
    #[serde(flatten)]
    pub record: ClientRecord,
    /// The stage it is in now (`-` before any).
    pub stage: String,
    /// Unix time of the last stage.
    pub last_seen: f64,
    /// Seconds from the first stage to the last.
    pub duration: f64,
    /// multi-user or failed.
    pub finished: bool,
    /// Why, for a failed boot: `{"code": "no-address", "message": "..."}`.
    pub failure: Option<FailureReason>,
    pub phases: Vec<Phase>,
    /// How its image came, when it was given a multicast session (the detail of its
    /// `fetched` report, or of a lazy seat's `filled` one): by the group, with the bytes it
    /// repaired over HTTP, or by HTTP because multicast did not reach it. The dashboard's
    /// Multicast tab lists these seats.
    pub multicast: Option<MulticastFetch>,
    /// Where its root's blocks come from, for a seat that mounted its root from the network
    /// (diskless.fetch=lazy or network); `None` for one that fetched its image whole.
    pub fill: Option<Fill>,
}

/// How far a seat whose root was mounted from the network (issue 25) is: its stages say
/// (the helper reports no progress before its copy is whole). A `network` seat stays
/// `network`; a `lazy` one goes on to `filled` and `released`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fill {
    /// `network`: the root is served from the network (a lazy seat's copy is filling);
    /// `filled`: the RAM copy is whole; `released`: the root is on the copy, off the network.
    pub state: &'static str,
    /// From the `filled` report: seconds from the helper's start to the copy whole, the
    /// image's bytes, and the bytes fetched because the kernel waited for them.
    pub seconds: Option<f64>,
    pub bytes: Option<u64>,
    pub demanded: Option<u64>,
    /// Blocks the helper refused (they did not match the image's hash tree: a broken
    /// cache), from the `filled` report.
    pub refused: Option<u64>,
}

impl Fill {
    /// The fill of `record`'s boot: `None` unless its root was mounted with nothing fetched
    /// whole before (no `fetched` stage) or it reported `filled`.
    pub fn of(record: &ClientRecord) -> Option<Fill> {
        let reached = |stage: Stage| record.stages.iter().rev().find(|s| s.stage == stage);
        let filled = reached(Stage::Filled);
        let from_network =
            reached(Stage::RootMounted).is_some() && reached(Stage::Fetched).is_none();
        if filled.is_none() && !from_network {
            return None;
        }
        let measured = filled.and_then(|s| FilledDetail::parse(&s.detail));
        let state = if reached(Stage::NetworkReleased).is_some() {
            "released"
        } else if filled.is_some() {
            "filled"
        } else {
            "network"
        };
        Some(Fill {
            state,
            seconds: measured.map(|m| m.seconds),
            bytes: measured.map(|m| m.bytes),
            demanded: measured.map(|m| m.demanded),
            refused: measured.map(|m| m.refused),
        })
    }
}

impl From<ClientRecord> for ClientView {
    fn from(record: ClientRecord) -> ClientView {
        let last = record.stages.last();
        let duration = last.map(|s| s.at).unwrap_or(0.0);
        let failure = last
            .filter(|s| s.stage == Stage::Failed)
            .map(|s| FailureReason::parse(&s.detail));
        let multicast = record
            .stages
            .iter()
            .find(|s| s.stage.reports_multicast())
            .and_then(|s| MulticastFetch::parse(&s.detail));
        ClientView {
            multicast,
            last_seen: record.boot_started + duration,
            duration,
            finished: record.finished(),
            failure,
            phases: phases(&record),
            fill: Fill::of(&record),
            stage: record.stage().to_string(),
            record,
        }
    }
}

/// The last finished boots, newest first, for the lab view.
pub struct BootHistory {
    boots: VecDeque<ClientView>,
    capacity: usize,
}

impl BootHistory {
    pub fn new(capacity: usize) -> BootHistory {
        BootHistory {
            boots: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// Keep `record` if it is a finished boot not kept yet; true if it was added.
    pub fn add(&mut self, record: &ClientRecord) -> bool {
        let view = ClientView::from(record.clone());
        let known = self
            .boots
            .iter()
            .any(|b| b.record.mac == record.mac && b.record.boot_started == record.boot_started);
        if !view.finished || known {
            return false;
        }
        if self.boots.len() == self.capacity {
            self.boots.pop_back();
        }
        self.boots.push_front(view);
        true
    }

    pub fn newest_first(&self) -> Vec<ClientView> {
        self.boots.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recorder::StageEvent;

    fn record(stages: &[(&str, f64)]) -> ClientRecord {
        ClientRecord {
            stages: stages
                .iter()
                .map(|(stage, at)| StageEvent {
                    stage: Stage::parse(stage).unwrap(),
                    at: *at,
                    detail: String::new(),
                })
                .collect(),
            ..ClientRecord::new("52:54:00:00:00:01".parse().unwrap(), 1000.0)
        }
    }

    #[test]
    fn phases_merge_consecutive_stages_of_one_kind() {
        let r = record(&[
            ("dhcp-offer", 0.0),
            ("dhcp-ack", 1.0),
            ("tftp", 1.5),
            ("dhcp-offer", 4.0),
            ("dhcp-ack", 4.25),
            ("ipxe-script", 5.0),
            ("network-up", 15.0),
            ("fetching", 16.0),
            ("fetched", 46.0),
            ("root-mounted", 47.0),
            ("multi-user", 80.0),
        ]);
        let got: Vec<(&str, f64, f64)> = phases(&r)
            .iter()
            .map(|p| (p.phase, p.start, p.seconds))
            .collect();
        assert_eq!(
            got,
            [
                ("dhcp", 0.0, 1.0),
                ("tftp", 1.0, 0.5),
                ("dhcp", 1.5, 2.75),
                ("ipxe", 4.25, 0.75),
                ("kernel", 5.0, 10.0),
                ("initramfs", 15.0, 1.0),
                ("image", 16.0, 30.0),
                ("mount", 46.0, 1.0),
                ("systemd", 47.0, 33.0),
            ]
        );
        let view = ClientView::from(r);
        assert_eq!((view.stage.as_str(), view.finished), ("multi-user", true));
        assert_eq!((view.duration, view.last_seen), (80.0, 1080.0));
        assert_eq!(view.failure, None);
        // The initramfs's DHCP ends the kernel phase, not a DHCP one.
        let r = record(&[
            ("dhcp-offer", 0.0),
            ("ipxe-script", 0.5),
            ("dhcp-offer", 31.0),
            ("dhcp-ack", 31.5),
            ("network-up", 32.0),
        ]);
        let got: Vec<(&str, f64)> = phases(&r).iter().map(|p| (p.phase, p.seconds)).collect();
        assert_eq!(got, [("ipxe", 0.5), ("kernel", 31.5)]);
        // The same after a GRUB config, which has a phase of its own.
        let r = record(&[
            ("dhcp-offer", 0.0),
            ("tftp", 0.25),
            ("grub-config", 0.5),
            ("dhcp-offer", 31.0),
            ("network-up", 32.0),
            ("made-up", 33.0),
        ]);
        let got: Vec<(&str, f64)> = phases(&r).iter().map(|p| (p.phase, p.seconds)).collect();
        assert_eq!(
            got,
            [
                ("tftp", 0.25),
                ("grub", 0.25),
                ("kernel", 31.5),
                ("other", 1.0)
            ]
        );
    }

    /// Issue 24: the bytes each seat repaired over HTTP, per seat, from its `fetched` report;
    /// a seat multicast did not reach says so; one never given a session has nothing.
    #[test]
    fn a_seat_shows_how_its_image_came_by_multicast() {
        let mut r = record(&[("fetching", 1.0), ("fetched", 9.0)]);
        r.stages[1].detail =
            "bytes=1000 seconds=8.00 mbps=0.1 multicast_bytes=990 http_bytes=10".into();
        let json = serde_json::to_value(ClientView::from(r.clone())).unwrap();
        assert_eq!(
            json["multicast"],
            serde_json::json!({"outcome": "joined", "multicast_bytes": 990, "http_bytes": 10})
        );
        r.stages[1].detail = "bytes=1000 seconds=8.00 mbps=0.1 multicast=unreachable".into();
        let json = serde_json::to_value(ClientView::from(r.clone())).unwrap();
        assert_eq!(json["multicast"]["outcome"], "unreachable");
        r.stages[1].detail = "bytes=1000 seconds=8.00 mbps=0.1".into();
        let json = serde_json::to_value(ClientView::from(r)).unwrap();
        assert_eq!(json["multicast"], serde_json::Value::Null);
        // A lazy seat: its `filled` report says how the session filled its RAM copy.
        let mut lazy = record(&[("root-mounted", 5.0), ("filled", 40.0)]);
        lazy.stages[1].detail =
            "seconds=39.0 bytes=1000 fetched=150 demanded=100 multicast_bytes=880 http_bytes=120"
                .into();
        let json = serde_json::to_value(ClientView::from(lazy.clone())).unwrap();
        assert_eq!(
            json["multicast"],
            serde_json::json!({"outcome": "joined", "multicast_bytes": 880, "http_bytes": 120})
        );
        assert_eq!(json["fill"]["state"], "filled");
        lazy.stages[1].detail =
            "seconds=39.0 bytes=1000 fetched=1000 demanded=100 multicast=unreachable".into();
        let json = serde_json::to_value(ClientView::from(lazy)).unwrap();
        assert_eq!(json["multicast"]["outcome"], "unreachable");
        // The Multicast tab lists the seats by these fields.
        let page = crate::admin::DASHBOARD;
        for field in [
            "c.multicast",
            "m.http_bytes",
            "m.multicast_bytes",
            "\"unreachable\"",
        ] {
            assert!(page.contains(field), "the dashboard does not read {field}");
        }
    }

    #[test]
    fn a_seat_whose_root_came_from_the_network_shows_its_fill() {
        let whole = record(&[
            ("fetched", 30.0),
            ("root-mounted", 31.0),
            ("multi-user", 60.0),
        ]);
        assert_eq!(ClientView::from(whole).fill, None);
        let mut r = record(&[("fetching", 10.0), ("root-mounted", 12.0)]);
        let fill = |r: &ClientRecord| ClientView::from(r.clone()).fill.unwrap();
        assert_eq!(
            fill(&r),
            Fill {
                state: "network",
                seconds: None,
                bytes: None,
                demanded: None,
                refused: None
            }
        );
        r.stages.push(StageEvent {
            stage: Stage::Filled,
            at: 50.0,
            detail: "seconds=41.4 bytes=1000 fetched=1100 demanded=300 refused=5".into(),
        });
        assert_eq!(
            fill(&r),
            Fill {
                state: "filled",
                seconds: Some(41.4),
                bytes: Some(1000),
                demanded: Some(300),
                refused: Some(5)
            }
        );
        // The dashboard's fill line says so.
        assert!(crate::admin::DASHBOARD.contains("f.refused"));
        r.stages.push(StageEvent {
            stage: Stage::NetworkReleased,
            at: 51.0,
            detail: String::new(),
        });
        assert_eq!(fill(&r).state, "released");
        assert_eq!(fill(&r).demanded, Some(300));
    }

    #[test]
    fn the_dashboard_knows_every_phase() {
        let page = crate::admin::DASHBOARD;
        let list = page
            .lines()
            .find_map(|l| l.trim().strip_prefix("const PHASES = "))
            .expect("the dashboard's PHASES");
        let names: Vec<&str> = list.split('"').skip(1).step_by(2).collect();
        assert_eq!(names, PHASES);
        for phase in PHASES {
            assert!(
                page.contains(&format!("--{phase}:")),
                "no colour for {phase}"
            );
        }
    }

    #[test]
    fn history_keeps_each_finished_boot_once_newest_first() {
        let mut h = BootHistory::new(2);
        let running = record(&[("dhcp-offer", 0.0)]);
        assert!(!h.add(&running));
        let mut done = record(&[("dhcp-offer", 0.0), ("failed", 3.0)]);
        done.stages[1].detail = "reason=no-address the network did not come up".into();
        assert!(h.add(&done));
        assert!(!h.add(&done), "the same boot again");
        for started in [2000.0, 3000.0] {
            done.boot_started = started;
            assert!(h.add(&done));
        }
        let kept: Vec<f64> = h
            .newest_first()
            .iter()
            .map(|b| b.record.boot_started)
            .collect();
        assert_eq!(kept, [3000.0, 2000.0]);
        assert_eq!(
            h.newest_first()[0].failure,
            Some(FailureReason {
                code: diskless_boot::FailureCode::NoAddress,
                message: "the network did not come up".into()
            })
        );
    }
}
