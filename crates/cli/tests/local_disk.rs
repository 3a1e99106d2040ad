//! The image on the client's own disk (`dev:LABEL=...:/path`), and a writable layer that
//! survives reboots (`diskless.upper=LABEL=...`, wiped with `diskless.upper.reset=1`).
//! Real QEMU with virtio disks made here with mkfs.ext4; run by scripts/test (--ignored).

use std::path::Path;
use std::process::Command;

mod common;
use common::{diskless, run, test_image, Work};

/// An ext4 disk image labelled `label`, holding `files` (name in the disk, source path).
fn ext4_disk(path: &Path, label: &str, size_mib: u64, files: &[(&str, &Path)]) {
    let content = tempfile::tempdir().unwrap();
    for (name, source) in files {
        let target = content.path().join(name.trim_start_matches('/'));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::copy(source, &target).unwrap();
    }
    let file = std::fs::File::create(path).unwrap();
    file.set_len(size_mib << 20).unwrap();
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-d"])
        .arg(content.path())
        .arg(path));
}

fn boot(
    disks: &[&Path],
    cmdline: &str,
    commands: &[&str],
    work: &Path,
    name: &str,
) -> diskless_vm::Report {
    let report = work.join(format!("{name}.json"));
    let version = test_image();
    let store = version
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap();
    let image = version
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    let mut vm = diskless();
    vm.args([
        "vm",
        "--quiet",
        "--timeout",
        "900",
        "--image",
        image,
        "--store",
    ])
    .arg(store)
    .args(["--cmdline", cmdline, "--log-dir"])
    .arg(work.join("logs").join(name))
    .arg("--report")
    .arg(&report);
    for disk in disks {
        vm.arg("--disk").arg(disk);
    }
    for c in commands {
        vm.arg("--run").arg(c);
    }
    run(&mut vm);
    serde_json::from_str(&std::fs::read_to_string(report).unwrap()).unwrap()
}

fn output(report: &diskless_vm::Report, i: usize) -> String {
    report.first().commands[i].output.trim().to_string()
}

#[test]
#[ignore = "needs root, QEMU and minutes: run by scripts/test"]
fn image_from_a_local_disk_and_a_writable_layer_that_survives_reboots() {
    // Kept when the test fails: each boot's console log is in logs/NAME.
    let work = Work::new();
    let squashfs = test_image().join("root.squashfs");
    let image_disk = work.path().join("image.raw");
    ext4_disk(
        &image_disk,
        "dlimage",
        400,
        &[("images/root.squashfs", &squashfs)],
    );
    let upper_disk = work.path().join("upper.raw");
    ext4_disk(&upper_disk, "dlupper", 64, &[]);
    let disks = [image_disk.as_path(), upper_disk.as_path()];
    let local =
        "diskless.image=dev:LABEL=dlimage:/images/root.squashfs diskless.upper=LABEL=dlupper";

    // First boot: the image comes from the disk, writes go to the persistent layer.
    let first = boot(
        &disks,
        local,
        &[
            "findmnt -n -o OPTIONS /",
            "echo kept-across-boots > /root/persistent-probe; sync; cat /root/persistent-probe",
            // Issue 25: the image from the disk is mounted through dm-verity, as a downloaded
            // one is: squashfs on the verity device, over the loop device of the RAM copy.
            "d=$(findmnt -n -o SOURCE /run/diskless/lower); d=${d#/dev/}; \
             cat /sys/block/$d/dm/name; ls /sys/block/$d/slaves",
        ],
        work.path(),
        "first",
    );
    let mounts = output(&first, 0);
    assert!(
        mounts.contains("upperdir=/run/diskless/persist/upper"),
        "{mounts}"
    );
    assert_eq!(output(&first, 1), "kept-across-boots");
    let mapped = output(&first, 2);
    let mapped: Vec<&str> = mapped.lines().collect();
    assert_eq!(mapped[0], "diskless-root", "not on dm-verity: {mapped:?}");
    assert!(mapped[1].starts_with("loop"), "{mapped:?}");

    // Second boot: the file is still there.
    let second = boot(
        &disks,
        local,
        &["cat /root/persistent-probe"],
        work.path(),
        "second",
    );
    assert_eq!(output(&second, 0), "kept-across-boots");

    // Third boot with reset: the layer is wiped.
    let third = boot(
        &disks,
        &format!("{local} diskless.upper.reset=1"),
        &["test -e /root/persistent-probe && echo still-there || echo wiped"],
        work.path(),
        "third",
    );
    assert_eq!(output(&third, 0), "wiped");

    // The image really came from the disk: the server never sent root.squashfs.
    let log = std::fs::read_to_string(work.path().join("logs/first/console.log")).unwrap();
    assert!(
        log.contains("diskless: fetching file:///run/diskless/dev/"),
        "the image did not come from the local disk"
    );
    // ... and was not hashed whole: dm-verity checks its blocks as they are read.
    assert!(
        log.contains("verified by dm-verity as it is read"),
        "the image from the local disk did not go through dm-verity"
    );
}
