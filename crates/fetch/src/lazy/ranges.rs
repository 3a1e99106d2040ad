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
    /// Bytes received (also those refused).
    pub received: u64,
}

impl Ranges {
    pub fn new(sources: Vec<Source>) -> Ranges {
        let conns = sources.iter().map(|_| None).collect();
        Ranges {
            sources,
            conns,
            current: 0,
            max_wait: Duration::from_secs(5),
            received: 0,
        }
    }

    /// Bytes `range` of the image from the first URL whose answer `check` accepts (it says
    /// why it refuses one); tries every URL in turn, and waits and goes round again while
    /// none gives them.
    pub fn get_checked(
        &mut self,
        range: Range<u64>,
        check: impl Fn(&[u8]) -> Result<(), String>,
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
                        Err(why) => eprintln!(
                            "diskless: warning: {} bytes {}-{}: {why}; refused, asking the next URL",
                            self.sources[i],
                            range.start,
                            range.end - 1
                        ),
                    },
                    Err(e) if round == 0 => eprintln!("diskless: warning: {e}; trying the next URL"),
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
        self.received += len;
        Ok(data)
    }
}

/// A keep-alive server on loopback for the tests (here and in `lazy`).
#[cfg(test)]
pub(crate) use test_server::test_server;

#[cfg(test)]
mod test_server {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A keep-alive server on loopback for `data`: answers Range requests, the first
    /// `fail_first` of them with 503; `corrupt` flips a byte of every answer. Counts the
    /// connections it accepted.
    pub(crate) fn test_server(
        data: Vec<u8>,
        fail_first: usize,
        corrupt: bool,
    ) -> (String, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/img", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let requests = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let mut conn = conn.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let (data, requests) = (data.clone(), requests.clone());
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
                        if corrupt {
                            body[0] ^= 1;
                        }
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
        (url, connections)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn data() -> Vec<u8> {
        (0..10_000).map(|i| (i % 251) as u8).collect()
    }

    fn same(expected: Vec<u8>, start: usize) -> impl Fn(&[u8]) -> Result<(), String> {
        move |got| {
            if got == &expected[start..start + got.len()] {
                Ok(())
            } else {
                Err("does not match".into())
            }
        }
    }

    #[test]
    fn ranges_come_over_one_kept_connection() {
        let (url, connections) = test_server(data(), 0, false);
        let mut r = Ranges::new(vec![Source::parse(&url).unwrap()]);
        assert_eq!(
            r.get_checked(100..200, same(data(), 100)),
            &data()[100..200]
        );
        assert_eq!(
            r.get_checked(5000..9000, same(data(), 5000)),
            &data()[5000..9000]
        );
        assert_eq!(connections.load(Ordering::SeqCst), 1);
        assert_eq!(r.received, 4100);
    }

    #[test]
    fn a_refused_answer_is_asked_of_the_next_url() {
        let (bad, _) = test_server(data(), 0, true);
        let (good, _) = test_server(data(), 0, false);
        let sources = vec![Source::parse(&bad).unwrap(), Source::parse(&good).unwrap()];
        let mut r = Ranges::new(sources);
        assert_eq!(r.get_checked(0..4096, same(data(), 0)), &data()[..4096]);
        // The good URL is asked first from now on.
        assert_eq!(r.current, 1);
    }

    #[test]
    fn while_no_url_answers_the_read_waits() {
        let (url, _) = test_server(data(), 2, false);
        let mut r = Ranges::new(vec![Source::parse(&url).unwrap()]);
        r.max_wait = Duration::from_millis(10);
        assert_eq!(r.get_checked(10..20, same(data(), 10)), &data()[10..20]);
    }
}
