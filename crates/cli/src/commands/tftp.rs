//! `diskless tftp`: the TFTP server alone, like in.tftpd.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use diskless_tftp::server::{self, ServerConfig};

/// Serve a directory read-only over TFTP (RFC 1350, 2347-2349, 7440).
#[derive(Debug, Clone, clap::Args)]
pub struct TftpArgs {
    /// Directory to serve; requests cannot leave it.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,
    /// Address and port to listen on.
    #[arg(long, value_name = "ADDR:PORT", default_value = "0.0.0.0:69")]
    pub listen: SocketAddr,
    /// Largest block size granted to clients (8..=65464).
    #[arg(long, default_value_t = diskless_tftp::wire::MAX_BLKSIZE,
          value_parser = clap::value_parser!(u16).range(8..=65464))]
    pub max_blksize: u16,
    /// Largest window size granted to clients (RFC 7440).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_windowsize: u16,
    /// Transfers running at once; more requests are dropped until one ends.
    #[arg(long, default_value_t = server::DEFAULT_MAX_TRANSFERS)]
    pub max_transfers: usize,
    /// Shortest retransmission timeout in milliseconds (the timer adapts to the
    /// measured round trip above this floor).
    #[arg(long, default_value_t = 10)]
    pub min_rto_ms: u64,
}

impl TftpArgs {
    /// The server settings these flags describe.
    pub fn config(&self) -> anyhow::Result<ServerConfig> {
        anyhow::ensure!(
            self.root.is_dir(),
            "--root {} is not a directory",
            self.root.display()
        );
        let mut config = ServerConfig::new(&self.root);
        config.session.max_blksize = self.max_blksize;
        config.session.max_windowsize = self.max_windowsize;
        config.session.rtt.min = Duration::from_millis(self.min_rto_ms);
        config.max_transfers = self.max_transfers;
        Ok(config)
    }
}

/// Runs the server until Ctrl-C or SIGTERM.
pub async fn run(args: TftpArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let socket =
        server::bind(args.listen).with_context(|| format!("binding UDP {}", args.listen))?;
    server::serve(socket, config, shutdown_signal())
        .await
        .with_context(|| format!("serving {} on {}", args.root.display(), args.listen))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// `run` on a runtime of its own, for the synchronous command dispatch in main.
pub fn run_blocking(args: TftpArgs) -> anyhow::Result<std::process::ExitCode> {
    tokio::runtime::Runtime::new()?.block_on(run(args))?;
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: TftpArgs,
    }

    #[test]
    fn flags() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let c = Cli::try_parse_from(["x", "--root", "/tmp"]).unwrap();
        assert_eq!(c.args.listen, "0.0.0.0:69".parse().unwrap());
        assert!(Cli::try_parse_from(["x", "--root", "/tmp", "--max-blksize", "4"]).is_err());
        assert!(Cli::try_parse_from(["x"]).is_err());
    }
}
