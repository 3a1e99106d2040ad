//! Download progress on the console: percent, MB/s and time left, about once a second.

use std::time::{Duration, Instant};

pub struct Progress {
    total: Option<u64>,
    started: Instant,
    start_bytes: u64,
    last_print: Instant,
}

const INTERVAL: Duration = Duration::from_secs(1);

impl Progress {
    pub fn new(total: Option<u64>, already: u64) -> Progress {
        let now = Instant::now();
        Progress {
            total,
            started: now,
            start_bytes: already,
            last_print: now,
        }
    }

    pub fn update(&mut self, done: u64) {
        if self.last_print.elapsed() >= INTERVAL {
            self.last_print = Instant::now();
            eprintln!("diskless: {}", self.line(done, self.started.elapsed()));
        }
    }

    pub fn finish(&mut self, done: u64) {
        eprintln!("diskless: {}", self.line(done, self.started.elapsed()));
    }

    /// One progress line; pure so that its format is tested.
    pub fn line(&self, done: u64, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let rate = (done - self.start_bytes) as f64 / secs; // bytes per second
        match self.total {
            Some(total) if total > 0 => {
                let percent = done as f64 * 100.0 / total as f64;
                let eta = if rate > 0.0 {
                    format!("{:.0} s", (total.saturating_sub(done)) as f64 / rate)
                } else {
                    "?".to_string()
                };
                format!(
                    "{percent:5.1}% {} of {} at {:.1} MB/s, {eta} left",
                    Self::human_bytes(done),
                    Self::human_bytes(total),
                    rate / 1e6
                )
            }
            _ => format!("{} at {:.1} MB/s", Self::human_bytes(done), rate / 1e6),
        }
    }

    pub fn human_bytes(n: u64) -> String {
        format!("{:.1} MiB", n as f64 / (1024.0 * 1024.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_shows_percent_rate_and_eta() {
        let p = Progress::new(Some(100 * 1_000_000), 0);
        let line = p.line(50 * 1_000_000, Duration::from_secs(5));
        assert!(line.starts_with(" 50.0%"), "{line}");
        assert!(line.contains("10.0 MB/s"), "{line}");
        assert!(line.contains("5 s left"), "{line}");
    }

    #[test]
    fn line_without_total() {
        let p = Progress::new(None, 0);
        assert_eq!(
            p.line(2 * 1024 * 1024, Duration::from_secs(1)),
            "2.0 MiB at 2.1 MB/s"
        );
    }
}
