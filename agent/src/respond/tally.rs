//! Server records: what the responders (UDP reflector, TCP, QUIC, HTTP, HTTPS) and the relay did,
//! per source, protocol and interval (`kind=serve` / `kind=relay_serve`, DESIGN §8 "Servers
//! write records").
//!
//! # Counting (on the serving thread)
//!
//! The reflector's thread owns a [`Tally`]: a map from [`Source`] to [`Counts`], allocated once
//! with room for `--serve-max-sources` sources plus the overflow buckets, so counting a
//! packet is one hash lookup and a few adds and never allocates. A source not yet seen when the
//! map already holds the limit is counted in the overflow bucket of its role and protocol
//! ([`Source::ip`] = `None`): a spray of forged source addresses grows nothing, it only fills
//! that bucket.
//!
//! The connection responders (TCP, QUIC, HTTP, HTTPS) share one more [`Tally`] behind a mutex
//! ([`ConnTally`]: one short lock per connection, handshake, request or echoed datagram), bounded
//! the same way and written by [`ConnRecords`] every `--serve-interval` and once more after they
//! stopped. Their rows are keyed by source IP (IPv4-mapped addresses as IPv4) and protocol; see
//! the responders' module docs for what `packets`, `bytes` and `returned` count and their drop
//! reasons ([`ConnDrop`]). The map
//! hashes with a per-process random key (std's SipHash), so chosen addresses cannot collide it
//! into slow lookups.
//!
//! # Who the source is
//!
//! The wire format ([`crate::udp::wire`]) carries no agent identity: the HMAC proves only
//! that the sender holds the key named by the key id (under a controller, the federation's mesh
//! key, which every agent holds), and a relay's grant proves that a controller allowed
//! forwarding to its destination. So a row's source is what the packet shows: its **source IP**
//! and, once the HMAC verified, the **key id** (`key_id`); relay rows add the **grant's
//! destination** (`target`), taken from the verified grant only. A packet dropped before
//! authentication (malformed, wrong version, unknown key, bad HMAC, a reply sent to a reflector)
//! is counted under its source IP with `key_id = null`.
//!
//! Names come later, at flush, off the hot path: under a controller the agent knows the agents
//! its own jobs target (their advertised UDP addresses, [`Directory`]); an authenticated row
//! whose source IP belongs to exactly one of them gets that agent's `src_agent`/`_region`/`_az`/
//! `_location` (mesh jobs are usually symmetric, so a reflector's probers are its own targets).
//! Several agents behind one IP, or an agent this one never targets, leave them `null`; the
//! address stays. Unauthenticated rows are never named. A connection responder's row counts as
//! authenticated when its address is proven: always for TCP, HTTP and HTTPS (the kernel
//! completed the TCP handshake with it), for QUIC only on the answered row (a completed
//! handshake); refused or failed QUIC handshakes may come from a forged address.
//!
//! # Flushing
//!
//! Every `--serve-interval` (default [`DEFAULT_INTERVAL`]) the thread takes the map's contents
//! ([`Tally::take`], which keeps the map's capacity) and hands them to the records task through a
//! bounded channel; when the channel is full it keeps counting into the same, longer interval
//! (nothing is dropped; `interval_ms` says how long it was). At shutdown the thread hands over
//! what it has before it ends, and the responders' task waits for the records task, so the
//! counts of the last interval reach the sinks before they close (SIGTERM included).
//!
//! # Rows
//!
//! One record per (interval, source, outcome): `ok = true` rows count packets answered (serve)
//! or forwarded to the grant's destination (relay_serve, with `returned` = the destination's
//! replies relayed back); `ok = false` rows carry a `drop_reason` —
//! [`DropReason::as_str`](super::udp::DropReason::as_str), or `send_error` for replies the
//! kernel refused. `packets` and `bytes` count what the row is about; `ts` is the interval's
//! start and `interval_ms` its length; `seq` numbers the intervals from 0; `job_id` is
//! [`SERVE_JOB`]. The server itself is `dst_*` in serve rows (it is what the sources probed) and
//! `relay_*` in relay_serve rows, whose `dst_*` is the grant's destination when it is a known
//! agent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime};

use meshlat_proto::record::{ControlMode, Kind, Protocol, Record};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::udp::DropReason;
use crate::config::AgentIdentity;
use crate::scheduler::{JobSet, PeerInfo};
use crate::sink::SinkHandle;

/// `--serve-interval`'s default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);
/// `--serve-max-sources`' default.
pub const DEFAULT_MAX_SOURCES: usize = 1024;
/// The largest `--serve-max-sources` accepted.
pub const MAX_MAX_SOURCES: usize = 65_536;
/// `job_id` of server records.
pub const SERVE_JOB: &str = "serve";
/// Intervals waiting for the records task at most (then the thread keeps counting into the
/// current one).
const CHANNEL_DEPTH: usize = 4;
/// Overflow buckets a table may hold besides its sources: one per (role, protocol) in use
/// (the reflector and relay on UDP, and the four connection responders).
const OVERFLOW_BUCKETS: usize = 6;

/// Why a connection responder (TCP, QUIC, HTTP, HTTPS) refused or ended a connection or
/// request early; the `drop_reason` of its rows ([`ConnDrop::as_str`]).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum ConnDrop {
    /// Over `--max-conns` (refused at accept).
    RefusedTotalCap,
    /// Over `--max-conns-per-ip` (refused at accept).
    RefusedPerIpCap,
    /// The TLS (HTTPS) or QUIC handshake failed.
    HandshakeFailed,
    /// The TLS (HTTPS) or QUIC handshake did not finish within `--handshake-timeout`.
    HandshakeTimeout,
    /// A request that is not HTTP/1.1 (parse error, head too large).
    BadRequest,
    /// A request head not received within `--header-timeout`.
    Timeout,
    /// The connection failed or went idle (`--idle-timeout`) before its request was answered.
    Io,
}

impl ConnDrop {
    /// How many reasons there are.
    pub const COUNT: usize = 7;

    /// Every reason, in discriminant order.
    pub const ALL: [ConnDrop; Self::COUNT] = [
        ConnDrop::RefusedTotalCap,
        ConnDrop::RefusedPerIpCap,
        ConnDrop::HandshakeFailed,
        ConnDrop::HandshakeTimeout,
        ConnDrop::BadRequest,
        ConnDrop::Timeout,
        ConnDrop::Io,
    ];

    /// The `drop_reason` of its rows.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnDrop::RefusedTotalCap => "refused_total_cap",
            ConnDrop::RefusedPerIpCap => "refused_per_ip_cap",
            ConnDrop::HandshakeFailed => "handshake_failed",
            ConnDrop::HandshakeTimeout => "handshake_timeout",
            ConnDrop::BadRequest => "bad_request",
            ConnDrop::Timeout => "timeout",
            ConnDrop::Io => "io",
        }
    }
}

const _: () = assert!(ConnDrop::ALL.len() == ConnDrop::COUNT);

/// Which server role a row describes.
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub enum Role {
    /// The reflector answering requests (`kind=serve`).
    Serve,
    /// The relay (`kind=relay_serve`).
    Relay,
}

/// The key of a row: what the packets prove about where they came from (see the module doc).
#[derive(Clone, Copy, Debug, Eq, Hash, PartialEq)]
pub struct Source {
    /// Reflector or relay.
    pub role: Role,
    /// The responder's protocol (the relay's is UDP).
    pub protocol: Protocol,
    /// Source IP; `None` for the overflow bucket.
    pub ip: Option<IpAddr>,
    /// Wire key id the packets authenticated with; `None` when dropped before authentication.
    pub key_id: Option<u32>,
    /// Relay rows: the verified grant's destination.
    pub dst: Option<SocketAddr>,
}

/// Packets and their bytes.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Count {
    /// Packets.
    pub packets: u64,
    /// Their UDP payload bytes.
    pub bytes: u64,
}

impl Count {
    fn add(&mut self, bytes: usize) {
        self.packets += 1;
        self.bytes += bytes as u64;
    }
}

/// What one source did in an interval.
#[derive(Clone, Copy, Debug, Default, Eq, PartialEq)]
pub struct Counts {
    /// Answered (serve) or forwarded to the destination (relay).
    pub ok: Count,
    /// Relay: replies relayed back to the source.
    pub returned: Count,
    /// Replies or forwards the kernel refused to send.
    pub send_failed: Count,
    /// Drops, indexed by `DropReason as usize`.
    pub dropped: [Count; DropReason::COUNT],
    /// Connection responders' drops, indexed by `ConnDrop as usize`.
    pub conn_dropped: [Count; ConnDrop::COUNT],
}

/// One interval's counts, handed from the serving thread to the records task.
#[derive(Debug)]
pub struct Interval {
    /// Wall-clock start.
    pub start: SystemTime,
    /// Wall-clock end.
    pub end: SystemTime,
    /// Every source seen, with its counts.
    pub rows: Vec<(Source, Counts)>,
}

/// The serving thread's counters (see the module doc).
#[derive(Debug)]
pub struct Tally {
    map: HashMap<Source, Counts>,
    max_sources: usize,
    start: SystemTime,
}

impl Tally {
    /// An empty tally for at most `max_sources` distinct sources per interval (plus overflow),
    /// allocated now.
    pub fn new(max_sources: usize, now: SystemTime) -> Self {
        let max_sources = max_sources.clamp(1, MAX_MAX_SOURCES);
        Tally {
            // + the overflow buckets: inserting never needs to grow the table.
            map: HashMap::with_capacity(max_sources + OVERFLOW_BUCKETS),
            max_sources,
            start: now,
        }
    }

    /// The counts of `src`, or of its role's overflow bucket when the table is full.
    fn slot(&mut self, src: Source) -> &mut Counts {
        let key = if self.map.len() >= self.max_sources && !self.map.contains_key(&src) {
            Source {
                role: src.role,
                protocol: src.protocol,
                ip: None,
                key_id: None,
                dst: None,
            }
        } else {
            src
        };
        self.map.entry(key).or_default()
    }

    /// A request answered (queued and accepted by the kernel).
    pub fn answered(&mut self, ip: IpAddr, key_id: u32, bytes: usize) {
        self.slot(Source {
            role: Role::Serve,
            protocol: Protocol::Udp,
            ip: Some(ip),
            key_id: Some(key_id),
            dst: None,
        })
        .ok
        .add(bytes);
    }

    /// A packet of `role` dropped for `reason`.
    pub fn dropped(&mut self, src: Source, reason: DropReason, bytes: usize) {
        if let Some(c) = self.slot(src).dropped.get_mut(reason as usize) {
            c.add(bytes);
        }
    }

    /// A reply or forward the kernel refused.
    pub fn send_failed(&mut self, src: Source, bytes: usize) {
        self.slot(src).send_failed.add(bytes);
    }

    /// A relayed packet: forwarded to the destination, or (`returned`) its reply sent back.
    pub fn relayed(&mut self, src: Source, returned: bool, bytes: usize) {
        let c = self.slot(src);
        if returned {
            c.returned.add(bytes);
        } else {
            c.ok.add(bytes);
        }
    }

    /// A connection responder's unit of work answered from `src`: a TCP connection accepted,
    /// a QUIC handshake completed, an HTTP(S) request answered with `bytes` of body.
    pub fn served(&mut self, src: Source, bytes: usize) {
        self.slot(src).ok.add(bytes);
    }

    /// A QUIC datagram of `bytes` echoed back to `src` (counted in `returned`; its bytes in
    /// the answered row's `bytes`).
    pub fn echoed(&mut self, src: Source, bytes: usize) {
        let c = self.slot(src);
        c.returned.packets += 1;
        c.ok.bytes += bytes as u64;
    }

    /// A connection or request from `src` refused or ended early for `reason`.
    pub fn conn_dropped(&mut self, src: Source, reason: ConnDrop) {
        if let Some(c) = self.slot(src).conn_dropped.get_mut(reason as usize) {
            c.add(0);
        }
    }

    /// Sources counted in this interval (overflow buckets included).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether nothing was counted in this interval.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Ends the interval at `now`: returns its rows (sorted, for stable output) and starts the
    /// next. The table keeps its capacity.
    pub fn take(&mut self, now: SystemTime) -> Interval {
        let mut rows: Vec<(Source, Counts)> = self.map.drain().collect();
        rows.sort_by_key(|(s, _)| (s.role == Role::Relay, s.protocol, s.ip, s.key_id, s.dst));
        let start = std::mem::replace(&mut self.start, now);
        Interval {
            start,
            end: now,
            rows,
        }
    }
}

/// Where a serving thread's intervals go: the sending half of the channel to [`RecordsTask`].
#[derive(Debug)]
pub struct Flusher {
    tx: mpsc::Sender<Interval>,
    every_ns: u64,
    next_ns: u64,
}

impl Flusher {
    /// Hands the tally's interval to the records task when one is due at `now_ns` (process
    /// clock). Cheap when none is due; never blocks.
    pub fn maybe_flush(&mut self, tally: &mut Tally, now_ns: u64) {
        if now_ns < self.next_ns {
            return;
        }
        self.next_ns = now_ns.saturating_add(self.every_ns);
        if tally.is_empty() {
            // Nothing to say; the next interval starts now.
            tally.start = SystemTime::now();
            return;
        }
        // Full channel: keep counting into this interval (it grows longer, nothing is lost).
        if let Ok(permit) = self.tx.try_reserve() {
            permit.send(tally.take(SystemTime::now()));
        }
    }

    /// The last hand-over, at shutdown: waits for room (the serving thread is ending anyway).
    pub fn finish(self, tally: &mut Tally) {
        if !tally.is_empty() {
            let iv = tally.take(SystemTime::now());
            if self.tx.blocking_send(iv).is_err() {
                tracing::warn!(
                    message = "Server records task gone; last interval's counts not written."
                );
            }
        }
    }
}

/// Settings of server records.
#[derive(Clone, Debug)]
pub struct RecordsConfig {
    /// Flush period (`--serve-interval`).
    pub interval: Duration,
    /// Distinct sources per interval (`--serve-max-sources`).
    pub max_sources: usize,
}

impl Default for RecordsConfig {
    fn default() -> Self {
        RecordsConfig {
            interval: DEFAULT_INTERVAL,
            max_sources: DEFAULT_MAX_SOURCES,
        }
    }
}

/// What the records task needs besides the counts: where to write, and who this server is.
#[derive(Clone, Debug)]
pub struct RecordsOutput {
    /// Settings.
    pub cfg: RecordsConfig,
    /// The sinks.
    pub sinks: SinkHandle,
    /// This agent (the id arrives from the controller under `agent run`).
    pub identity: watch::Receiver<AgentIdentity>,
    /// Control mode written in records.
    pub mode: watch::Receiver<ControlMode>,
    /// The job set, for naming sources (see [`Directory`]); `None` standalone.
    pub jobs: Option<watch::Receiver<JobSet>>,
}

/// Builds a serving thread's [`Tally`] and [`Flusher`] and the task that turns intervals into
/// records for `local` (the reflector's bound address).
pub fn start(out: RecordsOutput, local: SocketAddr) -> (Tally, Flusher, RecordsTask) {
    let (tx, rx) = mpsc::channel(CHANNEL_DEPTH);
    let every_ns = u64::try_from(out.cfg.interval.as_nanos()).unwrap_or(u64::MAX);
    let tally = Tally::new(out.cfg.max_sources, SystemTime::now());
    let flusher = Flusher {
        tx,
        every_ns,
        next_ns: crate::clock::Clock::now_ns().saturating_add(every_ns),
    };
    let writer = Writer {
        out,
        locals: vec![(Protocol::Udp, local)],
        seq: 0,
    };
    (tally, flusher, RecordsTask { writer, rx })
}

/// Writes intervals as records: numbers them and names their sources.
#[derive(Debug)]
struct Writer {
    out: RecordsOutput,
    /// Each protocol's bound address (the server's own side of the records).
    locals: Vec<(Protocol, SocketAddr)>,
    seq: u64,
}

impl Writer {
    async fn write(&mut self, iv: &Interval) {
        let dir = self
            .out
            .jobs
            .as_ref()
            .map(|j| Directory::from_jobs(&j.borrow()))
            .unwrap_or_default();
        let identity = self.out.identity.borrow().clone();
        let mode = *self.out.mode.borrow();
        let records = to_records(iv, self.seq, &identity, mode, &self.locals, &dir);
        tracing::debug!(
            message = "Server records.",
            sources = iv.rows.len(),
            records = records.len(),
            seq = self.seq
        );
        for r in records {
            self.out.sinks.send(r).await;
        }
        self.seq += 1;
    }
}

/// Turns intervals into records and sends them to the sinks, until the serving thread ends.
#[derive(Debug)]
pub struct RecordsTask {
    writer: Writer,
    rx: mpsc::Receiver<Interval>,
}

impl RecordsTask {
    /// Runs until the [`Flusher`] is dropped (after its last interval).
    pub async fn run(mut self) {
        while let Some(iv) = self.rx.recv().await {
            self.writer.write(&iv).await;
        }
    }
}

/// The connection responders' (TCP, QUIC, HTTP, HTTPS) shared [`Tally`]: their connection
/// tasks count into it under a short lock (one hash lookup), and [`ConnRecords`] takes its
/// interval. One table for the four, bounded by `--serve-max-sources` as the reflector's is.
#[derive(Debug)]
pub struct ConnTally {
    tally: std::sync::Mutex<Tally>,
}

impl ConnTally {
    /// An empty table for at most `max_sources` sources per interval.
    pub fn new(max_sources: usize) -> std::sync::Arc<Self> {
        std::sync::Arc::new(ConnTally {
            tally: std::sync::Mutex::new(Tally::new(max_sources, SystemTime::now())),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut Tally) -> T) -> T {
        // A panic while counting leaves plain counters behind: still usable.
        let mut t = self.tally.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut t)
    }

    /// See [`Tally::served`].
    pub fn served(&self, src: Source, bytes: usize) {
        self.with(|t| t.served(src, bytes));
    }

    /// See [`Tally::echoed`].
    pub fn echoed(&self, src: Source, bytes: usize) {
        self.with(|t| t.echoed(src, bytes));
    }

    /// See [`Tally::conn_dropped`].
    pub fn dropped(&self, src: Source, reason: ConnDrop) {
        self.with(|t| t.conn_dropped(src, reason));
    }

    /// See [`Tally::send_failed`].
    pub fn send_failed(&self, src: Source, bytes: usize) {
        self.with(|t| t.send_failed(src, bytes));
    }

    /// Ends the interval at `now` (`None` when nothing was counted: the next one starts now).
    pub(super) fn take(&self, now: SystemTime) -> Option<Interval> {
        self.with(|t| {
            if t.is_empty() {
                t.start = now;
                None
            } else {
                Some(t.take(now))
            }
        })
    }
}

/// The key of a connection responder's row: `protocol` from `peer` (IPv4-mapped IPv6
/// addresses written as IPv4, as the kernel reports a dual-stack socket's IPv4 peers).
pub fn conn_source(protocol: Protocol, peer: SocketAddr) -> Source {
    let ip = match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    Source {
        role: Role::Serve,
        protocol,
        ip: Some(ip),
        key_id: None,
        dst: None,
    }
}

/// Writes the connection responders' [`ConnTally`] every `--serve-interval`, and the last
/// interval once they have stopped.
#[derive(Debug)]
pub struct ConnRecords {
    tally: std::sync::Arc<ConnTally>,
    writer: Writer,
}

impl ConnRecords {
    /// Records of `tally` for responders bound at `locals`.
    pub fn new(
        out: RecordsOutput,
        tally: std::sync::Arc<ConnTally>,
        locals: Vec<(Protocol, SocketAddr)>,
    ) -> Self {
        ConnRecords {
            tally,
            writer: Writer {
                out,
                locals,
                seq: 0,
            },
        }
    }

    /// Writes every interval until `stop` is cancelled (after the responders ended), then the
    /// last one.
    pub async fn run(mut self, stop: CancellationToken) {
        let every = self.writer.out.cfg.interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => {
                    if let Some(iv) = self.tally.take(SystemTime::now()) {
                        self.writer.write(&iv).await;
                    }
                }
            }
        }
        if let Some(iv) = self.tally.take(SystemTime::now()) {
            self.writer.write(&iv).await;
        }
    }
}

/// Agents this agent knows by address (from its job set's targets and relays).
#[derive(Clone, Debug, Default)]
pub struct Directory {
    by_ip: HashMap<IpAddr, Vec<PeerInfo>>,
    by_udp: HashMap<SocketAddr, PeerInfo>,
}

impl Directory {
    /// The agents named in `jobs`.
    pub fn from_jobs(jobs: &JobSet) -> Self {
        let mut d = Directory::default();
        for job in &jobs.jobs {
            for t in &job.targets {
                let mut add = |host: &str, port: u16, peer: &PeerInfo, udp: bool| {
                    let (Ok(ip), Some(_)) = (host.parse::<IpAddr>(), peer.agent.as_ref()) else {
                        return;
                    };
                    let v = d.by_ip.entry(ip).or_default();
                    if !v.iter().any(|p| p.agent == peer.agent) {
                        v.push(peer.clone());
                    }
                    if udp {
                        d.by_udp.insert(SocketAddr::new(ip, port), peer.clone());
                    }
                };
                add(
                    &t.target.host,
                    t.target.port,
                    &t.dst,
                    t.target.protocol == Protocol::Udp,
                );
                if let Some((h, p)) = &t.target.relay {
                    add(h, *p, &t.relay, true);
                }
            }
        }
        d
    }

    /// The one agent at `ip`, if exactly one is known there.
    pub fn by_ip(&self, ip: IpAddr) -> Option<&PeerInfo> {
        match self.by_ip.get(&ip).map(Vec::as_slice) {
            Some([one]) => Some(one),
            _ => None,
        }
    }

    /// The agent whose UDP reflector is at `addr`.
    pub fn by_udp(&self, addr: SocketAddr) -> Option<&PeerInfo> {
        self.by_udp.get(&addr)
    }
}

/// Whether a row's source address is proven, so that it may be named after the agent there:
/// UDP packets once their HMAC verified (a key id), a TCP-based responder's connections always
/// (the kernel completed the three-way handshake with that address before `accept`), QUIC
/// once the handshake completed (its answered row; refusals and failed handshakes may come
/// from a forged address).
fn proven(src: &Source, ok: bool) -> bool {
    match src.protocol {
        Protocol::Udp => src.key_id.is_some(),
        Protocol::Tcp | Protocol::Http | Protocol::Https => true,
        Protocol::Quic => ok,
    }
}

/// The scheme of a server record's `target`.
fn scheme(p: Protocol) -> &'static str {
    match p {
        Protocol::Udp => "udp",
        Protocol::Tcp => "tcp",
        Protocol::Quic => "quic",
        Protocol::Http => "http",
        Protocol::Https => "https",
    }
}

/// The records of one interval (see the module doc's "Rows"); `locals` are the responders'
/// bound addresses by protocol.
pub fn to_records(
    iv: &Interval,
    seq: u64,
    me: &AgentIdentity,
    mode: ControlMode,
    locals: &[(Protocol, SocketAddr)],
    dir: &Directory,
) -> Vec<Record> {
    let interval_ms = iv
        .end
        .duration_since(iv.start)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0;
    let unspecified = SocketAddr::from(([0, 0, 0, 0], 0));
    let mut out = Vec::new();
    for (src, c) in &iv.rows {
        let relay = src.role == Role::Relay;
        let local = locals
            .iter()
            .find(|(p, _)| *p == src.protocol)
            .map_or(unspecified, |(_, a)| *a);
        let target = match (relay, src.dst) {
            (true, Some(d)) => format!("udp://{d}"),
            _ => format!("{}://{local}", scheme(src.protocol)),
        };
        let base = {
            let mut r = Record::new(iv.start, SERVE_JOB, &target, crate::VERSION);
            r.kind = Some(if relay { Kind::RelayServe } else { Kind::Serve });
            r.protocol = Some(src.protocol);
            r.seq = seq;
            r.control_mode = Some(mode);
            r.interval_ms = Some(interval_ms);
            r.src_addr = src.ip.map(|ip| ip.to_string());
            r.key_id = src.key_id.map(|k| format!("{k:#010x}"));
            if relay {
                r.relay_agent = me.agent_id.clone();
                r.relay_region = Some(me.region.clone());
                r.relay_az = me.az.clone();
                r.relay_location = me.location.clone();
                if let Some(p) = src.dst.and_then(|d| dir.by_udp(d)) {
                    r.dst_agent = p.agent.clone();
                    r.dst_region = p.region.clone();
                    r.dst_az = p.az.clone();
                    r.dst_location = p.location.clone();
                }
            } else {
                r.dst_agent = me.agent_id.clone();
                r.dst_region = Some(me.region.clone());
                r.dst_az = me.az.clone();
                r.dst_location = me.location.clone();
            }
            r
        };
        let row = |ok: bool, count: Count, reason: Option<&str>| {
            let mut r = base.clone();
            r.record_id = meshlat_proto::record::new_record_id(SystemTime::now());
            r.ok = ok;
            r.packets = Some(count.packets);
            r.bytes = Some(count.bytes);
            r.drop_reason = reason.map(String::from);
            // Only a proven source address is named (module doc).
            if let Some(ip) = src.ip.filter(|_| proven(src, ok))
                && let Some(p) = dir.by_ip(ip)
            {
                r.src_agent = p.agent.clone();
                r.src_region = p.region.clone();
                r.src_az = p.az.clone();
                r.src_location = p.location.clone();
            }
            r
        };
        if c.ok.packets > 0 || c.returned.packets > 0 {
            let mut r = row(true, c.ok, None);
            if relay || src.protocol == Protocol::Quic {
                r.returned = Some(c.returned.packets);
            }
            out.push(r);
        }
        for reason in DropReason::ALL {
            if let Some(d) = c.dropped.get(reason as usize).filter(|d| d.packets > 0) {
                out.push(row(false, *d, Some(reason.as_str())));
            }
        }
        for reason in ConnDrop::ALL {
            if let Some(d) = c
                .conn_dropped
                .get(reason as usize)
                .filter(|d| d.packets > 0)
            {
                out.push(row(false, *d, Some(reason.as_str())));
            }
        }
        if c.send_failed.packets > 0 {
            out.push(row(false, c.send_failed, Some("send_error")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n))
    }

    fn src(n: u32) -> Source {
        Source {
            role: Role::Serve,
            protocol: Protocol::Udp,
            ip: Some(ip(n)),
            key_id: None,
            dst: None,
        }
    }

    #[test]
    fn counts_per_source_and_reason_and_bounds_sources() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut t = Tally::new(3, t0);
        let cap = t.map.capacity();
        t.answered(ip(1), 7, 200);
        t.answered(ip(1), 7, 200);
        t.dropped(src(1), DropReason::Auth, 300);
        t.dropped(src(2), DropReason::Malformed, 10);
        // A spray of sources beyond the limit shares the overflow bucket; the table never
        // grows.
        for n in 100..10_100 {
            t.dropped(src(n), DropReason::Malformed, 1);
        }
        assert_eq!(t.len(), 4, "3 sources + the overflow bucket");
        assert_eq!(t.map.capacity(), cap, "no growth");
        // A known source keeps counting in its own row when the table is full.
        t.answered(ip(1), 7, 200);
        let iv = t.take(t0 + Duration::from_secs(60));
        assert_eq!(iv.start, t0);
        let get = |s: Source| iv.rows.iter().find(|(k, _)| *k == s).map(|(_, c)| *c);
        let one = get(Source {
            key_id: Some(7),
            ..src(1)
        })
        .expect("answered row");
        assert_eq!(
            one.ok,
            Count {
                packets: 3,
                bytes: 600
            }
        );
        let one_unauth = get(src(1)).expect("unauthenticated row of the same ip");
        assert_eq!(one_unauth.dropped[DropReason::Auth as usize].packets, 1);
        let over = get(Source { ip: None, ..src(0) }).expect("overflow");
        assert_eq!(
            over.dropped[DropReason::Malformed as usize],
            Count {
                packets: 10_000,
                bytes: 10_000
            }
        );
        // The table was full (three sources) before the spray began: no sprayed source has a
        // row of its own.
        assert!(get(src(100)).is_none());
        assert!(t.is_empty());
        assert_eq!(t.map.capacity(), cap, "take keeps the capacity");
    }

    #[test]
    fn the_directory_knows_the_agents_of_the_job_set_by_address() {
        use crate::probe::ProbeSpec;
        use crate::scheduler::{Job, JobTarget};
        use crate::target::Target;
        let peer = |a: &str| PeerInfo {
            agent: Some(a.into()),
            region: Some(format!("region-of-{a}")),
            ..PeerInfo::default()
        };
        let t = |raw: &str, dst: PeerInfo, relay: PeerInfo| JobTarget {
            target: Target::parse(raw).expect("valid target"),
            dst,
            relay,
        };
        let job = Job {
            id: "j".into(),
            version: 1,
            kind: Kind::Probe,
            spec: ProbeSpec::default(),
            targets: vec![
                t("udp://10.0.0.1:7710", peer("a1"), PeerInfo::default()),
                t("tcp://10.0.0.1:7711", peer("a1"), PeerInfo::default()),
                // Two agents behind one address (NAT, one host): ambiguous.
                t("udp://10.0.0.2:7710", peer("a2"), PeerInfo::default()),
                t("udp://10.0.0.2:7720", peer("a3"), PeerInfo::default()),
                // A relay target names the relay too.
                t(
                    "relay://10.0.0.9:7710/10.0.0.4:7710",
                    peer("a4"),
                    peer("r9"),
                ),
                // External targets (no agent) and host names are not in it.
                t(
                    "udp://10.0.0.5:7710",
                    PeerInfo::default(),
                    PeerInfo::default(),
                ),
                t("udp://host.example:7710", peer("a6"), PeerInfo::default()),
            ],
            interval: Duration::from_secs(1),
            count: None,
            spread_start: false,
        };
        let d = Directory::from_jobs(&JobSet {
            generation: 1,
            jobs: vec![std::sync::Arc::new(job)],
        });
        let agent = |p: Option<&PeerInfo>| p.and_then(|p| p.agent.clone());
        let name = |ip: &str| agent(d.by_ip(ip.parse().expect("ip")));
        assert_eq!(
            name("10.0.0.1").as_deref(),
            Some("a1"),
            "one agent, two ports"
        );
        assert_eq!(name("10.0.0.2"), None, "two agents at one address");
        assert_eq!(name("10.0.0.4").as_deref(), Some("a4"));
        assert_eq!(name("10.0.0.9").as_deref(), Some("r9"));
        assert_eq!(name("10.0.0.5"), None);
        let udp = |a: &str| agent(d.by_udp(a.parse().expect("addr")));
        assert_eq!(
            udp("10.0.0.2:7720").as_deref(),
            Some("a3"),
            "exact UDP address"
        );
        assert_eq!(udp("10.0.0.4:7710").as_deref(), Some("a4"));
        assert_eq!(udp("10.0.0.1:7711"), None, "a TCP address is no reflector");
    }

    #[test]
    fn rows_become_records_named_only_when_authenticated() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let mut t = Tally::new(16, t0);
        t.answered(ip(1), 0xabcd, 200);
        t.dropped(src(1), DropReason::Version, 250);
        let dst: SocketAddr = "10.0.0.9:7710".parse().expect("addr");
        let relay_src = Source {
            role: Role::Relay,
            protocol: Protocol::Udp,
            ip: Some(ip(1)),
            key_id: Some(0xabcd),
            dst: Some(dst),
        };
        t.relayed(relay_src, false, 300);
        t.relayed(relay_src, false, 300);
        t.relayed(relay_src, true, 300);
        t.dropped(relay_src, DropReason::RelayExpired, 300);
        t.send_failed(relay_src, 300);
        let iv = t.take(t0 + Duration::from_millis(1500));
        let mut dir = Directory::default();
        let peer = |a: &str, r: &str| PeerInfo {
            agent: Some(a.into()),
            region: Some(r.into()),
            az: None,
            location: None,
        };
        dir.by_ip.insert(ip(1), vec![peer("a1", "eu")]);
        dir.by_udp.insert(dst, peer("b1", "us"));
        let me = AgentIdentity {
            agent_id: Some("s1".into()),
            region: "ap".into(),
            az: None,
            location: None,
        };
        let local: SocketAddr = "10.0.0.5:7710".parse().expect("addr");
        let records = |dir: &Directory| {
            to_records(
                &iv,
                4,
                &me,
                ControlMode::Connected,
                &[(Protocol::Udp, local)],
                dir,
            )
        };
        let recs = records(&dir);
        assert_eq!(recs.len(), 5, "{recs:#?}");
        let find = |kind, reason: Option<&str>| {
            recs.iter()
                .find(|r| r.kind == Some(kind) && r.drop_reason.as_deref() == reason)
                .unwrap_or_else(|| panic!("{kind:?} {reason:?} in {recs:#?}"))
        };
        let a = find(Kind::Serve, None);
        assert!(a.ok);
        assert_eq!((a.packets, a.bytes), (Some(1), Some(200)));
        assert_eq!(a.src_agent.as_deref(), Some("a1"));
        assert_eq!(a.src_region.as_deref(), Some("eu"));
        assert_eq!(a.dst_agent.as_deref(), Some("s1"));
        assert_eq!(a.dst_region.as_deref(), Some("ap"));
        assert_eq!(a.key_id.as_deref(), Some("0x0000abcd"));
        assert_eq!(a.src_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!(a.target, "udp://10.0.0.5:7710");
        assert_eq!((a.seq, a.interval_ms), (4, Some(1500.0)));
        assert_eq!(a.job_id, SERVE_JOB);
        let v = find(Kind::Serve, Some("version"));
        assert!(!v.ok);
        assert_eq!(v.src_agent, None, "unauthenticated: not named");
        assert_eq!(v.key_id, None);
        let r = find(Kind::RelayServe, None);
        assert_eq!((r.packets, r.returned), (Some(2), Some(1)));
        assert_eq!(r.target, "udp://10.0.0.9:7710");
        assert_eq!(r.relay_agent.as_deref(), Some("s1"));
        assert_eq!(r.dst_agent.as_deref(), Some("b1"));
        assert_eq!(r.src_agent.as_deref(), Some("a1"));
        assert_eq!(
            find(Kind::RelayServe, Some("relay_expired")).packets,
            Some(1)
        );
        assert_eq!(find(Kind::RelayServe, Some("send_error")).bytes, Some(300));
        // Two agents behind one address: not named.
        dir.by_ip
            .get_mut(&ip(1))
            .expect("ip")
            .push(peer("a2", "eu"));
        let recs = records(&dir);
        assert!(recs.iter().all(|r| r.src_agent.is_none()));
    }

    #[test]
    fn connection_responders_count_per_protocol_and_source_and_name_proven_addresses() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000);
        let t = ConnTally::new(3);
        let peer = |n: u32| SocketAddr::new(ip(n), 40_000);
        // An IPv4 peer seen through a dual-stack socket is the same source.
        let mapped: SocketAddr = "[::ffff:10.0.0.1]:40001".parse().expect("addr");
        assert_eq!(
            conn_source(Protocol::Tcp, mapped),
            conn_source(Protocol::Tcp, peer(1))
        );
        for _ in 0..5 {
            t.served(conn_source(Protocol::Tcp, mapped), 0);
        }
        t.dropped(
            conn_source(Protocol::Tcp, peer(1)),
            ConnDrop::RefusedPerIpCap,
        );
        let q = conn_source(Protocol::Quic, peer(1));
        t.served(q, 0);
        t.served(q, 0);
        for _ in 0..10 {
            t.echoed(q, 100);
        }
        t.send_failed(q, 100);
        t.dropped(
            conn_source(Protocol::Quic, peer(2)),
            ConnDrop::HandshakeFailed,
        );
        // The table holds three sources: the rest share the HTTPS overflow bucket.
        for n in 3..50 {
            let h = conn_source(Protocol::Https, peer(n));
            t.served(h, 5);
            t.dropped(h, ConnDrop::BadRequest);
        }
        let iv = t.take(t0).expect("counted");
        assert_eq!(iv.rows.len(), 4, "{:#?}", iv.rows);
        assert!(t.take(t0).is_none(), "taken: empty");
        let mut dir = Directory::default();
        for n in 1..=2 {
            dir.by_ip.insert(
                ip(n),
                vec![PeerInfo {
                    agent: Some(format!("a{n}")),
                    ..PeerInfo::default()
                }],
            );
        }
        let me = AgentIdentity {
            agent_id: Some("s1".into()),
            region: "ap".into(),
            az: None,
            location: None,
        };
        let local = |p: u16| SocketAddr::new(ip(9), p);
        let locals = [
            (Protocol::Tcp, local(1)),
            (Protocol::Quic, local(2)),
            (Protocol::Https, local(3)),
        ];
        let recs = to_records(&iv, 0, &me, ControlMode::Connected, &locals, &dir);
        let find = |p: Protocol, reason: Option<&str>| {
            recs.iter()
                .find(|r| r.protocol == Some(p) && r.drop_reason.as_deref() == reason)
                .unwrap_or_else(|| panic!("{p:?} {reason:?} in {recs:#?}"))
        };
        let tcp = find(Protocol::Tcp, None);
        assert_eq!(
            (tcp.packets, tcp.bytes, tcp.returned),
            (Some(5), Some(0), None)
        );
        assert_eq!(tcp.target, "tcp://10.0.0.9:1");
        assert_eq!(tcp.kind, Some(Kind::Serve));
        assert_eq!(tcp.src_addr.as_deref(), Some("10.0.0.1"));
        assert_eq!(tcp.src_agent.as_deref(), Some("a1"), "a TCP peer is proven");
        assert_eq!(tcp.dst_agent.as_deref(), Some("s1"));
        let cap = find(Protocol::Tcp, Some("refused_per_ip_cap"));
        assert_eq!(cap.packets, Some(1));
        assert_eq!(cap.src_agent.as_deref(), Some("a1"));
        let quic = find(Protocol::Quic, None);
        assert_eq!(
            (quic.packets, quic.returned, quic.bytes),
            (Some(2), Some(10), Some(1000)),
            "handshakes, datagrams echoed, their bytes"
        );
        assert_eq!(quic.target, "quic://10.0.0.9:2");
        assert_eq!(quic.src_agent.as_deref(), Some("a1"), "handshake completed");
        assert_eq!(find(Protocol::Quic, Some("send_error")).bytes, Some(100));
        let failed = find(Protocol::Quic, Some("handshake_failed"));
        assert_eq!(failed.packets, Some(1));
        assert_eq!(failed.src_addr.as_deref(), Some("10.0.0.2"));
        assert_eq!(
            failed.src_agent, None,
            "a failed QUIC handshake proves no address"
        );
        let over = find(Protocol::Https, None);
        assert_eq!((over.packets, over.bytes), (Some(47), Some(235)));
        assert_eq!(over.src_addr, None, "overflow bucket");
        assert_eq!(over.target, "https://10.0.0.9:3");
        assert_eq!(find(Protocol::Https, Some("bad_request")).packets, Some(47));
        assert_eq!(recs.len(), 7, "{recs:#?}");
    }
}
