//! The client's serial console: everything it prints is kept (and shown), and commands can
//! be typed into the shell that autologin gives on it.

use crate::{interrupted, Error};
use std::io::{Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

#[derive(Default)]
struct Shared {
    text: Vec<u8>,
    closed: bool,
}

pub struct Console {
    shared: Arc<(Mutex<Shared>, Condvar)>,
    input: Box<dyn Write + Send>,
    next_marker: u32,
}

impl Console {
    /// Start reading `output` on a thread; each byte is also written to `echo` (the user's
    /// terminal, a log file).
    pub fn start(
        mut output: impl Read + Send + 'static,
        input: impl Write + Send + 'static,
        mut echo: Vec<Box<dyn Write + Send>>,
    ) -> Console {
        let shared: Arc<(Mutex<Shared>, Condvar)> = Arc::default();
        let reader = shared.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            loop {
                let n = output.read(&mut buf).unwrap_or(0);
                for sink in echo.iter_mut() {
                    let _ = sink.write_all(&buf[..n]).and_then(|_| sink.flush());
                }
                let (lock, cond) = &*reader;
                let mut s = lock.lock().expect("console lock");
                if n == 0 {
                    s.closed = true;
                } else {
                    s.text.extend_from_slice(&buf[..n]);
                }
                cond.notify_all();
                if n == 0 {
                    break;
                }
            }
        });
        Console {
            shared,
            input: Box::new(input),
            next_marker: 0,
        }
    }

    /// Bytes received so far: a position to search from.
    pub fn position(&self) -> usize {
        self.shared.0.lock().expect("console lock").text.len()
    }

    /// Everything received from `from` on, as text.
    pub fn text_from(&self, from: usize) -> String {
        let s = self.shared.0.lock().expect("console lock");
        String::from_utf8_lossy(&s.text[from.min(s.text.len())..]).into_owned()
    }

    /// The last `n` lines, for error messages.
    pub fn tail(&self, n: usize) -> String {
        let text = self.text_from(0);
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Wait until one of `patterns` appears after `from`; returns its index and the position
    /// just after it.
    pub fn wait_for(
        &self,
        patterns: &[&str],
        from: usize,
        deadline: Instant,
    ) -> Result<(usize, usize), Error> {
        let (lock, cond) = &*self.shared;
        let mut s = lock.lock().expect("console lock");
        loop {
            let hay = &s.text[from.min(s.text.len())..];
            let hit = patterns
                .iter()
                .enumerate()
                .filter_map(|(i, p)| find(hay, p.as_bytes()).map(|at| (at, i, p.len())))
                .min();
            if let Some((at, i, len)) = hit {
                return Ok((i, from + at + len));
            }
            if s.closed {
                return Err(Error::ClientStopped);
            }
            if interrupted() {
                return Err(Error::Interrupted);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(Error::Timeout(format!("waiting for {patterns:?}")));
            }
            let wait = (deadline - now).min(Duration::from_millis(200));
            s = cond.wait_timeout(s, wait).expect("console lock").0;
        }
    }

    pub fn send(&mut self, text: &str) -> Result<(), Error> {
        self.input
            .write_all(text.as_bytes())
            .and_then(|_| self.input.flush())
            .map_err(|e| Error::Setup(format!("typing on the client console: {e}")))
    }

    /// Wait for a shell on the console (autologin) and make it easy to read: no echo, no
    /// bracketed-paste escapes, wide lines, no kernel messages in between.
    pub fn wait_for_shell(&mut self, deadline: Instant) -> Result<(), Error> {
        loop {
            let from = self.position();
            // The quotes keep the echoed command line from matching the marker.
            self.send(
                "\nstty -echo cols 500 2>/dev/null; bind 'set enable-bracketed-paste off' 2>/dev/null; \
                 dmesg -n 1 2>/dev/null; echo __DL_\"\"READY__\n",
            )?;
            let step = (Instant::now() + Duration::from_secs(3)).min(deadline);
            match self.wait_for(&["__DL_READY__"], from, step) {
                Ok(_) => return Ok(()),
                Err(Error::Timeout(_)) if Instant::now() < deadline => continue,
                Err(Error::Timeout(_)) => {
                    return Err(Error::Timeout(
                        "waiting for a shell on the serial console".into(),
                    ))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Run `command` in the client's shell; returns its output and exit status.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(String, i32), Error> {
        self.next_marker += 1;
        let n = self.next_marker;
        let from = self.position();
        self.send(&format!(
            "echo __DL_\"\"BEGIN_{n}__; {command}; echo __DL_\"\"END_{n}__ $?\n"
        ))?;
        let deadline = Instant::now() + timeout;
        let begin = format!("__DL_BEGIN_{n}__");
        let end = format!("__DL_END_{n}__ ");
        let (_, start) = self.wait_for(&[&begin], from, deadline)?;
        let (_, after_end) = self.wait_for(&[&end], start, deadline)?;
        // The exit status follows the end marker on the same line.
        let (_, eol) = self.wait_for(&["\n"], after_end, deadline)?;
        let text = self.text_from(start);
        let body = &text[..(after_end - end.len() - start).min(text.len())];
        let status_text = self.text_from(after_end);
        let status = status_text[..(eol - after_end).min(status_text.len())]
            .trim()
            .parse()
            .unwrap_or(-1);
        Ok((clean(body), status))
    }
}

/// Console text as a person reads it: no carriage returns, no terminal escape sequences.
pub fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                // CSI: ESC [ parameters final-byte
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.trim_matches('\n').to_string()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    /// A shell stands in for the client's console: same protocol, no VM.
    fn shell_console() -> (Console, std::process::Child) {
        let mut child = Command::new("sh")
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let console = Console::start(
            child.stdout.take().unwrap(),
            child.stdin.take().unwrap(),
            vec![],
        );
        (console, child)
    }

    #[test]
    fn runs_commands_and_returns_output_and_status() {
        let (mut console, mut child) = shell_console();
        let deadline = Instant::now() + Duration::from_secs(10);
        console.wait_for_shell(deadline).unwrap();
        let (out, rc) = console
            .run("printf 'a\\nb\\n'", Duration::from_secs(5))
            .unwrap();
        assert_eq!((out.as_str(), rc), ("a\nb", 0));
        let (out, rc) = console
            .run("echo oops; false", Duration::from_secs(5))
            .unwrap();
        assert_eq!((out.as_str(), rc), ("oops", 1));
        let _ = child.kill();
        let _ = child.wait();
    }

    #[test]
    fn clean_drops_escapes_and_carriage_returns() {
        assert_eq!(
            clean("\u{1b}[?2004h\r\noverlay /\r\n\u{1b}[0m"),
            "overlay /"
        );
    }

    #[test]
    fn wait_for_reports_a_closed_console_and_timeouts() {
        let (mut console, mut child) = shell_console();
        let soon = Instant::now() + Duration::from_millis(300);
        assert!(matches!(
            console.wait_for(&["never printed"], 0, soon),
            Err(Error::Timeout(_))
        ));
        console.send("exit\n").unwrap();
        let later = Instant::now() + Duration::from_secs(10);
        assert!(matches!(
            console.wait_for(&["never printed"], 0, later),
            Err(Error::ClientStopped)
        ));
        let _ = child.wait();
    }
}
