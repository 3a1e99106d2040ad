//! Retransmission timer from measured round trips (RFC 6298's estimator).
//!
//! A fixed 5 s timer turns every lost packet into a 5 s stall; on a LAN the round trip
//! is well under a millisecond, so one loss should cost a few milliseconds. Samples
//! are only taken from exchanges that were not retransmitted, and each timeout doubles
//! the interval up to a ceiling; the doubled interval stays until the next sample
//! (Karn's algorithm, RFC 6298 §5). Going back to the old interval as soon as a
//! retransmission was answered is what fails when the round trip has grown (a queue
//! filled up): the old interval is too short again, the timer fires again, the window
//! goes out again behind its first copy, and the queue grows further. Five clients
//! behind one 100 Mbit FIFO sent every block 3 to 4 times that way (scripts/bench-storm).

use std::time::Duration;

/// Timer limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RttConfig {
    /// Interval before the first sample.
    pub initial: Duration,
    /// Never retransmit sooner than this.
    pub min: Duration,
    /// Never wait longer than this between retransmissions.
    pub max: Duration,
}

impl Default for RttConfig {
    fn default() -> Self {
        RttConfig {
            initial: Duration::from_millis(500),
            min: Duration::from_millis(10),
            // Above the 5 s that clients commonly wait before repeating an ACK: atftp
            // repeats its ACK of a window once, then only on its own timer, which our
            // retransmissions keep resetting while they come more often than that.
            max: Duration::from_secs(10),
        }
    }
}

/// Smoothed round-trip estimate and the retransmission timeout derived from it.
#[derive(Debug, Clone)]
pub struct RttEstimator {
    config: RttConfig,
    srtt: Option<Duration>,
    rttvar: Duration,
    backoff: u32,
}

impl RttEstimator {
    /// A new estimator with no samples.
    pub fn new(mut config: RttConfig) -> Self {
        config.max = config.max.max(config.min);
        RttEstimator {
            config,
            srtt: None,
            rttvar: Duration::ZERO,
            backoff: 0,
        }
    }

    /// Caps the timeout (e.g. at the client's RFC 2349 `timeout`).
    pub fn cap(&mut self, max: Duration) {
        self.config.max = self.config.max.min(max);
        self.config.min = self.config.min.min(self.config.max);
    }

    /// Records one round trip of an exchange that was sent once, and ends the backoff.
    pub fn sample(&mut self, rtt: Duration) {
        match self.srtt {
            None => {
                self.srtt = Some(rtt);
                self.rttvar = rtt / 2;
            }
            Some(srtt) => {
                let err = srtt.abs_diff(rtt);
                self.rttvar = (self.rttvar * 3 + err) / 4;
                self.srtt = Some((srtt * 7 + rtt) / 8);
            }
        }
        self.backoff = 0;
    }

    /// A timeout fired: the next interval doubles.
    pub fn on_timeout(&mut self) {
        self.backoff = (self.backoff + 1).min(16);
    }

    /// The smoothed round trip, once measured.
    pub fn srtt(&self) -> Option<Duration> {
        self.srtt
    }

    /// Current retransmission timeout.
    pub fn rto(&self) -> Duration {
        let base = match self.srtt {
            None => self.config.initial,
            Some(srtt) => srtt + (self.rttvar * 4).max(Duration::from_millis(1)),
        };
        let base = base.clamp(self.config.min, self.config.max);
        base.saturating_mul(1 << self.backoff).min(self.config.max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adapts_and_backs_off() {
        let mut r = RttEstimator::new(RttConfig::default());
        assert_eq!(r.rto(), Duration::from_millis(500));
        for _ in 0..20 {
            r.sample(Duration::from_micros(100));
        }
        // Sub-millisecond LAN: the floor applies.
        assert_eq!(r.rto(), Duration::from_millis(10));
        r.on_timeout();
        assert_eq!(r.rto(), Duration::from_millis(20));
        for _ in 0..10 {
            r.on_timeout();
        }
        assert_eq!(r.rto(), Duration::from_secs(10));
        // Only a new sample ends the backoff (Karn).
        r.sample(Duration::from_micros(100));
        assert_eq!(r.rto(), Duration::from_millis(10));
        // A slow path raises the timer above its floor.
        for _ in 0..50 {
            r.sample(Duration::from_millis(80));
        }
        let rto = r.rto();
        assert!(
            rto >= Duration::from_millis(80) && rto < Duration::from_millis(200),
            "{rto:?}"
        );
        r.cap(Duration::from_millis(50));
        assert_eq!(r.rto(), Duration::from_millis(50));
    }
}
