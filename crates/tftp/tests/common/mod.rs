//! Helpers shared by the integration tests: an in-process server on its own thread
//! (optionally inside a network namespace), test files, external tools.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use diskless_tftp::server::{self, ServerConfig, TransferLog};

/// A server running until dropped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub logs: Arc<Mutex<Vec<TransferLog>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Serves `root` on `listen` (port 0 picks one).
    pub fn start(root: &Path, listen: &str) -> TestServer {
        Self::start_with(ServerConfig::new(root), listen, None)
    }

    /// Serves with `config`, inside network namespace `netns` if given.
    pub fn start_with(mut config: ServerConfig, listen: &str, netns: Option<&str>) -> TestServer {
        let logs = Arc::new(Mutex::new(Vec::new()));
        let l = Arc::clone(&logs);
        config.on_transfer_done = Some(Arc::new(move |log: &TransferLog| {
            l.lock().unwrap().push(log.clone());
        }));
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let listen: SocketAddr = listen.parse().unwrap();
        let netns = netns.map(str::to_owned);
        let thread = std::thread::spawn(move || {
            if let Some(ns) = netns {
                enter_netns(&ns);
            }
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let sock = server::bind(listen).unwrap();
                addr_tx.send(sock.local_addr().unwrap()).unwrap();
                server::serve(sock, config, async {
                    let _ = stop_rx.await;
                })
                .await
                .unwrap();
            });
        });
        let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        TestServer {
            addr,
            logs,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    /// Waits until `n` transfers have been logged (or 30 s), and returns the logs.
    pub fn wait_logs(&self, n: usize) -> Vec<TransferLog> {
        for _ in 0..3000 {
            if self.logs.lock().unwrap().len() >= n {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.logs.lock().unwrap().clone()
    }
}

impl TestServer {
    /// Waits until `pred` holds for the logs (or 60 s), and returns them.
    pub fn wait_for(&self, pred: impl Fn(&[TransferLog]) -> bool) -> Vec<TransferLog> {
        for _ in 0..6000 {
            if pred(&self.logs.lock().unwrap()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift), so a test file has no repeating blocks.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A temporary root with files `name -> contents`.
pub fn root_with(files: &[(&str, &[u8])]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    dir
}

#[allow(unused_imports)] // not every test file skips
pub use diskless_testkit::{check, enter_netns, have, skip};

/// Runs a command (killed after `secs`) and returns its output, with the command line
/// in the panic message if it cannot start.
pub fn run(secs: u32, argv: &[&str]) -> Output {
    let mut c = Command::new("timeout");
    c.arg("-k").arg("2").arg(secs.to_string()).args(argv);
    c.output()
        .unwrap_or_else(|e| panic!("running {argv:?}: {e}"))
}

/// Whether we can create network namespaces (root, iproute2, nft).
pub fn can_netns() -> bool {
    diskless_testkit::is_root() && have("ip") && have("nft")
}

/// Two namespaces joined by a veth pair: `server` at 10.X.0.1, `client` at 10.X.0.2,
/// with an optional nftables rule dropping `loss_percent` of packets in both directions
/// (on input of each side). Removed on drop.
pub struct NetnsPair {
    pub server: String,
    pub client: String,
    pub server_ip: String,
    pub client_ip: String,
}

impl NetnsPair {
    pub fn new(tag: &str, loss_percent: u32) -> NetnsPair {
        let pid = std::process::id();
        let server = format!("tftp{tag}s{pid}");
        let client = format!("tftp{tag}c{pid}");
        let octet = 100 + (pid % 100);
        let pair = NetnsPair {
            server_ip: format!("10.{octet}.0.1"),
            client_ip: format!("10.{octet}.0.2"),
            server,
            client,
        };
        // Clean a leftover from an earlier crash with the same pid.
        pair.cleanup();
        let veth_s = format!("vt{tag}{pid}s");
        let veth_c = format!("vt{tag}{pid}c");
        let sh = |cmd: String| {
            let out = run(20, &["sh", "-c", &cmd]);
            check(&out, &cmd);
        };
        sh(format!("ip netns add {}", pair.server));
        sh(format!("ip netns add {}", pair.client));
        sh(format!(
            "ip link add {veth_s} netns {} type veth peer name {veth_c} netns {}",
            pair.server, pair.client
        ));
        for (ns, dev, ip) in [
            (&pair.server, &veth_s, &pair.server_ip),
            (&pair.client, &veth_c, &pair.client_ip),
        ] {
            sh(format!("ip -n {ns} addr add {ip}/24 dev {dev}"));
            sh(format!("ip -n {ns} link set {dev} up"));
            sh(format!("ip -n {ns} link set lo up"));
            if loss_percent > 0 {
                sh(format!(
                    "ip netns exec {ns} nft -f - <<'EOF'\n\
                     table inet tftploss {{\n\
                       chain input {{ type filter hook input priority 0; policy accept;\n\
                         iifname \"{dev}\" meta l4proto udp numgen random mod 100 < {loss_percent} drop\n\
                       }}\n\
                     }}\nEOF"
                ));
            }
        }
        pair
    }

    fn cleanup(&self) {
        for ns in [&self.server, &self.client] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }

    /// Runs a command inside the client namespace.
    pub fn exec_client(&self, secs: u32, argv: &[&str]) -> Output {
        let mut v = vec!["ip", "netns", "exec", &self.client];
        v.extend_from_slice(argv);
        run(secs, &v)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        self.cleanup();
    }
}

/// Path of a file in a temp dir, as a string.
pub fn path_str(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// A fresh output path inside `dir`.
pub fn out_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
