//! Where an image comes from: `http://HOST[:PORT]/PATH`, `tftp://HOST[:PORT]/PATH`, or
//! `file:///PATH` (a local disk the boot script mounted for a `dev:` source).

use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};

/// One place the image can be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Http {
        host: String,
        port: u16,
        path: String,
    },
    Tftp {
        host: String,
        port: u16,
        path: String,
    },
    File {
        path: String,
    },
}

impl Source {
    pub fn parse(url: &str) -> Result<Source, String> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| format!("{url:?} is not a URL (expected http:// or tftp://)"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if scheme == "file" {
            if !authority.is_empty() {
                return Err(format!("{url:?}: a file URL has no host (file:///path)"));
            }
            return Ok(Source::File {
                path: path.to_string(),
            });
        }
        if authority.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let default_port = match scheme {
            "http" => 80,
            "tftp" => 69,
            other => {
                return Err(format!(
                    "{url:?}: unsupported scheme {other:?} (http or tftp)"
                ))
            }
        };
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse().map_err(|_| format!("{url:?}: bad port {p:?}"))?,
            ),
            None => (authority.to_string(), default_port),
        };
        let path = path.to_string();
        Ok(match scheme {
            "http" => Source::Http { host, port, path },
            _ => Source::Tftp { host, port, path },
        })
    }

    /// The same server with another path (and query): a path the server's answer named.
    pub fn with_path(&self, new: &str) -> Source {
        match self {
            Source::Http { host, port, .. } => Source::Http {
                host: host.clone(),
                port: *port,
                path: new.to_string(),
            },
            Source::Tftp { host, port, .. } => Source::Tftp {
                host: host.clone(),
                port: *port,
                path: new.to_string(),
            },
            Source::File { .. } => Source::File {
                path: new.to_string(),
            },
        }
    }

    pub fn socket_addr(&self) -> Result<SocketAddr, String> {
        let (host, port) = match self {
            Source::Http { host, port, .. } | Source::Tftp { host, port, .. } => (host, *port),
            Source::File { path } => return Err(format!("{path} is a local file")),
        };
        (host.as_str(), port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host} has no address"))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Http { host, port, path } => write!(f, "http://{host}:{port}{path}"),
            Source::Tftp { host, port, path } => write!(f, "tftp://{host}:{port}{path}"),
            Source::File { path } => write!(f, "file://{path}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_http_with_and_without_port() {
        assert_eq!(
            Source::parse("http://10.0.0.1/images/a/root.squashfs").unwrap(),
            Source::Http {
                host: "10.0.0.1".into(),
                port: 80,
                path: "/images/a/root.squashfs".into()
            }
        );
        assert_eq!(
            Source::parse("http://server:8080/x").unwrap(),
            Source::Http {
                host: "server".into(),
                port: 8080,
                path: "/x".into()
            }
        );
    }

    #[test]
    fn parses_tftp() {
        assert_eq!(
            Source::parse("tftp://10.0.0.1/root.squashfs").unwrap(),
            Source::Tftp {
                host: "10.0.0.1".into(),
                port: 69,
                path: "/root.squashfs".into()
            }
        );
    }

    #[test]
    fn parses_local_files() {
        assert_eq!(
            Source::parse("file:///run/diskless/dev/images/root.squashfs").unwrap(),
            Source::File {
                path: "/run/diskless/dev/images/root.squashfs".into()
            }
        );
        assert!(Source::parse("file://host/x")
            .unwrap_err()
            .contains("no host"));
    }

    #[test]
    fn rejects_unknown_scheme_and_missing_host() {
        assert!(Source::parse("ftp://h/x")
            .unwrap_err()
            .contains("unsupported scheme"));
        assert!(Source::parse("http:///x").unwrap_err().contains("no host"));
        assert!(Source::parse("root.squashfs")
            .unwrap_err()
            .contains("not a URL"));
        assert!(Source::parse("http://h:99999/x")
            .unwrap_err()
            .contains("bad port"));
    }
}
