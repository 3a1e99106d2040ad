//! What the QEMU tests share: running the binary, the cache, and the image they boot.
#![allow(dead_code)] // each test file uses its own subset

pub mod browser;

pub use diskless_image::bootstrap::Release;
use diskless_server::recorder::ClientRecord;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub fn diskless() -> Command {
    Command::new(env!("CARGO_BIN_EXE_diskless"))
}

#[allow(unused_imports)] // each test file uses its own subset
pub use diskless_testkit::{enter_netns, run};

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

/// The bootstrapped bookworm workstation tree (debootstrap runs the first time only).
pub fn bootstrapped_root() -> PathBuf {
    bootstrapped_tree(Release::Bookworm)
}

/// The bootstrapped workstation tree of `release`, $DISKLESS_CACHE/roots/SUITE (debootstrap
/// runs the first time only).
pub fn bootstrapped_tree(release: Release) -> PathBuf {
    let root = cache().join("roots").join(release.suite());
    run(diskless()
        .args(["image", "bootstrap", "--suite", release.suite()])
        .arg(&root)
        .arg("--cache")
        .arg(cache().join("debs")));
    root
}

/// The release the boot tests boot (and the accounts test's server runs): named by
/// `DISKLESS_TEST_SUITE` (`bookworm`, `trixie`), the default release (trixie, what `image
/// bootstrap` makes) when unset. scripts/test runs a subset of the boot tests a second time
/// with `DISKLESS_TEST_SUITE=bookworm` (README, "Tests"), so each test is written once for
/// every release.
pub fn test_release() -> Release {
    match std::env::var("DISKLESS_TEST_SUITE") {
        Err(std::env::VarError::NotPresent) => Release::DEFAULT,
        Ok(suite) => Release::from_suite(&suite).unwrap_or_else(|| {
            panic!(
                "DISKLESS_TEST_SUITE={suite}: not one of {:?}",
                Release::ALL.map(Release::suite)
            )
        }),
        Err(e) => panic!("DISKLESS_TEST_SUITE: {e}"),
    }
}

/// The version directory of the image the boot tests share, of [`test_release`]: see
/// [`test_image_of`].
pub fn test_image() -> &'static Path {
    test_image_of(test_release())
}

/// The version directory of `release`'s shared test image. With `DISKLESS_TEST_STORE`, the
/// store scripts/test built them into (once for all test files): the bookworm image is named
/// by `DISKLESS_TEST_IMAGE` (default bookworm), another release's by
/// `DISKLESS_TEST_IMAGE_SUITE` (`DISKLESS_TEST_IMAGE_TRIXIE`, default test-trixie). Without
/// it, the image is built into $DISKLESS_CACHE/test-store (test, test-trixie).
pub fn test_image_of(release: Release) -> &'static Path {
    static VERSIONS: [OnceLock<PathBuf>; Release::ALL.len()] =
        [const { OnceLock::new() }; Release::ALL.len()];
    let index = Release::ALL.iter().position(|r| *r == release).unwrap();
    VERSIONS[index].get_or_init(|| {
        let built_name = match release {
            Release::Bookworm => "test".to_string(),
            other => format!("test-{}", other.suite()),
        };
        let (store, image) = match std::env::var_os("DISKLESS_TEST_STORE") {
            Some(store) => {
                let (variable, default) = match release {
                    Release::Bookworm => ("DISKLESS_TEST_IMAGE".to_string(), "bookworm".into()),
                    other => (
                        format!("DISKLESS_TEST_IMAGE_{}", other.suite().to_uppercase()),
                        built_name,
                    ),
                };
                let image = std::env::var(variable).unwrap_or(default);
                (PathBuf::from(store), image)
            }
            None => {
                let root = bootstrapped_tree(release);
                let store = cache().join("test-store");
                run(diskless()
                    .args(["image", "build"])
                    .arg(&root)
                    .args(["--name", &built_name, "--store"])
                    .arg(&store));
                run(diskless()
                    .args(["image", "prune", &built_name, "--keep", "1", "--store"])
                    .arg(&store));
                (store, built_name)
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
pub fn read_report(logs: &Path) -> diskless_vm::Report {
    let path = logs.join("report.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Output and exit status of `command` in a client's part of the report.
pub fn command_output(client: &diskless_vm::ClientReport, command: &str) -> (String, i32) {
    let c = client
        .command(command)
        .unwrap_or_else(|| panic!("no result for {command}"));
    (c.output.clone(), c.status)
}

/// Put the test image into `store` as image `name` (hard links; the manifest is rewritten for
/// the name).
pub fn add_image(store: &Path, name: &str) {
    add_image_from(store, name, test_image());
}

/// Put the image version in `from` into `store` as image `name`, as [`add_image`] does.
pub fn add_image_from(store: &Path, name: &str, from: &Path) {
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

/// `NAME VALUE` of a Prometheus text exposition (`metrics.txt`, saved by `diskless vm`):
/// the value of the sample named exactly `name` (labels included).
pub fn sample(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in\n{metrics}"))
}

/// The server's record of `mac` in `logs/state/clients.json`, if it has one.
pub fn record(logs: &Path, mac: &str) -> Option<ClientRecord> {
    let path = logs.join("state/clients.json");
    let mut clients = diskless_server::recorder::load(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    clients.remove(&mac.parse().unwrap())
}

/// The names of the stages in `record`, in order.
pub fn stage_names(record: &ClientRecord) -> Vec<String> {
    record
        .stages
        .iter()
        .map(|s| s.stage.as_str().to_string())
        .collect()
}

/// The stages the server recorded of `mac`'s boot (it must have a record).
pub fn stages(logs: &Path, mac: &str) -> Vec<String> {
    let record = record(logs, mac).unwrap_or_else(|| panic!("no record of {mac}"));
    stage_names(&record)
}

/// Every stage of `expected` is among `stages` (a record's [`stage_names`]) of client `who`.
pub fn assert_stages(who: &str, stages: &[String], expected: &[&str]) {
    for stage in expected {
        assert!(
            stages.iter().any(|s| s == stage),
            "{who}: {stage} missing from {stages:?}"
        );
    }
}

/// Run `diskless vm`, which must succeed, then check that its namespace is gone (other runs'
/// namespaces may exist: only ours, named after the vm's pid, is checked).
pub fn run_vm(cmd: &mut Command) {
    let (out, text, pid) = output(cmd);
    assert!(
        out.status.success(),
        "diskless vm failed ({}):\n{text}",
        out.status
    );
    assert_namespace_gone(pid);
}

/// The namespace of the `diskless vm` with this pid is gone.
pub fn assert_namespace_gone(pid: u32) {
    let namespace = format!("diskless-vm-{pid}");
    let namespaces = run(Command::new("ip").args(["netns", "list"]));
    assert!(
        !namespaces.split_whitespace().any(|w| w == namespace),
        "{namespace} left behind: {namespaces}"
    );
}

/// A `diskless vm` running in the background; interrupted (as Ctrl-C would, so it removes its
/// namespace and stops QEMU) if the test fails before it ends.
pub struct Booting(pub Option<std::process::Child>);

impl Booting {
    /// Start `cmd` (a [`vm`]) in the background, its output (console and server) to
    /// `logs/vm.out`.
    pub fn start(cmd: &mut Command, logs: &Path) -> Booting {
        std::fs::create_dir_all(logs).unwrap();
        let output = std::fs::File::create(Booting::output_path(logs)).unwrap();
        let child = cmd
            .stdout(output.try_clone().unwrap())
            .stderr(output)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Booting(Some(child))
    }

    /// Where [`Booting::start`] writes the run's output.
    pub fn output_path(logs: &Path) -> PathBuf {
        logs.join("vm.out")
    }

    /// The pid of `diskless vm`, which names its namespace (`diskless-vm-PID`).
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("still running").id()
    }

    /// Whether `diskless vm` is still running.
    pub fn running(&mut self) -> bool {
        let child = self.0.as_mut().expect("not waited for yet");
        child.try_wait().unwrap().is_none()
    }

    /// Wait for `diskless vm` to end.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.take().expect("waited for once").wait().unwrap()
    }
}

impl Drop for Booting {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

/// A test's directory, kept (not deleted) when the test fails, for its logs.
pub struct Work(Option<tempfile::TempDir>);

impl Work {
    pub fn new() -> Work {
        Work(Some(tempfile::tempdir().unwrap()))
    }

    pub fn path(&self) -> &Path {
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

/// An overlay on `lower` (a cached tree, never modified) with its upper layer in `dir`, mounted
/// at `dir/merged`; unmounted when dropped.
pub struct Overlay {
    pub merged: PathBuf,
}

impl Overlay {
    pub fn mount(lower: &Path, dir: &Path) -> Overlay {
        let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.display(),
                upper.display(),
                work.display()
            ))
            .arg(&merged));
        Overlay { merged }
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.merged).status();
    }
}

/// Whether promtool (Debian's prometheus package) is installed; if not, the test is skipped
/// (failed under CI=true).
pub fn have_promtool() -> bool {
    match diskless_testkit::missing_tools(&["promtool"]) {
        None => true,
        Some(why) => {
            diskless_testkit::skip(&format!(
                "{why}: install Debian's prometheus package (scripts/install-deps --test)"
            ));
            false
        }
    }
}

/// What `promtool check metrics` says about a metrics page (nothing when it is clean); its
/// exit status is part of it.
pub fn promtool_check(text: &str) -> String {
    use std::io::Write;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        said.trim().to_string()
    } else {
        format!("exit {}: {said}", out.status)
    }
}

/// A store in `dir` with image `name`, version `v1`: a random root.squashfs of `bytes` and
/// its manifest, made current (no kernel: for the tests that serve the image file alone, to
/// the fetch helper). Returns its sha256.
pub fn store_with_random_image(dir: &Path, name: &str, bytes: usize) -> String {
    let version = dir.join("images").join(name).join("v1");
    std::fs::create_dir_all(&version).unwrap();
    let squashfs = version.join("root.squashfs");
    let mut data = vec![0u8; bytes];
    let mut random = std::fs::File::open("/dev/urandom").unwrap();
    std::io::Read::read_exact(&mut random, &mut data).unwrap();
    std::fs::write(&squashfs, &data).unwrap();
    let entry = diskless_image::manifest::hash_file(&squashfs).unwrap();
    let manifest = serde_json::json!({
        "name": name, "version": "v1", "created": "", "kernel_version": "",
        "compression": "", "source": "a test", "build_seconds": 0.0,
        "files": {"root.squashfs": {"size": entry.size, "sha256": entry.sha256}},
        "changes": [],
    });
    std::fs::write(version.join("manifest.json"), manifest.to_string()).unwrap();
    std::os::unix::fs::symlink("v1", dir.join("images").join(name).join("current")).unwrap();
    entry.sha256
}

/// The repository's top directory.
pub fn top() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `scripts/storm-net`: the namespaces, bridge and clients the storm and multicast tests use.
pub fn storm_net() -> Command {
    Command::new(top().join("scripts/storm-net"))
}

/// `program` run inside network namespace `ns`.
pub fn in_ns(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns]).arg(program);
    cmd
}

/// The fetch helper's release build (`DISKLESS_FETCH` or scripts/build's), or why a test
/// cannot run.
pub fn fetch_helper() -> Result<PathBuf, String> {
    let path = std::env::var_os("DISKLESS_FETCH")
        .map(PathBuf::from)
        .unwrap_or_else(|| top().join("target/x86_64-unknown-linux-gnu/release/diskless-fetch"));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{}: no fetch helper (scripts/build, or set DISKLESS_FETCH)",
            path.display()
        ))
    }
}

/// Run on a seat once it is up (issue 25): on a `lazy` seat, wait until the fetch helper
/// (argv[0] `@diskless-fetch`) has exited (a `network` seat's never does); then show each
/// device-mapper device as `NAME dm-N on SLAVES`, the device the squashfs is mounted from,
/// and whether nbd0 is still connected (its `pid` file exists only then). Read by
/// [`assert_lazy_seat_off_the_network`].
pub const BLOCK_PATH: &str = "grep -qw diskless.fetch=network /proc/cmdline || \
     while grep -qs '^@diskless-fetch' /proc/[0-9]*/cmdline; do sleep 1; done; \
     for d in /sys/block/dm-*; do echo \"$(cat $d/dm/name) ${d##*/} on $(ls $d/slaves)\"; done; \
     echo \"squashfs from $(readlink -f \"$(findmnt -n -t squashfs -o SOURCE | head -n 1)\")\"; \
     [ -e /sys/block/nbd0/pid ] && echo nbd0 connected || echo nbd0 disconnected";

/// In [`BLOCK_PATH`]'s output, the kernel name (`dm-N`) of device-mapper device `name` and
/// what it sits on.
pub fn dm_device<'a>(block_path: &'a str, name: &str) -> Option<(&'a str, &'a str)> {
    block_path.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?.strip_prefix(' ')?;
        let (dev, slaves) = rest.split_once(" on ")?;
        Some((dev, slaves.trim()))
    })
}

/// The root of a seat booted with `diskless.fetch=` lazy or network: the squashfs is
/// mounted from dm-verity (`diskless-root`) over the linear device (`diskless-lazy`); returns
/// what the linear device sits on. Needs [`BLOCK_PATH`] among the seat's commands.
pub fn assert_root_on_verity(client: &diskless_vm::ClientReport) -> String {
    let (out, status) = command_output(client, BLOCK_PATH);
    assert_eq!(status, 0, "{out}");
    let (root, root_on) =
        dm_device(&out, "diskless-root").unwrap_or_else(|| panic!("no diskless-root: {out}"));
    let (linear, linear_on) =
        dm_device(&out, "diskless-lazy").unwrap_or_else(|| panic!("no diskless-lazy: {out}"));
    assert_eq!(
        root_on, linear,
        "dm-verity is not over the linear device: {out}"
    );
    // The mount names the device as the boot script gave it; /dev/mapper's link may be
    // missing in the real root (readlink -f leaves the name as it is then).
    let from = out
        .lines()
        .find_map(|l| l.strip_prefix("squashfs from "))
        .unwrap_or_else(|| panic!("no squashfs mounted: {out}"));
    assert!(
        from == format!("/dev/{root}") || from == "/dev/mapper/diskless-root",
        "the squashfs is not mounted from diskless-root ({root}): {out}"
    );
    linear_on.to_string()
}

/// A seat booted with `diskless.fetch=lazy` (issue 25) ended as a `whole` seat does: it
/// reached multi-user with its root served from the network (nothing fetched whole before
/// the root was mounted: no `fetched` stage), filled its RAM copy, moved the root onto a loop
/// device over it and let go of the network device (nbd0 disconnected); the server recorded
/// root-mounted, multi-user, filled and network-released. `console` is the seat's console
/// log; the seat ran [`BLOCK_PATH`].
pub fn assert_lazy_seat_off_the_network(
    client: &diskless_vm::ClientReport,
    logs: &Path,
    console: &Path,
) {
    let (out, _) = command_output(client, BLOCK_PATH);
    let linear_on = assert_root_on_verity(client);
    // Before the switch the linear device sat on nbd0; now on a loop device over the copy.
    assert!(
        linear_on.starts_with("loop"),
        "the root is not on the RAM copy: {out}"
    );
    assert!(out.contains("nbd0 disconnected"), "{out}");
    let console =
        std::fs::read_to_string(console).unwrap_or_else(|e| panic!("{}: {e}", console.display()));
    assert!(
        console.contains("the root is served from the network (diskless.fetch=lazy)"),
        "the seat fetched the image whole:\n{console}"
    );
    assert!(
        console.contains("the root is on the RAM copy, off the network"),
        "{console}"
    );
    let record = record(logs, &client.mac.to_string())
        .unwrap_or_else(|| panic!("no record of {}", client.mac));
    // When the copy was whole against the boot's stages, for the CI log.
    for s in &record.stages {
        eprintln!(
            "{}: {} at {:.1} s {}",
            client.mac,
            s.stage.as_str(),
            s.at,
            s.detail
        );
    }
    let stages = stage_names(&record);
    for stage in ["root-mounted", "multi-user", "filled", "network-released"] {
        assert!(stages.iter().any(|s| s == stage), "no {stage}: {stages:?}");
    }
    assert!(!stages.iter().any(|s| s == "fetched"), "{stages:?}");
}
