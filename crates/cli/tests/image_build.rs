//! `diskless image build` as a user runs it, output not a terminal: plain progress lines, the
//! summary with the ratio, and `--running-system` / `--include-home` / `--exclude` reaching
//! the build; the server's state directory and store, wherever its config puts them, left out.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn write(root: &Path, rel: &str, content: &str) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// A tree `image build` accepts in `dir`: a kernel, an initrd, the modules the boot needs.
fn bootable_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    write(&tree, "boot/vmlinuz-6.1.0-99-amd64", "kernel");
    let mut initrd = diskless_initramfs::CpioWriter::new(Vec::new());
    initrd.add_file("init", 0o755, b"#!/bin/sh\n").unwrap();
    let initrd = initrd.finish().unwrap();
    fs::create_dir_all(tree.join("boot")).unwrap();
    fs::write(tree.join("boot/initrd.img-6.1.0-99-amd64"), initrd).unwrap();
    let modules = "lib/modules/6.1.0-99-amd64";
    let mut dep = String::new();
    for m in ["loop", "squashfs", "overlay", "dm-mod"] {
        write(&tree, &format!("{modules}/kernel/{m}.ko"), m);
        dep.push_str(&format!("kernel/{m}.ko:\n"));
    }
    write(
        &tree,
        &format!("{modules}/kernel/dm-verity.ko"),
        "dm-verity",
    );
    dep.push_str("kernel/dm-verity.ko: kernel/dm-mod.ko\n");
    write(&tree, &format!("{modules}/modules.dep"), &dep);
    tree
}

/// A stand-in for the fetch helper the build puts into diskless.cpio.
fn fetch_helper(dir: &Path) -> PathBuf {
    let helper = dir.join("diskless-fetch");
    fs::write(&helper, "helper").unwrap();
    helper
}

#[test]
fn build_prints_progress_lines_and_a_summary_and_honours_its_flags() {
    if let Some(why) = diskless_testkit::missing_tools(&["mksquashfs", "unsquashfs"]) {
        return diskless_testkit::skip(&why);
    }
    let work = tempfile::tempdir().unwrap();
    let tree = bootable_tree(work.path());
    write(&tree, "etc/fstab", "/swapfile none swap sw 0 0\n");
    write(&tree, "swapfile", "swap");
    write(&tree, "home/alice/Downloads/big.iso", "iso");
    write(&tree, "home/alice/notes.txt", "notes");
    write(&tree, "usr/share/words", &"lorem ipsum ".repeat(50_000));
    let helper = fetch_helper(work.path());
    let store = work.path().join("store");

    let out = Command::new(env!("CARGO_BIN_EXE_diskless"))
        .args(["image", "build"])
        .arg(&tree)
        .args([
            "--name",
            "t",
            "--running-system",
            // Homes are left out of a running system's image unless asked for; here they are
            // kept, so that --exclude is what leaves Downloads out.
            "--include-home",
            "--exclude",
            "home/*/Downloads",
        ])
        .arg("--store")
        .arg(&store)
        .env("DISKLESS_FETCH", &helper)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.lines().any(|l| l == "diskless: mksquashfs 100%"),
        "{stderr}"
    );
    let summary = stderr
        .lines()
        .find(|l| l.starts_with("diskless: image t version "))
        .unwrap_or_else(|| panic!("no summary in\n{stderr}"));
    assert!(summary.contains(" MiB (ratio 0."), "{summary}");
    assert!(stderr.contains("left out swap file /swapfile"), "{stderr}");

    let listing = listing(&store);
    assert!(listing.lines().any(|l| l == "ROOT/home/alice/notes.txt"));
    assert!(!listing.contains("Downloads"), "{listing}");
    assert!(!listing.lines().any(|l| l == "ROOT/swapfile"), "{listing}");
}

/// The paths of `store`'s current image `t`, as unsquashfs lists them (`ROOT/...`).
fn listing(store: &Path) -> String {
    let out = Command::new("unsquashfs")
        .args(["-l", "-d", "ROOT"])
        .arg(store.join("images/t/current/root.squashfs"))
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_servers_state_and_store_stay_out_of_the_image() {
    if let Some(why) = diskless_testkit::missing_tools(&["mksquashfs", "unsquashfs"]) {
        return diskless_testkit::skip(&why);
    }
    let work = tempfile::tempdir().unwrap();
    let tree = bootable_tree(work.path());
    let helper = fetch_helper(work.path());
    // A server on the master keeps its state and store in custom places inside the tree.
    write(&tree, "srv/boot/state/report.key", "the report key");
    write(&tree, "srv/boot/state/leases.json", "{}");
    write(&tree, "srv/boot/images/lab/1/root.squashfs", "an image");
    write(&tree, "srv/boot/notes.txt", "kept");
    let config = work.path().join("diskless.toml");
    fs::write(
        &config,
        format!(
            "state = \"{0}/srv/boot/state\"\nstore = \"{0}/srv/boot/images\"\n",
            tree.display()
        ),
    )
    .unwrap();
    let build = |config: &Path, store: &Path| {
        Command::new(env!("CARGO_BIN_EXE_diskless"))
            .args(["image", "build"])
            .arg(&tree)
            .args(["--name", "t", "--config"])
            .arg(config)
            .arg("--store")
            .arg(store)
            .env("DISKLESS_FETCH", &helper)
            .output()
            .unwrap()
    };
    let store = work.path().join("store");
    let out = build(&config, &store);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let listing = listing(&store);
    assert!(
        listing.lines().any(|l| l == "ROOT/srv/boot/notes.txt"),
        "{listing}"
    );
    assert!(!listing.contains("ROOT/srv/boot/state"), "{listing}");
    assert!(!listing.contains("ROOT/srv/boot/images"), "{listing}");

    // A config that cannot be read: where the state is cannot be told, the build stops.
    let broken = work.path().join("broken.toml");
    fs::write(&broken, "state = [\n").unwrap();
    let out = build(&broken, &work.path().join("store2"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&broken.display().to_string())
            && stderr.contains("the server's state directory"),
        "{stderr}"
    );
}
