//! `run` on sockets the test hands in (loopback, ephemeral ports): scripts follow a reloaded
//! site, every task stops on shutdown, and the client record is on disk when `run` returns.

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
    };
    let http = listeners.http.local_addr().unwrap();
    let (handle, rx) = site_channel(site(dir.path(), ""));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listeners, rx, async {
        let _ = stopped.await;
    }));

    // No image "lab" in the store: the client is told so.
    let script = get(http, "/boot/52-54-00-12-34-56.ipxe").await;
    assert!(script.contains("image lab is not in the store"), "{script}");
    // Reloaded: unknown clients are ignored now, and the next request follows.
    handle
        .reload(site(dir.path(), "unknown_clients = \"ignore\"\n"))
        .unwrap();
    let script = get(http, "/boot/52-54-00-12-34-56.ipxe").await;
    assert!(
        script.contains("this client is not configured to boot here"),
        "{script}"
    );
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
}
