//! Running the Debian tools we build on, with errors that say exactly what ran and what it said.

use std::fmt;
use std::process::{Command, Stdio};

/// A tool that could not start or exited non-zero.
#[derive(Debug)]
pub struct CommandError {
    /// The full command line.
    pub argv: String,
    /// Why it failed: "not found", "exit status 1", ...
    pub reason: String,
    /// The tail of its standard error.
    pub stderr: String,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {}", self.argv, self.reason)?;
        if !self.stderr.trim().is_empty() {
            write!(f, "\n---\n{}\n---", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

impl std::error::Error for CommandError {}

/// The command line as a shell would show it.
pub fn argv(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn tail(text: &[u8]) -> String {
    let text = String::from_utf8_lossy(text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Run to completion, capturing output; stdout is returned, stderr shown only on failure.
pub fn output(cmd: &mut Command) -> Result<String, CommandError> {
    let out = complete(cmd.stdin(Stdio::null()))?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Run with stdout passed through (for tools whose progress the user should see) and stderr
/// captured for the error.
pub fn run_visible(cmd: &mut Command) -> Result<(), CommandError> {
    complete(
        cmd.stdin(Stdio::null())
            .stdout(Stdio::inherit())
            .stderr(Stdio::piped()),
    )?;
    Ok(())
}

/// Wait for the command; a failure to start or a non-zero exit becomes a CommandError.
fn complete(cmd: &mut Command) -> Result<std::process::Output, CommandError> {
    let shown = argv(cmd);
    let out = cmd.output().map_err(|e| CommandError {
        argv: shown.clone(),
        reason: start_reason(&e),
        stderr: String::new(),
    })?;
    if !out.status.success() {
        return Err(CommandError {
            argv: shown,
            reason: out.status.to_string(),
            stderr: tail(&out.stderr),
        });
    }
    Ok(out)
}

pub(crate) fn start_reason(e: &std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        "not found: install it (scripts/install-deps lists the Debian packages)".to_string()
    } else {
        format!("could not start: {e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_keeps_argv_and_stderr() {
        let err = output(Command::new("sh").args(["-c", "echo boom >&2; exit 3"])).unwrap_err();
        assert_eq!(err.argv, "sh -c echo boom >&2; exit 3");
        assert!(err.reason.contains('3'), "{}", err.reason);
        assert_eq!(err.stderr, "boom");
        assert!(err.to_string().contains("boom"));
    }

    #[test]
    fn missing_tool_says_so() {
        let err = output(&mut Command::new("diskless-no-such-tool")).unwrap_err();
        assert!(err.reason.starts_with("not found"), "{}", err.reason);
    }

    #[test]
    fn success_returns_stdout() {
        assert_eq!(output(Command::new("echo").arg("hi")).unwrap(), "hi\n");
    }
}
