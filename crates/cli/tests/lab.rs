//! Issue 12, seeing the lab: one QEMU client boots while headless Chromium shows the dashboard
//! of its server, and `/metrics` is scraped before and after.
//!
//! - the client's row moves from its first stages to `multi-user` with no reload (the page
//!   stays the same document; the updates come as server-sent events);
//! - the metrics move as the boot says they should, and `promtool check metrics` (Debian's
//!   prometheus package) has nothing to say about them.
//!
//! The server listens for the admin pages on 127.0.0.1 inside the `diskless vm` network
//! namespace; this test's thread enters that namespace, so chromedriver, Chromium and the
//! scrapes run there too. `DISKLESS_SCREENSHOT=docs/dashboard.png` keeps a screenshot.
//!
//! Run by scripts/test (`cargo test -p diskless --test lab -- --ignored --test-threads=1`).

mod common;

use common::browser::{self, Browser};
use common::{add_image, enter_netns, vm, Booting, Work};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

const MAC: &str = "52:54:00:12:34:56";
const ADMIN: &str = "127.0.0.1:9180";

/// The samples of a Prometheus text page, by `name{labels}` as written.
fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (key, value) = l.rsplit_once(' ').unwrap();
            (key.to_string(), value.parse().unwrap())
        })
        .collect()
}

fn scrape() -> (String, BTreeMap<String, f64>) {
    let text = ureq::get(&format!("http://{ADMIN}/metrics"))
        .call()
        .expect("GET /metrics")
        .body_mut()
        .read_to_string()
        .unwrap();
    let parsed = samples(&text);
    (text, parsed)
}

#[test]
#[ignore = "needs root, QEMU, Chromium and minutes: run by scripts/test"]
fn dashboard_follows_a_boot_live_and_metrics_move() {
    if !browser::available() || !common::have_promtool() {
        return;
    }
    let work = Work::new();
    let store = work.path().join("store");
    add_image(&store, "test");
    let logs = work.path().join("logs");
    let config = work.path().join("diskless.toml");
    std::fs::write(&config, format!("admin_listen = \"{ADMIN}\"\n")).unwrap();
    // The client stays up a little after multi-user, while the page and metrics are read.
    let mut vm = vm("test", &store, &logs, &["sleep 30"]);
    vm.args(["--mac", MAC, "--config"]).arg(&config);
    let mut booting = Booting::start(&mut vm, &logs);
    enter_netns(&format!("diskless-vm-{}", booting.pid()));

    // The server is up when its admin listener answers; nothing has booted yet.
    let deadline = Instant::now() + Duration::from_secs(120);
    while ureq::get(&format!("http://{ADMIN}/metrics"))
        .call()
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "the admin listener never answered"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, before) = scrape();
    let multi_user = "diskless_boot_stage_reached_total{image=\"test\",stage=\"multi-user\"}";
    assert_eq!(before.get(multi_user), None, "{before:?}");

    let browser = Browser::start(1400, 700);
    browser.goto(&format!("http://{ADMIN}/"));
    browser.wait_for(
        "the dashboard to load",
        "return document.body.dataset.ready === '1'",
        Duration::from_secs(60),
    );
    browser.eval("window.notReloaded = true", json!([]));
    let stage = format!(
        "const c = document.querySelector(\"tr.client[data-mac='{MAC}'] td.stage\"); \
         return c ? c.dataset.stage : null"
    );
    let mut seen: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(1200);
    loop {
        if let Some(s) = browser.eval(&stage, json!([])).as_str() {
            if seen.last().map(String::as_str) != Some(s) {
                eprintln!("dashboard: {MAC} at {s}");
                seen.push(s.to_string());
            }
            if s == "multi-user" || s == "failed" {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the row never reached multi-user: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(seen.last().unwrap(), "multi-user", "stages shown: {seen:?}");
    assert!(seen.len() >= 3, "the row moved through the boot: {seen:?}");
    assert_eq!(
        browser.eval("return window.notReloaded === true", json!([])),
        true,
        "the page was not reloaded"
    );
    let events = browser.eval("return window.dashboard.events", json!([]));
    assert!(events.as_u64().unwrap() >= 3, "events received: {events}");

    // The picture for the README: the row and its boot timeline.
    browser.eval(
        &format!("document.querySelector(\"tr.client[data-mac='{MAC}'] td.hostname\").click()"),
        json!([]),
    );
    if let Some(path) = std::env::var_os("DISKLESS_SCREENSHOT") {
        std::fs::write(&path, browser.screenshot()).unwrap();
        eprintln!("screenshot: {}", Path::new(&path).display());
    }

    let (text, after) = scrape();
    let value = |name: &str| after.get(name).copied().unwrap_or(0.0);
    let moved = |name: &str| value(name) - before.get(name).copied().unwrap_or(0.0);
    assert_eq!(value(multi_user), 1.0, "{text}");
    let squashfs = std::fs::metadata(common::test_image().join("root.squashfs"))
        .unwrap()
        .len() as f64;
    assert!(
        moved("diskless_http_bytes_sent_total{file=\"root.squashfs\"}") >= squashfs,
        "the image went over HTTP: {text}"
    );
    for name in [
        "diskless_boot_phase_seconds_count{phase=\"systemd\"}",
        "diskless_boot_phase_seconds_count{phase=\"image\"}",
        "diskless_image_fetch_bytes_per_second_count",
    ] {
        assert_eq!(moved(name), 1.0, "{name}: {text}");
    }
    for name in [
        "diskless_dhcp_packets_received_total{type=\"discover\"}",
        "diskless_dhcp_packets_received_total{type=\"request\"}",
        "diskless_dhcp_leases_active",
    ] {
        assert!(value(name) >= 1.0, "{name}: {text}");
    }
    let failures: f64 = after
        .iter()
        .filter(|(k, _)| k.starts_with("diskless_boot_failures_total"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(failures, 0.0, "{text}");

    let said = common::promtool_check(&text);
    assert!(said.is_empty(), "promtool check metrics: {said}");

    drop(browser);
    let status = booting.wait();
    assert!(
        status.success(),
        "diskless vm failed: see {}",
        Booting::output_path(&logs).display()
    );
}
