//! Download progress on the console: percent, MB/s and time left, about once a second (or
//! as often as [`Progress::every`] says), optionally naming what it counts.

use std::time::{Duration, Instant};

pub struct Progress {
    total: Option<u64>,
    started: Instant,
    start_bytes: u64,
    last_print: Instant,
    interval: Duration,
    /// Said before the figures: `diskless: TITLE: 45.0% ...`.
    title: Option<&'static str>,
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
            interval: INTERVAL,
            title: None,
        }
    }

    /// A line at most every `interval` instead of every second.
    pub fn every(self, interval: Duration) -> Progress {
        Progress { interval, ..self }
    }

    /// Lines that say what they count: `diskless: TITLE: 45.0% ...`.
    pub fn titled(self, title: &'static str) -> Progress {
        Progress {
            title: Some(title),
            ..self
        }
    }

    pub fn update(&mut self, done: u64) {
        if self.last_print.elapsed() >= self.interval {
            self.last_print = Instant::now();
            self.print(done);
        }
    }

    pub fn finish(&mut self, done: u64) {
        self.print(done);
    }

    fn print(&self, done: u64) {
        eprintln!(
            "diskless: {}",
            self.titled_line(done, self.started.elapsed())
        );
    }

    /// [`Progress::line`] after the title, if there is one.
    fn titled_line(&self, done: u64, elapsed: Duration) -> String {
        let line = self.line(done, elapsed);
        match self.title {
            Some(title) => format!("{title}: {line}"),
            None => line,
        }
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
    fn a_titled_line_says_what_it_counts() {
        let p = Progress::new(Some(200 << 20), 0)
            .every(Duration::from_secs(5))
            .titled("the RAM copy");
        assert_eq!(p.interval, Duration::from_secs(5));
        let line = p.titled_line(50 << 20, Duration::from_secs(10));
        assert!(
            line.starts_with("the RAM copy:  25.0% 50.0 MiB of 200.0 MiB at 5.2 MB/s"),
            "{line}"
        );
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
