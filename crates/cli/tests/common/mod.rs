//! What the QEMU tests share: running the binary, the cache, and the image they boot.
#![allow(dead_code)] // each test file uses its own subset

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn diskless() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diskless"))
}

/// Run `cmd`, fail the test with its output if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{shown} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    eprintln!("{stderr}");
    stdout
}

/// Run `cmd`; returns its output, its stdout and stderr as one text, and its pid (a
/// `diskless vm` names its namespace after it).
pub fn output(cmd: &mut Command) -> (std::process::Output, String, u32) {
    let shown = format!("{cmd:?}");
    let child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{shown}: {e}"));
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("{shown}:\n{text}");
    (out, text, pid)
}

/// Downloads and the bootstrapped tree: $DISKLESS_CACHE, default /var/cache/diskless.
pub fn cache() -> PathBuf {
    std::env::var_os("DISKLESS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/var/cache/diskless".into())
}

/// The bootstrapped workstation tree (debootstrap runs the first time only).
pub fn bootstrapped_root() -> PathBuf {
    let root = cache().join("roots/bookworm");
    run(diskless()
        .args(["image", "bootstrap"])
        .arg(&root)
        .arg("--cache")
        .arg(cache().join("debs")));
    root
}

/// The version directory of the image the boot tests share: `DISKLESS_TEST_STORE` and
/// `DISKLESS_TEST_IMAGE` (default bookworm) name one already built (scripts/test builds it
/// once for all test files); without them one is built into $DISKLESS_CACHE/test-store.
pub fn test_image() -> &'static Path {
    static VERSION: OnceLock<PathBuf> = OnceLock::new();
    VERSION.get_or_init(|| {
        let (store, image) = match std::env::var_os("DISKLESS_TEST_STORE") {
            Some(store) => (
                PathBuf::from(store),
                std::env::var("DISKLESS_TEST_IMAGE").unwrap_or_else(|_| "bookworm".into()),
            ),
            None => {
                let root = bootstrapped_root();
                let store = cache().join("test-store");
                run(diskless()
                    .args(["image", "build"])
                    .arg(&root)
                    .args(["--name", "test", "--store"])
                    .arg(&store));
                run(diskless()
                    .args(["image", "prune", "test", "--keep", "1", "--store"])
                    .arg(&store));
                (store, "test".to_string())
            }
        };
        let current = store.join("images").join(&image).join("current");
        std::fs::canonicalize(&current).unwrap_or_else(|e| panic!("{}: {e}", current.display()))
    })
}

/// `diskless vm` booting `image` from `store` and running `checks` on every client once it is
/// up; console and server logs go to `logs`, the report to `logs/report.json` (see
/// [`read_report`]). Callers add their own flags.
pub fn vm(image: &str, store: &Path, logs: &Path, checks: &[&str]) -> Command {
    let mut vm = diskless();
    vm.args(["vm", "--image", image, "--quiet", "--timeout", "1200"])
        .arg("--store")
        .arg(store)
        .arg("--log-dir")
        .arg(logs)
        .arg("--report")
        .arg(logs.join("report.json"));
    for check in checks {
        vm.arg("--run").arg(check);
    }
    vm
}

/// The report a [`vm`] run wrote.
pub fn read_report(logs: &Path) -> Value {
    let path = logs.join("report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Output and exit status of `command` in a client's part of the report.
pub fn command_output(client: &Value, command: &str) -> (String, i64) {
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
