//! A desktop image boots to its display manager's greeter: an Xfce tree made by `diskless
//! image bootstrap --desktop xfce`, built into an image, PXE-booted in QEMU with a VGA display;
//! lightdm is active, its greeter runs, and the screen (a QMP screendump) shows a picture.
//!
//! Run by scripts/test (its desktop job, beside the other boot tests) and alone by
//! scripts/test-desktop; both take the image from scripts/desktop-image, which keeps the tree
//! in $DISKLESS_CACHE/roots/SUITE-xfce and the image in $DISKLESS_CACHE/desktop-store-SUITE
//! (bookworm's: desktop-store), and pass it in `DISKLESS_DESKTOP_STORE`. The release is the
//! boot tests' (`common::test_release`: trixie unless `DISKLESS_TEST_SUITE` names another). The
//! screendumps stay in the logs directory the test prints ($DISKLESS_DESKTOP_LOGS, when set).

use std::path::{Path, PathBuf};

mod common;
use common::{command_output, read_report, run_vm, test_release, vm};

const IMAGE: &str = "xfce";
/// lightdm's GTK greeter, as `pgrep -x` sees it (the kernel keeps 15 characters of a name).
const GREETER: &str = "lightdm-gtk-gre";

/// The image store: $DISKLESS_DESKTOP_STORE (scripts/test and scripts/test-desktop set it),
/// else what scripts/desktop-image makes (the Xfce tree of [`test_release`], bootstrapped and
/// built when missing or changed).
fn desktop_store() -> PathBuf {
    if let Some(store) = std::env::var_os("DISKLESS_DESKTOP_STORE") {
        return store.into();
    }
    let script = common::top().join("scripts/desktop-image");
    let out = std::process::Command::new(&script)
        .env("DISKLESS_TEST_SUITE", test_release().suite())
        .stderr(std::process::Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(out.status.success(), "{}: {}", script.display(), out.status);
    let store = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(store.lines().last().expect("the store's path, last").trim())
}

/// Width, height and the RGB bytes of a binary PPM (P6, maxval 255), as QEMU's screendump
/// writes it.
fn read_ppm(path: &Path) -> (usize, usize, Vec<u8>) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // The header: "P6", width, height, maxval, separated by whitespace, then one whitespace.
    let mut fields = Vec::new();
    let mut at = 0;
    while fields.len() < 4 {
        while bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        let start = at;
        while !bytes[at].is_ascii_whitespace() {
            at += 1;
        }
        fields.push(String::from_utf8_lossy(&bytes[start..at]).into_owned());
    }
    assert_eq!(fields[0], "P6", "{}: not a binary PPM", path.display());
    assert_eq!(fields[3], "255", "{}: maxval", path.display());
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    let pixels = bytes[at + 1..].to_vec();
    assert_eq!(pixels.len(), w * h * 3, "{}: truncated", path.display());
    (w, h, pixels)
}

/// How many distinct colours, and what share of the pixels is not black.
fn colours_and_lit_share(pixels: &[u8]) -> (usize, f64) {
    let mut colours = std::collections::HashSet::new();
    let mut lit = 0usize;
    for p in pixels.chunks_exact(3) {
        colours.insert((p[0], p[1], p[2]));
        if p.iter().any(|&c| c > 16) {
            lit += 1;
        }
    }
    (colours.len(), lit as f64 / (pixels.len() / 3) as f64)
}

#[test]
fn colours_of_a_picture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.ppm");
    // 2x2: black, black, red, grey.
    let mut ppm = b"P6\n2 2\n255\n".to_vec();
    ppm.extend_from_slice(&[0, 0, 0, 0, 0, 0, 255, 0, 0, 128, 128, 128]);
    std::fs::write(&path, &ppm).unwrap();
    let (w, h, pixels) = read_ppm(&path);
    assert_eq!((w, h), (2, 2));
    let (colours, lit) = colours_and_lit_share(&pixels);
    assert_eq!(colours, 3);
    assert!((lit - 0.5).abs() < 1e-9, "{lit}");
}

#[test]
#[ignore = "needs root, QEMU, a 1.2 GB desktop tree and minutes: run by scripts/test"]
fn an_xfce_image_boots_to_the_lightdm_greeter() {
    let store = desktop_store();
    let logs = match std::env::var_os("DISKLESS_DESKTOP_LOGS") {
        Some(dir) => PathBuf::from(dir),
        None => tempfile::tempdir().unwrap().keep().join("logs"),
    };
    let _ = std::fs::remove_dir_all(&logs);
    std::fs::create_dir_all(&logs).unwrap();
    eprintln!(
        "desktop test logs (screendumps included): {}",
        logs.display()
    );
    let memory = std::env::var("DISKLESS_DESKTOP_MEMORY").unwrap_or_else(|_| "1024".into());

    // The greeter starts after multi-user, and a command on the console may take 120 s at
    // most: wait in steps. Then give it time to draw (an emulated CPU paints slowly).
    let wait = format!(
        "for i in $(seq 100); do pgrep -x {GREETER} >/dev/null && break; sleep 1; done; true"
    );
    // The greeter's start, in seconds since the kernel started.
    let started = format!(
        "echo $(( $(cut -d. -f1 /proc/uptime) - $(ps -o etimes= -C {GREETER} | head -1) ))"
    );
    let running = format!("sleep 45; pgrep -x {GREETER} >/dev/null && echo greeter-running");
    let checks = [
        wait.as_str(),
        wait.as_str(),
        wait.as_str(),
        "systemctl is-active lightdm",
        "systemctl get-default",
        started.as_str(),
        running.as_str(),
        "free -m",
    ];
    let png = logs.join("greeter.png");
    let ppm = logs.join("greeter.ppm");
    let mut cmd = vm(IMAGE, &store, &logs, &checks);
    cmd.args(["--memory", &memory])
        .arg("--screendump")
        .arg(&png)
        .arg("--screendump")
        .arg(&ppm);
    run_vm(&mut cmd);
    let report = read_report(&logs);

    let (active, status) = command_output(report.first(), checks[3]);
    assert_eq!((active.trim(), status), ("active", 0), "lightdm: {active}");
    let (target, _) = command_output(report.first(), checks[4]);
    assert_eq!(target.trim(), "graphical.target");
    let (running, _) = command_output(report.first(), checks[6]);
    assert_eq!(running.trim(), "greeter-running");

    // The picture: a PNG kept for people, and the same screen as PPM, read here: a greeter
    // (wallpaper, a login box, text) has many colours; a text console or a blank screen has a
    // handful.
    let png_bytes = std::fs::read(&png).unwrap();
    assert!(png_bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let (w, h, pixels) = read_ppm(&ppm);
    let (colours, lit) = colours_and_lit_share(&pixels);
    eprintln!(
        "screen {w}x{h}: {colours} colours, {:.0} % not black",
        lit * 100.0
    );
    assert!(w >= 800 && h >= 600, "a graphical mode, not text: {w}x{h}");
    assert!(colours > 64, "a blank or text screen: {colours} colours");
    assert!(lit > 0.5, "mostly black: {:.0} % lit", lit * 100.0);

    // Power-on to greeter: QEMU's start to the kernel's, plus the kernel's uptime when the
    // greeter started.
    let at = |name: &str| {
        report
            .first()
            .seconds_to(name)
            .unwrap_or_else(|| panic!("no phase {name}: {:?}", report.first().phases))
    };
    let (uptime, _) = command_output(report.first(), checks[5]);
    let greeter_uptime: f64 = uptime.trim().parse().unwrap_or_else(|_| panic!("{uptime}"));
    eprintln!(
        "power-on to: kernel {:.0} s, multi-user {:.0} s, greeter started {:.0} s (memory {memory} MiB)",
        at("kernel"),
        at("multi-user"),
        at("kernel") + greeter_uptime
    );
    let (free, _) = command_output(report.first(), checks[7]);
    eprintln!("free -m on the client at the greeter:\n{free}");
}
