//! `diskless wake`: magic packets for clients named in the config, MACs, or every client.

use super::serve::{resolve, ServeArgs};
use anyhow::{bail, Context, Result};
use clap::Args;
use diskless_boot::{Config, Mac};
use diskless_wake::Sender;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct WakeArgs {
    /// Clients to wake: hostnames of the config's [[client]] entries, or MAC addresses.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub targets: Vec<String>,
    /// Wake every [[client]] of the config.
    #[arg(long)]
    pub all: bool,
    /// Interface to send on (config: interface).
    #[arg(long)]
    pub interface: Option<String>,
    /// Config file; default /etc/diskless/diskless.toml when it exists.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

/// The MACs `targets` name, in order, without repeats: a config hostname, or a MAC address.
pub fn macs_to_wake(config: &Config, targets: &[String], all: bool) -> Result<Vec<Mac>> {
    if all {
        if config.clients.is_empty() {
            bail!("--all: the config has no [[client]] entries");
        }
        return Ok(config.clients.iter().map(|c| c.mac).collect());
    }
    let mut macs = Vec::new();
    for target in targets {
        let by_name = config
            .clients
            .iter()
            .find(|c| c.hostname.as_deref() == Some(target.as_str()));
        let mac = match by_name {
            Some(client) => client.mac,
            None => target.parse::<Mac>().map_err(|_| {
                anyhow::anyhow!(
                    "{target:?} is neither the hostname of a [[client]] in the config nor a MAC address"
                )
            })?,
        };
        if !macs.contains(&mac) {
            macs.push(mac);
        }
    }
    Ok(macs)
}

pub fn run(args: WakeArgs) -> Result<ExitCode> {
    let config = resolve(&ServeArgs {
        config: args.config.clone(),
        interface: args.interface.clone(),
        ..Default::default()
    })?;
    let macs = macs_to_wake(&config, &args.targets, args.all)?;
    let Some(interface) = config.interface.as_deref() else {
        bail!("no interface to send on: use --interface or set interface in the config");
    };
    let sender = Sender::open(interface)?;
    if let Some(why) = sender.ethernet_unavailable() {
        eprintln!("diskless wake: UDP broadcast only: {why}");
    }
    for mac in macs {
        sender.send(mac).with_context(|| format!("waking {mac}"))?;
        let name = config
            .clients
            .iter()
            .find(|c| c.mac == mac)
            .and_then(|c| c.hostname.as_deref());
        match name {
            Some(name) => println!("woke {name} ({mac}) on {interface}"),
            None => println!("woke {mac} on {interface}"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn config() -> Config {
        Config::parse(
            "[[client]]\nmac = \"52:54:00:00:00:01\"\nhostname = \"pc1\"\n\
             [[client]]\nmac = \"52:54:00:00:00:02\"\nhostname = \"pc2\"\n",
            Path::new("t.toml"),
        )
        .unwrap()
    }

    #[test]
    fn names_macs_and_all() {
        let cfg = config();
        let names = |t: &[&str]| {
            let t: Vec<String> = t.iter().map(|s| s.to_string()).collect();
            macs_to_wake(&cfg, &t, false)
                .map(|m| m.iter().map(|m| m.to_string()).collect::<Vec<_>>())
        };
        assert_eq!(
            names(&["pc2", "aa-bb-cc-dd-ee-ff", "52:54:00:00:00:02"]).unwrap(),
            ["52:54:00:00:00:02", "aa:bb:cc:dd:ee:ff"]
        );
        let err = names(&["pc9"]).unwrap_err().to_string();
        assert!(err.contains("\"pc9\" is neither"), "{err}");
        assert_eq!(macs_to_wake(&cfg, &[], true).unwrap().len(), 2);
        let err = macs_to_wake(&Config::default(), &[], true).unwrap_err();
        assert!(err.to_string().contains("no [[client]]"), "{err}");
    }
}
