//! Which read requests start a transfer, per source address, without I/O.
//!
//! A read request is one datagram whose source anyone can forge, and each accepted one
//! sends packets toward that source (three at most while unanswered, see
//! [`session`](crate::session)). [`Admission`] bounds what one address can make the server
//! do: new transfers per second (a token bucket: `burst` at once, then `per_second`) and
//! transfers running at once. Traffic toward any one address, forged or not, is then at
//! most `per_second` × 3 first packets a second, whatever the request rate.
//!
//! The table of sources is bounded too ([`Admission::new`]'s `max_sources`): sources whose
//! bucket is full again and that run nothing are forgotten first (they are back where a
//! new source starts); if every entry is busy, the idle-looking ones are dropped anyway. A
//! flood of forged sources thus costs a bounded table, and the global transfer cap of the
//! server bounds the rest.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Instant;

/// Limits per source address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SourceLimits {
    /// New transfers a source may start at once after a quiet spell.
    pub burst: u32,
    /// New transfers per second, sustained.
    pub per_second: u32,
    /// Transfers running at once.
    pub max_running: u32,
}

impl Default for SourceLimits {
    fn default() -> Self {
        // A boot asks for a handful of files (UEFI: a `tsize` probe then the file; iPXE:
        // its script and a kernel or two; GRUB: its config and a few more). 64 at once and
        // 16 a second leave room for a test or a benchmark running 50 clients from one
        // address (scripts/bench-tftp --concurrent 50), and hold what a forged source can
        // draw toward one victim to 16 × 3 first packets a second.
        SourceLimits {
            burst: 64,
            per_second: 16,
            max_running: 64,
        }
    }
}

impl SourceLimits {
    /// No limit per source (the server's global cap still applies).
    pub fn unlimited() -> Self {
        SourceLimits {
            burst: u32::MAX,
            per_second: u32::MAX,
            max_running: u32::MAX,
        }
    }
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The source started more than its rate allows.
    Rate,
    /// The source already runs `max_running` transfers.
    Running,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Rate => "too many new transfers from this address",
            Refusal::Running => "too many transfers running for this address",
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Source {
    tokens: f64,
    at: Instant,
    running: u32,
}

/// The per-source table.
#[derive(Debug)]
pub struct Admission {
    limits: SourceLimits,
    max_sources: usize,
    sources: HashMap<IpAddr, Source>,
}

impl Admission {
    /// A table of at most `max_sources` addresses.
    pub fn new(limits: SourceLimits, max_sources: usize) -> Self {
        Admission {
            limits,
            max_sources: max_sources.max(1),
            sources: HashMap::new(),
        }
    }

    fn refill(&self, s: &mut Source, now: Instant) {
        let secs = now.saturating_duration_since(s.at).as_secs_f64();
        s.tokens =
            (s.tokens + secs * f64::from(self.limits.per_second)).min(f64::from(self.limits.burst));
        s.at = now;
    }

    /// Whether `source` may start a transfer now; if so it counts as running until
    /// [`finished`](Self::finished).
    pub fn admit(&mut self, source: IpAddr, now: Instant) -> Result<(), Refusal> {
        if !self.sources.contains_key(&source) && self.sources.len() >= self.max_sources {
            self.forget_idle(now);
        }
        let burst = f64::from(self.limits.burst);
        let mut s = *self.sources.entry(source).or_insert(Source {
            tokens: burst,
            at: now,
            running: 0,
        });
        self.refill(&mut s, now);
        let verdict = if s.running >= self.limits.max_running {
            Err(Refusal::Running)
        } else if s.tokens < 1.0 {
            Err(Refusal::Rate)
        } else {
            s.tokens -= 1.0;
            s.running += 1;
            Ok(())
        };
        self.sources.insert(source, s);
        verdict
    }

    /// A transfer [`admit`](Self::admit) let in has ended.
    pub fn finished(&mut self, source: IpAddr) {
        if let Some(s) = self.sources.get_mut(&source) {
            s.running = s.running.saturating_sub(1);
        }
    }

    /// Addresses in the table.
    pub fn tracked(&self) -> usize {
        self.sources.len()
    }

    fn forget_idle(&mut self, now: Instant) {
        let (per_second, burst) = (
            f64::from(self.limits.per_second),
            f64::from(self.limits.burst),
        );
        let full = |s: &Source| {
            s.tokens + now.saturating_duration_since(s.at).as_secs_f64() * per_second >= burst
        };
        self.sources.retain(|_, s| s.running > 0 || !full(s));
        if self.sources.len() >= self.max_sources {
            // Every entry was used within the refill time: a flood of (likely forged)
            // sources. Keep only those with transfers running; the rest start afresh.
            self.sources.retain(|_, s| s.running > 0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    const LIMITS: SourceLimits = SourceLimits {
        burst: 4,
        per_second: 2,
        max_running: 100,
    };

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let t0 = Instant::now();
        let mut a = Admission::new(LIMITS, 100);
        for _ in 0..4 {
            a.admit(ip(1), t0).unwrap();
            a.finished(ip(1));
        }
        assert_eq!(a.admit(ip(1), t0), Err(Refusal::Rate));
        // Another address is not affected.
        assert_eq!(a.admit(ip(2), t0), Ok(()));
        // Half a second later, one more (2 a second).
        let t1 = t0 + Duration::from_millis(500);
        assert_eq!(a.admit(ip(1), t1), Ok(()));
        assert_eq!(a.admit(ip(1), t1), Err(Refusal::Rate));
        // Refused requests cost nothing: after a quiet spell, the whole burst again.
        let t2 = t1 + Duration::from_secs(10);
        for _ in 0..4 {
            assert_eq!(a.admit(ip(1), t2), Ok(()));
        }
        assert_eq!(a.admit(ip(1), t2), Err(Refusal::Rate));
    }

    #[test]
    fn running_transfers_are_capped_per_source() {
        let t0 = Instant::now();
        let limits = SourceLimits {
            max_running: 2,
            ..SourceLimits::unlimited()
        };
        let mut a = Admission::new(limits, 100);
        a.admit(ip(1), t0).unwrap();
        a.admit(ip(1), t0).unwrap();
        assert_eq!(a.admit(ip(1), t0), Err(Refusal::Running));
        a.finished(ip(1));
        assert_eq!(a.admit(ip(1), t0), Ok(()));
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_sources() {
        let t0 = Instant::now();
        let mut a = Admission::new(LIMITS, 50);
        // One real client with a transfer running.
        a.admit(ip(0), t0).unwrap();
        for n in 1..10_000 {
            let _ = a.admit(ip(n), t0);
            a.finished(ip(n));
            assert!(a.tracked() <= 50, "{} sources tracked", a.tracked());
        }
        // The running client's count was kept: it is still capped by what it runs.
        let limits = SourceLimits {
            max_running: 1,
            ..LIMITS
        };
        let mut a = Admission::new(limits, 2);
        a.admit(ip(0), t0).unwrap();
        for n in 1..100 {
            let _ = a.admit(ip(n), t0);
            a.finished(ip(n));
        }
        assert_eq!(a.admit(ip(0), t0), Err(Refusal::Running));
    }
}
