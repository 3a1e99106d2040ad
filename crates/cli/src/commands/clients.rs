//! `diskless clients`: the record the server keeps of every client's last boot.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct ClientsArgs {
    /// The server's state directory.
    #[arg(long, default_value = diskless_boot::config::DEFAULT_STATE)]
    pub state: PathBuf,
    /// Print the records as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: ClientsArgs) -> Result<ExitCode> {
    let path = diskless_server::clients_file(&args.state);
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
    println!(
        "{:<17}  {:<15}  {:<12}  {:<9}  {:<28}  {:<12}  timings (s)",
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
        println!(
            "{:<17}  {:<15}  {:<12}  {:<9}  {:<28}  {:<12}  {}",
            r.mac,
            r.ip.map(|i| i.to_string()).unwrap_or_else(|| "-".into()),
            r.hostname.as_deref().unwrap_or("-"),
            r.firmware.as_deref().unwrap_or("-"),
            image,
            r.stage(),
            timings.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
