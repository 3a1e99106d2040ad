//! `run` on sockets the test hands in (loopback, ephemeral ports): scripts follow a reloaded
//! site (one that ignores unknown clients refuses a peer it cannot identify), a report reaches the admin pages' JSON and metrics, every task stops on shutdown (an
//! open event stream included), and the client record is on disk when `run` returns.

use diskless_boot::Site;
use diskless_dhcp::DhcpSockets;
use diskless_server::{run, site_channel, Listeners, ReloadError};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn site(dir: &Path, boot: &str) -> Site {
    let text = format!(
        "interface = \"lo\"\nstore = {:?}\nstate = {:?}\n[ipxe]\ndir = {:?}\n\
         [boot]\nimage = \"lab\"\n{boot}",
        dir.join("store"),
        dir.join("state"),
        dir.join("ipxe")
    );
    let config = diskless_boot::Config::parse(&text, Path::new("test.toml")).unwrap();
    Site::resolve(&config, Ipv4Addr::LOCALHOST, Ipv4Addr::new(255, 0, 0, 0)).unwrap()
}

/// A loopback UDP socket on an ephemeral port.
fn udp() -> tokio::net::UdpSocket {
    let s = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    s.set_nonblocking(true).unwrap();
    tokio::net::UdpSocket::from_std(s).unwrap()
}

async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn scripts_follow_a_reload_and_everything_stops_on_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("ipxe")).unwrap();
    for file in ["undionly.kpxe", "ipxe.efi"] {
        std::fs::write(dir.path().join("ipxe").join(file), file).unwrap();
    }
    let listeners = Listeners {
        dhcp: DhcpSockets {
            dhcp: udp(),
            pxe: None,
            interface: "lo".into(),
        },
        tftp: udp(),
        http: tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap(),
        ra: None,
        admin: Some(
            tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .await
                .unwrap(),
        ),
    };
    let admin = listeners.admin.as_ref().unwrap().local_addr().unwrap();
    let http = listeners.http.local_addr().unwrap();
    let (handle, rx) = site_channel(site(dir.path(), ""));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listeners, rx, async {
        let _ = stopped.await;
    }));

    // No image "lab" in the store: the client is told so.
    let script = get(http, "/boot/52-54-00-12-34-56.ipxe").await;
    assert!(script.contains("image lab is not in the store"), "{script}");
    // Reloaded: unknown clients are ignored now, and the next request follows: a peer on
    // the loopback has no MAC the server can tell, so it is refused (and counted, below).
    handle
        .reload(site(dir.path(), "unknown_clients = \"ignore\"\n"))
        .unwrap();
    let script = get(http, "/boot/52-54-00-12-34-56.ipxe").await;
    assert!(script.starts_with("HTTP/1.0 403"), "{script}");
    handle.reload(site(dir.path(), "")).unwrap();
    // What needs new sockets is refused, and the running site stays.
    let mut moved = site(dir.path(), "");
    moved.http_port = 8080;
    assert!(matches!(
        handle.reload(moved),
        Err(ReloadError::RestartNeeded("ports"))
    ));
    // A report is recorded, and on disk once the server has stopped.
    let mut stream = tokio::net::TcpStream::connect(http).await.unwrap();
    let body = "stage=fetched&detail=ok";
    stream
        .write_all(
            format!(
                "POST /api/report/52-54-00-12-34-56 HTTP/1.0\r\nContent-Type: \
                 application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.0 200"), "{response}");

    // The admin side sees it (the recorder applies events on its own task: wait a little):
    // the JSON, the metrics; then a page's event stream is open at the stop.
    let fetched = "diskless_boot_stage_reached_total{image=\"-\",stage=\"fetched\"} 1";
    let mut metrics = String::new();
    for _ in 0..100 {
        metrics = get(admin, "/metrics").await;
        if metrics.contains(fetched) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(metrics.contains(fetched), "{metrics}");
    assert!(
        metrics.contains("diskless_access_refused_total{protocol=\"http\"} 1"),
        "{metrics}"
    );
    let clients = get(admin, "/api/clients").await;
    assert!(
        clients.contains("\"mac\":\"52:54:00:12:34:56\"")
            && clients.contains("\"stage\":\"fetched\""),
        "{clients}"
    );
    let mut events = tokio::net::TcpStream::connect(admin).await.unwrap();
    events
        .write_all(b"GET /api/events HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 64];
    let n = events.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"));

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("run returns after shutdown")
        .unwrap()
        .unwrap();
    let records = diskless_server::recorder::load(&dir.path().join("state/clients.json")).unwrap();
    let record = &records[&"52:54:00:12:34:56".parse().unwrap()];
    assert_eq!(record.stage(), "fetched");
    // The HTTP port is free again: the listener was dropped with its task.
    std::net::TcpListener::bind(http).expect("the HTTP listener is closed");
    std::net::TcpListener::bind(admin).expect("the admin listener is closed");
}
