//! Run the DHCP server by hand, for trying it with real firmware:
//!
//! ```text
//! serve INTERFACE SERVER_IP full FIRST LAST [LEASE_FILE]
//! serve INTERFACE SERVER_IP proxy
//! ```
//!
//! The netmask is /24 and the policy is the crate's `TestPolicy` (BIOS
//! `undionly.kpxe`, UEFI `ipxe.efi`, iPXE `http://SERVER/boot/MAC.ipxe`).
//! Stops on Ctrl-C.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use diskless_dhcp::{fuzzing::TestPolicy, run, DhcpConfig, DhcpSockets, Mode};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "debug".into()),
        )
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: serve IFACE SERVER_IP (full FIRST LAST [LEASE_FILE] | proxy)";
    let ip = |s: &String| -> Ipv4Addr { s.parse().expect(usage) };
    let (iface, server, mode) = match args.as_slice() {
        [i, s, m, ..] => (i.clone(), ip(s), m.as_str()),
        _ => panic!("{usage}"),
    };
    let (mode, range, leases) = match (mode, &args[3..]) {
        ("full", [a, b, rest @ ..]) => (
            Mode::Full,
            Some((ip(a), ip(b))),
            rest.first().map(Into::into),
        ),
        ("proxy", []) => (Mode::Proxy, None, None),
        _ => panic!("{usage}"),
    };
    let config = DhcpConfig {
        mode,
        server_ip: server,
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        router: None,
        dns: vec![],
        domain: None,
        range,
        lease_time: Duration::from_secs(3600),
        reservations: vec![],
    };
    let policy = Arc::new(TestPolicy::new(server));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let result = match DhcpSockets::bind(&iface, mode) {
        Ok(sockets) => run(sockets, config, leases, policy, None, shutdown).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
