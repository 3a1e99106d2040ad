//! The QEMU Machine Protocol, for the one thing the harness asks of it: a screendump of the
//! client's display (QEMU's `screendump` command, docs/interop/qemu-qmp-ref).
//!
//! QMP is one JSON object per line: QEMU greets, the client negotiates capabilities, then each
//! command gets a `return` or an `error`; asynchronous `event` lines may come in between.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// The `-qmp` option value for a socket at `path` that QEMU listens on without waiting.
pub fn qmp_option(path: &Path) -> String {
    format!("unix:{},server=on,wait=off", path.display())
}

/// The screendump format for `file`, by its extension: PNG for `.png`, else PPM (QEMU's
/// default, binary P6).
pub fn screendump_format(file: &Path) -> &'static str {
    match file.extension().and_then(|e| e.to_str()) {
        Some(ext) if ext.eq_ignore_ascii_case("png") => "png",
        _ => "ppm",
    }
}

/// The QMP command that saves the display to `file`.
pub fn screendump_command(file: &Path) -> String {
    format!(
        r#"{{"execute":"screendump","arguments":{{"filename":"{}","format":"{}"}}}}"#,
        json_escape(&file.display().to_string()),
        screendump_format(file)
    )
}

fn json_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// Save the display of the QEMU listening on `socket` to `file` (absolute: QEMU writes it).
pub fn screendump(socket: &Path, file: &Path) -> Result<(), String> {
    let stream = UnixStream::connect(socket)
        .map_err(|e| format!("connecting to QMP at {}: {e}", socket.display()))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let mut writer = stream.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream);
    let greeting = read_line(&mut reader)?;
    if !greeting.contains("\"QMP\"") {
        return Err(format!("not a QMP greeting: {greeting}"));
    }
    for command in [
        r#"{"execute":"qmp_capabilities"}"#.to_string(),
        screendump_command(file),
    ] {
        writeln!(writer, "{command}").map_err(|e| format!("writing to QMP: {e}"))?;
        loop {
            let reply = read_line(&mut reader)?;
            match reply_kind(&reply) {
                Reply::Event => continue,
                Reply::Return => break,
                Reply::Error => return Err(format!("QMP {command}: {}", reply.trim())),
            }
        }
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
enum Reply {
    Return,
    Error,
    Event,
}

fn reply_kind(line: &str) -> Reply {
    if line.trim_start().starts_with("{\"return\"") {
        Reply::Return
    } else if line.contains("\"event\"") && !line.contains("\"error\"") {
        Reply::Event
    } else {
        Reply::Error
    }
}

fn read_line(reader: &mut impl BufRead) -> Result<String, String> {
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(0) => Err("QMP closed the connection".into()),
        Ok(_) => Ok(line),
        Err(e) => Err(format!("reading from QMP: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_follows_the_extension() {
        assert_eq!(screendump_format(Path::new("/l/greeter.png")), "png");
        assert_eq!(screendump_format(Path::new("/l/greeter.PNG")), "png");
        assert_eq!(screendump_format(Path::new("/l/greeter.ppm")), "ppm");
        assert_eq!(
            screendump_command(Path::new("/l/a\"b.png")),
            r#"{"execute":"screendump","arguments":{"filename":"/l/a\"b.png","format":"png"}}"#
        );
    }

    #[test]
    fn replies_events_and_errors() {
        assert_eq!(reply_kind("{\"return\": {}}\r\n"), Reply::Return);
        assert_eq!(
            reply_kind("{\"timestamp\": {\"seconds\": 1}, \"event\": \"NIC_RX_FILTER_CHANGED\"}"),
            Reply::Event
        );
        assert_eq!(
            reply_kind("{\"error\": {\"class\": \"GenericError\", \"desc\": \"no display\"}}"),
            Reply::Error
        );
    }

    /// A fake QMP server on a socket pair answers as QEMU 7.2 does.
    #[test]
    fn a_screendump_conversation() {
        let socket =
            std::env::temp_dir().join(format!("diskless-vm-qmp-test-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&socket);
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let server = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut out = stream.try_clone().unwrap();
            let mut lines = BufReader::new(stream).lines();
            writeln!(out, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
            let first = lines.next().unwrap().unwrap();
            writeln!(out, r#"{{"return": {{}}}}"#).unwrap();
            let second = lines.next().unwrap().unwrap();
            writeln!(out, r#"{{"timestamp": {{}}, "event": "RESUME"}}"#).unwrap();
            writeln!(out, r#"{{"return": {{}}}}"#).unwrap();
            (first, second)
        });
        screendump(&socket, Path::new("/tmp/x.png")).unwrap();
        let (first, second) = server.join().unwrap();
        let _ = std::fs::remove_file(&socket);
        assert_eq!(first, r#"{"execute":"qmp_capabilities"}"#);
        assert!(second.contains("\"screendump\"") && second.contains("/tmp/x.png"));
    }
}
