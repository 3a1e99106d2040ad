//! `diskless-fetch`: the helper our initramfs boot script calls.
//!
//! It runs before the root filesystem exists, inside Debian's stock initrd, so it is a single
//! static binary with no async runtime and no argument-parsing framework. Every failure is
//! printed as one line naming what failed and why; the boot script turns a non-zero exit into
//! an initramfs panic, so a partial or corrupt image is never mounted.
//!
//! ```text
//! diskless-fetch get (--sha256 HEX | --verity) --out FILE [--retries N] [--multicast JOIN_URL] URL [URL...]
//! diskless-fetch modload FILE.ko [FILE.ko...]
//! diskless-fetch loop FILE            prints the attached /dev/loopN
//! diskless-fetch verity FILE ROOTHASH DATA_BLOCKS:SALT
//!                                     FILE on a loop device through dm-verity: prints /dev/dm-N
//! diskless-fetch verity-status        V (all verified so far) or C (a block failed)
//! diskless-fetch (lazy|network) ROOTHASH DATA_BLOCKS:SALT [--ram FILE] [--report URL]
//!                [--multicast JOIN_URL] URL...
//!                                     the root served over NBD from the URLs (lazy: filling a
//!                                     RAM copy, from the multicast session first if given,
//!                                     then off the network): prints /dev/dm-N
//! diskless-fetch lazy-fill ROOTHASH DATA_BLOCKS:SALT --ram FILE URL...
//!                                     lazy's fetch without the kernel's devices (bench-storm)
//! diskless-fetch report URL STAGE [DETAIL]
//! diskless-fetch cat URL              a small text file (the lab's accounts) to stdout
//! ```

mod fetch;
mod http;
mod lazy;
mod loopdev;
mod modules;
mod multicast;
mod progress;
mod ram;
mod sink;
mod source;
mod tftp;
mod verity;

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("diskless-fetch: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<(), String> {
    let (command, rest) = args.split_first().ok_or_else(usage)?;
    match command.as_str() {
        "get" => fetch::run(parse_get(rest)?),
        "modload" => {
            if rest.is_empty() {
                return Err(usage());
            }
            rest.iter()
                .try_for_each(|path| modules::load(path.as_ref()))
        }
        "loop" => {
            let [file] = rest else { return Err(usage()) };
            let device = loopdev::attach_read_only(file.as_ref())?;
            println!("{}", device.display());
            Ok(())
        }
        "verity" => {
            let [file, root_hash, layout] = rest else {
                return Err(usage());
            };
            let params = verity::Params::parse(root_hash, layout)?;
            let device = loopdev::attach_read_only(file.as_ref())?;
            let mapped = verity::open(&device, &params, verity::DEVICE_NAME)?;
            println!("{}", mapped.display());
            Ok(())
        }
        "verity-status" => {
            let [] = rest else { return Err(usage()) };
            println!("{}", verity::status(verity::DEVICE_NAME)?);
            Ok(())
        }
        "lazy" => lazy::start(lazy::Mode::Lazy, rest),
        "network" => lazy::start(lazy::Mode::Network, rest),
        "lazy-fill" => lazy::fill_only(rest),
        "lazy-server" => lazy::serve(lazy::Mode::Lazy, rest),
        "network-server" => lazy::serve(lazy::Mode::Network, rest),
        "report" => {
            let (url, stage, detail) = match rest {
                [url, stage] => (url, stage, ""),
                [url, stage, detail] => (url, stage, detail.as_str()),
                _ => return Err(usage()),
            };
            // A report is best effort: the boot goes on whether the server heard it or not.
            if let Err(e) = http::post_report(url, stage, detail) {
                eprintln!("diskless: warning: report {stage} not delivered: {e}");
            }
            Ok(())
        }
        "cat" => {
            let [url] = rest else { return Err(usage()) };
            let text = http::get_whole(&source::Source::parse(url)?, MAX_CAT_BYTES)?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), &text)
                .map_err(|e| format!("writing {url} to stdout: {e}"))
        }
        "--help" | "-h" | "help" => {
            println!("{}", usage());
            Ok(())
        }
        other => Err(format!("unknown command {other:?}\n{}", usage())),
    }
}

/// The most `cat` reads: a lab's passwd is a few hundred bytes a user.
const MAX_CAT_BYTES: u64 = 4 << 20;

fn usage() -> String {
    "usage:\n  diskless-fetch get (--sha256 HEX | --verity) --out FILE [--retries N] [--multicast JOIN_URL] URL [URL...]\n  \
     diskless-fetch modload FILE.ko [FILE.ko...]\n  diskless-fetch loop FILE\n  \
     diskless-fetch verity FILE ROOTHASH DATA_BLOCKS:SALT\n  diskless-fetch verity-status\n  \
     diskless-fetch (lazy|network) ROOTHASH DATA_BLOCKS:SALT [--ram FILE] [--report URL] [--multicast JOIN_URL] URL...\n  \
     diskless-fetch lazy-fill ROOTHASH DATA_BLOCKS:SALT --ram FILE URL...\n  \
     diskless-fetch report URL STAGE [DETAIL]\n  diskless-fetch cat URL"
        .to_string()
}

/// The value after a `--flag` of a command line (`--out FILE`): the next argument.
fn flag_value(it: &mut std::slice::Iter<'_, String>, name: &str) -> Result<String, String> {
    it.next()
        .cloned()
        .ok_or_else(|| format!("{name} needs a value"))
}

fn parse_get(args: &[String]) -> Result<fetch::Request, String> {
    let mut sha256 = None;
    let mut verity = false;
    let mut out = None;
    let mut retries = 3u32;
    let mut report_url = None;
    let mut multicast = None;
    let mut urls = Vec::new();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = |name: &str| flag_value(&mut it, name);
        match arg.as_str() {
            "--sha256" => sha256 = Some(value("--sha256")?),
            "--verity" => verity = true,
            "--out" => out = Some(PathBuf::from(value("--out")?)),
            "--retries" => {
                let v = value("--retries")?;
                retries = v
                    .parse()
                    .map_err(|_| format!("--retries: {v:?} is not a number"))?;
            }
            "--report" => report_url = Some(value("--report")?),
            "--multicast" => multicast = Some(value("--multicast")?),
            flag if flag.starts_with("--") => return Err(format!("unknown option {flag}")),
            url => urls.push(url.to_string()),
        }
    }
    let expected = match (sha256, verity) {
        (Some(hex), false) => Some(fetch::parse_sha256(&hex)?),
        (None, true) => None,
        (Some(_), true) => return Err("get: --sha256 and --verity exclude each other".into()),
        (None, false) => {
            return Err(
                "get: --sha256 HEX or --verity is required (the image is never \
                        mounted unchecked)"
                    .into(),
            )
        }
    };
    let out = out.ok_or("get: --out FILE is required")?;
    if urls.is_empty() {
        return Err("get: no image URL given".into());
    }
    let sources = urls
        .iter()
        .map(|u| source::Source::parse(u))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(fetch::Request {
        sources,
        expected_sha256: expected,
        out,
        retries,
        report_url,
        multicast,
    })
}
