//! Connection caps and deadlines of one listener, and the counters behind them.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

/// Refusals and timeouts are summed into one warning at most this often (a flood must not
/// become a log flood); each one is also logged at debug level.
pub const WARN_EVERY: Duration = Duration::from_secs(10);

/// Caps and deadlines of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Most connections open at once (handshaking ones included).
    pub max_conns: usize,
    /// Most connections open at once from one source address.
    pub max_conns_per_ip: usize,
    /// A TLS handshake must finish within this after accept.
    pub handshake_timeout: Duration,
    /// A request head must have fully arrived within this (HTTP/1.1: every request, from the
    /// moment the server waits for it; HTTP/2: the first request, from the handshake's end).
    pub header_timeout: Duration,
    /// A connection with no bytes moving either way for this long is closed.
    pub idle_timeout: Duration,
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The listener's total cap was reached.
    Total {
        /// The cap.
        limit: usize,
    },
    /// The source address's cap was reached.
    PerIp {
        /// The source address.
        ip: IpAddr,
        /// The cap.
        limit: usize,
    },
}

/// Counters of one listener since it started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnStats {
    /// Connections open now.
    pub open: usize,
    /// Connections accepted and admitted.
    pub admitted: u64,
    /// Refused: total cap.
    pub refused_total: u64,
    /// Refused: per-address cap.
    pub refused_per_ip: u64,
    /// Closed: TLS handshake not done in time (or failed).
    pub handshake_failed: u64,
    /// Closed: request head not arrived in time.
    pub header_timeouts: u64,
    /// Closed: idle.
    pub idle_timeouts: u64,
}

/// Called with the listener name and the event (`refused_total_cap`, `refused_per_ip_cap`,
/// `handshake_failed`, `header_timeout`, `idle_timeout`), e.g. to count it in a metric.
pub type EventHook = fn(listener: &'static str, event: &'static str);

/// Tracks the connections of one listener: admits or refuses them ([`Tracker::admit`]) and
/// counts what happened to them.
#[derive(Debug)]
pub struct Tracker {
    /// Listener name for logs (`grpc`, `rest`, `http`, `stats`, ...).
    name: &'static str,
    limits: ConnLimits,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    open: AtomicUsize,
    admitted: AtomicU64,
    refused_total: AtomicU64,
    refused_per_ip: AtomicU64,
    handshake_failed: AtomicU64,
    header_timeouts: AtomicU64,
    idle_timeouts: AtomicU64,
    /// Events since the last summary warning, and when it was.
    summary: Mutex<(u64, Option<Instant>)>,
    hook: Option<EventHook>,
}

/// What ended a connection early, for [`Tracker::closed`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Closed {
    /// TLS handshake failed or timed out.
    Handshake,
    /// Request head not arrived in time.
    Header,
    /// No traffic for the idle timeout.
    Idle,
}

/// One admitted connection's place; dropping it frees the place.
#[derive(Debug)]
pub struct Slot {
    tracker: Arc<Tracker>,
    ip: IpAddr,
}

impl Tracker {
    /// A tracker for the listener `name` with `limits`.
    pub fn new(name: &'static str, limits: ConnLimits) -> Arc<Self> {
        Self::with_hook(name, limits, None)
    }

    /// Like [`Tracker::new`], calling `hook` on every refusal and early close.
    pub fn with_hook(name: &'static str, limits: ConnLimits, hook: Option<EventHook>) -> Arc<Self> {
        Arc::new(Tracker {
            hook,
            name,
            limits,
            per_ip: Mutex::new(HashMap::new()),
            open: AtomicUsize::new(0),
            admitted: AtomicU64::new(0),
            refused_total: AtomicU64::new(0),
            refused_per_ip: AtomicU64::new(0),
            handshake_failed: AtomicU64::new(0),
            header_timeouts: AtomicU64::new(0),
            idle_timeouts: AtomicU64::new(0),
            summary: Mutex::new((0, None)),
        })
    }

    /// The listener's limits.
    pub fn limits(&self) -> &ConnLimits {
        &self.limits
    }

    /// The listener's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Admits a connection from `peer`, or says which cap it is over (and counts and logs
    /// the refusal).
    ///
    /// # Errors
    ///
    /// [`Refused`] when a cap is reached.
    pub fn admit(self: &Arc<Self>, peer: SocketAddr) -> Result<Slot, Refused> {
        let ip = canonical(peer.ip());
        let refused = {
            // The map lock also serialises the total, so the two caps are checked together.
            let mut map = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
            let open = self.open.load(Ordering::Relaxed);
            let here = map.get(&ip).copied().unwrap_or(0);
            if open >= self.limits.max_conns {
                Some(Refused::Total {
                    limit: self.limits.max_conns,
                })
            } else if here >= self.limits.max_conns_per_ip {
                Some(Refused::PerIp {
                    ip,
                    limit: self.limits.max_conns_per_ip,
                })
            } else {
                *map.entry(ip).or_insert(0) += 1;
                self.open.fetch_add(1, Ordering::Relaxed);
                None
            }
        };
        match refused {
            None => {
                self.admitted.fetch_add(1, Ordering::Relaxed);
                Ok(Slot {
                    tracker: self.clone(),
                    ip,
                })
            }
            Some(r) => {
                let (counter, event) = match r {
                    Refused::Total { .. } => (&self.refused_total, "refused_total_cap"),
                    Refused::PerIp { .. } => (&self.refused_per_ip, "refused_per_ip_cap"),
                };
                counter.fetch_add(1, Ordering::Relaxed);
                if let Some(h) = self.hook {
                    h(self.name, event);
                }
                tracing::debug!(message = "Connection refused: over cap.", listener = self.name, %peer, reason = %r);
                self.note_event();
                Err(r)
            }
        }
    }

    /// Counts a connection closed early (and logs it).
    pub fn closed(&self, why: Closed, peer: SocketAddr) {
        let (c, event) = match why {
            Closed::Handshake => (&self.handshake_failed, "handshake_failed"),
            Closed::Header => (&self.header_timeouts, "header_timeout"),
            Closed::Idle => (&self.idle_timeouts, "idle_timeout"),
        };
        c.fetch_add(1, Ordering::Relaxed);
        if let Some(h) = self.hook {
            h(self.name, event);
        }
        tracing::debug!(message = "Connection closed.", listener = self.name, %peer, reason = ?why);
        self.note_event();
    }

    /// The counters now.
    pub fn stats(&self) -> ConnStats {
        ConnStats {
            open: self.open.load(Ordering::Relaxed),
            admitted: self.admitted.load(Ordering::Relaxed),
            refused_total: self.refused_total.load(Ordering::Relaxed),
            refused_per_ip: self.refused_per_ip.load(Ordering::Relaxed),
            handshake_failed: self.handshake_failed.load(Ordering::Relaxed),
            header_timeouts: self.header_timeouts.load(Ordering::Relaxed),
            idle_timeouts: self.idle_timeouts.load(Ordering::Relaxed),
        }
    }

    /// One warning per [`WARN_EVERY`] summing refusals and early closes.
    fn note_event(&self) {
        let now = Instant::now();
        let mut s = self.summary.lock().unwrap_or_else(|p| p.into_inner());
        s.0 += 1;
        if s.1
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
        {
            let st = self.stats();
            tracing::warn!(
                message = "Connections refused or closed early (caps or deadlines).",
                listener = self.name,
                events_since_last = s.0,
                open = st.open,
                refused_total_cap = st.refused_total,
                refused_per_ip_cap = st.refused_per_ip,
                handshake_failed = st.handshake_failed,
                header_timeouts = st.header_timeouts,
                idle_timeouts = st.idle_timeouts,
                max_conns = self.limits.max_conns,
                max_conns_per_ip = self.limits.max_conns_per_ip,
            );
            *s = (0, Some(now));
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut map = self
            .tracker
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
        self.tracker.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Slot {
    /// The tracker this slot belongs to.
    pub fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Total { limit } => write!(f, "{limit} connections open (the total cap)"),
            Refused::PerIp { ip, limit } => {
                write!(
                    f,
                    "{limit} connections open from {ip} (the per-address cap)"
                )
            }
        }
    }
}

/// IPv4-mapped IPv6 addresses count as their IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The soft limit on open files of this process (`Max open files` in `/proc/self/limits`),
/// for deriving default caps below it; `None` when unknown or unlimited.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> ConnLimits {
        ConnLimits {
            max_conns: total,
            max_conns_per_ip: per_ip,
            handshake_timeout: Duration::from_secs(1),
            header_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        }
    }

    fn at(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    #[tokio::test]
    async fn caps_per_address_and_in_total_and_slots_free_on_drop() {
        let t = Tracker::new("test", limits(3, 2));
        let a1 = t.admit(at([10, 0, 0, 1], 1)).expect("first");
        let _a2 = t.admit(at([10, 0, 0, 1], 2)).expect("second");
        assert_eq!(
            t.admit(at([10, 0, 0, 1], 3)).expect_err("per-ip"),
            Refused::PerIp {
                ip: [10, 0, 0, 1].into(),
                limit: 2
            }
        );
        let _b = t.admit(at([10, 0, 0, 2], 1)).expect("other address");
        assert_eq!(
            t.admit(at([10, 0, 0, 3], 1)).expect_err("total"),
            Refused::Total { limit: 3 }
        );
        drop(a1);
        let _a3 = t.admit(at([10, 0, 0, 1], 4)).expect("freed");
        let s = t.stats();
        assert_eq!(
            (s.open, s.admitted, s.refused_per_ip, s.refused_total),
            (3, 4, 1, 1)
        );
    }

    #[tokio::test]
    async fn mapped_v6_counts_as_v4() {
        let t = Tracker::new("test", limits(10, 1));
        let _a = t.admit(at([10, 0, 0, 1], 1)).expect("v4");
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:2".parse().expect("addr");
        assert!(t.admit(mapped).is_err());
    }

    #[test]
    fn reads_the_open_files_limit() {
        assert!(open_files_limit().is_some_and(|n| n >= 16));
    }
}
