//! A minimal HTTP/1.1 client: GET with an optional Range, and a form POST for boot reports.
//!
//! Our own server is the peer, so only what it sends is understood: a status line, headers,
//! and a body delimited by Content-Length or by the connection closing.

use crate::source::Source;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A stalled server (stopped, or a cable pulled) surfaces as an error after this long.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_HEADER_BYTES: usize = 16 * 1024;

pub struct Body {
    /// The server honoured our Range request (206): the body continues the partial file.
    pub resumed: bool,
    /// Bytes the complete file has, when the server said.
    pub total_len: Option<u64>,
    remaining: Option<u64>,
    reader: Box<dyn Read + Send>,
}

impl Body {
    /// A body read from anything else (a local file), `len` bytes long.
    pub fn from_reader(reader: Box<dyn Read + Send>, len: u64) -> Body {
        Body {
            resumed: false,
            total_len: Some(len),
            remaining: Some(len),
            reader,
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = match self.remaining {
            Some(0) => return Ok(0),
            Some(left) => buf.len().min(left as usize),
            None => buf.len(),
        };
        let n = self.reader.read(&mut buf[..want])?;
        if let Some(left) = self.remaining.as_mut() {
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed with {left} bytes still to come"),
                ));
            }
            *left -= n as u64;
        }
        Ok(n)
    }
}

pub(crate) fn connect(source: &Source) -> Result<TcpStream, String> {
    let addr = source.socket_addr()?;
    let stream = TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    stream.set_read_timeout(Some(IO_TIMEOUT)).ok();
    stream.set_write_timeout(Some(IO_TIMEOUT)).ok();
    Ok(stream)
}

pub fn get(source: &Source, resume_from: u64) -> Result<Body, String> {
    let range = (resume_from > 0).then(|| format!("{resume_from}-"));
    let (response, reader) = send_get(source, range.as_deref())?;
    match response.status {
        200 => Ok(Body {
            resumed: false,
            total_len: response.content_length,
            remaining: response.content_length,
            reader: Box::new(reader),
        }),
        206 if resume_from > 0 => {
            let total = response
                .content_range_total
                .ok_or("206 response without a usable Content-Range")?;
            if response.content_range_start != Some(resume_from) {
                return Err(format!(
                    "server resumed at byte {:?}, not {resume_from}",
                    response.content_range_start
                ));
            }
            Ok(Body {
                resumed: true,
                total_len: Some(total),
                remaining: response.content_length,
                reader: Box::new(reader),
            })
        }
        404 => Err(format!("{source}: not found on the server (404)")),
        status => Err(format!("{source}: server answered HTTP {status}")),
    }
}

/// Exactly the bytes `range` of the file (a multicast seat's repair): a server that does
/// not answer with that range is an error.
pub fn get_range(source: &Source, range: std::ops::Range<u64>) -> Result<Body, String> {
    let len = range.end - range.start;
    let (response, reader) = send_get(source, Some(&format!("{}-{}", range.start, range.end - 1)))?;
    expect_range(source, &response, &range)?;
    Ok(Body {
        resumed: true,
        total_len: response.content_range_total,
        remaining: Some(len),
        reader: Box::new(reader),
    })
}

/// The answer to a request for bytes `range` is exactly those bytes (206 from its start, of
/// its length).
pub(crate) fn expect_range(
    source: &Source,
    head: &Head,
    range: &std::ops::Range<u64>,
) -> Result<(), String> {
    if head.status != 206
        || head.content_range_start != Some(range.start)
        || head.content_length != Some(range.end - range.start)
    {
        return Err(format!(
            "{source}: asked for bytes {}-{}, the server answered HTTP {} with {:?} bytes from {:?}",
            range.start,
            range.end - 1,
            head.status,
            head.content_length,
            head.content_range_start
        ));
    }
    Ok(())
}

/// Send a GET (with `Range: bytes=RANGE` when given) and read the response head.
fn send_get(source: &Source, range: Option<&str>) -> Result<(Head, BufReader<TcpStream>), String> {
    let Source::Http { host, path, .. } = source else {
        return Err("not an http source".into());
    };
    let mut stream = connect(source)?;
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: diskless-fetch\r\nConnection: close\r\n"
    );
    if let Some(range) = range {
        request.push_str(&format!("Range: bytes={range}\r\n"));
    }
    request.push_str("\r\n");
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending request: {e}"))?;
    let mut reader = BufReader::with_capacity(256 * 1024, stream);
    let head = read_head(&mut reader)?;
    Ok((parse_head(&head)?, reader))
}

/// A small file whole (`diskless-fetch cat`: the lab's accounts), refused beyond `max` bytes.
pub fn get_whole(source: &Source, max: u64) -> Result<Vec<u8>, String> {
    let body = get(source, 0)?;
    let mut data = Vec::new();
    body.take(max + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("{source}: {e}"))?;
    if data.len() as u64 > max {
        return Err(format!("{source}: more than {max} bytes"));
    }
    Ok(data)
}

pub(crate) fn read_head(reader: &mut impl BufRead) -> Result<String, String> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        let n = reader
            .read_line(&mut line)
            .map_err(|e| format!("reading response: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response headers ended".into());
        }
        if line == "\r\n" || line == "\n" {
            return Ok(head);
        }
        head.push_str(&line);
        if head.len() > MAX_HEADER_BYTES {
            return Err("response headers too large".into());
        }
    }
}

#[derive(Debug, PartialEq)]
pub(crate) struct Head {
    pub(crate) status: u16,
    pub(crate) content_length: Option<u64>,
    pub(crate) content_range_start: Option<u64>,
    pub(crate) content_range_total: Option<u64>,
}

pub(crate) fn parse_head(head: &str) -> Result<Head, String> {
    let mut lines = head.lines();
    let status_line = lines.next().ok_or("empty response")?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .filter(|_| status_line.starts_with("HTTP/1."))
        .ok_or_else(|| format!("not an HTTP response: {status_line:?}"))?;
    let mut parsed = Head {
        status,
        content_length: None,
        content_range_start: None,
        content_range_total: None,
    };
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" => {
                parsed.content_length = Some(
                    value
                        .parse()
                        .map_err(|_| format!("bad Content-Length {value:?}"))?,
                )
            }
            "content-range" => {
                // "bytes START-END/TOTAL"
                let range = value.strip_prefix("bytes ").unwrap_or(value);
                if let Some((span, total)) = range.split_once('/') {
                    parsed.content_range_total = total.parse().ok();
                    parsed.content_range_start =
                        span.split_once('-').and_then(|(s, _)| s.parse().ok());
                }
            }
            "transfer-encoding" if !value.eq_ignore_ascii_case("identity") => {
                return Err(format!("unsupported Transfer-Encoding {value:?}"))
            }
            _ => {}
        }
    }
    Ok(parsed)
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            b' ' => "+".to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Tell the boot server which stage this client reached. Short timeouts: never delay a boot.
pub fn post_report(url: &str, stage: &str, detail: &str) -> Result<(), String> {
    let source = Source::parse(url)?;
    if !matches!(source, Source::Http { .. }) {
        return Err("reports go to an http:// URL".into());
    }
    let body = format!(
        "stage={}&detail={}",
        form_encode(stage),
        form_encode(detail)
    );
    post_form(&source, &body)
}

/// POST `body` (form-encoded) to `source`; any 2xx answer is success.
pub fn post_form(source: &Source, body: &str) -> Result<(), String> {
    let Source::Http { host, path, .. } = source else {
        return Err(format!("{source}: not an http:// URL"));
    };
    let mut stream = connect(source)?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| format!("sending the request: {e}"))?;
    let head = read_head(&mut BufReader::new(stream))?;
    match parse_head(&head)?.status {
        200..=299 => Ok(()),
        status => Err(format!("server answered HTTP {status}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn parses_full_and_partial_responses() {
        let head = parse_head("HTTP/1.1 200 OK\r\nContent-Length: 42\r\n").unwrap();
        assert_eq!(head.status, 200);
        assert_eq!(head.content_length, Some(42));
        let head = parse_head(
            "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes 100-199/200\r\nContent-Length: 100\r\n",
        )
        .unwrap();
        assert_eq!(head.content_range_start, Some(100));
        assert_eq!(head.content_range_total, Some(200));
    }

    #[test]
    fn rejects_garbage_and_chunked() {
        assert!(parse_head("SSH-2.0-OpenSSH\r\n")
            .unwrap_err()
            .contains("not an HTTP"));
        assert!(
            parse_head("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n")
                .unwrap_err()
                .contains("Transfer-Encoding")
        );
        assert!(parse_head("HTTP/1.1 200 OK\r\nContent-Length: x\r\n")
            .unwrap_err()
            .contains("Content-Length"));
    }

    /// A one-shot server on loopback that answers with `response` and returns the request.
    fn serve_once(response: Vec<u8>) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/img", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let request = read_head(&mut reader).unwrap();
            conn.write_all(&response).unwrap();
            request
        });
        (url, handle)
    }

    #[test]
    fn get_sends_range_and_reads_exactly_the_body() {
        let (url, server) = serve_once(
            b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 3-5/6\r\nContent-Length: 3\r\n\r\ndef"
                .to_vec(),
        );
        let mut body = get(&Source::parse(&url).unwrap(), 3).unwrap();
        assert!(body.resumed);
        assert_eq!(body.total_len, Some(6));
        let mut data = Vec::new();
        body.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"def");
        assert!(server.join().unwrap().contains("Range: bytes=3-"));
    }

    #[test]
    fn a_range_is_asked_for_and_a_wrong_answer_refused() {
        let (url, server) = serve_once(
            b"HTTP/1.1 206 Partial\r\nContent-Range: bytes 2-4/6\r\nContent-Length: 3\r\n\r\ncde"
                .to_vec(),
        );
        let mut body = get_range(&Source::parse(&url).unwrap(), 2..5).unwrap();
        let mut data = Vec::new();
        body.read_to_end(&mut data).unwrap();
        assert_eq!(data, b"cde");
        assert!(server.join().unwrap().contains("Range: bytes=2-4"));
        let (url, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nabcdef".to_vec());
        let err = get_range(&Source::parse(&url).unwrap(), 2..5)
            .err()
            .unwrap();
        assert!(
            err.contains("asked for bytes 2-4") && err.contains("HTTP 200"),
            "{err}"
        );
        server.join().unwrap();
    }

    #[test]
    fn a_small_file_is_read_whole_and_a_big_one_refused() {
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nalice\n".to_vec();
        let (url, server) = serve_once(ok.clone());
        assert_eq!(
            get_whole(&Source::parse(&url).unwrap(), 6).unwrap(),
            b"alice\n"
        );
        server.join().unwrap();
        let (url, server) = serve_once(ok);
        let err = get_whole(&Source::parse(&url).unwrap(), 5).unwrap_err();
        assert!(err.contains("more than 5 bytes"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn truncated_body_is_an_error() {
        let (url, server) =
            serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc".to_vec());
        let mut body = get(&Source::parse(&url).unwrap(), 0).unwrap();
        let mut data = Vec::new();
        let err = body.read_to_end(&mut data).unwrap_err();
        assert!(err.to_string().contains("still to come"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn not_found_names_the_url() {
        let (url, server) =
            serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec());
        let err = get(&Source::parse(&url).unwrap(), 0).err().unwrap();
        assert!(err.contains("404") && err.contains("/img"), "{err}");
        server.join().unwrap();
    }

    #[test]
    fn form_encoding() {
        assert_eq!(form_encode("a b&c=d"), "a+b%26c%3Dd");
    }
}
