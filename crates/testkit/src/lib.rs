//! Test support shared by the workspace's tests.
//!
//! A test that cannot run here (a tool missing, not root, no cache) calls [`skip`]. `cargo
//! test` captures what a test prints, so a skip message printed with `eprintln!` is swallowed
//! and the test shows `ok`; [`skip`] writes past the capture, straight to the process's
//! stderr, and under `CI=true` it fails the test instead, naming the test and what is
//! missing: in CI every prerequisite is installed by `scripts/install-deps`, and a test that
//! silently did nothing would hide a broken setup.
//!
//! ```
//! # fn demo() {
//! if let Some(why) = diskless_testkit::missing_tools(&["mksquashfs"]) {
//!     return diskless_testkit::skip(&why);
//! }
//! # }
//! ```
#![deny(missing_docs)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output};

/// The running test's name (libtest names each test's thread after it).
pub fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string()
}

/// Whether this is a CI run (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Skip the calling test because `why`; panics under `CI=true`. The caller returns after it.
pub fn skip(why: &str) {
    let test = test_name();
    if in_ci() {
        panic!("{test}: cannot run: {why} (CI=true: a missing prerequisite fails the test; scripts/install-deps installs it)");
    }
    // Not eprintln!: libtest captures that. This reaches the terminal.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
}

/// Whether `tool` is an executable on PATH.
pub fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// `"TOOL is not installed"` for the first of `tools` not on PATH.
pub fn missing_tools(tools: &[&str]) -> Option<String> {
    tools
        .iter()
        .find(|t| !have(t))
        .map(|t| format!("{t} is not installed"))
}

/// Whether we run as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().next().map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// Whether a test that needs root and `tools` can run here; when not, it is [`skip`]ped
/// (failed under `CI=true`) and the caller returns.
pub fn root_with_tools(tools: &[&str]) -> bool {
    let why = if !is_root() {
        Some("not root".to_string())
    } else {
        missing_tools(tools)
    };
    if let Some(why) = &why {
        skip(why);
    }
    why.is_none()
}

/// Panics unless `out` is a success, naming `what` and showing its exit status, stdout and
/// stderr.
pub fn check(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run `cmd` to its end; the test fails (see [`check`]) unless it succeeds. Returns its
/// stdout as text; its stderr goes to the test's captured output.
pub fn run(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_bytes(cmd)).into_owned()
}

/// [`run`], returning stdout as bytes (for output that is not text).
pub fn run_bytes(cmd: &mut Command) -> Vec<u8> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().unwrap_or_else(|e| panic!("{shown}: {e}"));
    check(&out, &shown);
    eprint!("{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// Move this thread into network namespace `name` (from `ip netns add`; waiting up to a
/// minute for it to appear, as when another process creates it): the processes it starts
/// and the sockets it opens are then inside. Other threads stay where they are.
pub fn enter_netns(name: &str) {
    use std::os::fd::AsRawFd;
    use std::time::{Duration, Instant};
    let path = Path::new("/run/netns").join(name);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    // SAFETY: setns on an open namespace fd, for this thread only.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns {name}: {}", std::io::Error::last_os_error());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tools_and_names_the_missing_one() {
        assert!(have("sh"));
        assert_eq!(
            missing_tools(&["sh", "no-such-tool-here"]).as_deref(),
            Some("no-such-tool-here is not installed")
        );
        assert_eq!(missing_tools(&["sh"]), None);
    }

    #[test]
    fn a_skip_fails_under_ci_and_names_the_test() {
        // The only test here that reads CI: setting it cannot disturb another.
        std::env::set_var("CI", "true");
        let panic = std::panic::catch_unwind(|| skip("frobnicator is not installed"));
        std::env::remove_var("CI");
        let message = panic.unwrap_err();
        let message = message.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("a_skip_fails_under_ci_and_names_the_test")
                && message.contains("frobnicator is not installed"),
            "{message}"
        );
        skip("not under CI: only a line on stderr");
    }

    #[test]
    fn run_returns_stdout_and_fails_naming_the_command() {
        assert_eq!(
            run(Command::new("sh").args(["-c", "echo out; echo err >&2"])),
            "out\n"
        );
        let panic = std::panic::catch_unwind(|| {
            run(Command::new("sh").args(["-c", "echo said; echo why >&2; exit 3"]))
        });
        let message = panic.unwrap_err();
        let message = message.downcast_ref::<String>().unwrap();
        assert!(
            message.contains("exit status: 3")
                && message.contains("said")
                && message.contains("why")
                && message.contains("\"sh\""),
            "{message}"
        );
    }

    #[test]
    fn the_test_name_is_the_thread_name() {
        assert!(test_name().ends_with("the_test_name_is_the_thread_name"));
    }
}
