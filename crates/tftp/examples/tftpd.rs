//! A standalone server for benchmarks and manual tests (the product command is
//! `diskless tftp`): `tftpd ROOT [ADDR:PORT]`.

use diskless_tftp::server::{serve_addr, ServerConfig};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let mut args = std::env::args().skip(1);
    let root = args.next().expect("usage: tftpd ROOT [ADDR:PORT]");
    let listen = args.next().unwrap_or_else(|| "0.0.0.0:69".into());
    let config = ServerConfig::new(root);
    if let Err(e) = serve_addr(listen.parse().expect("ADDR:PORT"), config, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
    {
        eprintln!("tftpd: {e}");
        std::process::exit(1);
    }
}
