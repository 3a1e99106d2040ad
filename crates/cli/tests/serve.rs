//! `diskless serve` as a sysadmin starts it, in network namespaces of its own (no QEMU):
//! started as root it becomes a plain user with two capabilities and still serves; with
//! `unknown_clients = "ignore"` it answers a listed client on its link and refuses another
//! (HTTP 403, TFTP access violation). Needs root, `ip` (iproute2) and `useradd` (passwd).

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The system user the tests run the server as (created when missing, kept afterwards: a
/// system user with no home and no shell).
const TEST_USER: &str = "diskless-test";

/// Whether the test can run; under CI=true a missing prerequisite fails it.
fn prerequisites() -> bool {
    diskless_testkit::root_with_tools(&["ip", "useradd", "id"])
}

fn must(args: &[&str]) -> String {
    common::run(Command::new(args[0]).args(&args[1..]))
}

/// `TEST_USER`'s uid, gid and groups, the user made first if missing (once: the tests of
/// this file run on threads of one process, and two useradd at once would collide).
fn test_user() -> (u32, u32, Vec<u32>) {
    static USER: std::sync::OnceLock<(u32, u32, Vec<u32>)> = std::sync::OnceLock::new();
    USER.get_or_init(make_test_user).clone()
}

fn make_test_user() -> (u32, u32, Vec<u32>) {
    let exists = Command::new("id")
        .arg(TEST_USER)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    if !exists {
        must(&[
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            TEST_USER,
        ]);
    }
    let number = |flag: &str| must(&["id", flag, TEST_USER]).trim().parse().unwrap();
    let groups = must(&["id", "-G", TEST_USER])
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    (number("-u"), number("-g"), groups)
}

/// A network namespace with its loopback up; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Netns {
        let ns = Netns(format!("dl{tag}{}", std::process::id()));
        must(&["ip", "netns", "add", &ns.0]);
        must(&["ip", "-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    /// Run `f` on a thread inside the namespace (its sockets are the namespace's).
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let name = self.0.clone();
        std::thread::spawn(move || {
            common::enter_netns(&name);
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A `diskless serve` in a namespace, its log in a file; stopped on drop.
struct Server {
    child: Child,
    log: PathBuf,
}

impl Server {
    fn start(ns: &Netns, config: &Path, user: &str, log: PathBuf) -> Server {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.0])
            .arg(env!("CARGO_BIN_EXE_diskless"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--user", user]);
        Server::spawn(cmd, log)
    }

    /// `cmd` (a `diskless serve` that executes in place), until it says it is starting.
    fn spawn(mut cmd: Command, log: PathBuf) -> Server {
        let out = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        // `ip netns exec` executes the command in place: the child is the server.
        let mut server = Server { child, log };
        server.wait_for("diskless server starting");
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log says `what` (a server that stops first fails the test).
    fn wait_for(&mut self, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.log().contains(what) {
            // Reaped here: a server that died is not left a zombie that still has /proc/PID.
            let exited = self.child.try_wait().unwrap().is_some();
            assert!(
                !exited && Instant::now() < deadline,
                "the server never said {what:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `field` in a /proc status file.
fn field<'a>(status: &'a str, field: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in\n{status}"))
        .trim()
}

/// The status file of every thread of process `pid` (capabilities are per thread), by path.
fn thread_statuses(pid: u32) -> Vec<(PathBuf, String)> {
    let tasks: Vec<(PathBuf, String)> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let status = std::fs::read_to_string(path.join("status")).unwrap();
            (path, status)
        })
        .collect();
    assert!(tasks.len() > 1, "tokio's workers are threads: {tasks:?}");
    tasks
}

/// A directory every user may enter (tempdir makes 0700 ones), holding a config for the
/// loopback of a namespace, ports 80 and 69 (below 1024: a capability is needed).
fn workdir(extra: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let config = dir.path().join("diskless.toml");
    std::fs::write(
        &config,
        format!(
            "interface = \"lo\"\nmode = \"proxy\"\nstore = \"{0}/store\"\nstate = \"{0}/state\"\n\
             http_port = 80\ntftp_port = 69\nadmin_listen = \"off\"\n{extra}",
            dir.path().display()
        ),
    )
    .unwrap();
    (dir, config)
}

#[test]
fn serve_started_as_root_runs_as_its_user_with_two_capabilities() {
    if !prerequisites() {
        return;
    }
    let (uid, gid, groups) = test_user();
    let (dir, config) = workdir("");
    // A state directory an earlier run as root left: it becomes the user's.
    let state = dir.path().join("state");
    std::fs::create_dir(&state).unwrap();
    // (A valid report key: 32 bytes.)
    std::fs::write(state.join("report.key"), [7u8; 32]).unwrap();
    let ns = Netns::new("priv");
    let mut server = Server::start(&ns, &config, TEST_USER, dir.path().join("serve.log"));

    // It serves, on a port only CAP_NET_BIND_SERVICE could bind.
    serves_http(&ns);

    // Every thread, not only the main one: capabilities are per thread.
    for (task, status) in &thread_statuses(server.pid()) {
        let ids = |name| {
            field(status, name)
                .split_whitespace()
                .map(|n| n.parse::<u32>().unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(ids("Uid"), [uid; 4], "{}: {status}", task.display());
        assert_eq!(ids("Gid"), [gid; 4], "{}: {status}", task.display());
        let mut have = ids("Groups");
        let mut want = groups.clone();
        have.sort_unstable();
        want.sort_unstable();
        assert_eq!(have, want, "the user's groups, no one else's");
        // CAP_NET_BIND_SERVICE (10) and CAP_NET_RAW (13): 0x400 | 0x2000.
        for (set, value) in [
            ("CapEff", "0000000000002400"),
            ("CapPrm", "0000000000002400"),
            ("CapBnd", "0000000000002400"),
            ("CapInh", "0000000000000000"),
            ("CapAmb", "0000000000000000"),
            ("NoNewPrivs", "1"),
        ] {
            assert_eq!(field(status, set), value, "{set} of {}", task.display());
        }
    }

    // What it writes is its own: the state directory and the store's iPXE copies.
    for path in [
        state.clone(),
        state.join("report.key"),
        dir.path().join("store/ipxe"),
        dir.path().join("store/ipxe/ipxe.efi"),
    ] {
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{}", path.display());
    }
    assert_eq!(std::fs::metadata(&state).unwrap().mode() & 0o777, 0o700);

    // SIGHUP still re-reads the config, as the user.
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str("[[client]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"pc01\"\n");
    std::fs::write(&config, text).unwrap();
    // SAFETY: a signal to the server we started.
    assert_eq!(unsafe { libc::kill(server.pid() as i32, libc::SIGHUP) }, 0);
    server.wait_for("config re-read on SIGHUP");
}

/// Asserts `want` (field, value) in the status of every thread of `pid`.
fn assert_every_thread(pid: u32, want: &[(&str, &str)]) {
    for (task, status) in &thread_statuses(pid) {
        for (set, value) in want {
            assert_eq!(field(status, set), *value, "{set} of {}", task.display());
        }
    }
}

/// The index page from port 80 in `ns`: the server bound its sockets (DHCP's first).
fn serves_http(ns: &Netns) {
    let body = ns.run(|| {
        ureq::get("http://127.0.0.1:80/")
            .call()
            .expect("the server answers HTTP")
            .into_body()
            .read_to_string()
            .unwrap()
    });
    assert_eq!(body, "diskless boot server\n");
}

/// CAP_NET_RAW serves the router advertisements' raw socket only (issue 22): with
/// `ipv6_ra = false` the server keeps CAP_NET_BIND_SERVICE alone and still binds DHCP (ports
/// 67 and 4011, SO_BINDTODEVICE), TFTP and HTTP, whether started as root (it becomes its
/// user) or as the unit starts it (the user with both capabilities ambient, under
/// no_new_privs: it gives CAP_NET_RAW up); with them on it keeps both.
#[test]
fn without_router_advertisements_the_server_keeps_no_cap_net_raw() {
    if !prerequisites() || !diskless_testkit::root_with_tools(&["setpriv"]) {
        return;
    }
    let (uid, gid, _) = test_user();
    let bind_only = "0000000000000400";
    let both = "0000000000002400";
    let none = "0000000000000000";

    // Started as root.
    let (dir, config) = workdir("ipv6_ra = false\n");
    let ns = Netns::new("hdnoraw");
    let server = Server::start(&ns, &config, TEST_USER, dir.path().join("serve.log"));
    serves_http(&ns);
    assert_every_thread(
        server.pid(),
        &[
            ("CapEff", bind_only),
            ("CapPrm", bind_only),
            ("CapBnd", bind_only),
            ("CapInh", none),
            ("CapAmb", none),
        ],
    );
    assert!(
        server
            .log()
            .contains("running as diskless-test with CAP_NET_BIND_SERVICE only"),
        "{}",
        server.log()
    );
    drop(server);

    // As packaging/diskless.service starts it.
    for (extra, kept) in [("ipv6_ra = false\n", bind_only), ("", both)] {
        let (dir, config) = workdir(extra);
        // What StateDirectory= and tmpfiles.conf make: the state and the store's ipxe/ the
        // user's, the images root's.
        for sub in ["state", "store/ipxe", "store/images"] {
            std::fs::create_dir_all(dir.path().join(sub)).unwrap();
        }
        for sub in ["state", "store/ipxe"] {
            std::os::unix::fs::chown(dir.path().join(sub), Some(uid), Some(gid)).unwrap();
        }
        let ns = Netns::new("hdunit");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &ns.0, "setpriv"])
            .args(["--reuid", TEST_USER, "--regid", TEST_USER, "--init-groups"])
            .args(["--inh-caps", "+net_bind_service,+net_raw"])
            .args(["--ambient-caps", "+net_bind_service,+net_raw"])
            .args(["--bounding-set", "-all,+net_bind_service,+net_raw"])
            .arg("--no-new-privs")
            .arg(env!("CARGO_BIN_EXE_diskless"))
            .arg("serve")
            .arg("--config")
            .arg(&config);
        let server = Server::spawn(cmd, dir.path().join("serve.log"));
        serves_http(&ns);
        assert_every_thread(
            server.pid(),
            &[
                ("Uid", &format!("{uid}\t{uid}\t{uid}\t{uid}")),
                ("CapEff", kept),
                ("CapPrm", kept),
                // Lowering the bounding set needs CAP_SETPCAP; the permitted set is what
                // counts under no_new_privs.
                ("CapBnd", both),
                ("CapInh", none),
                ("CapAmb", none),
                ("NoNewPrivs", "1"),
            ],
        );
    }
}

#[test]
fn serve_names_a_missing_user_and_a_config_it_could_not_read_again() {
    if !prerequisites() {
        return;
    }
    test_user();
    let (dir, config) = workdir("");
    let ns = Netns::new("nouser");
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(env!("CARGO_BIN_EXE_diskless"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--user", "diskless-no-such-user"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("\"diskless-no-such-user\"") && stderr.contains("useradd --system"),
        "{stderr}"
    );
    // A config only root can read: SIGHUP could not re-read it, so the server does not start.
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o600)).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.0])
        .arg(env!("CARGO_BIN_EXE_diskless"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--user", TEST_USER])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&config.display().to_string())
            && stderr.contains("not readable by user diskless-test"),
        "{stderr}"
    );
    drop(dir);
}

#[test]
fn a_second_server_on_the_same_state_stops_and_names_the_first() {
    if !prerequisites() {
        return;
    }
    test_user();
    let (dir, config) = workdir("");
    let first_ns = Netns::new("lock1");
    let first = Server::start(&first_ns, &config, TEST_USER, dir.path().join("first.log"));
    // In a namespace of its own, where every port is free: only the state is shared.
    let second_ns = Netns::new("lock2");
    let mut second = Command::new("ip")
        .args(["netns", "exec", &second_ns.0])
        .arg(env!("CARGO_BIN_EXE_diskless"))
        .args(["serve", "--config"])
        .arg(&config)
        .args(["--user", TEST_USER])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A second server that is not stopped serves until killed: bounded, so that it fails
    // the test rather than hanging it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while second.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = second.kill();
    let out = second.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "the state directory {}/state is in use by another diskless serve (PID {},",
            dir.path().display(),
            first.pid()
        )),
        "{stderr}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("diskless server starting")
            && !stderr.contains("diskless server starting"),
        "it stopped before serving: {stdout}{stderr}"
    );
    // The lock ends with the first server: a new one starts on the same state.
    drop(first);
    let third = Server::start(&second_ns, &config, TEST_USER, dir.path().join("third.log"));
    drop(third);
    drop(dir);
}

/// A boot link: the server's namespace with a bridge, two client namespaces on it, each
/// with a MAC of its own. Everything is deleted on drop (the namespaces take their links).
struct Lan {
    server: Netns,
    clients: Vec<Netns>,
}

impl Lan {
    /// Server 10.78.0.1 on `br0`; clients (ADDRESS, MAC) on their `eth0`.
    fn new(clients: [(&'static str, &'static str); 2]) -> Lan {
        let server = Netns::new("lan");
        let ip = |ns: &Netns, args: &[&str]| {
            let mut all = vec!["ip", "-n", &ns.0];
            all.extend_from_slice(args);
            must(&all);
        };
        ip(&server, &["link", "add", "br0", "type", "bridge"]);
        ip(&server, &["addr", "add", "10.78.0.1/24", "dev", "br0"]);
        ip(&server, &["link", "set", "br0", "up"]);
        let mut lan = Lan {
            server,
            clients: Vec::new(),
        };
        for (i, (addr, mac)) in clients.into_iter().enumerate() {
            let ns = Netns::new(&format!("c{i}"));
            let port = format!("c{i}");
            ip(
                &lan.server,
                &[
                    "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", &ns.0,
                ],
            );
            ip(&lan.server, &["link", "set", &port, "master", "br0", "up"]);
            ip(&ns, &["link", "set", "eth0", "address", mac]);
            ip(&ns, &["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
            ip(&ns, &["link", "set", "eth0", "up"]);
            lan.clients.push(ns);
        }
        lan
    }
}

/// The first packet the TFTP server sends for a read request of `file` from inside `ns`.
fn tftp_first_packet(ns: &Netns, file: &'static str) -> Vec<u8> {
    ns.run(move || {
        let socket = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut rrq = vec![0, 1];
        rrq.extend_from_slice(file.as_bytes());
        rrq.extend_from_slice(b"\0octet\0");
        socket.send_to(&rrq, "10.78.0.1:69").unwrap();
        let mut buf = [0u8; 1024];
        let (n, _) = socket.recv_from(&mut buf).expect("a TFTP answer");
        buf[..n].to_vec()
    })
}

/// The HTTP status of GET `path` from inside `ns`.
fn http_status(ns: &Netns, path: &'static str) -> u16 {
    ns.run(
        move || match ureq::get(&format!("http://10.78.0.1:80{path}")).call() {
            Ok(response) => response.status().as_u16(),
            Err(ureq::Error::StatusCode(code)) => code,
            Err(e) => panic!("GET {path}: {e}"),
        },
    )
}

#[test]
fn ignored_unknown_clients_get_403_and_access_violation_the_listed_one_is_served() {
    if !prerequisites() {
        return;
    }
    test_user();
    let listed = ("10.78.0.11", "52:54:00:00:00:01");
    let stranger = ("10.78.0.12", "52:54:00:00:00:02");
    let lan = Lan::new([listed, stranger]);
    let (dir, config) = workdir(&format!(
        "[boot]\nunknown_clients = \"ignore\"\n[[client]]\nmac = \"{}\"\n",
        listed.1
    ));
    // Full mode: the server also answers router solicitations, on a raw ICMPv6 socket that
    // only CAP_NET_RAW opens.
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("interface = \"lo\"", "interface = \"br0\"")
        .replace("mode = \"proxy\"", "mode = \"full\"");
    std::fs::write(&config, text).unwrap();
    // As the service runs: a user, mapping peers from the neighbour table.
    let mut server = Server::start(
        &lan.server,
        &config,
        TEST_USER,
        dir.path().join("serve.log"),
    );
    server.wait_for("answering IPv6 router solicitations");

    let (listed_ns, stranger_ns) = (&lan.clients[0], &lan.clients[1]);
    for path in ["/ipxe/ipxe.efi", "/api/clients"] {
        assert_eq!(http_status(listed_ns, path), 200, "{path}");
        assert_eq!(http_status(stranger_ns, path), 403, "{path}");
    }
    // The script of the listed client, asked by the stranger in its name: refused too.
    assert_eq!(
        http_status(stranger_ns, "/boot/52-54-00-00-00-01.ipxe"),
        403
    );
    assert_eq!(http_status(stranger_ns, "/"), 200, "the index is open");
    // TFTP: DATA block 1 for the listed client, ERROR 2 (access violation) for the other.
    let data = tftp_first_packet(listed_ns, "ipxe/ipxe.efi");
    assert_eq!(data[..4], [0, 3, 0, 1], "{data:?}");
    let error = tftp_first_packet(stranger_ns, "ipxe/ipxe.efi");
    assert_eq!(
        error[..4],
        [0, 5, 0, 2],
        "{}",
        String::from_utf8_lossy(&error)
    );
    let log = server.log();
    assert!(
        log.contains("refused (unknown_clients = \"ignore\")") && log.contains(stranger.1),
        "{log}"
    );
}

/// `serve --check` names the file, line, column, key and value of a config mistake, from a
/// value that does not parse (a UID range) to one listed twice (needs no root).
#[test]
fn check_names_where_a_config_mistake_is() {
    let dir = tempfile::tempdir().unwrap();
    for (text, expected) in [
        (
            "interface = \"eth0\"\n[accounts]\nuids = \"1000\"\n",
            ":3:8: accounts.uids: \"1000\" is not a range FIRST-LAST, like 1000-59999",
        ),
        (
            "[[subnet]]\ncidr = \"10.1.0.0/16\"\nimage_urls = []\n\
             [[subnet]]\ncidr = \"10.1.0.0/16\"\nimage_urls = []\n",
            ":5:8: subnet[1].cidr: subnet 10.1.0.0/16 is listed twice",
        ),
    ] {
        let config = dir.path().join("bad.toml");
        std::fs::write(&config, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_diskless"))
            .args(["serve", "--check", "--config"])
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let expected = format!("{}{expected}", config.display());
        assert!(stderr.contains(&expected), "{expected} not in: {stderr}");
    }
}
