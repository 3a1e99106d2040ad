//! The boot script's part for the lab's accounts (`diskless_accounts` in
//! initramfs-tools/scripts/diskless), run by busybox's sh as in the initramfs, on a root made of
//! a Debian system's account files, with a stand-in for `diskless-fetch cat` that answers from
//! a directory: what the server serves is merged without replacing the image's own accounts,
//! with no local password, the PAM line goes before pam_unix, and a second boot on a kept
//! layer changes nothing. (The whole path, with sshd and sshfs, is `crates/cli/tests/accounts.rs`.)

mod common;

use common::write;
use diskless_image::bootcpio::BOOT_SCRIPT;
use std::path::Path;
use std::process::Command;

const PASSWD: &str = "root:x:0:0:root:/root:/bin/bash\n\
    sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n";
const GROUP: &str = "root:x:0:\nsudo:x:27:\n";
const SHADOW: &str = "root:*:20000:0:99999:7:::\nsshd:!:20000::::::\n";
const GSHADOW: &str = "root:*::\nsudo:*::\n";
/// Debian 12's /etc/pam.d/common-auth, comments left out.
const COMMON_AUTH: &str = "auth\t[success=1 default=ignore]\tpam_unix.so nullok\n\
    auth\trequisite\t\t\tpam_deny.so\nauth\trequired\t\t\tpam_permit.so\n";

/// What the server serves: one lab user, and what a server must not be able to slip in (root
/// again, a taken uid, a name outside the portable set).
const SERVED_PASSWD: &str = "alice:x:1000:1000:Alice:/home/alice:/bin/bash\n\
    root:x:0:0::/root:/bin/sh\nmallory:x:100:100::/home/m:/bin/sh\nEve:x:1002:1002::/home/e:/bin/sh\n";
const SERVED_GROUP: &str = "alice:x:1000:\nlab:x:1500:alice\nsudo:x:27:alice\n";
const KNOWN_HOSTS: &str = "10.0.0.1 ssh-ed25519 AAAAkey\n";

/// One boot's `diskless_accounts` on `dir/root`; returns its output.
fn boot(dir: &Path) -> String {
    let fetch = dir.join("bin/diskless-fetch");
    write(
        dir,
        "bin/diskless-fetch",
        format!(
            "#!/bin/sh\ncat \"{}/${{2##*/}}\"\n",
            dir.join("served").display()
        ),
    );
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fetch, std::fs::Permissions::from_mode(0o755)).unwrap();
    write(dir, "diskless", BOOT_SCRIPT);
    let script = format!(
        "log_success_msg() {{ echo \"$*\"; }}\n\
         log_failure_msg() {{ echo \"FAILED: $*\"; }}\n\
         log_warning_msg() {{ echo \"WARNING: $*\"; }}\n\
         panic() {{ echo \"PANIC: $*\"; exit 1; }}\n\
         . {dir}/diskless\n\
         PATH={dir}/bin:$PATH\n\
         DISKLESS_RUN={dir}/run\n\
         rootmnt={dir}/root\n\
         diskless_accounts_url=http://10.0.0.1/accounts\n\
         diskless_sshfs=10.0.0.1:22\n\
         diskless_accounts\n",
        dir = dir.display()
    );
    let out = Command::new("busybox")
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

fn read(dir: &Path, file: &str) -> String {
    std::fs::read_to_string(dir.join("root/etc").join(file)).unwrap()
}

#[test]
fn the_lab_accounts_are_added_without_passwords_and_only_once() {
    if let Some(why) = diskless_testkit::missing_tools(&["busybox", "shellcheck"]) {
        diskless_testkit::skip(&format!(
            "{why}: install busybox-static and shellcheck (scripts/install-deps --test)"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let etc = dir.join("root/etc");
    for (file, text) in [
        ("passwd", PASSWD),
        ("group", GROUP),
        ("shadow", SHADOW),
        ("gshadow", GSHADOW),
        ("pam.d/common-auth", COMMON_AUTH),
    ] {
        write(&etc, file, text);
    }
    for (file, text) in [
        ("passwd", SERVED_PASSWD),
        ("group", SERVED_GROUP),
        ("ssh_known_hosts", KNOWN_HOSTS),
    ] {
        write(&dir.join("served"), file, text);
    }

    let said = boot(dir);
    assert!(said.contains("1 lab accounts"), "{said}");
    assert_eq!(
        read(dir, "passwd"),
        format!("{PASSWD}alice:x:1000:1000:Alice:/home/alice:/bin/bash\n"),
        "only the new, well-formed entry is added"
    );
    assert_eq!(
        read(dir, "group"),
        format!("{GROUP}alice:x:1000:\nlab:x:1500:alice\n")
    );
    assert_eq!(read(dir, "shadow"), format!("{SHADOW}alice:*:::::::\n"));
    assert_eq!(
        read(dir, "gshadow"),
        format!("{GSHADOW}alice:!::\nlab:!::alice\n")
    );
    assert_eq!(read(dir, "diskless/users"), "alice\n");
    assert_eq!(read(dir, "diskless/sshfs"), "10.0.0.1:22\n");
    assert_eq!(read(dir, "ssh/ssh_known_hosts"), KNOWN_HOSTS);
    let auth = read(dir, "pam.d/common-auth");
    assert_eq!(
        auth.lines().next().unwrap(),
        "auth\t[success=2 default=ignore]\tpam_exec.so expose_authtok quiet \
         /usr/local/sbin/diskless-home",
        "a checked login jumps over pam_unix and pam_deny to pam_permit"
    );
    assert!(auth.ends_with(COMMON_AUTH), "{auth}");
    let helper = dir.join("root/usr/local/sbin/diskless-home");
    let checked = Command::new("shellcheck")
        .args(["-s", "sh"])
        .arg(&helper)
        .output()
        .unwrap();
    assert!(
        checked.status.success(),
        "shellcheck on the PAM helper the boot script writes:\n{}",
        String::from_utf8_lossy(&checked.stdout)
    );

    // A kept writable layer (diskless.upper=) boots again: nothing is added twice.
    let files = ["passwd", "group", "shadow", "gshadow", "pam.d/common-auth"];
    let before: Vec<String> = files.iter().map(|f| read(dir, f)).collect();
    boot(dir);
    let after: Vec<String> = files.iter().map(|f| read(dir, f)).collect();
    assert_eq!(before, after);
    assert_eq!(read(dir, "diskless/users"), "alice\n");
}

#[test]
fn a_server_without_the_accounts_leaves_the_image_as_it_is_and_the_boot_goes_on() {
    if let Some(why) = diskless_testkit::missing_tools(&["busybox"]) {
        diskless_testkit::skip(&format!(
            "{why}: install busybox-static (scripts/install-deps)"
        ));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    write(dir, "root/etc/passwd", PASSWD);
    write(dir, "root/etc/pam.d/common-auth", COMMON_AUTH);
    std::fs::create_dir_all(dir.join("served")).unwrap();
    let said = boot(dir);
    assert!(
        said.contains("WARNING: diskless: cannot fetch the lab's accounts"),
        "{said}"
    );
    assert_eq!(read(dir, "passwd"), PASSWD);
    assert_eq!(read(dir, "pam.d/common-auth"), COMMON_AUTH);
}

/// `diskless_watch_boot`, run by busybox's sh as in the initramfs, then the script it leaves
/// for the booted system run with stand-ins for systemctl and diskless-fetch: the units are
/// written and enabled, emergency mode is reported `failed` with `reason=emergency` and the
/// failed units, once per boot; a timeout says nothing once multi-user is reached, and is
/// reported `reason=timeout` otherwise. (A real boot: crates/cli/tests/failures.rs.)
#[test]
fn a_boot_stopped_after_the_root_is_mounted_is_reported_once_with_its_reason() {
    if let Some(why) = diskless_testkit::missing_tools(&["busybox"]) {
        diskless_testkit::skip(&format!(
            "{why}: install busybox-static (scripts/install-deps)"
        ));
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let exe = |dir: &Path, rel: &str, text: String| {
        write(dir, rel, text);
        std::fs::set_permissions(dir.join(rel), std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let calls = dir.join("calls");
    exe(
        dir,
        "initrd/bin/diskless-fetch",
        format!(
            "#!/bin/sh\nprintf '%s|' \"$@\" >> {}\necho >> {0}\n",
            calls.display()
        ),
    );
    write(dir, "diskless", BOOT_SCRIPT);
    let url = "http://10.0.0.1/api/report/52:54:00:12:34:56?token=a.b";
    let script = format!(
        ". {dir}/diskless\n\
         DISKLESS={dir}/initrd\n\
         DISKLESS_RUN={dir}/run\n\
         rootmnt={dir}/root\n\
         diskless_report_url='{url}'\n\
         diskless_watch_boot\n",
        dir = dir.display()
    );
    let out = Command::new("busybox")
        .args(["sh", "-c", &script])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let units = dir.join("root/etc/systemd/system");
    let link = |rel: &str| std::fs::read_link(units.join(rel)).unwrap();
    assert_eq!(
        link("emergency.target.wants/diskless-emergency.service"),
        Path::new("../diskless-emergency.service")
    );
    assert_eq!(
        link("sysinit.target.wants/diskless-boot-timeout.timer"),
        Path::new("../diskless-boot-timeout.timer")
    );
    let timer = std::fs::read_to_string(units.join("diskless-boot-timeout.timer")).unwrap();
    assert!(timer.contains("\nOnActiveSec=600\n"), "{timer}");
    let failed = dir.join("run/ram/bin/diskless-boot-failed");
    let service = std::fs::read_to_string(units.join("diskless-emergency.service")).unwrap();
    assert!(
        service.contains(&format!("\nExecStart=-{} emergency\n", failed.display())),
        "{service}"
    );

    // The booted system: systemctl says which units failed and whether multi-user is active;
    // the console is a file.
    let console = dir.join("console");
    let text = std::fs::read_to_string(&failed)
        .unwrap()
        .replace("/dev/console", &console.display().to_string());
    exe(dir, "run/ram/bin/diskless-boot-failed", text);
    let run = |reason: &str, multi_user: bool| {
        let systemctl = format!(
            "#!/bin/sh\ncase \"$*\" in\n\
             *is-active*) exit {} ;;\n\
             *list-units*) echo 'local-fs.target loaded failed failed Local File Systems'; \
             echo 'data.mount loaded failed failed /data' ;;\n\
             esac\n",
            if multi_user { 0 } else { 3 }
        );
        exe(dir, "sbin/systemctl", systemctl);
        let out = Command::new("busybox")
            .args(["sh", &failed.display().to_string(), reason])
            .env("PATH", format!("{}/sbin:/usr/bin:/bin", dir.display()))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        std::fs::read_to_string(&calls).unwrap_or_default()
    };
    assert_eq!(run("timeout", true), "", "multi-user was reached");
    let expected = "reason=emergency the boot stopped in emergency mode; \
                    failed units: local-fs.target data.mount";
    assert_eq!(
        run("emergency", false),
        format!("report|{url}|failed|{expected}|\n")
    );
    assert_eq!(
        std::fs::read_to_string(&console).unwrap(),
        format!("diskless: boot failed: {expected}\n")
    );
    assert_eq!(
        run("timeout", false),
        format!("report|{url}|failed|{expected}|\n"),
        "a second failure of the same boot is not reported"
    );

    std::fs::remove_file(dir.join("run/boot-failed")).unwrap();
    std::fs::remove_file(&calls).unwrap();
    assert_eq!(
        run("timeout", false),
        format!(
            "report|{url}|failed|reason=timeout multi-user not reached 600 s after systemd \
             started; failed units: local-fs.target data.mount|\n"
        )
    );
}
