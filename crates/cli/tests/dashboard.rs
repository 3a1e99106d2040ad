//! The dashboard in headless Chromium, against the admin pages served with synthetic clients:
//! the table, sorting, filtering, the timeline, live updates over server-sent events, the
//! images, lab and multicast views. (The browser test with a QEMU client is in `lab.rs`.)
//!
//! The page's load time with 200 clients, against an empty lab in the same run:
//! `cargo test --release -p diskless --test dashboard -- --ignored --nocapture load_time`.

mod common;

use common::browser::{self, Browser};
use diskless_boot::{Mac, Stage};
use diskless_server::admin::{self, AdminState};
use diskless_server::recorder::{ClientRecord, Published, StageEvent};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// The test's start: one clock for every synthetic record.
fn now() -> f64 {
    static START: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *START.get_or_init(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
    })
}

/// A boot as far as `stages` go, the n-th client of the lab.
fn synthetic(n: usize, stages: &[(&str, f64)]) -> ClientRecord {
    ClientRecord {
        mac: Mac([0x52, 0x54, 0, 0, (n / 256) as u8, (n % 256) as u8]),
        ip: Some(
            format!("10.77.{}.{}", n / 200, 10 + n % 200)
                .parse()
                .unwrap(),
        ),
        hostname: Some(format!("pc-{n:03}")),
        firmware: Some(["bios-pxe", "uefi-pxe", "uefi-http"][n % 3].into()),
        image: Some("lab".into()),
        version: Some("20260101-000000-abcdef01".into()),
        // pc-004 boots through the Secure Boot chain onto an unsigned (custom) kernel.
        secure_boot: n == 4,
        kernel_signed: (n == 4).then_some(false),
        // Boots of the last minutes, a second apart: all seen well within the 10 minutes
        // after which a boot that did not end counts as abandoned.
        boot_started: now() - 400.0 + n as f64,
        stages: stages
            .iter()
            .map(|(stage, at)| StageEvent {
                stage: Stage::parse(stage).unwrap(),
                at: *at,
                detail: if *stage == "failed" {
                    "reason=no-address the network did not come up (no DHCP answer)".into()
                } else {
                    String::new()
                },
            })
            .collect(),
        boot: None,
    }
}

const FULL_BOOT: &[(&str, f64)] = &[
    ("dhcp-offer", 0.0),
    ("dhcp-ack", 0.5),
    ("tftp", 1.2),
    ("dhcp-offer", 3.0),
    ("dhcp-ack", 3.2),
    ("ipxe-script", 4.0),
    ("network-up", 14.0),
    ("fetching", 15.0),
    ("fetched", 45.0),
    ("root-mounted", 46.0),
    ("multi-user", 75.0),
];

/// `n` clients: most up, some booting, some failed.
fn lab(n: usize) -> BTreeMap<Mac, ClientRecord> {
    (0..n)
        .map(|i| {
            let stages = match i % 10 {
                0 => &FULL_BOOT[..6],
                1 => &[("dhcp-offer", 0.0), ("failed", 40.0)][..],
                _ => FULL_BOOT,
            };
            let r = synthetic(i, stages);
            (r.mac, r)
        })
        .collect()
}

/// The admin pages on 127.0.0.1, serving `records`, on a thread of their own.
struct Admin {
    url: String,
    state: Arc<AdminState>,
    /// The records and their version, as the recorder publishes them.
    records: Arc<Mutex<(u64, BTreeMap<Mac, ClientRecord>)>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _store: tempfile::TempDir,
}

impl Admin {
    fn start(records: BTreeMap<Mac, ClientRecord>) -> Admin {
        let store_dir = tempfile::tempdir().unwrap();
        let records = Arc::new(Mutex::new((1, records)));
        let snapshot_records = records.clone();
        let state = Arc::new(AdminState::new(
            Arc::new(move || {
                let (version, records) = snapshot_records.lock().unwrap().clone();
                let records = records.into_iter().map(|(m, r)| (m, Arc::new(r))).collect();
                Arc::new(Published { version, records })
            }),
            diskless_image::Store::open(store_dir.path()).unwrap(),
            None,
            None,
        ));
        for r in records.lock().unwrap().1.values() {
            let r = Arc::new(r.clone());
            for stage in &r.stages {
                state.stage_reached(stage, r.clone());
            }
        }
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let serve_state = state.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                admin::serve(listener, serve_state, async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv().unwrap();
        Admin {
            url: format!("http://{addr}/"),
            state,
            records,
            stop: Some(stop),
            thread: Some(thread),
            _store: store_dir,
        }
    }

    /// What the recorder does when a client reaches a stage.
    fn update(&self, record: ClientRecord) {
        let mut records = self.records.lock().unwrap();
        records.0 += 1;
        records.1.insert(record.mac, record.clone());
        drop(records);
        let stage = record
            .stages
            .last()
            .expect("a record reaches a stage")
            .clone();
        self.state.stage_reached(&stage, Arc::new(record));
    }
}

impl Drop for Admin {
    fn drop(&mut self) {
        let _ = self.stop.take().unwrap().send(());
        // An open event stream keeps a connection: the server waits for it only so long.
        let _ = self.thread.take().unwrap().join();
    }
}

fn load(browser: &Browser, url: &str) {
    browser.goto(url);
    browser.wait_for(
        "the page to load its data",
        "return document.body.dataset.ready === '1'",
        WAIT,
    );
}

fn rows(browser: &Browser) -> Vec<String> {
    let v = browser.eval(
        "return [...document.querySelectorAll('#clients tr.client')].map(r => r.dataset.mac)",
        json!([]),
    );
    serde_json::from_value(v).unwrap()
}

#[test]
fn table_sorts_filters_and_updates_live() {
    if !browser::available() {
        return;
    }
    let admin = Admin::start(lab(200));
    let browser = Browser::start(1400, 900);
    load(&browser, &admin.url);
    assert_eq!(rows(&browser).len(), 200, "one row per client");
    // Counts in the header.
    let counts = browser.eval(
        "return document.querySelector('#counts').textContent",
        json!([]),
    );
    assert!(
        counts.as_str().unwrap().contains("160 up")
            && counts.as_str().unwrap().contains("20 failed"),
        "{counts}"
    );

    // Sort by hostname, ascending, then descending.
    browser.eval(
        "document.querySelector('th[data-key=hostname]').click()",
        json!([]),
    );
    let first = |b: &Browser| {
        b.eval(
            "return document.querySelector('#clients tr.client td.hostname').textContent",
            json!([]),
        )
    };
    assert_eq!(first(&browser), "pc-000");
    browser.eval(
        "document.querySelector('th[data-key=hostname]').click()",
        json!([]),
    );
    assert_eq!(first(&browser), "pc-199");

    // Filter: words must all match.
    let filter = "const f = document.querySelector('#filter'); f.value = arguments[0]; \
                  f.dispatchEvent(new Event('input'));";
    browser.eval(filter, json!(["failed"]));
    assert_eq!(rows(&browser).len(), 20);
    browser.eval(filter, json!(["pc-01 uefi-http"]));
    // pc-010..pc-019 whose n % 3 == 2: 11, 14, 17.
    let shown = rows(&browser);
    assert_eq!(shown.len(), 3, "{shown:?}");
    // The Secure Boot client on an unsigned kernel carries the warning, and only it.
    let warned = browser.eval(
        "return [...document.querySelectorAll('#clients .warn.unsigned')]\
         .map(w => w.closest('tr.client').dataset.mac)",
        json!([]),
    );
    assert_eq!(warned, json!([]), "pc-01x are not on Secure Boot");
    browser.eval(filter, json!(["kernel not signed"]));
    let warned = browser.eval(
        "return [...document.querySelectorAll('#clients .warn.unsigned')]\
         .map(w => [w.closest('tr.client').dataset.mac, w.textContent])",
        json!([]),
    );
    assert_eq!(
        warned,
        json!([[
            synthetic(4, FULL_BOOT).mac.to_string(),
            "\u{26a0} kernel not signed: Secure Boot refuses it"
        ]]),
        "{warned}"
    );
    browser.eval(filter, json!([""]));

    // The timeline of a client: its phases, the slowest marked.
    let mac = synthetic(2, FULL_BOOT).mac;
    browser.eval(
        "document.querySelector(`tr.client[data-mac='${arguments[0]}'] td.hostname`).click()",
        json!([mac]),
    );
    let slowest = browser.eval(
        "return document.querySelector(`tr[data-detail='${arguments[0]}'] .tl-row.slowest .tl-name`).textContent",
        json!([mac]),
    );
    assert_eq!(slowest, "image download", "30 s of the 75 s boot");
    if let Some(path) = std::env::var_os("DISKLESS_SCREENSHOT") {
        browser.eval(
            "document.querySelector(`tr[data-detail='${arguments[0]}']`).scrollIntoView({block: 'center'})",
            json!([mac]),
        );
        std::fs::write(path, browser.screenshot()).unwrap();
    }

    // The wake button asks the server, which says why it cannot (no interface here; the
    // packets themselves are tested in wake.rs).
    browser.eval(
        "document.querySelector(`tr.client[data-mac='${arguments[0]}'] button.wake`).click()",
        json!([mac]),
    );
    browser.wait_for(
        "the wake answer",
        "return document.querySelector('#toast').textContent.includes('no interface to send wake packets on')",
        WAIT,
    );

    // A client moves on: its row follows with no reload.
    browser.eval("window.notReloaded = true", json!([]));
    let booting = synthetic(0, &FULL_BOOT[..6]);
    let stage_of = format!(
        "document.querySelector(\"tr.client[data-mac='{}'] td.stage\").dataset.stage",
        booting.mac
    );
    assert_eq!(
        browser.eval(&format!("return {stage_of}"), json!([])),
        "ipxe-script"
    );
    for end in 7..=FULL_BOOT.len() {
        admin.update(synthetic(0, &FULL_BOOT[..end]));
    }
    browser.wait_for(
        "the row to reach multi-user",
        &format!("return {stage_of} === 'multi-user'"),
        WAIT,
    );
    assert_eq!(
        browser.eval("return window.notReloaded === true", json!([])),
        true
    );
    let events = browser.eval("return window.dashboard.events", json!([]));
    assert!(
        events.as_u64().unwrap() >= 1,
        "updates came as events: {events}"
    );

    // The lab view lists the boot that just ended first.
    browser.wait_for(
        "the lab view to show the new boot",
        &format!(
            "return document.querySelector('#boots tbody tr')?.dataset.mac === '{}'",
            booting.mac
        ),
        WAIT,
    );

    // A lazy seat (issue 25): under its stage, its root on the network, then its RAM copy
    // filled and the network let go, as its stages say.
    let from_network: Vec<(&str, f64)> = FULL_BOOT
        .iter()
        .copied()
        .filter(|(stage, _)| *stage != "fetched")
        .collect();
    let mut lazy = synthetic(3, &from_network);
    let fill_of = format!(
        "document.querySelector(\"tr.client[data-mac='{}'] td.stage .fill\")?.textContent",
        lazy.mac
    );
    admin.update(lazy.clone());
    browser.wait_for(
        "the lazy seat's root on the network",
        &format!("return {fill_of} === 'root on the network'"),
        WAIT,
    );
    for (stage, at, detail) in [
        (
            "filled",
            90.0,
            "seconds=41.4 bytes=178257920 fetched=180000000 demanded=20971520",
        ),
        ("network-released", 91.0, "seconds=42.0 device=7:0"),
    ] {
        lazy.stages.push(StageEvent {
            stage: Stage::parse(stage).unwrap(),
            at,
            detail: detail.into(),
        });
        admin.update(lazy.clone());
    }
    browser.wait_for(
        "the lazy seat's fill",
        &format!(
            "return {fill_of} === 'off the network, RAM copy filled in 41.4 s, 20.0 MiB of 170.0 MiB on demand'"
        ),
        WAIT,
    );

    // The multicast tab: this server has no session (its sessions' fields are the server's
    // unit tests), and says so when the tab is opened.
    browser.eval(
        "document.querySelector(\"nav button[data-tab='multicast']\").click()",
        json!([]),
    );
    browser.wait_for(
        "the multicast tab to say there is no session",
        "return !document.querySelector('#tab-multicast').hidden && \
         document.querySelector('#multicast').textContent.includes('No multicast session')",
        WAIT,
    );
}

/// Milliseconds from navigation to the data drawn, median of `runs` loads.
fn load_ms(browser: &Browser, url: &str, runs: usize) -> f64 {
    let mut times: Vec<f64> = (0..runs)
        .map(|_| {
            load(browser, url);
            browser
                .eval("return window.dashboard.readyAt", json!([]))
                .as_f64()
                .unwrap()
        })
        .collect();
    times.sort_by(|a, b| a.total_cmp(b));
    times[runs / 2]
}

#[test]
#[ignore = "a benchmark: run it with --ignored --nocapture"]
fn load_time_with_200_clients() {
    if !browser::available() {
        return;
    }
    let empty = Admin::start(BTreeMap::new());
    let full = Admin::start(lab(200));
    let browser = Browser::start(1400, 900);
    // Warm up: the first load also starts the renderer.
    load(&browser, &empty.url);
    let runs = 15;
    let base = load_ms(&browser, &empty.url, runs);
    let with_200 = load_ms(&browser, &full.url, runs);
    assert_eq!(rows(&browser).len(), 200);
    // Sorting redraws the whole table: what a live update or a filter costs at most.
    let mut sorts: Vec<f64> = (0..runs)
        .map(|_| {
            browser
                .eval(
                    "const t = performance.now(); \
                     document.querySelector('th[data-key=hostname]').click(); \
                     document.body.offsetHeight; return performance.now() - t",
                    json!([]),
                )
                .as_f64()
                .unwrap()
        })
        .collect();
    sorts.sort_by(|a, b| a.total_cmp(b));
    println!(
        "dashboard load (navigation to table drawn, median of {runs}): empty lab {base:.1} ms, \
         200 clients {with_200:.1} ms, ratio {:.2}; redraw of 200 rows (sort, layout \
         included) {:.1} ms",
        with_200 / base,
        sorts[runs / 2]
    );
}

#[test]
fn metrics_pass_promtool() {
    if !common::have_promtool() {
        return;
    }
    let admin = Admin::start(lab(20));
    let text = ureq::get(&format!("{}metrics", admin.url))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        text.contains("diskless_boot_stage_reached_total{image=\"lab\",stage=\"multi-user\"} 16")
            && text.contains("diskless_boot_failures_total{reason=\"no-address\"} 2"),
        "16 of 20 up, 2 failed: {text}"
    );
    let said = common::promtool_check(&text);
    assert!(said.is_empty(), "promtool check metrics: {said}");
}
