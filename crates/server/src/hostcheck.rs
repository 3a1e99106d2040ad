//! Which `Host` and `Origin` the admin listener answers: its own address, or the names
//! configured in `admin_names`.
//!
//! The admin listener has no authentication: on 127.0.0.1 only the server's own users
//! reach it. A web page does too, by DNS rebinding: the page's name (`evil.example`) is made
//! to resolve to 127.0.0.1, and the browser then lets the page read the inventory and post
//! wake requests, as same-origin. Such requests carry the page's name in `Host` (and in
//! `Origin` when the browser sends one); refusing every name but the configured ones stops
//! them. An IP literal in `Host` cannot be rebound (the browser's origin is the address
//! itself), so the listener's own address is always accepted, as is `localhost` on a
//! loopback listener (browsers resolve it locally, never through DNS).
//!
//! A wrong `Host` gets 421 Misdirected Request; a wrong `Origin`, 403 Forbidden. A request
//! without `Origin` (curl, Prometheus, a same-origin GET) is judged by its `Host` alone.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The hosts one admin listener answers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHosts {
    listen: IpAddr,
    names: Vec<String>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `Host` is missing or names another host.
    Host(String),
    /// `Origin` names another site.
    Origin(String),
}

impl AllowedHosts {
    /// The listener on `listen`, also answering to `names` (any case, any port).
    pub fn new(listen: SocketAddr, names: &[String]) -> AllowedHosts {
        AllowedHosts {
            listen: listen.ip(),
            names: names.iter().map(|n| n.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether `authority` (`host`, `host:port`, `[v6]:port`) is this listener.
    fn allows(&self, authority: &str) -> bool {
        let host = match authority.strip_prefix('[') {
            Some(v6) => match v6.split_once(']') {
                Some((h, _)) => h,
                None => return false,
            },
            None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
        };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return ip == self.listen
                || self.listen.is_unspecified()
                || (self.listen.is_loopback() && ip.is_loopback());
        }
        let name = host.trim_end_matches('.').to_ascii_lowercase();
        (name == "localhost" && self.listen.is_loopback()) || self.names.contains(&name)
    }

    /// Judges a request by its `Host` (or the authority of an absolute-form target) and its
    /// `Origin`.
    pub fn check(&self, host: Option<&str>, origin: Option<&str>) -> Result<(), Refusal> {
        match host {
            Some(h) if self.allows(h) => {}
            other => return Err(Refusal::Host(other.unwrap_or("").to_string())),
        }
        if let Some(origin) = origin {
            let authority = origin
                .strip_prefix("http://")
                .or_else(|| origin.strip_prefix("https://"));
            match authority {
                Some(a) if self.allows(a.trim_end_matches('/')) => {}
                _ => return Err(Refusal::Origin(origin.to_string())),
            }
        }
        Ok(())
    }
}

/// The middleware: refuses what [`AllowedHosts::check`] refuses, before any route runs.
pub async fn guard(
    State(allowed): State<Arc<AllowedHosts>>,
    request: Request,
    next: Next,
) -> Response {
    // Read in a block of its own: nothing borrowing the request (a Body is not Sync) may
    // live across the await below.
    let (host, origin) = {
        let text = |name| {
            request
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let host = text(header::HOST).or_else(|| request.uri().authority().map(|a| a.to_string()));
        (host, text(header::ORIGIN))
    };
    match allowed.check(host.as_deref(), origin.as_deref()) {
        Ok(()) => next.run(request).await,
        Err(Refusal::Host(h)) => {
            tracing::debug!(host = %h, "admin: request for another host refused");
            (
                StatusCode::MISDIRECTED_REQUEST,
                format!("this admin listener does not answer to host {h:?} (admin_names)\n"),
            )
                .into_response()
        }
        Err(Refusal::Origin(o)) => {
            tracing::warn!(origin = %o, "admin: request from another site refused");
            (
                StatusCode::FORBIDDEN,
                format!("requests from {o:?} are not accepted (admin_names)\n"),
            )
                .into_response()
        }
    }
}

/// The warning for an admin listener that hosts other than the server itself can reach: it
/// has no token and no TLS, so whoever reaches it reads the inventory and wakes machines.
pub fn exposure_warning(listen: SocketAddr) -> Option<String> {
    (!listen.ip().is_loopback()).then(|| {
        format!(
            "the admin listener on {listen} is not on loopback and has no token or TLS: whoever \
             reaches it reads the client inventory and wakes machines; keep admin_listen on \
             127.0.0.1 (an ssh tunnel reaches it) or put a TLS proxy with authentication or a \
             firewall in front (docs/SECURITY.md)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on(listen: &str, names: &[&str]) -> AllowedHosts {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        AllowedHosts::new(listen.parse().unwrap(), &names)
    }

    #[test]
    fn a_rebound_name_is_refused_the_listener_s_own_address_is_not() {
        let a = on("127.0.0.1:9180", &[]);
        assert_eq!(a.check(Some("127.0.0.1:9180"), None), Ok(()));
        assert_eq!(a.check(Some("localhost:9180"), None), Ok(()));
        assert_eq!(a.check(Some("[::1]:9180"), None), Ok(()));
        assert_eq!(
            a.check(Some("evil.example:9180"), None),
            Err(Refusal::Host("evil.example:9180".into()))
        );
        assert_eq!(a.check(None, None), Err(Refusal::Host(String::new())));
        // A page of another site posting to the right host.
        assert_eq!(
            a.check(Some("127.0.0.1:9180"), Some("http://evil.example")),
            Err(Refusal::Origin("http://evil.example".into()))
        );
        assert!(a.check(Some("127.0.0.1:9180"), Some("null")).is_err());
        assert_eq!(
            a.check(Some("127.0.0.1:9180"), Some("http://127.0.0.1:9180")),
            Ok(())
        );
    }

    #[test]
    fn configured_names_are_accepted_in_any_case_and_port() {
        let a = on("10.0.0.1:9180", &["Boot.Lab.Example"]);
        assert_eq!(a.check(Some("boot.lab.example"), None), Ok(()));
        assert_eq!(
            a.check(
                Some("BOOT.lab.example.:443"),
                Some("https://boot.lab.example")
            ),
            Ok(())
        );
        assert!(a.check(Some("10.0.0.1:9180"), None).is_ok());
        // Not on loopback: localhost and other addresses are not this listener.
        assert!(a.check(Some("localhost:9180"), None).is_err());
        assert!(a.check(Some("10.0.0.2:9180"), None).is_err());
        assert!(a.check(Some("lab.example"), None).is_err());
    }

    #[test]
    fn only_a_loopback_listener_goes_without_a_warning() {
        assert_eq!(exposure_warning("127.0.0.1:9180".parse().unwrap()), None);
        assert_eq!(exposure_warning("[::1]:9180".parse().unwrap()), None);
        let w = exposure_warning("0.0.0.0:9180".parse().unwrap()).unwrap();
        assert!(w.contains("no token or TLS"), "{w}");
        assert!(exposure_warning("10.0.0.1:9180".parse().unwrap()).is_some());
    }
}
