//! A userspace link emulator: UDP and TCP forwarding with per-direction delay and seeded loss.
//!
//! The build and test machines have no netem (ENVIRONMENT.md), so tests, benches and the demo put
//! this forwarder between a prober and a responder (or in front of a relay) to give a path a known
//! one-way delay in each direction and a reproducible loss pattern. It runs in-process
//! ([`LinkEmu::start`]) or as the `meshlat-linkemu` binary.
//!
//! # Route syntax
//!
//! ```text
//! PROTO:LISTEN=UPSTREAM[,KEY=VALUE]...
//!
//! PROTO     udp | tcp
//! LISTEN    address to listen on, e.g. 127.0.0.1:0 (port 0: any; see LinkEmu::route_addr)
//! UPSTREAM  address to forward to, e.g. 127.0.0.1:862 or [::1]:4433
//!
//! tun:NS_A/IPV4_A=NS_B/IPV4_B[,KEY=VALUE]...   a packet-level link between two network
//!           namespaces (see [`tun`]); fwd is NS_A → NS_B; loss applies to every packet
//! fwd=DUR       one-way delay client → upstream   (default 0; e.g. 5ms, 250us, 1.5ms, 0)
//! ret=DUR       one-way delay upstream → client   (default 0)
//! loss_fwd=PCT  loss client → upstream, percent 0..=100 (default 0; udp only)
//! loss_ret=PCT  loss upstream → client, percent 0..=100 (default 0; udp only)
//! seed=N        RNG seed of the loss decisions, u64 (default 0)
//! idle=DUR      how long a flow may sit idle before the emulator forgets it (default 30s; > 0):
//!               udp: a client sending nothing and receiving nothing; tcp: a connection of
//!               which one direction has ended and the other carries nothing
//! warm=DUR      tun only: a warm-up packet this long before each held packet that answers the
//!               end it goes to (default 0: off; at most 10ms; see [`tun`]'s "Warm-up")
//! ```
//!
//! Examples: `udp:127.0.0.1:0=127.0.0.1:862,fwd=5ms,ret=15ms,loss_fwd=2.5,seed=42`,
//! `tcp:127.0.0.1:8443=10.0.0.7:443,fwd=20ms,ret=20ms`.
//!
//! # How it forwards
//!
//! - **UDP**: the listen socket receives from clients; each client address gets its own upstream
//!   socket (connected to UPSTREAM) and return thread, so replies map back to the client that
//!   caused them. A client with no packet either way for `idle` is forgotten: its thread ends and
//!   its socket is closed (a later packet from it starts afresh). At most [`MAX_UDP_CLIENTS`]
//!   per route at once; packets from further clients are dropped and counted.
//! - **TCP**: each accepted connection gets its own upstream connection and two pump threads,
//!   one per direction; chunks are forwarded as read (`TCP_NODELAY` on both legs), and a
//!   half-close (EOF) is forwarded after the same delay. A connection ends when both directions
//!   have seen EOF or an error, when a write to either side fails (the peer is gone: both
//!   sockets are shut down both ways), or when one direction has ended and the other carries
//!   nothing for `idle` (a bounded drain: a peer that never closes cannot pin the connection).
//!   Then both threads end and both sockets are closed once the held FINs are out. At most
//!   [`MAX_TCP_CONNS`] connections per route at once; further ones are closed on accept and
//!   counted as forward drops. Finished threads are joined as new ones start, so a long run
//!   keeps only live connections' threads. Loss is not applied to TCP (the spec parser refuses
//!   it).
//! - **Holding**: every direction of every route has one dedicated OS thread that holds packets
//!   (or TCP chunks) until `receive time + delay`. It sleeps until about [`SPIN_BEFORE`] before
//!   the due time and then spins on the OS monotonic clock, so holds are accurate to a few µs on
//!   an idle machine (tokio and epoll timers are ~1 ms coarse). The delay is constant per
//!   direction, so the queue is FIFO and order is preserved. A busy machine can still preempt
//!   the thread: the log records the actual hold of every packet so tests can check. To make
//!   that rarer, every emulator thread asks the kernel for a short time slice
//!   ([`THREAD_SLICE`], `sched_setattr` on Linux 6.12+ with EEVDF; no privileges, no priority
//!   change): a waking thread with a short slice gets an earlier deadline and so preempts a busy
//!   process instead of waiting out its slice (about 3 ms). Older kernels ignore the request.
//!   A direction with no delay has no hold to wait for: the thread that read the packet sends it
//!   at once, so an undelayed path (the baseline accuracy checks subtract) carries no hold
//!   thread's wake-up (about 27 µs median on an idle 2-core VM, ms on a busy one).
//! - **Loss**: each direction has its own `SmallRng` seeded from `seed` (`seed` for fwd,
//!   `seed ^ RET_SEED_SALT` for ret); each received packet draws once, in arrival order, so the
//!   same seed and the same packet sequence give the same drop pattern. Drops are counted per
//!   route and direction ([`LinkEmu::stats`]).
//!
//! # Log format
//!
//! With a log file, one JSON object per line. Per packet:
//! `{"route":0,"dir":"fwd","seq":17,"bytes":64,"intended_hold_ns":5000000,"actual_hold_ns":5000412,"dropped":false}`
//! (`actual_hold_ns` is `null` for dropped packets; `seq` counts packets received in that
//! direction of that route, from 0). At shutdown, one summary line per route:
//! `{"summary":true,"route":0,"proto":"udp","fwd_packets":..,"fwd_dropped":..,"ret_packets":..,"ret_dropped":..}`.

// The emulator runs on plain OS threads, not tokio: holds need the OS monotonic clock and a spin
// to be µs-accurate, which tokio's pausable clock and 1 ms timers cannot give.
#![allow(clippy::disallowed_types)]

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How long before a packet's due time the hold thread stops sleeping and starts spinning.
pub const SPIN_BEFORE: Duration = Duration::from_micros(200);

/// The time slice every emulator thread requests (the kernel's minimum custom slice).
pub const THREAD_SLICE: Duration = Duration::from_micros(100);

/// Most UDP clients one route tracks at once; packets from further clients are dropped (and
/// counted).
pub const MAX_UDP_CLIENTS: usize = 4096;

/// Most TCP connections one route forwards at once; further ones are closed on accept (and
/// counted as forward drops).
pub const MAX_TCP_CONNS: usize = 1024;

/// Default `idle` of a route: a UDP client or a half-ended TCP connection idle this long is
/// released.
pub const DEFAULT_IDLE: Duration = Duration::from_secs(30);

/// XOR-ed into the seed for the return direction's RNG, so the two directions differ.
pub const RET_SEED_SALT: u64 = 0x9e37_79b9_7f4a_7c15;

/// How long the far end may take to answer a packet for its answer still to count as one (see
/// [`tun`]'s "Warm-up").
pub const ANSWER_SLACK: Duration = Duration::from_millis(1);

/// Largest `warm` a tun route takes.
pub const MAX_WARM: Duration = Duration::from_millis(10);

/// How often blocked threads wake to check for shutdown.
const POLL: Duration = Duration::from_millis(20);

/// Largest datagram/chunk read at once.
const BUF: usize = 65_536;

pub mod tun;

// === route specs ===

/// Transport of a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteProto {
    /// Datagrams, forwarded one by one (delay and loss).
    Udp,
    /// A byte stream per connection, forwarded in chunks (delay only).
    Tcp,
    /// Every IPv4 packet between two network namespaces, through a TUN device in each ([`tun`]):
    /// TCP handshakes, QUIC and everything else get the delay and loss too.
    Tun,
}

impl RouteProto {
    /// `udp` or `tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            RouteProto::Udp => "udp",
            RouteProto::Tcp => "tcp",
            RouteProto::Tun => "tun",
        }
    }
}

/// One route: where to listen, where to forward, and how to impair each direction.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteSpec {
    /// udp or tcp.
    pub proto: RouteProto,
    /// Listen address (port 0: any).
    pub listen: SocketAddr,
    /// Where traffic is forwarded.
    pub upstream: SocketAddr,
    /// One-way delay client → upstream.
    pub fwd_delay: Duration,
    /// One-way delay upstream → client.
    pub ret_delay: Duration,
    /// Loss client → upstream, percent (0..=100).
    pub loss_fwd_pct: f64,
    /// Loss upstream → client, percent (0..=100).
    pub loss_ret_pct: f64,
    /// Seed of the loss decisions.
    pub seed: u64,
    /// How long a UDP client, or a TCP connection with one direction ended, may sit idle before
    /// it is released (see the module doc).
    pub idle: Duration,
    /// Tun routes: the namespaces of the two ends (`listen` and `upstream` hold their addresses,
    /// port 0).
    pub namespaces: Option<(String, String)>,
    /// Tun routes: how long before a held packet that answers the receiving end is due a warm-up
    /// packet goes ahead of it into the same device (zero: never; see [`tun`]'s "Warm-up").
    pub warm: Duration,
}

impl RouteSpec {
    /// A route with no delay and no loss.
    pub fn new(proto: RouteProto, listen: SocketAddr, upstream: SocketAddr) -> Self {
        RouteSpec {
            proto,
            listen,
            upstream,
            fwd_delay: Duration::ZERO,
            ret_delay: Duration::ZERO,
            loss_fwd_pct: 0.0,
            loss_ret_pct: 0.0,
            seed: 0,
            idle: DEFAULT_IDLE,
            namespaces: None,
            warm: Duration::ZERO,
        }
    }
}

/// What is wrong with a route spec (see the module doc for the syntax).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum RouteProblem {
    /// No `PROTO:` prefix or no `=` between the addresses.
    #[error("expected PROTO:LISTEN=UPSTREAM[,key=value...]")]
    Shape,
    /// PROTO is not udp, tcp or tun.
    #[error("unknown protocol {0:?}; use udp, tcp or tun")]
    Proto(String),
    /// A tun end is not `NAMESPACE/IPV4`.
    #[error("tun {which} end {value:?} is not NAMESPACE/IPV4 (e.g. mla/10.77.0.1)")]
    TunEnd {
        /// `first` or `second`.
        which: &'static str,
        /// The text given.
        value: String,
    },
    /// LISTEN or UPSTREAM is not an `ip:port` socket address.
    #[error("{which} address {value:?} is not ip:port (IPv6 as [addr]:port)")]
    Addr {
        /// `listen` or `upstream`.
        which: &'static str,
        /// The text given.
        value: String,
    },
    /// UPSTREAM has port 0.
    #[error("upstream address {0} needs a non-zero port")]
    UpstreamPort(SocketAddr),
    /// An option is not `key=value`.
    #[error("option {0:?} is not key=value")]
    Option(String),
    /// An option key is not known.
    #[error("unknown option {0:?}; known: fwd, ret, loss_fwd, loss_ret, seed, idle, warm (tun)")]
    UnknownKey(String),
    /// An option appears twice.
    #[error("option {0:?} given twice")]
    Duplicate(String),
    /// An option's value does not parse or is out of range.
    #[error("{key}={value:?}: {reason}")]
    Value {
        /// The option.
        key: String,
        /// The text given.
        value: String,
        /// What is expected.
        reason: String,
    },
    /// Loss was asked for on a TCP route.
    #[error("{0} is not supported on tcp routes (TCP would retransmit; use a udp route)")]
    TcpLoss(String),
}

/// A route spec that did not parse: the spec and the part that is wrong.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[error("route {spec:?}: {problem}")]
pub struct RouteSpecError {
    /// The whole spec as given.
    pub spec: String,
    /// What is wrong.
    pub problem: RouteProblem,
}

impl FromStr for RouteSpec {
    type Err = RouteSpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_route(s.trim()).map_err(|problem| RouteSpecError {
            spec: s.to_string(),
            problem,
        })
    }
}

fn parse_route(s: &str) -> Result<RouteSpec, RouteProblem> {
    let (proto, rest) = s.split_once(':').ok_or(RouteProblem::Shape)?;
    let proto = match proto.to_ascii_lowercase().as_str() {
        "udp" => RouteProto::Udp,
        "tcp" => RouteProto::Tcp,
        "tun" => RouteProto::Tun,
        other => return Err(RouteProblem::Proto(other.to_string())),
    };
    let mut parts = rest.split(',');
    let addrs = parts.next().unwrap_or_default();
    let (listen, upstream) = addrs.split_once('=').ok_or(RouteProblem::Shape)?;
    if proto == RouteProto::Tun {
        let end = |which, v: &str| {
            let bad = || RouteProblem::TunEnd {
                which,
                value: v.to_string(),
            };
            let (ns, ip) = v.trim().split_once('/').ok_or_else(bad)?;
            let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
            if !tun::valid_namespace(ns) {
                return Err(bad());
            }
            Ok((ns.to_string(), SocketAddr::from((ip, 0))))
        };
        let (a, b) = (end("first", listen)?, end("second", upstream)?);
        let mut route = RouteSpec::new(proto, a.1, b.1);
        route.namespaces = Some((a.0, b.0));
        return parse_options(route, parts);
    }
    let addr = |which, v: &str| {
        v.trim()
            .parse::<SocketAddr>()
            .map_err(|_| RouteProblem::Addr {
                which,
                value: v.to_string(),
            })
    };
    let route = RouteSpec::new(proto, addr("listen", listen)?, addr("upstream", upstream)?);
    if route.upstream.port() == 0 {
        return Err(RouteProblem::UpstreamPort(route.upstream));
    }
    parse_options(route, parts)
}

/// Applies the `key=value` options of a route spec to `route`.
fn parse_options<'a>(
    mut route: RouteSpec,
    parts: impl Iterator<Item = &'a str>,
) -> Result<RouteSpec, RouteProblem> {
    let proto = route.proto;
    let mut seen: Vec<&str> = Vec::new();
    for opt in parts {
        let (key, value) = opt
            .split_once('=')
            .ok_or_else(|| RouteProblem::Option(opt.to_string()))?;
        let (key, value) = (key.trim(), value.trim());
        if seen.contains(&key) {
            return Err(RouteProblem::Duplicate(key.to_string()));
        }
        let bad = |reason: &str| RouteProblem::Value {
            key: key.to_string(),
            value: value.to_string(),
            reason: reason.to_string(),
        };
        let duration = || {
            humantime::parse_duration(value)
                .map_err(|_| bad("expected a duration such as 5ms, 250us or 0"))
        };
        let percent = || {
            value
                .parse::<f64>()
                .ok()
                .filter(|p| (0.0..=100.0).contains(p))
                .ok_or_else(|| bad("expected a percentage in 0..=100"))
        };
        match key {
            "fwd" => route.fwd_delay = duration()?,
            "ret" => route.ret_delay = duration()?,
            "loss_fwd" => route.loss_fwd_pct = percent()?,
            "loss_ret" => route.loss_ret_pct = percent()?,
            "seed" => {
                route.seed = value
                    .parse()
                    .map_err(|_| bad("expected an unsigned 64-bit integer"))?;
            }
            "idle" => {
                route.idle = duration()?;
                if route.idle.is_zero() {
                    return Err(bad("expected a duration above 0, such as 30s"));
                }
            }
            "warm" => {
                if proto != RouteProto::Tun {
                    return Err(bad(
                        "warm-up packets go through the kernel's receive path: tun routes only",
                    ));
                }
                route.warm = duration()?;
                if route.warm > MAX_WARM {
                    return Err(bad("expected at most 10ms, such as 100us (0: off)"));
                }
            }
            _ => return Err(RouteProblem::UnknownKey(key.to_string())),
        }
        if proto == RouteProto::Tcp && key.starts_with("loss") && route_loss(&route) > 0.0 {
            return Err(RouteProblem::TcpLoss(key.to_string()));
        }
        seen.push(key);
    }
    Ok(route)
}

fn route_loss(r: &RouteSpec) -> f64 {
    r.loss_fwd_pct.max(r.loss_ret_pct)
}

impl RouteSpec {
    /// The two ends as written in the spec: `ip:port` for udp and tcp, `NAMESPACE/IP` for tun.
    fn ends(&self) -> (String, String) {
        match &self.namespaces {
            Some((a, b)) => (
                format!("{a}/{}", self.listen.ip()),
                format!("{b}/{}", self.upstream.ip()),
            ),
            None => (self.listen.to_string(), self.upstream.to_string()),
        }
    }
}

impl fmt::Display for RouteSpec {
    /// The spec in the syntax [`RouteSpec::from_str`] parses.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b) = self.ends();
        write!(
            f,
            "{}:{}={},fwd={}us,ret={}us,loss_fwd={},loss_ret={},seed={},idle={}ms",
            self.proto.as_str(),
            a,
            b,
            self.fwd_delay.as_micros(),
            self.ret_delay.as_micros(),
            self.loss_fwd_pct,
            self.loss_ret_pct,
            self.seed,
            self.idle.as_millis()
        )?;
        if !self.warm.is_zero() {
            write!(f, ",warm={}us", self.warm.as_micros())?;
        }
        Ok(())
    }
}

// === stats ===

/// Packet counts of one route (TCP: chunks as read).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteStats {
    /// Packets received from clients.
    pub fwd_packets: u64,
    /// Of those, dropped by the loss model.
    pub fwd_dropped: u64,
    /// Packets received from upstream.
    pub ret_packets: u64,
    /// Of those, dropped by the loss model.
    pub ret_dropped: u64,
    /// Warm-up packets written (tun routes with `warm`, both directions; not counted above).
    pub warm_packets: u64,
}

#[derive(Debug, Default)]
struct Counters {
    fwd_packets: AtomicU64,
    fwd_dropped: AtomicU64,
    ret_packets: AtomicU64,
    ret_dropped: AtomicU64,
    warm_packets: AtomicU64,
    /// When each direction last read a packet (fwd, ret): nanoseconds since [`epoch`] plus one,
    /// 0 for never. A tun route's warm-up asks whether the receiving end sent recently.
    last_read: [AtomicU64; 2],
}

/// The process's reference instant for [`Counters::last_read`].
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

impl Counters {
    fn mark_read(&self, dir: Dir, at: Instant) {
        let ns =
            u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX - 1);
        self.last_read[dir as usize].store(ns + 1, Ordering::Relaxed);
    }

    fn last_read(&self, dir: Dir) -> Option<Instant> {
        match self.last_read[dir as usize].load(Ordering::Relaxed) {
            0 => None,
            ns => Some(epoch() + Duration::from_nanos(ns - 1)),
        }
    }

    fn snapshot(&self) -> RouteStats {
        RouteStats {
            fwd_packets: self.fwd_packets.load(Ordering::Relaxed),
            fwd_dropped: self.fwd_dropped.load(Ordering::Relaxed),
            ret_packets: self.ret_packets.load(Ordering::Relaxed),
            ret_dropped: self.ret_dropped.load(Ordering::Relaxed),
            warm_packets: self.warm_packets.load(Ordering::Relaxed),
        }
    }
}

// === the emulator ===

/// Running routes. Dropping it shuts everything down (as [`LinkEmu::shutdown`] does).
#[derive(Debug)]
pub struct LinkEmu {
    routes: Vec<RouteSpec>,
    addrs: Vec<SocketAddr>,
    counters: Vec<Arc<Counters>>,
    shared: Arc<Shared>,
    logger: Option<(Sender<LogLine>, JoinHandle<()>)>,
}

/// State every thread of the emulator sees.
#[derive(Debug, Default)]
struct Shared {
    /// Set once at shutdown; every loop checks it at least every [`POLL`].
    stop: AtomicBool,
    /// Every running thread, joined at shutdown. Connection and client threads are added as
    /// they start; finished ones are joined (and dropped from here) whenever a thread starts.
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl Shared {
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Starts a thread, first reaping the ones that have finished.
    fn spawn(&self, name: String, f: impl FnOnce() + Send + 'static) -> io::Result<()> {
        let h = std::thread::Builder::new().name(name).spawn(move || {
            request_short_slice(THREAD_SLICE);
            f();
        })?;
        let finished: Vec<JoinHandle<()>> = match self.threads.lock() {
            Ok(mut v) => {
                let (done, live) = std::mem::take(&mut *v)
                    .into_iter()
                    .partition(JoinHandle::is_finished);
                *v = live;
                v.push(h);
                done
            }
            Err(_) => Vec::new(),
        };
        // Already finished: joining returns at once and releases the thread's stack.
        for h in finished {
            let _ = h.join();
        }
        Ok(())
    }
}

impl LinkEmu {
    /// Binds every route and starts forwarding, without a packet log.
    ///
    /// # Errors
    ///
    /// The first bind (or thread spawn) error; routes already started are shut down.
    pub fn start(routes: Vec<RouteSpec>) -> io::Result<Self> {
        Self::start_with_log(routes, None)
    }

    /// Binds every route and starts forwarding, logging every packet to `log` (see the module
    /// doc for the format) when given.
    ///
    /// # Errors
    ///
    /// The log file cannot be created, or the first bind (or thread spawn) error.
    pub fn start_with_log(routes: Vec<RouteSpec>, log: Option<&Path>) -> io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let logger = match log {
            Some(path) => {
                let file = std::fs::File::create(path)?;
                let (tx, rx) = mpsc::channel::<LogLine>();
                let h = std::thread::Builder::new()
                    .name("linkemu-log".into())
                    .spawn(move || write_log(rx, file))?;
                Some((tx, h))
            }
            None => None,
        };
        let mut emu = LinkEmu {
            routes: Vec::new(),
            addrs: Vec::new(),
            counters: Vec::new(),
            shared,
            logger,
        };
        for (i, spec) in routes.into_iter().enumerate() {
            let counters = Arc::new(Counters::default());
            let log = emu.logger.as_ref().map(|(tx, _)| tx.clone());
            let addr = match spec.proto {
                RouteProto::Udp => start_udp(i, &spec, &emu.shared, &counters, log)?,
                RouteProto::Tcp => start_tcp(i, &spec, &emu.shared, &counters, log)?,
                RouteProto::Tun => tun::start(i, &spec, &emu.shared, &counters, log)?,
            };
            emu.routes.push(spec);
            emu.addrs.push(addr);
            emu.counters.push(counters);
        }
        Ok(emu)
    }

    /// The routes, in the order given.
    pub fn routes(&self) -> &[RouteSpec] {
        &self.routes
    }

    /// The address route `i` actually listens on (the port is known even for port 0).
    pub fn route_addr(&self, i: usize) -> Option<SocketAddr> {
        self.addrs.get(i).copied()
    }

    /// Route `i`'s counts so far.
    pub fn stats(&self, i: usize) -> Option<RouteStats> {
        self.counters.get(i).map(|c| c.snapshot())
    }

    /// The lines the binary prints on startup, one per route, e.g.
    /// `route 0 udp 127.0.0.1:41234 -> 127.0.0.1:862`.
    pub fn describe(&self) -> Vec<String> {
        self.routes
            .iter()
            .zip(&self.addrs)
            .enumerate()
            .map(|(i, (r, a))| match r.proto {
                RouteProto::Tun => {
                    let (a, b) = r.ends();
                    format!("route {i} tun {a} -> {b}")
                }
                _ => format!("route {i} {} {a} -> {}", r.proto.as_str(), r.upstream),
            })
            .collect()
    }

    /// One summary line per route (what the binary prints on stderr at exit), e.g.
    /// `summary route 0 udp fwd_packets=2000 fwd_dropped=193 ret_packets=1807 ret_dropped=0`.
    pub fn summary(&self) -> Vec<String> {
        (0..self.routes.len())
            .filter_map(|i| {
                let s = self.stats(i)?;
                let mut line = format!(
                    "summary route {i} {} fwd_packets={} fwd_dropped={} ret_packets={} ret_dropped={}",
                    self.routes[i].proto.as_str(),
                    s.fwd_packets,
                    s.fwd_dropped,
                    s.ret_packets,
                    s.ret_dropped
                );
                if !self.routes[i].warm.is_zero() {
                    line.push_str(&format!(" warm_packets={}", s.warm_packets));
                }
                Some(line)
            })
            .collect()
    }

    /// Stops every route, drops packets still held, writes the summary to the log and flushes
    /// it. Returns the final counts, one per route.
    ///
    /// Blocks while the threads notice (up to ~20 ms); from async code, call it (or
    /// drop the emulator) where blocking briefly is acceptable, e.g. `spawn_blocking`.
    pub fn shutdown(mut self) -> Vec<RouteStats> {
        self.stop();
        self.counters.iter().map(|c| c.snapshot()).collect()
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // Wake the blocking TCP accept loops.
        for (r, a) in self.routes.iter().zip(&self.addrs) {
            if r.proto == RouteProto::Tcp {
                let mut a = *a;
                if a.ip().is_unspecified() {
                    a.set_ip(if a.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                let _ = TcpStream::connect_timeout(&a, Duration::from_secs(1));
            }
        }
        loop {
            let batch: Vec<_> = match self.shared.threads.lock() {
                Ok(mut v) => v.drain(..).collect(),
                Err(_) => break,
            };
            if batch.is_empty() {
                break;
            }
            for h in batch {
                let _ = h.join();
            }
        }
        if let Some((tx, h)) = self.logger.take() {
            for (i, r) in self.routes.iter().enumerate() {
                let s = self.counters[i].snapshot();
                let _ = tx.send(LogLine::Text(
                    serde_json::json!({
                        "summary": true, "route": i, "proto": r.proto.as_str(),
                        "fwd_packets": s.fwd_packets, "fwd_dropped": s.fwd_dropped,
                        "ret_packets": s.ret_packets, "ret_dropped": s.ret_dropped,
                        "warm_packets": s.warm_packets,
                    })
                    .to_string(),
                ));
            }
            drop(tx);
            let _ = h.join();
        }
    }
}

impl Drop for LinkEmu {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A line of the packet log, as the sending thread hands it to the log thread.
#[derive(Debug)]
enum LogLine {
    /// One packet, formatted by the log thread: building the JSON costs µs (tens in a debug
    /// build) that the hold thread would otherwise spend before its next packet, making packets
    /// due together late.
    Packet {
        route: usize,
        dir: Dir,
        seq: u64,
        bytes: usize,
        intended: Duration,
        /// `None`: dropped.
        actual: Option<Duration>,
    },
    /// A finished line (the summaries).
    Text(String),
}

fn write_log(rx: Receiver<LogLine>, file: std::fs::File) {
    let mut w = io::BufWriter::new(file);
    // Ends when every sender (lanes and the emulator) is gone.
    for line in rx {
        let _ = match line {
            LogLine::Packet {
                route,
                dir,
                seq,
                bytes,
                intended,
                actual,
            } => writeln!(
                w,
                "{}",
                serde_json::json!({
                    "route": route,
                    "dir": match dir { Dir::Fwd => "fwd", Dir::Ret => "ret" },
                    "seq": seq,
                    "bytes": bytes,
                    "intended_hold_ns": intended.as_nanos() as u64,
                    "actual_hold_ns": actual.map(|d| d.as_nanos() as u64),
                    "dropped": actual.is_none(),
                })
            ),
            LogLine::Text(line) => writeln!(w, "{line}"),
        };
    }
    let _ = w.flush();
}

// === lanes: one direction of one route ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dir {
    Fwd = 0,
    Ret = 1,
}

impl Dir {
    fn other(self) -> Dir {
        match self {
            Dir::Fwd => Dir::Ret,
            Dir::Ret => Dir::Fwd,
        }
    }
}

/// Where a held packet goes when due.
#[derive(Debug)]
enum Out {
    /// A datagram on a connected socket (to upstream).
    Udp(Arc<UdpSocket>),
    /// A datagram to a client, from the listen socket.
    UdpTo(Arc<UdpSocket>, SocketAddr),
    /// A chunk of a TCP stream, to that side of the connection.
    Tcp(Arc<Conn>, Side),
    /// The other side half-closed (or failed): forward the FIN to this side.
    TcpFin(Arc<Conn>, Side),
    /// An IP packet, into this TUN device.
    Tun(Arc<std::fs::File>),
}

#[derive(Debug)]
struct Held {
    received: Instant,
    due: Instant,
    seq: u64,
    payload: Vec<u8>,
    out: Out,
}

/// The loss decision, counters and hold queue of one direction of one route.
#[derive(Debug)]
struct Lane {
    route: usize,
    dir: Dir,
    delay: Duration,
    loss_pct: f64,
    rng: Mutex<SmallRng>,
    counters: Arc<Counters>,
    queue: Sender<Held>,
    /// The route's `warm` (tun routes; zero: off).
    warm: Duration,
    /// The route's round trip, `fwd + ret`.
    round_trip: Duration,
    log: Option<Sender<LogLine>>,
}

impl Lane {
    /// Accepts a packet received at `received`: counts it, drops it by the loss model or queues
    /// it for the hold thread.
    ///
    /// A lane without delay sends the packet from the calling thread at once instead: handing
    /// it to the hold thread would add that thread's wake-up (27 µs median on an idle 2-core VM,
    /// more when the cores are busy) to a path meant to add nothing, and an undelayed path is
    /// the baseline the accuracy benches subtract. Every packet of such a lane goes this way, so
    /// its order is kept.
    fn offer(&self, received: Instant, payload: Vec<u8>, out: Out) {
        if matches!(out, Out::TcpFin(..)) {
            self.hold(Held {
                received,
                due: received + self.delay,
                seq: u64::MAX,
                payload,
                out,
            });
            return;
        }
        let (packets, dropped) = match self.dir {
            Dir::Fwd => (&self.counters.fwd_packets, &self.counters.fwd_dropped),
            Dir::Ret => (&self.counters.ret_packets, &self.counters.ret_dropped),
        };
        let seq = packets.fetch_add(1, Ordering::Relaxed);
        if !self.warm.is_zero() {
            self.counters.mark_read(self.dir, received);
        }
        let drop = self.loss_pct > 0.0
            && self
                .rng
                .lock()
                .map(|mut r| r.random::<f64>() * 100.0 < self.loss_pct)
                .unwrap_or(false);
        if drop {
            dropped.fetch_add(1, Ordering::Relaxed);
            self.log_packet(seq, payload.len(), None);
            return;
        }
        self.hold(Held {
            received,
            due: received + self.delay,
            seq,
            payload,
            out,
        });
    }

    /// Queues `held` for the hold thread, or sends it now on a lane without delay.
    fn hold(&self, held: Held) {
        if self.delay.is_zero() {
            self.deliver(held);
        } else {
            let _ = self.queue.send(held);
        }
    }

    /// Sends `held` to where it goes and logs its hold (FINs are not logged).
    fn deliver(&self, held: Held) {
        let sent = Instant::now();
        match &held.out {
            Out::Udp(sock) => {
                let _ = sock.send(&held.payload);
            }
            Out::UdpTo(sock, to) => {
                let _ = sock.send_to(&held.payload, to);
            }
            Out::Tcp(conn, side) => {
                if conn.stream(*side).write_all(&held.payload).is_err() {
                    // The receiver is gone (or stopped reading for a second): end the whole
                    // connection rather than keep reading what can no longer be delivered.
                    conn.tear_down();
                }
            }
            Out::TcpFin(conn, side) => {
                let _ = conn.stream(*side).shutdown(Shutdown::Write);
                return;
            }
            Out::Tun(dev) => {
                let _ = (&**dev).write(&held.payload);
            }
        }
        self.log_packet(
            held.seq,
            held.payload.len(),
            Some(sent.duration_since(held.received)),
        );
    }

    /// Whether a packet due at `due` answers the end it goes to: that end sent a packet on this
    /// route (read by the other direction) within one round trip of the route plus
    /// [`ANSWER_SLACK`] before `due`.
    fn answers(&self, due: Instant) -> bool {
        self.counters
            .last_read(self.dir.other())
            .is_some_and(|sent| {
                due.saturating_duration_since(sent) <= self.round_trip + ANSWER_SLACK
            })
    }

    /// Writes a warm-up packet for `held` into its TUN device (other outputs: nothing): see
    /// [`tun`]'s "Warm-up".
    fn warm_up(&self, held: &Held) {
        if let Out::Tun(dev) = &held.out
            && let Some(pkt) = tun::warm_up_packet(&held.payload)
            && (&**dev).write(&pkt).is_ok()
        {
            self.counters.warm_packets.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn log_packet(&self, seq: u64, bytes: usize, actual: Option<Duration>) {
        if let Some(log) = &self.log {
            let _ = log.send(LogLine::Packet {
                route: self.route,
                dir: self.dir,
                seq,
                bytes,
                intended: self.delay,
                actual,
            });
        }
    }
}

/// Creates a lane and its hold thread.
fn lane(
    route: usize,
    dir: Dir,
    spec: &RouteSpec,
    shared: &Arc<Shared>,
    counters: &Arc<Counters>,
    log: Option<Sender<LogLine>>,
) -> io::Result<Arc<Lane>> {
    let (delay, loss_pct, seed) = match dir {
        Dir::Fwd => (spec.fwd_delay, spec.loss_fwd_pct, spec.seed),
        Dir::Ret => (spec.ret_delay, spec.loss_ret_pct, spec.seed ^ RET_SEED_SALT),
    };
    let (tx, rx) = mpsc::channel();
    let lane = Arc::new(Lane {
        route,
        dir,
        delay,
        loss_pct,
        rng: Mutex::new(SmallRng::seed_from_u64(seed)),
        counters: counters.clone(),
        queue: tx,
        warm: spec.warm,
        round_trip: spec.fwd_delay + spec.ret_delay,
        log,
    });
    let (l, s) = (lane.clone(), shared.clone());
    let name = format!("linkemu-{route}-{dir:?}-hold");
    shared.spawn(name, move || hold_loop(&l, rx, &s))?;
    Ok(lane)
}

/// Sends each held packet at its due time, in arrival order; on a tun route with `warm`, sends
/// a warm-up packet `warm` ahead of each packet that answers the receiving end (see [`tun`]'s
/// "Warm-up").
fn hold_loop(lane: &Lane, rx: Receiver<Held>, shared: &Shared) {
    let mut last_sent: Option<Instant> = None;
    loop {
        let held = match rx.recv_timeout(POLL) {
            Ok(h) => h,
            Err(RecvTimeoutError::Timeout) if !shared.stopped() => continue,
            Err(_) => return,
        };
        let answers = !lane.warm.is_zero() && lane.answers(held.due);
        if let Some(at) = warm_at(lane.warm, held.due, last_sent, answers) {
            if !wait_until(at, shared) {
                return;
            }
            lane.warm_up(&held);
        }
        if !wait_until(held.due, shared) {
            return;
        }
        lane.deliver(held);
        if !lane.warm.is_zero() {
            // Only warm-up asks when the lane last sent: no clock read on other routes.
            last_sent = Some(Instant::now());
        }
    }
}

/// When to send a warm-up packet ahead of a packet due at `due`: `warm` before it, when it
/// `answers` the receiving end, unless warm-up is off or the lane sent a packet within `warm` of
/// that instant (the path is warm already).
fn warm_at(
    warm: Duration,
    due: Instant,
    last_sent: Option<Instant>,
    answers: bool,
) -> Option<Instant> {
    if warm.is_zero() || !answers {
        return None;
    }
    let at = due.checked_sub(warm)?;
    match last_sent {
        Some(last) if at.saturating_duration_since(last) < warm => None,
        _ => Some(at),
    }
}

/// glibc malloc arenas the emulator's process uses (see [`limit_malloc_arenas`]).
pub const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc at [`MALLOC_ARENAS`] arenas for the whole process. Call it first in
/// `main`, before any thread starts; a no-op off glibc. Returns whether glibc took the setting.
///
/// The emulator runs a thread per UDP client and per TCP direction (about 300 in the demo), and
/// each packet is allocated by the thread that read it and freed by the hold thread that sent it.
/// With glibc's default of up to 8 arenas per core, new threads land in ever more arenas and the
/// freed chunks stay spread over all of them: in a 5-minute demo soak (`scripts/soak_demo.sh
/// --no-build 5`) the emulator's RSS went 34.0 -> 37.8 MiB after the 2-minute mark (and 33.6 ->
/// 51.4 MiB over 10 minutes) with threads and descriptors flat; with two arenas the same run
/// stayed at 26.3 -> 26.5 MiB. Two rather than one: the UDP listen loop and the hold threads
/// allocate at the same time on every packet.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
pub fn limit_malloc_arenas() -> bool {
    // SAFETY: mallopt only sets an allocator parameter; it reads and writes no memory of ours.
    // It returns 0 when it refuses, which leaves glibc's default in place.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) == 1 }
}

/// See the glibc version: other allocators need no cap.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn limit_malloc_arenas() -> bool {
    false
}

/// Asks for a short EEVDF time slice for the calling thread (best effort: returns whether the
/// kernel took the request; older kernels accept it and ignore the slice). The policy stays
/// SCHED_OTHER and the nice value stays what it is, so this needs no privileges.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
#[allow(unsafe_code)]
fn request_short_slice(slice: Duration) -> bool {
    /// `struct sched_attr`, first version (`SCHED_ATTR_SIZE_VER0`, 48 bytes).
    #[repr(C)]
    struct SchedAttr {
        size: u32,
        policy: u32,
        flags: u64,
        nice: i32,
        priority: u32,
        runtime: u64,
        deadline: u64,
        period: u64,
    }
    // SAFETY: getpriority reads no memory of ours; PRIO_PROCESS with 0 is the calling thread.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let attr = SchedAttr {
        size: std::mem::size_of::<SchedAttr>() as u32,
        policy: libc::SCHED_OTHER as u32,
        flags: 0,
        nice,
        priority: 0,
        // For SCHED_OTHER, sched_runtime is the requested slice (0.1 to 100 ms).
        runtime: u64::try_from(slice.as_nanos()).unwrap_or(u64::MAX),
        deadline: 0,
        period: 0,
    };
    // SAFETY: `attr` is a valid, initialised sched_attr of the size it states, alive for the
    // call; pid 0 is the calling thread; flags 0.
    let rc = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &raw const attr, 0u32) };
    rc == 0
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn request_short_slice(_slice: Duration) -> bool {
    false
}

/// Sleeps until [`SPIN_BEFORE`] before `due`, then spins. Returns false if shut down meanwhile.
fn wait_until(due: Instant, shared: &Shared) -> bool {
    loop {
        let now = Instant::now();
        if now >= due {
            return true;
        }
        let left = due - now;
        if left > SPIN_BEFORE {
            if shared.stopped() {
                return false;
            }
            std::thread::sleep((left - SPIN_BEFORE).min(POLL));
        } else {
            std::hint::spin_loop();
        }
    }
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

fn unspecified_for(addr: SocketAddr) -> SocketAddr {
    if addr.is_ipv4() {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    }
}

// === UDP ===

fn start_udp(
    i: usize,
    spec: &RouteSpec,
    shared: &Arc<Shared>,
    counters: &Arc<Counters>,
    log: Option<Sender<LogLine>>,
) -> io::Result<SocketAddr> {
    let listen = Arc::new(UdpSocket::bind(spec.listen)?);
    listen.set_read_timeout(Some(POLL))?;
    let addr = listen.local_addr()?;
    let fwd = lane(i, Dir::Fwd, spec, shared, counters, log.clone())?;
    let ret = lane(i, Dir::Ret, spec, shared, counters, log)?;
    let (spec, s) = (spec.clone(), shared.clone());
    shared.spawn(format!("linkemu-{i}-udp-listen"), move || {
        udp_listen(i, &listen, &spec, &fwd, &ret, &s);
    })?;
    Ok(addr)
}

/// How often the UDP listen loop looks for idle clients (at most; sooner for a short `idle`).
const UDP_SWEEP: Duration = Duration::from_secs(1);

/// One UDP client of a route: its upstream socket and when it last saw traffic.
#[derive(Debug)]
struct UdpClient {
    /// Connected to UPSTREAM; replies arriving here go back to the client.
    sock: Arc<UdpSocket>,
    /// Last packet either way (see [`Activity`]).
    activity: Activity,
    /// Set when the client is forgotten: its return thread ends.
    done: AtomicBool,
}

/// When a flow last carried a packet, readable from any thread.
#[derive(Debug)]
struct Activity {
    born: Instant,
    /// Nanoseconds after `born`.
    last_ns: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            born: Instant::now(),
            last_ns: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ns = u64::try_from(self.born.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_ns.store(ns, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.born
            .elapsed()
            .saturating_sub(Duration::from_nanos(self.last_ns.load(Ordering::Relaxed)))
    }
}

/// Receives from clients; creates one upstream socket (and return thread) per client and
/// forgets clients idle for the route's `idle`.
fn udp_listen(
    i: usize,
    listen: &Arc<UdpSocket>,
    spec: &RouteSpec,
    fwd: &Arc<Lane>,
    ret: &Arc<Lane>,
    shared: &Arc<Shared>,
) {
    let mut clients: HashMap<SocketAddr, Arc<UdpClient>> = HashMap::new();
    let mut buf = vec![0u8; BUF];
    let sweep_every = UDP_SWEEP.min(spec.idle / 4);
    let mut swept = Instant::now();
    while !shared.stopped() {
        if swept.elapsed() >= sweep_every {
            swept = Instant::now();
            clients.retain(|_, c| {
                let keep = c.activity.idle_for() < spec.idle;
                if !keep {
                    c.done.store(true, Ordering::Relaxed);
                }
                keep
            });
        }
        let (n, from) = match listen.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) if is_timeout(&e) => continue,
            // e.g. ICMP errors surfacing on the socket: not fatal to the route.
            Err(_) => continue,
        };
        let received = Instant::now();
        let client = match clients.get(&from) {
            Some(c) => c.clone(),
            None => {
                let Some(c) = (clients.len() < MAX_UDP_CLIENTS)
                    .then(|| udp_client(i, listen, spec.upstream, from, ret, shared).ok())
                    .flatten()
                else {
                    // Counted as a forward drop: the packet never reaches upstream.
                    fwd.counters.fwd_packets.fetch_add(1, Ordering::Relaxed);
                    fwd.counters.fwd_dropped.fetch_add(1, Ordering::Relaxed);
                    continue;
                };
                clients.insert(from, c.clone());
                c
            }
        };
        client.activity.touch();
        fwd.offer(received, buf[..n].to_vec(), Out::Udp(client.sock.clone()));
    }
}

/// The upstream socket for one client, with a thread passing replies back to it until the
/// client is forgotten.
fn udp_client(
    i: usize,
    listen: &Arc<UdpSocket>,
    upstream: SocketAddr,
    client: SocketAddr,
    ret: &Arc<Lane>,
    shared: &Arc<Shared>,
) -> io::Result<Arc<UdpClient>> {
    let sock = UdpSocket::bind(unspecified_for(upstream))?;
    sock.connect(upstream)?;
    sock.set_read_timeout(Some(POLL))?;
    let c = Arc::new(UdpClient {
        sock: Arc::new(sock),
        activity: Activity::new(),
        done: AtomicBool::new(false),
    });
    let (me, listen, ret, s) = (c.clone(), listen.clone(), ret.clone(), shared.clone());
    shared.spawn(format!("linkemu-{i}-udp-ret"), move || {
        let mut buf = vec![0u8; BUF];
        while !s.stopped() && !me.done.load(Ordering::Relaxed) {
            match me.sock.recv(&mut buf) {
                Ok(n) => {
                    let received = Instant::now();
                    me.activity.touch();
                    ret.offer(
                        received,
                        buf[..n].to_vec(),
                        Out::UdpTo(listen.clone(), client),
                    );
                }
                // Timeouts, and ECONNREFUSED while nothing listens upstream.
                Err(_) => continue,
            }
        }
    })?;
    Ok(c)
}

// === TCP ===

fn start_tcp(
    i: usize,
    spec: &RouteSpec,
    shared: &Arc<Shared>,
    counters: &Arc<Counters>,
    log: Option<Sender<LogLine>>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(spec.listen)?;
    let addr = listener.local_addr()?;
    let fwd = lane(i, Dir::Fwd, spec, shared, counters, log.clone())?;
    let ret = lane(i, Dir::Ret, spec, shared, counters, log)?;
    let (upstream, idle, s) = (spec.upstream, spec.idle, shared.clone());
    let live = Arc::new(AtomicUsize::new(0));
    shared.spawn(format!("linkemu-{i}-tcp-accept"), move || {
        // Blocking accept, so a connection is pumped as soon as it arrives; shutdown wakes it
        // with a connection of its own (LinkEmu::stop).
        while !s.stopped() {
            match listener.accept() {
                Ok(_) if s.stopped() => break,
                Ok((client, _)) => {
                    let Some(slot) = LiveSlot::take(&live) else {
                        // Over MAX_TCP_CONNS: closed at once (dropped here), counted as a drop.
                        fwd.counters.fwd_packets.fetch_add(1, Ordering::Relaxed);
                        fwd.counters.fwd_dropped.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    let (fwd, ret, s2) = (fwd.clone(), ret.clone(), s.clone());
                    let _ = s.spawn(format!("linkemu-{i}-tcp-conn"), move || {
                        let _ = tcp_conn(i, client, upstream, idle, slot, &fwd, &ret, &s2);
                    });
                }
                // e.g. EMFILE: back off instead of spinning.
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    })?;
    Ok(addr)
}

/// One of a route's [`MAX_TCP_CONNS`] connection slots, given back when dropped (with the
/// connection's sockets).
#[derive(Debug)]
struct LiveSlot(Arc<AtomicUsize>);

impl LiveSlot {
    fn take(live: &Arc<AtomicUsize>) -> Option<Self> {
        live.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_TCP_CONNS).then_some(n + 1)
        })
        .ok()
        .map(|_| LiveSlot(live.clone()))
    }
}

impl Drop for LiveSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The two ends of a side of a forwarded TCP connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    /// The accepted connection.
    Client,
    /// The connection the emulator made to UPSTREAM.
    Up,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Up,
            Side::Up => Side::Client,
        }
    }
}

/// A forwarded TCP connection: both sockets, shared by its two pump threads and by the chunks
/// held for it. The sockets close when the last of those lets go (after the held FINs are out).
#[derive(Debug)]
struct Conn {
    client: TcpStream,
    up: TcpStream,
    /// Directions that have ended (EOF or error): 0, 1 or 2.
    ended: AtomicU8,
    /// Set when the connection is torn down; both pumps stop.
    broken: AtomicBool,
    /// Last chunk either way, or the end of a direction (the drain bound counts from there).
    activity: Activity,
    /// The route's slot, given back on drop.
    _slot: LiveSlot,
}

impl Conn {
    fn stream(&self, side: Side) -> &TcpStream {
        match side {
            Side::Client => &self.client,
            Side::Up => &self.up,
        }
    }

    /// Shuts both sockets down both ways: the peers see EOF, both pumps' reads return.
    fn tear_down(&self) {
        self.broken.store(true, Ordering::Relaxed);
        let _ = self.client.shutdown(Shutdown::Both);
        let _ = self.up.shutdown(Shutdown::Both);
    }
}

/// Connects upstream for one accepted client and pumps both directions until both have ended.
#[allow(clippy::too_many_arguments)] // one call site; a struct would only rename them
fn tcp_conn(
    i: usize,
    client: TcpStream,
    upstream: SocketAddr,
    idle: Duration,
    slot: LiveSlot,
    fwd: &Arc<Lane>,
    ret: &Arc<Lane>,
    shared: &Arc<Shared>,
) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let up = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    for s in [&client, &up] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(POLL))?;
        s.set_write_timeout(Some(Duration::from_secs(1)))?;
    }
    let conn = Arc::new(Conn {
        client,
        up,
        ended: AtomicU8::new(0),
        broken: AtomicBool::new(false),
        activity: Activity::new(),
        _slot: slot,
    });
    let (c, l, s) = (conn.clone(), ret.clone(), shared.clone());
    if let Err(e) = shared.spawn(format!("linkemu-{i}-tcp-ret"), move || {
        pump(&c, Side::Up, idle, &l, &s);
    }) {
        conn.tear_down();
        return Err(e);
    }
    pump(&conn, Side::Client, idle, fwd, shared);
    Ok(())
}

/// Reads chunks from side `from` and hands them to `lane` for delivery to the other side, then
/// the FIN. Ends at EOF or a read error, when the connection is torn down, or when the other
/// direction has ended and nothing moved for `idle` (then it tears the connection down).
fn pump(conn: &Arc<Conn>, from: Side, idle: Duration, lane: &Lane, shared: &Shared) {
    let mut buf = vec![0u8; BUF];
    let to = from.other();
    while !shared.stopped() && !conn.broken.load(Ordering::Relaxed) {
        match conn.stream(from).read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                conn.activity.touch();
                lane.offer(
                    Instant::now(),
                    buf[..n].to_vec(),
                    Out::Tcp(conn.clone(), to),
                );
            }
            Err(e) if is_timeout(&e) => {
                if conn.ended.load(Ordering::Relaxed) > 0 && conn.activity.idle_for() >= idle {
                    conn.tear_down();
                    break;
                }
            }
            Err(_) => break,
        }
    }
    conn.ended.fetch_add(1, Ordering::Relaxed);
    conn.activity.touch();
    lane.offer(Instant::now(), Vec::new(), Out::TcpFin(conn.clone(), to));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The arena cap the emulator's RSS depends on is one glibc accepts (a refused mallopt
    /// would silently bring the 10-minute soak's RSS growth back).
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn malloc_arena_cap_is_accepted() {
        assert!(
            limit_malloc_arenas(),
            "mallopt(M_ARENA_MAX, {MALLOC_ARENAS}) refused"
        );
    }

    fn parse(s: &str) -> Result<RouteSpec, RouteProblem> {
        s.parse::<RouteSpec>().map_err(|e| {
            assert!(e.to_string().contains(s), "error names the spec: {e}");
            e.problem
        })
    }

    #[test]
    fn parses_full_and_minimal_routes() {
        let r =
            parse("udp:127.0.0.1:0=127.0.0.1:862,fwd=5ms,ret=15ms,loss_fwd=2.5,loss_ret=0,seed=42")
                .expect("valid");
        assert_eq!(r.proto, RouteProto::Udp);
        assert_eq!(r.listen, "127.0.0.1:0".parse().expect("addr"));
        assert_eq!(r.upstream, "127.0.0.1:862".parse().expect("addr"));
        assert_eq!(
            (r.fwd_delay, r.ret_delay),
            (Duration::from_millis(5), Duration::from_millis(15))
        );
        assert_eq!((r.loss_fwd_pct, r.loss_ret_pct, r.seed), (2.5, 0.0, 42));

        let r = parse("TCP:[::1]:0=[::1]:443").expect("valid");
        assert_eq!(
            r,
            RouteSpec::new(
                RouteProto::Tcp,
                "[::1]:0".parse().expect("addr"),
                "[::1]:443".parse().expect("addr")
            )
        );
        let r = parse("udp:0.0.0.0:9=10.0.0.1:9,fwd=250us,ret=0").expect("valid");
        assert_eq!(
            (r.fwd_delay, r.ret_delay),
            (Duration::from_micros(250), Duration::ZERO)
        );
    }

    #[test]
    fn tun_routes_name_namespaces_and_addresses() {
        let r = parse("tun:mla/10.77.1.1=mlb/10.77.1.2,fwd=10ms,ret=5ms,loss_fwd=1,seed=3")
            .expect("valid");
        assert_eq!(r.proto, RouteProto::Tun);
        assert_eq!(r.namespaces, Some(("mla".into(), "mlb".into())));
        assert_eq!(r.listen, "10.77.1.1:0".parse().expect("addr"));
        assert_eq!(r.upstream, "10.77.1.2:0".parse().expect("addr"));
        assert_eq!(r.loss_fwd_pct, 1.0, "loss applies to every packet, TCP too");
        let again = parse(&r.to_string()).expect("display parses");
        assert_eq!(again, r);
        assert_eq!(r.warm, Duration::ZERO, "warm-up is off by default");
        let w = parse("tun:mla/10.77.1.1=mlb/10.77.1.2,fwd=10ms,warm=100us").expect("valid");
        assert_eq!(w.warm, Duration::from_micros(100));
        assert_eq!(parse(&w.to_string()), Ok(w));
        for bad in [
            "tun:mla=mlb/10.0.0.2",
            "tun:mla/10.0.0.1=mlb",
            "tun:mla/::1=mlb/::2",
            "tun:m a/10.0.0.1=mlb/10.0.0.2",
            "tun:../10.0.0.1=mlb/10.0.0.2",
            "tun:mla/10.0.0.1:80=mlb/10.0.0.2",
        ] {
            assert!(
                matches!(parse(bad), Err(RouteProblem::TunEnd { .. })),
                "{bad}: {:?}",
                parse(bad)
            );
        }
    }

    #[test]
    fn display_round_trips() {
        let r = parse("udp:127.0.0.1:5=127.0.0.1:6,fwd=1ms,ret=2ms,loss_ret=7.5,seed=9")
            .expect("valid");
        assert_eq!(parse(&r.to_string()), Ok(r));
    }

    #[test]
    fn refuses_bad_specs_naming_the_bad_part() {
        for (bad, want) in [
            ("127.0.0.1:1=127.0.0.1:2", "unknown protocol \"127.0.0.1\""),
            ("udp", "expected PROTO:LISTEN=UPSTREAM"),
            ("sctp:127.0.0.1:1=127.0.0.1:2", "unknown protocol \"sctp\""),
            ("udp:127.0.0.1:1", "expected PROTO:LISTEN=UPSTREAM"),
            (
                "udp:localhost:1=127.0.0.1:2",
                "listen address \"localhost:1\"",
            ),
            ("udp:127.0.0.1:1=::1:2", "upstream address \"::1:2\""),
            ("udp:127.0.0.1:1=127.0.0.1:0", "needs a non-zero port"),
            (
                "udp:127.0.0.1:1=127.0.0.1:2,fwd",
                "option \"fwd\" is not key=value",
            ),
            (
                "udp:127.0.0.1:1=127.0.0.1:2,fwd=5 parsecs",
                "fwd=\"5 parsecs\": expected a duration",
            ),
            (
                "udp:127.0.0.1:1=127.0.0.1:2,loss_fwd=101",
                "loss_fwd=\"101\": expected a percentage",
            ),
            ("udp:127.0.0.1:1=127.0.0.1:2,loss_ret=-1", "loss_ret=\"-1\""),
            (
                "udp:127.0.0.1:1=127.0.0.1:2,loss_ret=NaN",
                "loss_ret=\"NaN\"",
            ),
            (
                "udp:127.0.0.1:1=127.0.0.1:2,seed=-3",
                "seed=\"-3\": expected an unsigned",
            ),
            (
                "udp:127.0.0.1:1=127.0.0.1:2,delay=5ms",
                "unknown option \"delay\"",
            ),
            (
                "udp:127.0.0.1:1=127.0.0.1:2,fwd=1ms,fwd=2ms",
                "option \"fwd\" given twice",
            ),
            (
                "tcp:127.0.0.1:1=127.0.0.1:2,loss_fwd=1",
                "loss_fwd is not supported on tcp",
            ),
            (
                "udp:127.0.0.1:1=127.0.0.1:2,warm=100us",
                "warm=\"100us\": warm-up packets go through the kernel's receive path: tun routes only",
            ),
            (
                "tun:a/10.0.0.1=b/10.0.0.2,warm=11ms",
                "warm=\"11ms\": expected at most 10ms",
            ),
            (
                "tun:a/10.0.0.1=b/10.0.0.2,warm=soon",
                "warm=\"soon\": expected a duration",
            ),
        ] {
            let err = bad.parse::<RouteSpec>().expect_err(bad).to_string();
            assert!(err.contains(want), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
        // Zero loss on TCP is fine.
        assert!(parse("tcp:127.0.0.1:1=127.0.0.1:2,loss_fwd=0").is_ok());
    }

    #[test]
    fn warm_up_goes_warm_ahead_of_a_packet_after_a_quiet_spell_only() {
        let w = Duration::from_micros(100);
        let t0 = Instant::now();
        let due = t0 + Duration::from_millis(10);
        assert_eq!(warm_at(Duration::ZERO, due, None, true), None, "off");
        assert_eq!(warm_at(w, due, None, true), Some(due - w), "first packet");
        assert_eq!(warm_at(w, due, None, false), None, "not an answer");
        let quiet = due - Duration::from_millis(5);
        assert_eq!(
            warm_at(w, due, Some(quiet), true),
            Some(due - w),
            "after 5 ms quiet"
        );
        // Sent 150 us before the packet's due time: 50 us before the warm-up would go, so the
        // path is warm already.
        let recent = due - Duration::from_micros(150);
        assert_eq!(warm_at(w, due, Some(recent), true), None, "back to back");
        assert_eq!(
            warm_at(w, due, Some(due - 2 * w), true),
            Some(due - w),
            "exactly warm apart"
        );
    }

    /// A lane of `delay` with no hold thread: what it queues stays in the returned receiver.
    fn lane_without_hold_thread(delay: Duration) -> (Lane, Receiver<Held>) {
        let (queue, rx) = mpsc::channel();
        let lane = Lane {
            route: 0,
            dir: Dir::Fwd,
            delay,
            loss_pct: 0.0,
            rng: Mutex::new(SmallRng::seed_from_u64(0)),
            counters: Arc::new(Counters::default()),
            queue,
            warm: Duration::ZERO,
            round_trip: delay,
            log: None,
        };
        (lane, rx)
    }

    #[test]
    fn an_undelayed_lane_sends_from_the_offering_thread() {
        let dst = UdpSocket::bind("127.0.0.1:0").expect("bind");
        dst.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let src = UdpSocket::bind("127.0.0.1:0").expect("bind");
        src.connect(dst.local_addr().expect("addr"))
            .expect("connect");
        let src = Arc::new(src);
        let mut buf = [0u8; 16];

        // No hold thread exists: the datagram arrives only if offer sent it itself.
        let (lane, rx) = lane_without_hold_thread(Duration::ZERO);
        lane.offer(Instant::now(), b"now".to_vec(), Out::Udp(src.clone()));
        assert!(rx.try_recv().is_err(), "nothing queued for a hold thread");
        let n = dst.recv(&mut buf).expect("sent by offer");
        assert_eq!(&buf[..n], b"now");
        assert_eq!(lane.counters.snapshot().fwd_packets, 1);

        // A delayed lane queues for its hold thread and sends nothing itself.
        let (lane, rx) = lane_without_hold_thread(Duration::from_millis(1));
        lane.offer(Instant::now(), b"later".to_vec(), Out::Udp(src));
        let held = rx.try_recv().expect("queued for the hold thread");
        assert_eq!(held.payload, b"later");
        dst.set_nonblocking(true).expect("nonblocking");
        assert!(dst.recv(&mut buf).is_err(), "not sent before its hold");
    }

    #[test]
    fn loss_draws_are_deterministic_per_seed() {
        let draws = |seed| {
            let mut r = SmallRng::seed_from_u64(seed);
            (0..100)
                .map(|_| r.random::<f64>() * 100.0 < 10.0)
                .collect::<Vec<_>>()
        };
        assert_eq!(draws(7), draws(7));
        assert_ne!(draws(7), draws(8));
    }
}
