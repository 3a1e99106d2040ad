//! End to end, with real components only: debootstrap (cached), mksquashfs, our server, iPXE
//! in QEMU's NIC ROM, the stock Debian initrd with our diskless.cpio, and our fetch helper.
//!
//! Run by scripts/test (`cargo test -p diskless --test e2e -- --ignored`): it needs root,
//! network namespaces, QEMU and about 5 minutes. The bootstrapped tree is cached in
//! $DISKLESS_CACHE (default /var/cache/diskless).

use serde_json::Value;
use std::path::Path;
use std::process::Command;

mod common;
use common::{bootstrapped_root, diskless, run};

/// The boot-phase table and command results `diskless vm --report` wrote.
fn command_output(report: &Value, command: &str) -> (String, i64) {
    let c = report["commands"]
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

fn squashfs_listing(store: &Path) -> String {
    let current = store.join("images/e2e/current/root.squashfs");
    run(Command::new("unsquashfs").arg("-l").arg(current))
}

#[test]
#[ignore = "needs root, QEMU and minutes: run by scripts/test"]
fn a_debian_workstation_boots_from_a_ram_overlay() {
    let root = bootstrapped_root();

    let work = tempfile::tempdir().unwrap();
    let store = work.path().join("store");
    run(diskless()
        .args(["image", "build"])
        .arg(&root)
        .args(["--name", "e2e", "--store"])
        .arg(&store));
    let listing = squashfs_listing(&store);
    assert!(
        listing.contains("squashfs-root/sbin/init")
            || listing.contains("squashfs-root/usr/sbin/init")
    );
    assert!(
        !listing.contains("squashfs-root/proc/"),
        "runtime directories are left empty"
    );

    let report_path = work.path().join("report.json");
    let logs = work.path().join("logs");
    let probe =
        "echo written-on-client > /root/e2e-probe; cat /run/diskless/ram/upper/root/e2e-probe; \
                 test ! -e /run/diskless/lower/root/e2e-probe && echo not-in-lower";
    let checks = [
        "findmnt -n -o FSTYPE,OPTIONS /",
        "findmnt -n -o FSTYPE,SOURCE /run/diskless/lower",
        "findmnt -n -o FSTYPE /run/diskless/ram",
        probe,
        "cat /proc/cmdline",
        "cat /etc/machine-id",
        "systemctl is-system-running || true",
    ];
    let mut vm = diskless();
    vm.args([
        "vm",
        "--image",
        "e2e",
        "--quiet",
        "--timeout",
        "900",
        "--store",
    ])
    .arg(&store)
    .arg("--log-dir")
    .arg(&logs)
    .arg("--report")
    .arg(&report_path);
    for c in checks {
        vm.arg("--run").arg(c);
    }
    run(&mut vm);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap()).unwrap();
    eprintln!("boot phases: {}", report["phases"]);

    // / is an overlay of the squashfs image (lower) and a tmpfs (upper).
    let (root_mount, status) = command_output(&report, checks[0]);
    assert_eq!(status, 0);
    assert!(root_mount.starts_with("overlay "), "{root_mount}");
    assert!(
        root_mount.contains("lowerdir=/run/diskless/lower"),
        "{root_mount}"
    );
    assert!(
        root_mount.contains("upperdir=/run/diskless/ram/upper"),
        "{root_mount}"
    );
    let (lower, _) = command_output(&report, checks[1]);
    assert!(lower.starts_with("squashfs /dev/loop"), "{lower}");
    let (ram, _) = command_output(&report, checks[2]);
    assert_eq!(ram.trim(), "tmpfs");

    // A file written on the client lands in RAM, not in the image.
    let (written, status) = command_output(&report, probe);
    assert_eq!(status, 0, "{written}");
    assert_eq!(
        written.lines().collect::<Vec<_>>(),
        ["written-on-client", "not-in-lower"]
    );
    assert!(!squashfs_listing(&store).contains("e2e-probe"));

    let (cmdline, _) = command_output(&report, checks[4]);
    assert!(
        cmdline.split_whitespace().any(|w| w == "boot=diskless"),
        "{cmdline}"
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(store.join("images/e2e/current/manifest.json")).unwrap(),
    )
    .unwrap();
    let sha = manifest["files"]["root.squashfs"]["sha256"]
        .as_str()
        .unwrap();
    assert!(
        cmdline.contains(&format!("diskless.sha256={sha}")),
        "{cmdline}"
    );

    // The machine-id comes from the kernel command line, not from the image (which has none).
    let (machine_id, _) = command_output(&report, checks[5]);
    assert!(
        cmdline.contains(&format!("systemd.machine_id={}", machine_id.trim())),
        "{machine_id} / {cmdline}"
    );

    // The server recorded every stage of the boot, the client's own reports included.
    let clients: Value =
        serde_json::from_str(&std::fs::read_to_string(logs.join("state/clients.json")).unwrap())
            .unwrap();
    let stages: Vec<&str> = clients["52:54:00:12:34:56"]["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    for stage in [
        "dhcp-ack",
        "ipxe-script",
        "network-up",
        "fetched",
        "root-mounted",
        "multi-user",
    ] {
        assert!(stages.contains(&stage), "{stage} missing from {stages:?}");
    }

    // Nothing is left behind: no namespace, no QEMU.
    let namespaces = run(Command::new("ip").args(["netns", "list"]));
    assert!(!namespaces.contains("diskless-vm-"), "{namespaces}");
}
