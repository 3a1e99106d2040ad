//! Byte ranges of the image over HTTP, checked before they are used: one keep-alive
//! connection per URL, the next URL when one fails or sends a block that does not verify,
//! and waiting (retrying) while none answers. A read the kernel waits for must never fail:
//! a seat whose server is away waits for it, as an NBD or NFS root does.

use crate::http;
use crate::source::Source;
use std::io::{BufReader, Read, Write};
use std::net::TcpStream;
use std::ops::Range;
use std::time::Duration;

/// The image's URLs, each with its open connection.
pub struct Ranges {
    sources: Vec<Source>,
    conns: Vec<Option<BufReader<TcpStream>>>,
    /// The URL that answered last: asked first.
    current: usize,
    /// The longest wait between two rounds over every URL.
    max_wait: Duration,
    pub tally: Tally,
}

/// What a [`Ranges`] (or several, [`Tally::add`]) received and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tally {
    /// Bytes received (also those refused).
    pub received: u64,
    /// Blocks refused (they failed the check), per URL in the order given.
    pub refused: Vec<u64>,
    /// Rounds over every URL that gave nothing acceptable: each was followed by a wait.
    pub waits: u64,
}

impl Tally {
    /// Blocks refused from every URL.
    pub fn refused_blocks(&self) -> u64 {
        self.refused.iter().sum()
    }

    pub fn add(&mut self, other: &Tally) {
        self.received += other.received;
        self.waits += other.waits;
        if self.refused.len() < other.refused.len() {
            self.refused.resize(other.refused.len(), 0);
        }
        for (sum, n) in self.refused.iter_mut().zip(&other.refused) {
            *sum += n;
        }
    }
}

/// Why a check refused an answer, and how many of its blocks were wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub blocks: u64,
    pub why: String,
}

impl Ranges {
    pub fn new(sources: Vec<Source>) -> Ranges {
        let conns = sources.iter().map(|_| None).collect();
        let tally = Tally {
            refused: vec![0; sources.len()],
            ..Tally::default()
        };
        Ranges {
            sources,
            conns,
            current: 0,
            max_wait: Duration::from_secs(5),
            tally,
        }
    }

    /// Bytes `range` of the image from the first URL whose answer `check` accepts (it says
    /// why it refuses one); tries every URL in turn at once, and waits and goes round again
    /// while none gives them. A refused answer is counted ([`Tally::refused`]) and dropped:
    /// only accepted bytes are returned.
    pub fn get_checked(
        &mut self,
        range: Range<u64>,
        check: impl Fn(&[u8]) -> Result<(), Refused>,
    ) -> Vec<u8> {
        let mut round = 0u32;
        loop {
            for k in 0..self.sources.len() {
                let i = (self.current + k) % self.sources.len();
                match self.get(i, range.clone()) {
                    Ok(data) => match check(&data) {
                        Ok(()) => {
                            self.current = i;
                            return data;
                        }
                        Err(refused) => {
                            self.tally.refused[i] += refused.blocks;
                            eprintln!(
                                "diskless: warning: {} bytes {}-{}: {}; refused, asking the next URL",
                                self.sources[i],
                                range.start,
                                range.end - 1,
                                refused.why
                            );
                        }
                    },
                    Err(e) if round == 0 => {
                        eprintln!("diskless: warning: {e}; trying the next URL")
                    }
                    Err(_) => {}
                }
            }
            let wait = Duration::from_secs(1 << round.min(8)).min(self.max_wait);
            if round == 0 {
                eprintln!(
                    "diskless: warning: no URL gave bytes {}-{}: waiting for a server, retrying every {} s at most",
                    range.start,
                    range.end - 1,
                    self.max_wait.as_secs()
                );
            }
            round += 1;
            self.tally.waits += 1;
            std::thread::sleep(wait);
        }
    }

    /// One Range request to URL `i` on its kept connection (a new one if the kept one was
    /// closed since).
    fn get(&mut self, i: usize, range: Range<u64>) -> Result<Vec<u8>, String> {
        if self.conns[i].is_some() {
            match self.request(i, &range) {
                Ok(data) => return Ok(data),
                // The server may have closed an idle connection: one more try on a new one.
                Err(_) => self.conns[i] = None,
            }
        }
        let result = self.request(i, &range);
        if result.is_err() {
            self.conns[i] = None;
        }
        result
    }

    fn request(&mut self, i: usize, range: &Range<u64>) -> Result<Vec<u8>, String> {
        let source = &self.sources[i];
        let Source::Http { host, path, .. } = source else {
            return Err(format!(
                "{source}: lazy and network fetch need an http:// URL"
            ));
        };
        if self.conns[i].is_none() {
            let stream = http::connect(source)?;
            self.conns[i] = Some(BufReader::with_capacity(256 * 1024, stream));
        }
        let conn = self.conns[i].as_mut().expect("connected above");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: diskless-fetch\r\nRange: bytes={}-{}\r\n\r\n",
            range.start,
            range.end - 1
        );
        conn.get_mut()
            .write_all(request.as_bytes())
            .map_err(|e| format!("{source}: sending a Range request: {e}"))?;
        let head = http::parse_head(&http::read_head(conn)?)?;
        http::expect_range(source, &head, range)?;
        let len = range.end - range.start;
        let mut data = vec![0u8; len as usize];
        conn.read_exact(&mut data).map_err(|e| {
            format!(
                "{source}: reading bytes {}-{}: {e}",
                range.start,
                range.end - 1
            )
        })?;
        self.tally.received += len;
        Ok(data)
    }
}

/// A keep-alive server on loopback for the tests (here and in `lazy`).
#[cfg(test)]
pub(crate) use test_server::{test_server, Damage, TestServer};

#[cfg(test)]
mod test_server {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// What a [`test_server`] damages: the first byte of every answer it sends, or of these
    /// 4 KiB blocks of the image (a broken disk under a cache) wherever an answer holds them.
    #[derive(Debug, Clone)]
    pub(crate) enum Damage {
        Nothing,
        EveryAnswer,
        Blocks(Vec<u64>),
    }

    /// What a [`test_server`] did: connections accepted, blocks it sent damaged, and
    /// Range requests it answered.
    #[derive(Default)]
    pub(crate) struct TestServer {
        pub connections: AtomicUsize,
        pub damaged_blocks: AtomicU64,
        pub answers: AtomicUsize,
    }

    /// A keep-alive server on loopback for `data`: answers Range requests, the first
    /// `fail_first` of them with 503, damaged as `damage` says.
    pub(crate) fn test_server(
        data: Vec<u8>,
        fail_first: usize,
        damage: Damage,
    ) -> (String, Arc<TestServer>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/img", listener.local_addr().unwrap());
        let seen = Arc::new(TestServer::default());
        let counter = seen.clone();
        let requests = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                counter.connections.fetch_add(1, Ordering::SeqCst);
                let (data, requests, damage, counter) = (
                    data.clone(),
                    requests.clone(),
                    damage.clone(),
                    counter.clone(),
                );
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(conn.try_clone().unwrap());
                    while let Ok(head) = http::read_head(&mut reader) {
                        let range = head
                            .lines()
                            .find_map(|l| l.strip_prefix("Range: bytes="))
                            .unwrap()
                            .to_string();
                        let (a, b) = range.split_once('-').unwrap();
                        let (a, b): (usize, usize) = (a.parse().unwrap(), b.parse().unwrap());
                        if requests.fetch_add(1, Ordering::SeqCst) < fail_first {
                            conn.write_all(b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n")
                                .unwrap();
                            continue;
                        }
                        let mut body = data[a..=b].to_vec();
                        let damaged: Vec<usize> = match &damage {
                            Damage::Nothing => vec![],
                            Damage::EveryAnswer => vec![0],
                            Damage::Blocks(blocks) => blocks
                                .iter()
                                .map(|&n| n as usize * 4096)
                                .filter(|at| (a..=b).contains(at))
                                .map(|at| at - a)
                                .collect(),
                        };
                        for &at in &damaged {
                            body[at] ^= 1;
                        }
                        counter
                            .damaged_blocks
                            .fetch_add(damaged.len() as u64, Ordering::SeqCst);
                        counter.answers.fetch_add(1, Ordering::SeqCst);
                        let head = format!(
                            "HTTP/1.1 206 Partial\r\nContent-Range: bytes {a}-{b}/{}\r\nContent-Length: {}\r\n\r\n",
                            data.len(),
                            body.len()
                        );
                        conn.write_all(head.as_bytes()).unwrap();
                        conn.write_all(&body).unwrap();
                    }
                    let _ = reader.fill_buf();
                });
            }
        });
        (url, seen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn data() -> Vec<u8> {
        (0..10_000).map(|i| (i % 251) as u8).collect()
    }

    fn same(expected: Vec<u8>, start: usize) -> impl Fn(&[u8]) -> Result<(), Refused> {
        move |got| {
            if got == &expected[start..start + got.len()] {
                Ok(())
            } else {
                Err(Refused {
                    blocks: 1,
                    why: "does not match".into(),
                })
            }
        }
    }

    #[test]
    fn ranges_come_over_one_kept_connection() {
        let (url, seen) = test_server(data(), 0, Damage::Nothing);
        let mut r = Ranges::new(vec![Source::parse(&url).unwrap()]);
        assert_eq!(
            r.get_checked(100..200, same(data(), 100)),
            &data()[100..200]
        );
        assert_eq!(
            r.get_checked(5000..9000, same(data(), 5000)),
            &data()[5000..9000]
        );
        assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
        assert_eq!(r.tally.received, 4100);
    }

    #[test]
    fn a_refused_answer_is_asked_of_the_next_url() {
        let (bad, _) = test_server(data(), 0, Damage::EveryAnswer);
        let (good, _) = test_server(data(), 0, Damage::Nothing);
        let sources = vec![Source::parse(&bad).unwrap(), Source::parse(&good).unwrap()];
        let mut r = Ranges::new(sources);
        assert_eq!(r.get_checked(0..4096, same(data(), 0)), &data()[..4096]);
        // The good URL is asked first from now on.
        assert_eq!(r.current, 1);
        assert_eq!(r.tally.refused, [1, 0]);
        assert_eq!(r.tally.waits, 0);
    }

    #[test]
    fn while_no_url_answers_the_read_waits() {
        let (url, _) = test_server(data(), 2, Damage::Nothing);
        let mut r = Ranges::new(vec![Source::parse(&url).unwrap()]);
        r.max_wait = Duration::from_millis(10);
        assert_eq!(r.get_checked(10..20, same(data(), 10)), &data()[10..20]);
        assert!(r.tally.waits > 0);
    }
}
