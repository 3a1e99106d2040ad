//! Prometheus metrics, served as text at `/metrics` of the admin listener.
//!
//! Names follow kea's statistics (`pkt4-received` and friends: one family per protocol, a
//! `type` label) and MAAS's exporter (`maas_…_total`, histograms in seconds), with the
//! `diskless_` prefix:
//!
//! ```text
//! diskless_dhcp_packets_received_total{type}          DISCOVER and REQUEST we answered
//! diskless_dhcp_leases_active                         bound, unexpired leases (full mode)
//! diskless_tftp_transfers_total{result}               ok, error
//! diskless_tftp_bytes_sent_total
//! diskless_http_bytes_sent_total{file}                root.squashfs, vmlinuz, initrd.img, ...
//! diskless_boot_stage_reached_total{stage,image}   a known Stage, or other
//! diskless_boot_phase_seconds{phase}                  histogram, per finished boot
//! diskless_image_fetch_bytes_per_second               histogram, as the client measured it
//! diskless_boot_failures_total{reason}               a FailureCode: no-address, fetch, ...
//! diskless_access_refused_total{protocol}            http, tftp (unknown_clients = "ignore")
//! diskless_reports_refused_total{reason}              missing, forged, replayed, unknown_boot, ...
//! diskless_multicast_sessions_started_total{image}    multicast sessions (crate::multicast)
//! diskless_multicast_seats_joined_total{image}
//! diskless_multicast_rounds_total{image}              rounds a session completed
//! diskless_multicast_bytes_sent_total{image}          datagram bytes sent to the groups
//! diskless_multicast_seat_bytes_total{via}            multicast, http: where the seats' images
//!                                                     came from (their fetched reports)
//! diskless_multicast_fallbacks_total{reason}          unreachable, failed: seats that fetched
//!                                                     by HTTP instead
//! diskless_lazy_fetched_bytes_total{purpose}          demand, fill: what lazy seats fetched
//!                                                     for the kernel's reads, and for their
//!                                                     RAM copies besides (filled reports)
//! diskless_lazy_fill_seconds                          histogram: a lazy seat's helper start
//!                                                     to its RAM copy whole
//! diskless_lazy_refused_blocks_total                  blocks lazy seats refused: they did not
//!                                                     match the image's hash tree (a broken
//!                                                     cache; filled reports)
//! ```
//!
//! Every family is registered at start, and the label values known in advance (DHCP message
//! types, TFTP results, image files, phases, failure reasons) start at zero: a scrape before
//! the first boot lists them, and `rate()` sees the first increase. Every label a client's
//! report can reach is bounded: a stage this server does not know counts as `other`
//! ([`Stage::label`]), a failure by its [`FailureCode`].

use crate::boots::{phases, PHASES};
use crate::recorder::{BootEvent, ClientRecord, DhcpAction, StageEvent, TftpOutcome};
use crate::tokens::Refusal;
use diskless_boot::multicast::MulticastFetch;
use diskless_boot::{FailureCode, FailureReason, FetchedDetail, FilledDetail, ImageFile, Stage};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

/// The server's metrics and the registry that renders them.
pub struct Metrics {
    registry: Registry,
    dhcp_packets: IntCounterVec,
    leases_active: IntGauge,
    tftp_transfers: IntCounterVec,
    tftp_bytes: IntCounter,
    http_bytes: IntCounterVec,
    stages: IntCounterVec,
    phase_seconds: HistogramVec,
    fetch_rate: Histogram,
    failures: IntCounterVec,
    access_refused: IntCounterVec,
    refused: IntCounterVec,
    /// Per image: sessions started, seats joined, rounds completed, bytes sent.
    pub multicast_sessions: IntCounterVec,
    /// See `multicast_sessions`.
    pub multicast_seats: IntCounterVec,
    /// See `multicast_sessions`.
    pub multicast_rounds: IntCounterVec,
    /// See `multicast_sessions`.
    pub multicast_bytes: IntCounterVec,
    multicast_seat_bytes: IntCounterVec,
    multicast_fallbacks: IntCounterVec,
    lazy_bytes: IntCounterVec,
    fill_seconds: Histogram,
    lazy_refused: IntCounter,
}

/// Boot phases last from a fraction of a second (a DHCP exchange) to minutes (systemd under
/// emulation, a large image on a busy network).
const PHASE_BUCKETS: &[f64] = &[
    0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];
/// The DHCP messages the server answers (releases and declines are only logged).
pub const DHCP_TYPES: &[&str] = &["discover", "request"];
/// The files clients fetch over HTTP.
const HTTP_FILES: &[ImageFile] = &ImageFile::ALL;
/// From a congested 10 Mbit/s link (1.25 MB/s) to 10 Gbit/s.
const RATE_BUCKETS: &[f64] = &[1e6, 5e6, 1e7, 2.5e7, 5e7, 1e8, 2.5e8, 5e8, 1e9, 2.5e9];

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// All families registered, no sample yet.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
            r.register(Box::new(c.clone()))
                .expect("unique metric names");
            c
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                    labels,
                )
                .expect("valid metric"),
            )
        };
        let dhcp_packets = counter(
            "diskless_dhcp_packets_received_total",
            "DHCP packets received and acted on, by message type.",
            &["type"],
        );
        let tftp_transfers = counter(
            "diskless_tftp_transfers_total",
            "TFTP transfers finished, by result (ok, error).",
            &["result"],
        );
        let http_bytes = counter(
            "diskless_http_bytes_sent_total",
            "Bytes of image files sent over HTTP, by file.",
            &["file"],
        );
        let stages = counter(
            "diskless_boot_stage_reached_total",
            "Boot stages reached by clients, by stage and image.",
            &["stage", "image"],
        );
        let failures = counter(
            "diskless_boot_failures_total",
            "Boots that ended in failure, by reason.",
            &["reason"],
        );
        let access_refused = counter(
            "diskless_access_refused_total",
            "Requests refused because the client is not listed (unknown_clients = \"ignore\"), \
             by protocol.",
            &["protocol"],
        );
        let refused = counter(
            "diskless_reports_refused_total",
            "Stage reports refused, by reason: missing, forged or replayed token, unknown boot.",
            &["reason"],
        );
        let multicast_sessions = counter(
            "diskless_multicast_sessions_started_total",
            "Multicast sessions started, by image.",
            &["image"],
        );
        let multicast_seats = counter(
            "diskless_multicast_seats_joined_total",
            "Seats that joined a multicast session, by image.",
            &["image"],
        );
        let multicast_rounds = counter(
            "diskless_multicast_rounds_total",
            "Rounds of the image multicast sessions completed, by image.",
            &["image"],
        );
        let multicast_bytes = counter(
            "diskless_multicast_bytes_sent_total",
            "Datagram bytes multicast sessions sent, by image.",
            &["image"],
        );
        let multicast_seat_bytes = counter(
            "diskless_multicast_seat_bytes_total",
            "Image bytes seats that joined a session got, by where from: multicast, or http \
             (repairs), as their fetched reports say.",
            &["via"],
        );
        let multicast_fallbacks = counter(
            "diskless_multicast_fallbacks_total",
            "Seats given a multicast session that fetched by HTTP instead, by reason: \
             unreachable (nothing arrived), failed.",
            &["reason"],
        );
        let lazy_bytes = counter(
            "diskless_lazy_fetched_bytes_total",
            "Image bytes lazy seats fetched, as their filled reports say, by purpose: demand \
             (the kernel waited for them), fill (the rest of the RAM copy, with the hash tree \
             and refused blocks).",
            &["purpose"],
        );
        let lazy_refused = reg(
            &registry,
            IntCounter::new(
                "diskless_lazy_refused_blocks_total",
                "Image blocks lazy seats refused because they did not match the image's hash \
                 tree (each fetched again from the next URL), as their filled reports say.",
            )
            .expect("valid metric"),
        );
        let fill_seconds = reg(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "diskless_lazy_fill_seconds",
                    "Time from a lazy seat's helper start to its RAM copy whole, in seconds.",
                )
                .buckets(PHASE_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        let phase_seconds = histogram(
            "diskless_boot_phase_seconds",
            "Time each phase of a finished boot took, in seconds.",
            &["phase"],
            PHASE_BUCKETS,
        );
        let fetch_rate = reg(
            &registry,
            Histogram::with_opts(
                HistogramOpts::new(
                    "diskless_image_fetch_bytes_per_second",
                    "Image download rate measured by the clients, in bytes per second.",
                )
                .buckets(RATE_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        let leases_active = reg(
            &registry,
            IntGauge::new(
                "diskless_dhcp_leases_active",
                "Bound, unexpired DHCP leases (full mode).",
            )
            .expect("valid metric"),
        );
        let tftp_bytes = reg(
            &registry,
            IntCounter::new("diskless_tftp_bytes_sent_total", "Bytes sent over TFTP.")
                .expect("valid metric"),
        );
        for kind in DHCP_TYPES {
            dhcp_packets.with_label_values(&[*kind]);
        }
        for protocol in ["http", "tftp"] {
            access_refused.with_label_values(&[protocol]);
        }
        for result in ["ok", "error"] {
            tftp_transfers.with_label_values(&[result]);
        }
        for file in HTTP_FILES {
            http_bytes.with_label_values(&[file.name()]);
        }
        for phase in PHASES {
            phase_seconds.with_label_values(&[*phase]);
        }
        for code in FailureCode::ALL {
            failures.with_label_values(&[code.as_str()]);
        }
        for reason in Refusal::ALL {
            refused.with_label_values(&[reason.as_str()]);
        }
        for via in ["multicast", "http"] {
            multicast_seat_bytes.with_label_values(&[via]);
        }
        for reason in ["unreachable", "failed"] {
            multicast_fallbacks.with_label_values(&[reason]);
        }
        for purpose in ["demand", "fill"] {
            lazy_bytes.with_label_values(&[purpose]);
        }
        Metrics {
            registry,
            dhcp_packets,
            leases_active,
            tftp_transfers,
            tftp_bytes,
            http_bytes,
            stages,
            phase_seconds,
            fetch_rate,
            failures,
            access_refused,
            refused,
            multicast_sessions,
            multicast_seats,
            multicast_rounds,
            multicast_bytes,
            multicast_seat_bytes,
            multicast_fallbacks,
            lazy_bytes,
            fill_seconds,
            lazy_refused,
        }
    }

    /// A request over `protocol` (`http`, `tftp`) was refused: the client is not listed.
    pub fn access_refused(&self, protocol: &str) {
        self.access_refused.with_label_values(&[protocol]).inc();
    }

    /// A DHCP packet of `kind` (`discover`, `request`, ...) was received and acted on.
    pub fn dhcp_packet(&self, kind: &str) {
        self.dhcp_packets.with_label_values(&[kind]).inc();
    }

    /// The number of bound, unexpired leases.
    pub fn set_leases_active(&self, n: usize) {
        self.leases_active.set(n as i64);
    }

    /// A TFTP transfer ended.
    pub fn tftp_transfer(&self, outcome: TftpOutcome, bytes: u64) {
        let result = if outcome.is_complete() { "ok" } else { "error" };
        self.tftp_transfers.with_label_values(&[result]).inc();
        self.tftp_bytes.inc_by(bytes);
    }

    /// `bytes` of `file` were sent over HTTP.
    pub fn http_sent(&self, file: &str, bytes: u64) {
        self.http_bytes.with_label_values(&[file]).inc_by(bytes);
    }

    /// A client reached `stage` booting `image` (`-` when not known yet); a stage this server
    /// does not know counts as `other`.
    pub fn stage_reached(&self, stage: &Stage, image: Option<&str>) {
        self.stages
            .with_label_values(&[stage.label(), image.unwrap_or("-")])
            .inc();
    }

    /// A client measured its image download at `bytes_per_second`.
    pub fn image_fetched(&self, bytes_per_second: f64) {
        self.fetch_rate.observe(bytes_per_second);
    }

    /// A boot ended: its phases go into the histograms; a failure is counted by reason.
    pub fn boot_finished(&self, record: &ClientRecord) {
        for phase in phases(record) {
            self.phase_seconds
                .with_label_values(&[phase.phase])
                .observe(phase.seconds);
        }
        if let Some(last) = record.stages.last().filter(|s| s.stage == Stage::Failed) {
            let reason = FailureReason::parse(&last.detail);
            self.failures
                .with_label_values(&[reason.code.as_str()])
                .inc();
        }
    }

    /// A stage report was refused.
    pub fn report_refused(&self, reason: Refusal) {
        self.refused.with_label_values(&[reason.as_str()]).inc();
    }

    /// A protocol server's event: DHCP answers, TFTP transfers, HTTP files, refused reports.
    /// (Client stages are counted from the recorder's stage facts, [`Metrics::reached`].)
    pub fn boot_event(&self, event: &BootEvent) {
        match event {
            // An offer answers a DISCOVER, an ACK or a NAK a REQUEST.
            BootEvent::Dhcp { action, .. } => self.dhcp_packet(match action {
                DhcpAction::Offer => "discover",
                DhcpAction::Ack | DhcpAction::Nak => "request",
            }),
            BootEvent::Tftp { bytes, outcome, .. } => self.tftp_transfer(*outcome, *bytes),
            BootEvent::HttpFile { file, bytes, .. } => self.http_sent(file.name(), *bytes),
            BootEvent::ReportRefused { reason, .. } => self.report_refused(*reason),
            BootEvent::Script { .. } | BootEvent::Report { .. } => {}
        }
    }

    /// A client reached `stage`, its record after it `record` (the recorder's
    /// [`crate::recorder::Recorded::Stage`], once per stage): it is counted; a `fetched`
    /// report gives the download rate, a `filled` one a lazy seat's bytes and fill time,
    /// either how multicast went for the seat; a final stage puts the boot's phases in the
    /// histograms.
    pub fn reached(&self, stage: &StageEvent, record: &ClientRecord) {
        self.stage_reached(&stage.stage, record.image.as_deref());
        if stage.stage == Stage::Fetched {
            let measured = FetchedDetail::parse(&stage.detail);
            if let Some(rate) = measured.and_then(|m| m.bytes_per_second()) {
                self.image_fetched(rate);
            }
        }
        if stage.stage.reports_multicast() {
            match MulticastFetch::parse(&stage.detail) {
                Some(MulticastFetch::Joined {
                    multicast_bytes,
                    http_bytes,
                }) => {
                    let via = &self.multicast_seat_bytes;
                    via.with_label_values(&["multicast"])
                        .inc_by(multicast_bytes);
                    via.with_label_values(&["http"]).inc_by(http_bytes);
                }
                Some(MulticastFetch::Unreachable) => self
                    .multicast_fallbacks
                    .with_label_values(&["unreachable"])
                    .inc(),
                Some(MulticastFetch::Failed) => self
                    .multicast_fallbacks
                    .with_label_values(&["failed"])
                    .inc(),
                None => {}
            }
        }
        if stage.stage == Stage::Filled {
            if let Some(filled) = FilledDetail::parse(&stage.detail) {
                self.lazy_bytes
                    .with_label_values(&["demand"])
                    .inc_by(filled.demanded);
                self.lazy_bytes
                    .with_label_values(&["fill"])
                    .inc_by(filled.fill_bytes());
                self.fill_seconds.observe(filled.seconds);
                self.lazy_refused.inc_by(filled.refused);
            }
        }
        if stage.stage.is_final() {
            self.boot_finished(record);
        }
    }

    /// The Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding to memory");
        String::from_utf8(out).expect("the text format is UTF-8")
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(stage: &str, at: f64, detail: &str) -> StageEvent {
        StageEvent {
            stage: Stage::parse(stage).unwrap(),
            at,
            detail: detail.into(),
        }
    }

    #[test]
    fn every_family_is_listed_before_any_boot() {
        let text = Metrics::new().render();
        for name in [
            "diskless_dhcp_leases_active 0",
            "diskless_tftp_bytes_sent_total 0",
            "diskless_dhcp_packets_received_total{type=\"discover\"} 0",
            "diskless_tftp_transfers_total{result=\"error\"} 0",
            "diskless_http_bytes_sent_total{file=\"root.squashfs\"} 0",
            "diskless_boot_phase_seconds_count{phase=\"systemd\"} 0",
            "diskless_boot_failures_total{reason=\"no-address\"} 0",
            "diskless_boot_failures_total{reason=\"emergency\"} 0",
            "diskless_access_refused_total{protocol=\"tftp\"} 0",
            "diskless_reports_refused_total{reason=\"forged\"} 0",
            "# TYPE diskless_boot_phase_seconds histogram",
            "# TYPE diskless_image_fetch_bytes_per_second histogram",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }

    #[test]
    fn seats_fetched_reports_count_their_multicast_and_repair_bytes_and_fallbacks() {
        let m = Metrics::new();
        let record = ClientRecord::new("52:54:00:00:00:01".parse().unwrap(), 0.0);
        for stage in [
            stage(
                "fetched",
                5.0,
                "bytes=100 seconds=1.00 mbps=0.0 multicast_bytes=90 http_bytes=10",
            ),
            stage(
                "fetched",
                5.0,
                "bytes=100 seconds=1.00 mbps=0.0 multicast=unreachable",
            ),
            stage("fetched", 5.0, "bytes=100 seconds=1.00 mbps=0.0"),
            // A lazy seat: its `filled` report says it the same way.
            stage(
                "filled",
                40.0,
                "seconds=40.0 bytes=100 fetched=30 demanded=20 multicast_bytes=80 http_bytes=20",
            ),
            stage(
                "filled",
                40.0,
                "seconds=40.0 bytes=100 fetched=100 demanded=20 multicast=unreachable",
            ),
            stage(
                "filled",
                40.0,
                "seconds=40.0 bytes=100 fetched=100 demanded=20",
            ),
        ] {
            m.reached(&stage, &record);
        }
        let text = m.render();
        for line in [
            "diskless_multicast_seat_bytes_total{via=\"multicast\"} 170",
            "diskless_multicast_seat_bytes_total{via=\"http\"} 30",
            "diskless_multicast_fallbacks_total{reason=\"unreachable\"} 2",
            "diskless_multicast_fallbacks_total{reason=\"failed\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn lazy_seats_filled_reports_count_demand_and_fill_bytes_and_the_fill_time() {
        let m = Metrics::new();
        let before = m.render();
        for line in [
            "diskless_lazy_fetched_bytes_total{purpose=\"demand\"} 0",
            "diskless_lazy_fetched_bytes_total{purpose=\"fill\"} 0",
            "diskless_lazy_fill_seconds_count 0",
            "diskless_lazy_refused_blocks_total 0",
        ] {
            assert!(before.contains(line), "{line} missing from\n{before}");
        }
        let record = ClientRecord::new("52:54:00:00:00:01".parse().unwrap(), 0.0);
        for stage in [
            stage(
                "filled",
                50.0,
                "seconds=41.4 bytes=1000 fetched=1100 demanded=300 refused=7",
            ),
            stage(
                "filled",
                60.0,
                "seconds=20.0 bytes=1000 fetched=1000 demanded=0",
            ),
            // A helper that reports no measure adds nothing.
            stage("filled", 70.0, ""),
        ] {
            m.reached(&stage, &record);
        }
        let text = m.render();
        for line in [
            "diskless_lazy_fetched_bytes_total{purpose=\"demand\"} 300",
            "diskless_lazy_fetched_bytes_total{purpose=\"fill\"} 1800",
            "diskless_lazy_fill_seconds_count 2",
            "diskless_lazy_fill_seconds_sum 61.4",
            "diskless_lazy_fill_seconds_bucket{le=\"30\"} 1",
            // The second report says nothing of refused blocks (an older helper): none.
            "diskless_lazy_refused_blocks_total 7",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn a_finished_boot_fills_the_histograms_and_a_failure_its_counter() {
        let m = Metrics::new();
        let mut record = ClientRecord {
            image: Some("lab".into()),
            stages: vec![
                stage("dhcp-offer", 0.0, ""),
                stage("ipxe-script", 2.0, ""),
                stage("fetching", 10.0, ""),
                stage("fetched", 38.0, ""),
                stage("root-mounted", 40.0, ""),
                stage("multi-user", 70.0, ""),
            ],
            ..ClientRecord::new("52:54:00:00:00:01".parse().unwrap(), 0.0)
        };
        m.boot_finished(&record);
        m.stage_reached(&Stage::MultiUser, record.image.as_deref());
        m.image_fetched(25e6);
        m.tftp_transfer(TftpOutcome::Complete, 1000);
        m.tftp_transfer(TftpOutcome::TimedOut, 24);
        m.http_sent("root.squashfs", 5000);
        m.dhcp_packet("discover");
        m.boot_event(&BootEvent::ReportRefused {
            mac: record.mac,
            client: None,
            reason: Refusal::Forged,
        });
        record.stages.push(stage(
            "failed",
            71.0,
            "the image could not be fetched and verified (see the lines above)",
        ));
        m.boot_finished(&record);
        let text = m.render();
        for line in [
            "diskless_boot_phase_seconds_count{phase=\"image\"} 2",
            "diskless_boot_phase_seconds_sum{phase=\"image\"} 56",
            "diskless_boot_stage_reached_total{image=\"lab\",stage=\"multi-user\"} 1",
            "diskless_boot_failures_total{reason=\"fetch\"} 1",
            "diskless_image_fetch_bytes_per_second_bucket{le=\"25000000\"} 1",
            "diskless_tftp_transfers_total{result=\"error\"} 1",
            "diskless_tftp_bytes_sent_total 1024",
            "diskless_http_bytes_sent_total{file=\"root.squashfs\"} 5000",
            "diskless_dhcp_packets_received_total{type=\"discover\"} 1",
            "diskless_reports_refused_total{reason=\"forged\"} 1",
            "diskless_reports_refused_total{reason=\"replayed\"} 0",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }

    #[test]
    fn stages_count_once_and_fetched_gives_the_rate() {
        let m = Metrics::new();
        let record = ClientRecord {
            image: Some("lab".into()),
            stages: vec![
                stage("fetching", 1.0, ""),
                stage("fetched", 5.0, "bytes=100000000 seconds=4.00 mbps=25.0"),
            ],
            ..ClientRecord::new("52:54:00:00:00:01".parse().unwrap(), 0.0)
        };
        for stage in &record.stages[1..] {
            m.reached(stage, &record);
        }
        let text = m.render();
        assert!(
            text.contains("diskless_image_fetch_bytes_per_second_sum 25000000"),
            "{text}"
        );
        assert!(
            text.contains("{image=\"lab\",stage=\"fetched\"} 1"),
            "{text}"
        );
        assert!(!text.contains("stage=\"fetching\""), "{text}");
    }

    #[test]
    fn an_invented_stage_is_counted_as_other() {
        let m = Metrics::new();
        let record = ClientRecord {
            image: Some("lab".into()),
            stages: (0..50)
                .map(|i| stage(&format!("made-up-{i}"), i as f64, ""))
                .collect(),
            ..ClientRecord::new("52:54:00:00:00:01".parse().unwrap(), 0.0)
        };
        for stage in &record.stages {
            m.reached(stage, &record);
        }
        let text = m.render();
        assert!(
            text.contains("diskless_boot_stage_reached_total{image=\"lab\",stage=\"other\"} 50"),
            "{text}"
        );
        assert!(!text.contains("made-up"), "{text}");
    }

    #[test]
    fn the_grafana_example_asks_for_metrics_we_have() {
        let dashboard = include_str!("../../../docs/grafana-dashboard.json");
        let m = Metrics::new();
        // The one family without series until a boot.
        m.stage_reached(&Stage::MultiUser, Some("lab"));
        let text = m.render();
        let mut asked = 0;
        for (i, _) in dashboard.match_indices("diskless_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if name == "diskless_lab" || !dashboard[..i].ends_with(['(', ' ', '"']) {
                continue;
            }
            asked += 1;
            assert!(
                text.contains(&format!("\n{name}")),
                "{name} is not a metric"
            );
        }
        assert!(asked >= 10, "{asked} metric names found");
    }

    #[test]
    fn failures_are_counted_by_code_new_images_and_old() {
        let m = Metrics::new();
        for detail in [
            "reason=emergency systemd went to emergency mode",
            "reason=no-address the network did not come up",
            "the network did not come up (no DHCP answer)",
            "reason=never-heard-of-it oops",
        ] {
            let record = ClientRecord {
                stages: vec![stage("network-up", 0.0, ""), stage("failed", 1.0, detail)],
                ..ClientRecord::new("52:54:00:00:00:01".parse().unwrap(), 0.0)
            };
            m.boot_finished(&record);
        }
        let text = m.render();
        for line in [
            "diskless_boot_failures_total{reason=\"emergency\"} 1",
            "diskless_boot_failures_total{reason=\"no-address\"} 2",
            "diskless_boot_failures_total{reason=\"other\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
