//! Issue 11, as an admin meets diskless: the Debian package installed with
//! `apt-get install ./diskless_*.deb` on a Debian 12 system running systemd, the service
//! started with `systemctl enable --now diskless`, checked to run as user `diskless` with only
//! its two capabilities, reloaded with a [[client]] entry added (`systemctl reload`: same
//! process), a QEMU client PXE-booted from it to multi-user with the hostname that entry
//! gives it, then `apt-get remove` (the state stays) and `apt-get purge` (the state goes, the
//! admin's image store and the system user stay).
//!
//! The same on Debian 13: the system is then $DISKLESS_CACHE/roots/trixie.
//!
//! The system is the bootstrapped tree cached in $DISKLESS_CACHE/roots/bookworm, never
//! modified: it is the lower layer of an overlay whose upper layer is a temporary directory,
//! booted with `systemd-nspawn -b` (these machines' PID 1 is not systemd) in a network
//! namespace with the client's tap. The packages the .deb depends on are downloaded first in
//! the same tree (not booted, on the host's network: the mirror is the tree's own, from
//! debootstrap), into a cache kept between runs; the install itself then happens in the
//! booted system, offline, as `apt-get install` would on a lab's server.
//!
//! The .deb: the one scripts/package makes (it fails on any lintian error or warning), or
//! `DISKLESS_DEB`. The image: the shared test image of the server's release
//! (`common::test_image_of`), bound read-only as the service's store.
//!
//! Run by scripts/test (`cargo test -p diskless --test package -- --ignored`): it needs root,
//! systemd-nspawn (systemd-container), network namespaces and QEMU.

use diskless_vm::{netns::Netns, ClientConfig, Firmware, Server, VmConfig};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{cache, run, test_image_of, Overlay, Release};

/// The service's capabilities, as /proc/PID/status shows them: CAP_NET_BIND_SERVICE (10) and
/// CAP_NET_RAW (13).
const SERVICE_CAPS: &str = "0000000000002400";

/// The client, and the hostname a [[client]] entry added by a reload gives it.
const CLIENT_MAC: &str = "52:54:00:11:00:01";
const CLIENT_NAME: &str = "reloaded01";

/// A booted container: `systemd-nspawn -b`, its console in a log. Dropping it powers it off
/// (SIGTERM to nspawn, which asks the container's systemd to shut down) and kills what is
/// left after 60 s.
struct Container {
    nspawn: Child,
    /// The container's PID 1 (systemd), as the host sees it.
    leader: u32,
    console: PathBuf,
}

impl Container {
    fn boot(tree: &Path, args: &[String], console: &Path) -> Container {
        let log = std::fs::File::create(console).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .args([
                "--keep-unit",
                "--register=no",
                "--console=read-only",
                "-b",
                "-D",
            ])
            .arg(tree)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("systemd-nspawn: {e} (install systemd-container)"));
        let mut container = Container {
            leader: 0,
            nspawn,
            console: console.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while container.leader == 0 {
            if let Ok(Some(status)) = container.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({status}):\n{}", container.log());
            }
            assert!(
                Instant::now() < deadline,
                "no container init after 30 s:\n{}",
                container.log()
            );
            std::thread::sleep(Duration::from_millis(200));
            let pid = container.nspawn.id();
            let children =
                std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
            container.leader = children
                .split_whitespace()
                .filter_map(|c| c.parse().ok())
                .find(|c: &u32| {
                    std::fs::read_to_string(format!("/proc/{c}/comm"))
                        .is_ok_and(|comm| comm.trim() == "systemd")
                })
                .unwrap_or(0);
        }
        // Booted: every unit of the boot has started or failed ("degraded" is fine here: a
        // container lacks hardware some units expect). systemctl fails until the container's
        // systemd listens.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (state, _) = container.sh("timeout 60 systemctl is-system-running --wait");
            if state.starts_with("running") || state.starts_with("degraded") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the container did not finish booting: {state}\n{}",
                container.log()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
        container.sh("systemctl --failed --no-legend");
        container
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Run a shell command in the container (all its namespaces, its root); returns its
    /// stdout and stderr together, and its exit status.
    fn sh(&self, script: &str) -> (String, i32) {
        let out = Command::new("nsenter")
            .args([
                "--target",
                &self.leader.to_string(),
                "--all",
                "--root",
                "--wd",
            ])
            .args(["--", "/bin/sh", "-c", script])
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("container$ {script}\n{text}");
        (text, out.status.code().unwrap_or(-1))
    }

    /// [`Container::sh`], which must succeed.
    fn ok(&self, script: &str) -> String {
        let (text, status) = self.sh(script);
        assert_eq!(status, 0, "{script} failed:\n{text}");
        text
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        // SAFETY: signalling our own child by pid.
        unsafe { libc::kill(self.nspawn.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        if self.leader != 0 {
            // SAFETY: the container's init, found among nspawn's children.
            unsafe { libc::kill(self.leader as i32, libc::SIGKILL) };
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// The .deb to install: $DISKLESS_DEB, or the one scripts/package makes.
fn package() -> PathBuf {
    if let Some(deb) = std::env::var_os("DISKLESS_DEB") {
        let deb = PathBuf::from(deb);
        assert!(deb.is_file(), "DISKLESS_DEB={} is missing", deb.display());
        return deb;
    }
    let top = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = run(Command::new(top.join("scripts/package")).current_dir(&top));
    let deb = out
        .lines()
        .find_map(|l| l.strip_prefix("package: "))
        .unwrap_or_else(|| panic!("scripts/package named no .deb:\n{out}"));
    top.join(deb)
}

#[test]
#[ignore = "needs root, systemd-nspawn, QEMU and the bootstrapped tree; run by scripts/test"]
fn installed_package_serves_a_pxe_client_and_purges_cleanly() {
    installed_package_serves_and_purges(Release::Bookworm);
}

/// Issue 23: the same on a Debian 13 server (systemd 257: the unit's hardening, sysusers,
/// tmpfiles), in the cached trixie tree.
#[test]
#[ignore = "needs root, systemd-nspawn, QEMU and the bootstrapped tree; run by scripts/test"]
fn on_trixie_the_package_serves_a_pxe_client_and_purges_cleanly() {
    installed_package_serves_and_purges(Release::Trixie);
}

fn installed_package_serves_and_purges(release: Release) {
    let deb = package();
    let deb_name = deb.file_name().unwrap().to_str().unwrap().to_string();
    // Issue 23: what a boot server needs is Depends; what only `diskless vm` needs (QEMU,
    // OVMF) is Suggests, and there are no Recommends, which apt installs by default.
    let relations = run(Command::new("dpkg-deb").arg("-f").arg(&deb).args([
        "Depends",
        "Recommends",
        "Suggests",
    ]));
    let field = |name: &str| {
        relations
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    let depends = field("Depends").unwrap_or_else(|| panic!("no Depends: {relations}"));
    assert!(
        depends.contains("ipxe") && depends.contains("squashfs-tools"),
        "{depends}"
    );
    assert!(
        !depends.contains("qemu") && !depends.contains("ovmf"),
        "{depends}"
    );
    assert_eq!(field("Recommends"), None, "{relations}");
    let suggests = field("Suggests").unwrap_or_default();
    assert!(
        suggests.contains("qemu-system-x86") && suggests.contains("ovmf"),
        "{suggests}"
    );
    let lower = cache().join("roots").join(release.suite());
    assert!(
        lower.join("usr/lib/systemd/systemd").is_file(),
        "{} is not a bootstrapped Debian tree with systemd: the end-to-end test (scripts/test) \
         bootstraps it",
        lower.display()
    );
    // The image the client boots, of the server's release, bound read-only into the
    // service's store.
    let version = test_image_of(release);
    let image_dir = version.parent().unwrap();
    let image = image_dir.file_name().unwrap().to_str().unwrap().to_string();
    let store = image_dir.parent().unwrap().parent().unwrap().to_path_buf();

    let dir = tempfile::Builder::new()
        .prefix("diskless-package-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let overlay = Overlay::mount(&lower, dir.path());
    let tree = &overlay.merged;
    std::fs::copy(&deb, tree.join("root").join(&deb_name)).unwrap();
    // The .debs of each release apart (bookworm's where they always were).
    let apt_cache = match release {
        Release::Bookworm => cache().join("package-test-apt"),
        other => cache().join(format!("package-test-apt-{}", other.suite())),
    };
    std::fs::create_dir_all(apt_cache.join("partial")).unwrap();
    let apt_bind = format!("--bind={}:/var/cache/apt/archives", apt_cache.display());

    // What the .deb depends on, downloaded on the host's network (not booted: the tree's
    // systemd must not run on the host's interfaces).
    run(Command::new("systemd-nspawn")
        .args(["--keep-unit", "--register=no", "-q", "--chdir=/root", "-D"])
        .arg(tree)
        .args([
            &apt_bind,
            "--setenv=DEBIAN_FRONTEND=noninteractive",
            "sh",
            "-c",
        ])
        .arg(format!(
            "apt-get update -q && apt-get install -y -q --download-only ./{deb_name}"
        ))
        .stdin(Stdio::null()));

    // The lab network: a namespace with the client's tap, the server's address on it.
    let namespace = format!("diskless-pkg-{}", std::process::id());
    let tap = "dlp0".to_string();
    let ns = Netns::create(&namespace, &tap, std::slice::from_ref(&tap), "10.78.0.1/24")
        .unwrap_or_else(|e| panic!("{e}"));
    let container = Container::boot(
        tree,
        &[
            format!("--network-namespace-path=/run/netns/{namespace}"),
            // The images, as root's `diskless image build` leaves them: read-only to the
            // service, which writes only its iPXE copies beside them (store/ipxe).
            format!(
                "--bind-ro={}:/var/lib/diskless/store/images",
                store.join("images").display()
            ),
            apt_bind,
        ],
        &dir.path().join("container.log"),
    );

    // As the admin: install (with apt's defaults: Recommends too), configure, enable, start.
    container.ok(&format!("cd /root && apt-get install -y -q ./{deb_name}"));
    let (qemu, _) = container.sh("dpkg-query -W -f '${Status}' qemu-system-x86 ovmf");
    assert!(!qemu.contains("ok installed"), "QEMU on a server: {qemu}");
    let installed = container.ok("ls /usr/bin/diskless /usr/lib/diskless/diskless-fetch \
         /usr/share/man/man1/diskless-serve.1.gz /etc/diskless/diskless.toml && \
         getent passwd diskless && systemctl is-enabled diskless || true");
    assert!(
        installed.contains("disabled"),
        "enabled on install:\n{installed}"
    );
    std::fs::write(
        tree.join("etc/diskless/diskless.toml"),
        format!(
            "interface = \"{tap}\"\n\n[dhcp]\nrange = \"10.78.0.100-10.78.0.150\"\n\n\
             [boot]\nimage = \"{image}\"\n\
             cmdline = \"console=ttyS0,115200n8 diskless.autologin=ttyS0 panic=5\"\n"
        ),
    )
    .unwrap();
    container.ok("systemctl enable --now diskless");
    // The unit's exposure as this release's systemd scores it (README: 1.5): at most 2.0
    // (--threshold is on systemd's 0-100 scale, ten times the figure shown).
    container.ok("systemd-analyze security --threshold=20 diskless");

    // The running server: user diskless, exactly the two capabilities, no way back to more.
    let status = container.ok(
        "pid=$(systemctl show -p MainPID --value diskless); id -u diskless; \
         cat /proc/$pid/status",
    );
    let uid = status.lines().next().unwrap().trim().to_string();
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_ne!(uid, "0");
    assert_eq!(field("Uid"), [uid.as_str(); 4].join(" "), "{status}");
    for caps in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(field(caps), SERVICE_CAPS, "{caps}:\n{status}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2", "no system call filter:\n{status}");

    // `systemctl reload`: a [[client]] entry added to the config reaches the running server
    // (the client below gets its hostname), the process stays the same.
    let config = tree.join("etc/diskless/diskless.toml");
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!(
        "\n[[client]]\nmac = \"{CLIENT_MAC}\"\nhostname = \"{CLIENT_NAME}\"\n"
    ));
    std::fs::write(&config, text).unwrap();
    container.ok("diskless serve --check --config /etc/diskless/diskless.toml");
    let before = container.ok("systemctl show -p MainPID --value diskless");
    container.ok("systemctl reload diskless");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !container
        .sh("journalctl -u diskless --no-pager")
        .0
        .contains("config re-read on SIGHUP")
    {
        assert!(Instant::now() < deadline, "no reload in the journal");
        std::thread::sleep(Duration::from_millis(500));
    }
    let after =
        container.ok("systemctl is-active diskless; systemctl show -p MainPID --value diskless");
    assert_eq!(
        after,
        format!("active\n{before}"),
        "the server restarted on reload"
    );

    // A client PXE-boots from the service to multi-user.
    let logs = dir.path().join("vm");
    let cfg = VmConfig {
        server: Server::Running,
        namespace: namespace.clone(),
        interface: tap.clone(),
        server_cidr: "10.78.0.1/24".into(),
        http_port: 80,
        tftp_port: 69,
        clients: vec![ClientConfig {
            mac: CLIENT_MAC.parse().unwrap(),
            tap: tap.clone(),
            memory_mib: 1024,
            cpus: 1,
            firmware: Firmware::Bios,
            disks: vec![],
            display: false,
            block_multicast: false,
            rate_limit: None,
            power_off: false,
        }],
        timeout: Duration::from_secs(1200),
        commands: vec!["findmnt -n -o FSTYPE /".into(), "hostname".into()],
        show_console: false,
        log_dir: logs.clone(),
        site_dhcp: None,
        loss_percent: 0,
        restart_server_during_fetch: None,
        screendumps: vec![],
        metrics: None,
    };
    let report = diskless_vm::run_in(&cfg, &ns).unwrap_or_else(|e| {
        let (journal, _) = container.sh("journalctl -u diskless --no-pager | tail -40");
        panic!(
            "the client did not boot from the service: {e}\n(logs in {}; the service's journal:)\n{journal}",
            logs.display()
        )
    });
    let client = &report.clients[0];
    assert_eq!(client.commands[0].output.trim(), "overlay", "{client:?}");
    assert_eq!(client.commands[1].output.trim(), CLIENT_NAME, "{client:?}");
    let clients = container.ok("diskless clients");
    assert!(
        clients.contains(CLIENT_MAC) && clients.contains("multi-user"),
        "the service did not record the boot:\n{clients}"
    );

    // remove: the program goes, the service is stopped, the state and config stay.
    container.ok("apt-get remove -y -q diskless");
    let (active, _) = container.sh("systemctl is-active diskless");
    assert_ne!(active.trim(), "active", "still running after remove");
    container.ok(
        "! test -e /usr/bin/diskless && test -s /var/lib/diskless/state/clients.json && \
         test -s /etc/diskless/diskless.toml && getent passwd diskless",
    );

    // purge: the state, the config and the enablement go; the image store (the admin's
    // images) and the system user stay, as the postrm explains.
    let purged = container.ok("apt-get purge -y -q diskless");
    assert!(
        purged.contains("image store /var/lib/diskless/store is kept"),
        "{purged}"
    );
    container.ok(
        "! test -e /var/lib/diskless/state && ! test -e /etc/diskless && \
         ! test -e /etc/systemd/system/multi-user.target.wants/diskless.service && \
         test -e /var/lib/diskless/store/images && getent passwd diskless && \
         ! dpkg -s diskless >/dev/null 2>&1",
    );
    drop(container);
    drop(ns);
}
