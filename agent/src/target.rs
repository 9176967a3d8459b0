//! Probe targets: what `agent probe` takes on its command line and jobs name as URLs.
//!
//! Accepted forms (DESIGN §2): `http://…`, `https://…`, `tcp://host:port`, `udp://host:port`,
//! `quic://host:port`, and `relay://R_HOST:PORT/B_HOST:PORT` (a UDP relay train to the
//! reflector B through the relay responder R, see [`crate::probe::udp::relay`]). Hosts may be
//! names, IPv4 or bracketed IPv6 addresses.

use std::fmt;

use meshlat_proto::record::Protocol;

/// A parsed, valid target.
#[derive(Clone, Debug, Eq, Hash, PartialEq)]
pub struct Target {
    /// Protocol to measure with.
    pub protocol: Protocol,
    /// Host name or IP address (IPv6 without brackets).
    pub host: String,
    /// Port (defaulted for http/https).
    pub port: u16,
    /// Path and query for http/https (`/` if absent); empty for the others.
    pub path: String,
    /// The target as given, normalised (what records carry in `target`).
    pub raw: String,
    /// For `relay://R/B` targets: the relay R's host and port (`host`/`port` are B's).
    pub relay: Option<(String, u16)>,
    /// For `relay://R/B` targets from a controller: its signed grant for B. Without one the
    /// prober signs a grant with the key pair derived from its own `--key` (standalone).
    pub grant: Option<[u8; meshlat_proto::grant::GRANT_BYTES]>,
}

/// Why a target string was refused.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
pub enum TargetError {
    /// No `scheme://`.
    #[error(
        "target {0:?}: missing scheme; use http://, https://, tcp://, udp://, quic:// or relay://"
    )]
    NoScheme(String),
    /// Unknown scheme.
    #[error("target {0:?}: unknown scheme {1:?}; use http, https, tcp, udp, quic or relay")]
    UnknownScheme(String, String),
    /// Empty host.
    #[error("target {0:?}: missing host")]
    NoHost(String),
    /// Port missing where required, or not a number in 1..=65535.
    #[error("target {0:?}: {1}")]
    BadPort(String, String),
}

impl Target {
    /// Parses a target string.
    ///
    /// # Errors
    ///
    /// [`TargetError`] naming the target and what is wrong with it.
    pub fn parse(s: &str) -> Result<Self, TargetError> {
        let s = s.trim();
        if let Some(rest) = s
            .strip_prefix("relay://")
            .or_else(|| s.strip_prefix("RELAY://"))
        {
            return Self::parse_relay(s, rest);
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| TargetError::NoScheme(s.to_string()))?;
        let protocol = match scheme.to_ascii_lowercase().as_str() {
            "http" => Protocol::Http,
            "https" => Protocol::Https,
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            "quic" => Protocol::Quic,
            other => return Err(TargetError::UnknownScheme(s.to_string(), other.to_string())),
        };
        let (authority, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let authority = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        let (host, port) = split_host_port(authority);
        if host.is_empty() {
            return Err(TargetError::NoHost(s.to_string()));
        }
        let port = match (port, protocol) {
            (Some(p), _) => p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                TargetError::BadPort(s.to_string(), format!("port {p:?} is not in 1..=65535"))
            })?,
            (None, Protocol::Http) => 80,
            (None, Protocol::Https) => 443,
            (None, _) => {
                return Err(TargetError::BadPort(
                    s.to_string(),
                    format!("{scheme}:// targets need host:port"),
                ));
            }
        };
        let is_http = matches!(protocol, Protocol::Http | Protocol::Https);
        if !is_http && !path.is_empty() && path != "/" {
            return Err(TargetError::BadPort(
                s.to_string(),
                format!("{scheme}:// targets take no path"),
            ));
        }
        let path = if is_http {
            if path.is_empty() {
                "/".to_string()
            } else if path.starts_with('?') {
                format!("/{path}")
            } else {
                path.to_string()
            }
        } else {
            String::new()
        };
        let raw = if is_http {
            s.to_string()
        } else {
            format!("{}://{}", protocol, host_port(&host, port))
        };
        Ok(Target {
            protocol,
            host,
            port,
            path,
            raw,
            relay: None,
            grant: None,
        })
    }

    /// `relay://R_HOST:PORT/B_HOST:PORT` (`rest` is what follows the scheme).
    fn parse_relay(s: &str, rest: &str) -> Result<Self, TargetError> {
        let bad = |why: &str| TargetError::BadPort(s.to_string(), why.to_string());
        let (relay, dst) = rest
            .split_once('/')
            .ok_or_else(|| bad("relay:// targets are relay://RELAY_HOST:PORT/DST_HOST:PORT"))?;
        let r = Target::parse(&format!("udp://{relay}"))?;
        let d = Target::parse(&format!("udp://{}", dst.trim_end_matches('/')))?;
        Ok(Target {
            raw: format!("relay://{}/{}", r.host_port(), d.host_port()),
            relay: Some((r.host, r.port)),
            ..d
        })
    }

    /// `host:port`, with brackets around IPv6 addresses.
    pub fn host_port(&self) -> String {
        host_port(&self.host, self.port)
    }

    /// The HTTP `Host` header value: the host alone on the scheme's default port (443 for
    /// `https`, else 80), `host:port` otherwise; IPv6 addresses in brackets.
    pub fn host_header(&self, https: bool) -> String {
        let default_port = if https { 443 } else { 80 };
        if self.port != default_port {
            self.host_port()
        } else if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl std::str::FromStr for Target {
    type Err = TargetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Target::parse(s)
    }
}

fn split_host_port(a: &str) -> (String, Option<&str>) {
    if let Some(rest) = a.strip_prefix('[') {
        if let Some((h, after)) = rest.split_once(']') {
            return (h.to_string(), after.strip_prefix(':'));
        }
        return (String::new(), None);
    }
    match a.rsplit_once(':') {
        // More than one colon without brackets: a bare IPv6 address, no port.
        Some((h, _)) if h.contains(':') => (a.to_string(), None),
        Some((h, p)) => (h.to_string(), Some(p)),
        None => (a.to_string(), None),
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        let t = Target::parse("https://example.com/a?b=1").expect("valid");
        assert_eq!(
            (t.protocol, t.host.as_str(), t.port, t.path.as_str()),
            (Protocol::Https, "example.com", 443, "/a?b=1")
        );
        let t = Target::parse("http://127.0.0.1:8080").expect("valid");
        assert_eq!((t.port, t.path.as_str()), (8080, "/"));
        let t = Target::parse("udp://[::1]:862").expect("valid");
        assert_eq!(
            (t.protocol, t.host.as_str(), t.port),
            (Protocol::Udp, "::1", 862)
        );
        assert_eq!(t.raw, "udp://[::1]:862");
        assert_eq!(
            Target::parse("QUIC://h:4433").expect("valid").protocol,
            Protocol::Quic
        );
        assert_eq!(
            Target::parse("tcp://h:22").expect("valid").host_port(),
            "h:22"
        );
    }

    #[test]
    fn parses_relay_targets() {
        let t = Target::parse("relay://10.0.0.1:7710/[::1]:862").expect("valid");
        assert_eq!(
            (t.protocol, t.host.as_str(), t.port),
            (Protocol::Udp, "::1", 862)
        );
        assert_eq!(t.relay, Some(("10.0.0.1".to_string(), 7710)));
        assert_eq!(t.raw, "relay://10.0.0.1:7710/[::1]:862");
        assert!(Target::parse("relay://10.0.0.1:7710").is_err());
        assert!(Target::parse("relay://10.0.0.1/b:1").is_err());
        assert!(Target::parse("relay://a:1/b").is_err());
    }

    #[test]
    fn refuses_bad_targets_with_a_reason() {
        for (bad, want) in [
            ("example.com", "missing scheme"),
            ("ftp://x:1", "unknown scheme"),
            ("udp://:5", "missing host"),
            ("tcp://h", "need host:port"),
            ("udp://h:0", "not in 1..=65535"),
            ("udp://h:99999", "not in 1..=65535"),
            ("tcp://h:x", "not in 1..=65535"),
            ("udp://h:5/path", "take no path"),
        ] {
            let err = Target::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(want), "{bad}: {err}");
        }
    }

    #[test]
    fn host_header_omits_the_default_port() {
        let t = |u: &str| Target::parse(u).expect(u);
        assert_eq!(t("http://example.com/").host_header(false), "example.com");
        assert_eq!(
            t("https://example.com:8443/").host_header(true),
            "example.com:8443"
        );
        assert_eq!(t("http://[::1]:80/").host_header(false), "[::1]");
        assert_eq!(t("https://[::1]:80/").host_header(true), "[::1]:80");
    }
}
