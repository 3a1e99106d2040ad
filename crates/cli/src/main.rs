//! `diskless`: the command line. Each subcommand parses its flags here and hands off to the
//! library crate that does the work; errors are printed with their causes and exit code 1.

mod commands;
mod paths;
mod privileges;
mod state_lock;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// Boot Debian workstations from the network: a squashfs image under a RAM overlay.
#[derive(Parser)]
#[command(
    name = "diskless",
    version,
    help_expected = true,
    propagate_version = true
)]
struct Cli {
    /// More log output (-v: debug, -vv: trace); RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Make, list and manage root images.
    #[command(subcommand)]
    Image(commands::image::ImageCommand),
    /// Run the boot server (DHCP, TFTP, HTTP) on an interface.
    Serve(commands::serve::ServeArgs),
    /// Boot a QEMU workstation from an image, in a private network namespace.
    Vm(commands::vm::VmArgs),
    /// Bootstrap and build the default image if needed, then boot it in a VM.
    Demo(commands::demo::DemoArgs),
    /// Show every client's last boot: stages reached and their timings.
    Clients(commands::clients::ClientsArgs),
    /// Look inside initrds (ls, extract, cat), or make a tree's own initrd boot diskless.
    #[command(subcommand)]
    Initrd(commands::initrd::InitrdCommand),
    /// Run only the TFTP server, read-only, on a directory (like in.tftpd).
    Tftp(commands::tftp::TftpArgs),
    /// Wake clients with Wake-on-LAN magic packets (UDP broadcast and Ethernet 0x0842).
    Wake(commands::wake::WakeArgs),
    /// Write the man pages or a shell's completions (for packaging).
    #[command(subcommand, hide = true)]
    Generate(commands::generate::GenerateCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    // Colours only for a person at a terminal, not in log files.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.command {
        Command::Image(cmd) => commands::image::run(cmd),
        Command::Serve(args) => commands::serve::run(args),
        Command::Vm(args) => commands::vm::run(args),
        Command::Demo(args) => commands::demo::run(args),
        Command::Clients(args) => commands::clients::run(args),
        Command::Tftp(args) => commands::tftp::run_blocking(args),
        Command::Wake(args) => commands::wake::run(args),
        Command::Initrd(cmd) => commands::initrd::run(cmd).map(|()| ExitCode::SUCCESS),
        Command::Generate(cmd) => {
            commands::generate::run(cmd, Cli::command()).map(|()| ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("diskless: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_valid() {
        Cli::command().debug_assert();
    }
}
