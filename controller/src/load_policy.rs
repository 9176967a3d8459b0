//! Where load may go (issue 15 item 6): the operator's `--load-allow` list.
//!
//! A load job is, to its target, a flood of requests from every region: seed 001 warns that
//! load tests look like a denial of service. So a controller schedules a load job only if
//! **every** target URL's host is on its own allowlist, whoever started the job:
//!
//! - jobs started here (REST, gRPC, the CLI, `--default-jobs`) are refused at start and update
//!   with 400 naming the target (`spec.targets[N]`);
//! - a federation peer's load jobs, and this controller's own stored jobs after a restart with
//!   a narrower list, are refused when they are read, logged with the peer region and never
//!   assigned to this controller's agents.
//!
//! Entries (repeatable flag, or comma separated):
//!
//! - a host name, `api.example.com` (exact, case-insensitive) or `*.example.com` (any name
//!   below `example.com`, not `example.com` itself);
//! - an IP address or CIDR range, `10.0.0.0/16`, `fd00::/8`, `127.0.0.1`; a target written as
//!   an IP literal must lie inside one.
//!
//! Names are not resolved: an allowed name is trusted as named, and an IP range never admits a
//! target written as a name (the answer of DNS at check time says nothing of the agents'
//! answers later). Without `--load-allow` no load job is accepted. Agents enforce their own caps
//! on connections and rate whatever a job says.

use std::fmt;
use std::net::IpAddr;

use meshlat_proto::pb;

use crate::address_policy::Cidr;

/// One `--load-allow` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// An exact host name, lowercase.
    Host(String),
    /// `*.suffix`: any name ending in `.suffix` (lowercase, without the dot).
    Suffix(String),
    /// An address range.
    Range(Cidr),
}

impl fmt::Display for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Entry::Host(h) => f.write_str(h),
            Entry::Suffix(s) => write!(f, "*.{s}"),
            Entry::Range(c) => write!(f, "{c}"),
        }
    }
}

/// The allowlist: which hosts load jobs may target (module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadAllow {
    entries: Vec<Entry>,
}

/// Why a load job's target is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("targets[{index}]: {reason}")]
pub struct LoadRefused {
    /// Index in the spec's `targets`.
    pub index: usize,
    /// What is wrong, naming the host and the flag.
    pub reason: String,
}

fn host_name_ok(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl LoadAllow {
    /// Parses `--load-allow` values.
    ///
    /// # Errors
    ///
    /// `(value, reason)` for the first entry that is neither a host name, a `*.` suffix nor an
    /// address or range.
    pub fn parse(values: &[String]) -> Result<Self, (String, String)> {
        let mut entries = Vec::new();
        for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            let lower = v.to_ascii_lowercase();
            let entry = if let Some(suffix) = lower.strip_prefix("*.") {
                if !host_name_ok(suffix) || !suffix.contains('.') {
                    return Err((
                        v.to_string(),
                        "a wildcard is *.DOMAIN with at least two labels after the *".into(),
                    ));
                }
                Entry::Suffix(suffix.to_string())
            } else if lower.parse::<IpAddr>().is_ok() || lower.contains('/') {
                Entry::Range(lower.parse::<Cidr>().map_err(|r| (v.to_string(), r))?)
            } else if host_name_ok(&lower) {
                Entry::Host(lower)
            } else {
                return Err((
                    v.to_string(),
                    "not a host name, *.DOMAIN, IP address or CIDR range (no scheme, port or path)"
                        .into(),
                ));
            };
            entries.push(entry);
        }
        Ok(LoadAllow { entries })
    }

    /// Whether no entry is given (then no load job is accepted).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entries, comma separated, as given (normalised).
    pub fn describe(&self) -> String {
        self.entries
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether `host` (a URL's host: a name, an IPv4 literal or a bracketed IPv6 literal) is
    /// allowed.
    pub fn allows_host(&self, host: &str) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.entries.iter().any(|e| match e {
                Entry::Range(c) => c.contains(ip),
                _ => false,
            });
        }
        self.entries.iter().any(|e| match e {
            Entry::Host(h) => *h == host,
            Entry::Suffix(s) => host
                .strip_suffix(s.as_str())
                .is_some_and(|rest| rest.len() > 1 && rest.ends_with('.')),
            Entry::Range(_) => false,
        })
    }

    /// Checks every target of a load job (other kinds pass untouched).
    ///
    /// # Errors
    ///
    /// [`LoadRefused`] naming the first target whose host is not allowed, or not a URL with a
    /// host.
    pub fn check(&self, spec: &pb::JobSpec) -> Result<(), LoadRefused> {
        if spec.kind != pb::JobKind::Load as i32 {
            return Ok(());
        }
        for (index, t) in spec.targets.iter().enumerate() {
            let url = match &t.endpoint {
                Some(pb::endpoint::Endpoint::Url(u)) => u.as_str(),
                _ => {
                    return Err(LoadRefused {
                        index,
                        reason: "load jobs send to URLs only".into(),
                    });
                }
            };
            let host = url
                .parse::<http::Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_string));
            let Some(host) = host.filter(|h| !h.is_empty()) else {
                return Err(LoadRefused {
                    index,
                    reason: format!("{:?} has no host", truncate(url)),
                });
            };
            if self.is_empty() {
                return Err(LoadRefused {
                    index,
                    reason: "this controller accepts no load jobs: start it with --load-allow \
                             naming the hosts or CIDR ranges load may go to"
                        .into(),
                });
            }
            if !self.allows_host(&host) {
                return Err(LoadRefused {
                    index,
                    reason: format!(
                        "host {:?} is not on this controller's load allowlist (--load-allow {})",
                        truncate(&host),
                        self.describe()
                    ),
                });
            }
        }
        Ok(())
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(256).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allow(v: &[&str]) -> LoadAllow {
        LoadAllow::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>()).expect("valid")
    }

    fn load(targets: &[&str]) -> pb::JobSpec {
        pb::JobSpec {
            kind: pb::JobKind::Load as i32,
            targets: targets
                .iter()
                .map(|u| pb::Endpoint {
                    endpoint: Some(pb::endpoint::Endpoint::Url((*u).into())),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn hosts_suffixes_and_ranges() {
        let a = allow(&["API.example.com", "*.test.example", "10.1.0.0/16", "::1"]);
        for ok in [
            "api.example.com",
            "Api.Example.Com.",
            "a.test.example",
            "b.a.test.example",
            "10.1.2.3",
            "[::1]",
        ] {
            assert!(a.allows_host(ok), "{ok}");
        }
        for bad in [
            "example.com",
            "xapi.example.com",
            "api.example.com.evil",
            "test.example",
            "eviltest.example",
            "10.2.0.1",
            "127.0.0.1",
            "[::2]",
            "",
        ] {
            assert!(!a.allows_host(bad), "{bad}");
        }
        // A range never admits a name, nor a name an address.
        assert!(!allow(&["127.0.0.0/8"]).allows_host("localhost"));
        assert!(!allow(&["localhost"]).allows_host("127.0.0.1"));
    }

    #[test]
    fn jobs_are_checked_per_target() {
        let a = allow(&["127.0.0.1", "api.example.com"]);
        assert_eq!(
            a.check(&load(&[
                "http://127.0.0.1:8080/",
                "https://api.example.com/x"
            ])),
            Ok(())
        );
        let e = a
            .check(&load(&["http://127.0.0.1:8080/", "http://victim.example/"]))
            .expect_err("not allowed");
        assert_eq!(e.index, 1);
        assert!(e.reason.contains("\"victim.example\" is not on this controller's load allowlist (--load-allow 127.0.0.1/32, api.example.com)"), "{e}");
        // Userinfo cannot smuggle a host past the check.
        let e = a
            .check(&load(&["http://api.example.com@victim.example/"]))
            .expect_err("userinfo");
        assert!(e.reason.contains("victim.example"), "{e}");
        // No allowlist: nothing is accepted, and the error says how to allow.
        let e = LoadAllow::default()
            .check(&load(&["http://127.0.0.1/"]))
            .expect_err("empty");
        assert!(e.reason.contains("--load-allow"), "{e}");
        // Probe jobs are not load.
        let mut probe = load(&["http://victim.example/"]);
        probe.kind = pb::JobKind::Probe as i32;
        assert_eq!(LoadAllow::default().check(&probe), Ok(()));
    }

    #[test]
    fn bad_entries_are_named() {
        for bad in ["http://x", "x:80", "*.com", "10.0.0.1/40", "a b", "*"] {
            let e = LoadAllow::parse(&[bad.to_string()]).expect_err(bad);
            assert_eq!(e.0, bad);
        }
    }
}
