//! `diskless clients`: the record the server keeps of every client's last boot, once, as JSON,
//! or live (`--watch`: redrawn each second from the file the server rewrites as stages come).

use anyhow::{Context, Result};
use clap::Args;
use diskless_boot::Mac;
use diskless_server::recorder::ClientRecord;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ClientsArgs {
    /// The server's state directory.
    #[arg(long, default_value = diskless_boot::config::DEFAULT_STATE)]
    pub state: PathBuf,
    /// Print the records as JSON.
    #[arg(long, conflicts_with = "watch")]
    pub json: bool,
    /// Redraw the table every second until interrupted (Ctrl-C).
    #[arg(long)]
    pub watch: bool,
}

pub fn run(args: ClientsArgs) -> Result<ExitCode> {
    let path = diskless_server::clients_file(&args.state);
    if args.watch {
        loop {
            let table = match diskless_server::recorder::load(&path) {
                Ok(records) => table(&records),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    format!(
                        "no client has booted yet ({} does not exist)\n",
                        path.display()
                    )
                }
                Err(e) => format!("reading {}: {e}\n", path.display()),
            };
            // Home, clear, then the table: one redraw per second, no scrolling.
            print!(
                "\x1b[H\x1b[2Jdiskless clients --watch: {} (Ctrl-C to stop)\n\n{table}",
                path.display()
            );
            std::io::Write::flush(&mut std::io::stdout())?;
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    let records = match diskless_server::recorder::load(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            println!(
                "no client has booted yet ({} does not exist)",
                path.display()
            );
            return Ok(ExitCode::SUCCESS);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table(&records));
    Ok(ExitCode::SUCCESS)
}

/// The records as a table, one line per client.
fn table(records: &BTreeMap<Mac, ClientRecord>) -> String {
    let mut out = format!(
        "{:<17}  {:<15}  {:<12}  {:<9}  {:<28}  {:<12}  timings (s)\n",
        "MAC", "IP", "HOSTNAME", "FIRMWARE", "IMAGE", "STAGE"
    );
    for r in records.values() {
        let image = match (&r.image, &r.version) {
            (Some(i), Some(v)) => format!("{i} {v}"),
            _ => "-".into(),
        };
        let timings: Vec<String> = r
            .stages
            .iter()
            .map(|s| format!("{} {:.1}", s.stage, s.at))
            .collect();
        out += &format!(
            "{:<17}  {:<15}  {:<12}  {:<9}  {:<28}  {:<12}  {}\n",
            r.mac.to_string(),
            r.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            r.hostname.as_deref().unwrap_or("-"),
            r.firmware.as_deref().unwrap_or("-"),
            image,
            r.stage(),
            timings.join(", ")
        );
        // The Secure Boot chain's shim refuses an unsigned kernel after GRUB: say it here,
        // where the admin looks, rather than leave a client stopped without a reason.
        if r.secure_boot && r.kernel_signed == Some(false) {
            out += &format!(
                "  warning: {} boots through Secure Boot but the kernel of {image} is not signed: \
                 shim will refuse it\n",
                r.mac
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secure_boot_clients_with_an_unsigned_kernel_get_a_warning() {
        let record = |last: u8, secure_boot: bool, kernel_signed: Option<bool>| ClientRecord {
            image: Some("lab".into()),
            version: Some("v1".into()),
            firmware: Some("uefi-pxe".into()),
            secure_boot,
            kernel_signed,
            ..ClientRecord::new(Mac([0x52, 0x54, 0, 0, 0, last]), 0.0)
        };
        let records: BTreeMap<Mac, ClientRecord> = [
            record(1, true, Some(false)),
            record(2, true, Some(true)),
            record(3, false, None),
        ]
        .into_iter()
        .map(|r| (r.mac, r))
        .collect();
        let text = table(&records);
        let warnings: Vec<&str> = text.lines().filter(|l| l.contains("warning")).collect();
        assert_eq!(
            warnings,
            [
                "  warning: 52:54:00:00:00:01 boots through Secure Boot but the kernel of lab v1 \
              is not signed: shim will refuse it"
            ],
            "{text}"
        );
    }
}
