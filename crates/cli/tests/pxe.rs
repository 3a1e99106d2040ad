//! Issue 4, the firmware and DHCP matrix: a QEMU client boots to multi-user with SeaBIOS and
//! the iPXE ROM (BIOS) and with OVMF's own PXE client fetching ipxe.efi over TFTP (UEFI), each
//! with our server as the network's DHCP server (full mode) and beside dnsmasq acting as the
//! site's DHCP server (proxy mode). Then two clients on one network get the images and
//! hostnames their [[client]] entries give them, and different machine-ids (issue 5).
//!
//! Run by scripts/test (`cargo test -p diskless --test pxe -- --ignored --test-threads=1`): it
//! needs root, network namespaces, QEMU, OVMF, dnsmasq and several minutes per boot.
//!
//! The image: `DISKLESS_TEST_STORE` (a store) and `DISKLESS_TEST_IMAGE` (default bookworm)
//! name an image already built, which each test hard-links into its own store; without them
//! the first test builds one from the bootstrapped tree cached in $DISKLESS_CACHE (default
//! /var/cache/diskless) into $DISKLESS_CACHE/test-store.

use serde_json::Value;
use std::path::Path;
use std::process::Command;

mod common;
use common::{diskless, output, run, test_image as source_version};

/// Put the test image into `store` as image `name` (hard links; the manifest is rewritten for
/// the name).
fn add_image(store: &Path, name: &str) {
    let from = source_version();
    let mut manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(from.join("manifest.json")).unwrap())
            .unwrap();
    let version = manifest["version"].as_str().unwrap().to_string();
    manifest["name"] = Value::String(name.into());
    let dir = store.join("images").join(name).join(&version);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["root.squashfs", "vmlinuz", "initrd.img", "diskless.cpio"] {
        std::fs::hard_link(from.join(file), dir.join(file)).unwrap();
    }
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest).unwrap(),
    )
    .unwrap();
    std::os::unix::fs::symlink(&version, store.join("images").join(name).join("current")).unwrap();
}

fn command_output(client: &Value, command: &str) -> (String, i64) {
    let c = client["commands"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["command"] == command)
        .unwrap_or_else(|| panic!("no result for {command}"));
    (
        c["output"].as_str().unwrap().to_string(),
        c["status"].as_i64().unwrap(),
    )
}

fn stages(logs: &Path, mac: &str) -> Vec<String> {
    let clients: Value =
        serde_json::from_str(&std::fs::read_to_string(logs.join("state/clients.json")).unwrap())
            .unwrap();
    clients[mac]["stages"]
        .as_array()
        .unwrap_or_else(|| panic!("no record of {mac}: {clients}"))
        .iter()
        .map(|s| s["stage"].as_str().unwrap().to_string())
        .collect()
}

/// Run `diskless vm`, which must succeed, then check that its namespace is gone (other runs'
/// namespaces may exist: only ours, named after the vm's pid, is checked).
fn run_vm(cmd: &mut Command) {
    let (out, text, pid) = output(cmd);
    assert!(
        out.status.success(),
        "diskless vm failed ({}):\n{text}",
        out.status
    );
    let namespace = format!("diskless-vm-{pid}");
    let namespaces = run(Command::new("ip").args(["netns", "list"]));
    assert!(
        !namespaces.split_whitespace().any(|w| w == namespace),
        "{namespace} left behind: {namespaces}"
    );
}

/// A test's directory, kept (not deleted) when the test fails, for its logs.
struct Work(Option<tempfile::TempDir>);

impl Work {
    fn new() -> Work {
        Work(Some(tempfile::tempdir().unwrap()))
    }

    fn path(&self) -> &Path {
        self.0.as_ref().unwrap().path()
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(work) = self.0.take() {
                eprintln!("logs kept in {}", work.keep().join("logs").display());
            }
        }
    }
}

const MAC: &str = "52:54:00:12:34:56";
const ROOT_FS: &str = "findmnt -n -o FSTYPE /";
const ADDRESS: &str = "ip -4 -o addr show scope global";

/// Boot one client with `firmware` in `mode`; check it runs from the overlay, and where its
/// address came from.
fn boots_to_multi_user(firmware: &str, mode: &str) {
    let work = Work::new();
    let store = work.path().join("store");
    add_image(&store, "test");
    let logs = work.path().join("logs");
    let report_path = work.path().join("report.json");
    run_vm(
        diskless()
            .args(["vm", "--image", "test", "--quiet", "--timeout", "900"])
            .args(["--firmware", firmware, "--mode", mode, "--mac", MAC])
            .arg("--store")
            .arg(&store)
            .arg("--log-dir")
            .arg(&logs)
            .arg("--report")
            .arg(&report_path)
            .args(["--run", ROOT_FS, "--run", ADDRESS]),
    );
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    eprintln!("{firmware} {mode}: boot phases {}", report["phases"]);

    let (fstype, status) = command_output(&report, ROOT_FS);
    assert_eq!((fstype.trim(), status), ("overlay", 0));
    let (address, _) = command_output(&report, ADDRESS);
    assert!(address.contains("inet 10.77.0."), "{address}");

    let stages = stages(&logs, MAC);
    for stage in [
        "ipxe-script",
        "network-up",
        "fetched",
        "root-mounted",
        "multi-user",
    ] {
        assert!(
            stages.iter().any(|s| s == stage),
            "{stage} missing from {stages:?}"
        );
    }
    // Who gave the address: our lease file in full mode, dnsmasq's in proxy mode.
    let ours = std::fs::read_to_string(logs.join("state/leases.json")).unwrap_or_default();
    let site = std::fs::read_to_string(logs.join("dnsmasq.leases")).unwrap_or_default();
    if mode == "proxy" {
        assert!(
            site.contains(MAC),
            "dnsmasq leased nothing to {MAC}: {site:?}"
        );
        assert!(!ours.contains(MAC), "proxy mode leased an address: {ours}");
    } else {
        assert!(ours.contains(MAC), "no lease for {MAC}: {ours}");
        assert!(site.is_empty(), "dnsmasq ran in full mode");
    }
    if firmware == "uefi" {
        // OVMF's PXE client fetched ipxe.efi over TFTP before iPXE took over. (The server's
        // log, not clients.json: in proxy mode the server never learns which MAC holds the
        // address dnsmasq gave, so it cannot file the transfer under the client.)
        let log = std::fs::read_to_string(logs.join("server.log")).unwrap();
        assert!(
            log.lines()
                .any(|l| l.contains("tftp: sent") && l.contains("ipxe/ipxe.efi")),
            "no TFTP transfer of ipxe.efi in the server log:\n{log}"
        );
    }
}

#[test]
#[ignore = "needs root, QEMU and minutes: run by scripts/test"]
fn bios_full_mode() {
    boots_to_multi_user("bios", "full");
}

#[test]
#[ignore = "needs root, QEMU and minutes: run by scripts/test"]
fn bios_proxy_mode_beside_dnsmasq() {
    boots_to_multi_user("bios", "proxy");
}

#[test]
#[ignore = "needs root, QEMU, OVMF and minutes: run by scripts/test"]
fn uefi_full_mode() {
    boots_to_multi_user("uefi", "full");
}

#[test]
#[ignore = "needs root, QEMU, OVMF, dnsmasq and minutes: run by scripts/test"]
fn uefi_proxy_mode_beside_dnsmasq() {
    boots_to_multi_user("uefi", "proxy");
}

/// Two clients on one bridge: each gets the image and hostname of its [[client]] entry, and
/// its own machine-id.
#[test]
#[ignore = "needs root, QEMU and minutes: run by scripts/test"]
fn two_clients_get_their_own_image_hostname_and_machine_id() {
    let work = Work::new();
    let store = work.path().join("store");
    add_image(&store, "lab");
    add_image(&store, "render");
    let config = work.path().join("site.toml");
    std::fs::write(
        &config,
        "[[client]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"pc01\"\n\n\
         [[client]]\nmac = \"52:54:00:00:00:02\"\nhostname = \"render01\"\nimage = \"render\"\n",
    )
    .unwrap();
    let logs = work.path().join("logs");
    let report_path = work.path().join("report.json");
    let checks = ["hostname", "cat /etc/machine-id", "cat /proc/cmdline"];
    let mut vm = diskless();
    vm.args(["vm", "--image", "lab", "--quiet", "--timeout", "1200"])
        .args(["--mac", "52:54:00:00:00:01", "--mac", "52:54:00:00:00:02"])
        .arg("--config")
        .arg(&config)
        .arg("--store")
        .arg(&store)
        .arg("--log-dir")
        .arg(&logs)
        .arg("--report")
        .arg(&report_path);
    for c in checks {
        vm.arg("--run").arg(c);
    }
    run_vm(&mut vm);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    let clients = report["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 2);
    let mut machine_ids = Vec::new();
    for (client, (hostname, image)) in clients
        .iter()
        .zip([("pc01", "lab"), ("render01", "render")])
    {
        eprintln!("{}: boot phases {}", client["mac"], client["phases"]);
        assert_eq!(command_output(client, "hostname").0.trim(), hostname);
        let (cmdline, _) = command_output(client, "cat /proc/cmdline");
        assert!(
            cmdline.contains(&format!("/images/{image}/")),
            "{hostname} should boot {image}: {cmdline}"
        );
        let (machine_id, status) = command_output(client, "cat /etc/machine-id");
        assert_eq!(status, 0);
        let machine_id = machine_id.trim().to_string();
        assert_eq!(machine_id.len(), 32, "{machine_id:?}");
        machine_ids.push(machine_id);
    }
    assert_ne!(
        machine_ids[0], machine_ids[1],
        "two clients, one machine-id"
    );
}
