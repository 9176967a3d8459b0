//! UDP reflector: answers meshlat UDP requests (TWAMP-light style, authenticated).
//!
//! For each datagram the reflector:
//!
//! 1. reads it with its kernel receive timestamp (t2; the process clock if unavailable);
//! 2. validates it: size in [`wire::MIN_PACKET_BYTES`]..=[`wire::MAX_PACKET_BYTES`], magic and
//!    version, message type *request* (never a reply, so two reflectors cannot ping-pong), a known
//!    key id and a valid HMAC;
//! 3. turns it into a reply in place — type, t2, its clock error bound, t3 read just before the
//!    MAC is recomputed — and sends it back to the sender with exactly the request's length,
//!    *from the address the request was sent to* (`IP_PKTINFO` / `IPV6_PKTINFO`), so a
//!    reflector bound to `0.0.0.0` or `::` answers a request to a secondary address from that
//!    address and the prober's connected socket accepts it.
//!
//! # Relaying (`agent serve --relay`, off by default)
//!
//! With relaying on, two more kinds of datagram are handled (DESIGN §4):
//!
//! - a `RelayForward` from a source A, authenticated like a request, whose grant field holds a
//!   valid, unexpired Ed25519 grant ([`crate::udp::grant`]) signed by a key this relay
//!   trusts: standalone (`agent serve`), the public key derived from each `--key` other than
//!   the public default; under a controller (`agent run`), **only** the public keys the
//!   controller sends (its own and its federation peers'), never a key derived from `--key`.
//!   The relay holds no private key, so it cannot make grants. r1 is the packet's kernel
//!   receive stamp; the packet becomes a `Request`, r2 is read just before it is resealed, and
//!   it is sent from this socket to the grant's destination B — never anywhere else, and with
//!   exactly the received length. (session id, sequence) → (A, B, length) is remembered in a
//!   table of at most [`RELAY_TABLE_MAX`] entries that expire after [`RELAY_TTL`];
//! - a `Reply` from B matching a table entry (same session id and sequence, sent from B's
//!   address) and of exactly the forwarded length: the entry is removed, r3 is its receive
//!   stamp, it becomes a `RelayReturn`, r4 is read just before it is resealed, and it goes back
//!   to A, same length. So the relay never sends more bytes towards anyone than it received
//!   for them: one forward per granted packet, at most one return per forward, each the size
//!   of the packet A sent.
//!
//! Relay drops are counted per reason through [`metrics::responder_drop`]: `relay_no_grant`,
//! `relay_expired`, `relay_bad_grant` (malformed, forged, signed by a key this relay does not
//! trust, or the old version-1 HMAC format), `relay_table_full`, `relay_size` (a reply whose
//! length differs from what was forwarded), and `auth`/`malformed` as for requests. Without
//! `--relay`, `RelayForward` packets are dropped as `type`.
//!
//! # Keys from a controller
//!
//! Under a controller (`agent run`), the reflector also accepts the keys each job set carries
//! ([`ControllerKeys`]: the mesh wire key, and for agents the operator made relays the
//! federation's grant public keys), through a watch channel the serving thread checks once per
//! batch; the `--key` wire keys stay accepted.
//!
//! Anything else is dropped and counted (`meshlat_responder_requests_total{protocol="udp"}` with
//! `result` = [`DropReason::as_str`], and [`ReflectorStats`]); answered packets are counted as
//! `answered`. Nothing is ever sent larger than what was received.
//!
//! With server records on (`agent serve` with a sink, and `agent run`), the serving thread also
//! counts every datagram per source in a [`tally::Tally`] — answered, relayed, or dropped by
//! reason, under what the packet proves (source IP; key id once the HMAC verified; a relay's
//! verified grant destination) — and hands the counts over every `--serve-interval` and at
//! shutdown, to be written as `kind=serve` / `kind=relay_serve` records (see [`tally`]). An
//! answered request is credited once the kernel took its reply (`sendmmsg`); a refused reply
//! counts as `send_error`.
//!
//! The loop runs on its own OS thread with a blocking socket (read timeout
//! [`SHUTDOWN_POLL`] to notice shutdown): no async wake-up on the path, requests received and
//! replies sent in batches (`recvmmsg` / `sendmmsg`, see `serve`) in buffers allocated once, no
//! allocation per answered packet.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::clock::{self, Clock, clock_error_bound_ms};
use crate::metrics::{self, ResponderLabels};
use crate::respond::tally::{self, Flusher, RecordsOutput, Role, Source, Tally};
use crate::udp::Key;
use crate::udp::grant::{Grant, GrantError, GrantPublicKey, GrantSigner, unix_now};
use crate::udp::wire::{self, MessageType, WireError, WireKey};
use crate::udp::{StampMapper, sys};
use meshlat_proto::record::Protocol;

/// How often the serving thread checks for shutdown while idle.
pub const SHUTDOWN_POLL: Duration = Duration::from_millis(50);

/// How often the clock error bound stamped into replies is re-read (it is a syscall).
const ERROR_BOUND_REFRESH_NS: u64 = 1_000_000_000;

/// Most relayed packets awaiting their reply from the destination.
pub const RELAY_TABLE_MAX: usize = 4096;

/// How long a relayed packet's return route is kept.
pub const RELAY_TTL: Duration = Duration::from_secs(5);

/// Receive buffer requested from the kernel, so bursts are not dropped while we are busy.
const RECV_BUFFER_BYTES: usize = 4 << 20;

/// Why a datagram was not answered.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum DropReason {
    /// Too short, bad magic, or unknown message type.
    Malformed,
    /// Larger than [`wire::MAX_PACKET_BYTES`].
    Oversize,
    /// Right magic, a wire version we do not speak.
    Version,
    /// A valid packet that is not a request (e.g. a reply).
    Type,
    /// Unknown key id or HMAC mismatch.
    Auth,
    /// A relay-forward packet without a grant.
    RelayNoGrant,
    /// A relay-forward packet whose grant has expired.
    RelayExpired,
    /// A relay-forward packet with a malformed, unknown-key or forged grant.
    RelayBadGrant,
    /// The relay's table of packets awaiting replies is full.
    RelayTableFull,
    /// A destination's reply to a relayed packet whose length differs from the forwarded one
    /// (relaying it could send the source more than it sent).
    RelaySize,
}

impl DropReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::Oversize => "oversize",
            DropReason::Version => "version",
            DropReason::Type => "type",
            DropReason::Auth => "auth",
            DropReason::RelayNoGrant => "relay_no_grant",
            DropReason::RelayExpired => "relay_expired",
            DropReason::RelayBadGrant => "relay_bad_grant",
            DropReason::RelayTableFull => "relay_table_full",
            DropReason::RelaySize => "relay_size",
        }
    }

    fn of(e: &WireError) -> Self {
        match e {
            WireError::TooShort(_) | WireError::BadMagic | WireError::UnknownType(_) => {
                DropReason::Malformed
            }
            WireError::TooLong(_) => DropReason::Oversize,
            WireError::UnsupportedVersion(_) => DropReason::Version,
            WireError::UnknownKey(_) | WireError::BadMac => DropReason::Auth,
        }
    }

    /// How many reasons there are.
    pub const COUNT: usize = 10;

    /// Every reason, in discriminant order.
    pub const ALL: [DropReason; Self::COUNT] = [
        DropReason::Malformed,
        DropReason::Oversize,
        DropReason::Version,
        DropReason::Type,
        DropReason::Auth,
        DropReason::RelayNoGrant,
        DropReason::RelayExpired,
        DropReason::RelayBadGrant,
        DropReason::RelayTableFull,
        DropReason::RelaySize,
    ];

    fn of_grant(e: GrantError) -> Self {
        match e {
            GrantError::Missing => DropReason::RelayNoGrant,
            GrantError::Expired => DropReason::RelayExpired,
            GrantError::Bad | GrantError::Version(_) => DropReason::RelayBadGrant,
        }
    }

    fn is_relay(self) -> bool {
        matches!(
            self,
            DropReason::RelayNoGrant
                | DropReason::RelayExpired
                | DropReason::RelayBadGrant
                | DropReason::RelayTableFull
                | DropReason::RelaySize
        )
    }
}

/// Per-reflector counters (the Prometheus ones are process-wide); readable while it runs.
#[derive(Debug, Default)]
pub struct ReflectorStats {
    answered: AtomicU64,
    relayed: AtomicU64,
    dropped: [AtomicU64; DropReason::COUNT],
}

impl ReflectorStats {
    /// Requests answered.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Packets forwarded by the relay (either direction).
    pub fn relayed(&self) -> u64 {
        self.relayed.load(Ordering::Relaxed)
    }

    /// Datagrams dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped
            .get(reason as usize)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn drop_(&self, reason: DropReason) {
        if let Some(c) = self.dropped.get(reason as usize) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Keys a controller hands out, accepted besides the reflector's own (see the module doc).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ControllerKeys {
    /// Wire keys (the mesh key).
    pub wire: Vec<Key>,
    /// Grant public keys of the federation's controllers (agents the operator made relays
    /// only; empty otherwise).
    pub grant: Vec<GrantPublicKey>,
}

/// The standalone relay's trusted grant keys: the public key derived from each of `keys`,
/// except the public default key (a grant anyone can sign is no authorisation). Used only
/// without a controller (see the module doc).
fn standalone_grant_keys(keys: &[Key]) -> Vec<GrantPublicKey> {
    keys.iter()
        .filter(|k| **k != Key::default_key())
        .map(|k| GrantSigner::derive_standalone(&k.secret).public_key())
        .collect()
}

/// The UDP reflector: bound, not yet serving.
#[derive(Debug)]
pub struct UdpReflector {
    /// Blocking socket with a read timeout (see the module doc).
    socket: UdpSocket,
    /// Keys accepted, by id.
    keys: Vec<Key>,
    /// Keys from a controller, if any.
    extra: Option<tokio::sync::watch::Receiver<ControllerKeys>>,
    /// Whether relay-forward packets are relayed (`--relay`).
    relay: bool,
    stats: Arc<ReflectorStats>,
    /// Where server records go (`None`: not counted per source).
    records: Option<RecordsOutput>,
}

impl UdpReflector {
    /// Binds the reflector to `addr` (port 0 for any) and enables kernel receive timestamps.
    ///
    /// # Errors
    ///
    /// The socket or bind error.
    pub async fn bind(addr: SocketAddr, keys: Vec<Key>) -> std::io::Result<Self> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        // Best effort: the kernel may cap it (net.core.rmem_max); a smaller buffer still works.
        let _ = s.set_recv_buffer_size(RECV_BUFFER_BYTES);
        if !sys::enable_rx_timestamps(s.as_raw_fd()) {
            tracing::debug!(
                message = "Kernel receive timestamps unavailable; using the process clock for t2."
            );
        }
        // On a wildcard address, replies must leave from the address each request was sent to
        // (the prober's connected socket ignores any other source).
        if !sys::enable_pktinfo(s.as_raw_fd(), addr.is_ipv6()) && addr.ip().is_unspecified() {
            tracing::warn!(
                message = "Destination addresses (IP_PKTINFO) unavailable; replies to a secondary address may come from another and be ignored.",
                %addr
            );
        }
        s.set_read_timeout(Some(SHUTDOWN_POLL))?;
        s.bind(&addr.into())?;
        Ok(UdpReflector {
            socket: s.into(),
            keys,
            extra: None,
            relay: false,
            stats: Arc::default(),
            records: None,
        })
    }

    /// Enables or disables relaying (see the module doc).
    pub fn with_relay(mut self, enabled: bool) -> Self {
        self.relay = enabled;
        self
    }

    /// Counts per source and writes server records (`kind=serve` / `kind=relay_serve`) to
    /// `out`'s sinks (see [`tally`]).
    pub fn with_records(mut self, out: RecordsOutput) -> Self {
        self.records = Some(out);
        self
    }

    /// Also accepts the keys a controller sends through the returned sender.
    pub fn accept_controller_keys(&mut self) -> tokio::sync::watch::Sender<ControllerKeys> {
        let (tx, rx) = tokio::sync::watch::channel(ControllerKeys::default());
        self.extra = Some(rx);
        tx
    }

    /// Bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.socket
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// This reflector's counters (shared; keep the handle to read them while it runs).
    pub fn stats(&self) -> Arc<ReflectorStats> {
        Arc::clone(&self.stats)
    }

    /// Serves until `shutdown` is cancelled, on a dedicated thread.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let addr = self.local_addr();
        let (counting, records_task) = match self.records.take() {
            Some(out) => {
                let (t, f, task) = tally::start(out, addr);
                (Some((t, f)), Some(tokio::spawn(task.run())))
            }
            None => (None, None),
        };
        if self.keys.contains(&Key::default_key()) && self.extra.is_none() {
            tracing::warn!(
                message = "UDP reflector accepts the well-known default key; anyone can probe it. Set --key.",
                %addr
            );
        }
        if self.keys.is_empty() && self.extra.is_none() {
            tracing::warn!(message = "UDP reflector has no keys; every request will be dropped.", %addr);
        }
        let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
        let token = shutdown.clone();
        let spawned = std::thread::Builder::new()
            .name("udp-reflector".into())
            .spawn(move || {
                // Under a controller, only the keys it sends are trusted (none until then).
                let trusted = if self.extra.is_some() {
                    Vec::new()
                } else {
                    standalone_grant_keys(&self.keys)
                };
                let relay = self.relay.then(|| Relay::new(trusted));
                serve(
                    &self.socket,
                    &self.keys,
                    self.extra,
                    relay,
                    &self.stats,
                    counting,
                    &token,
                );
                let _ = done_tx.send(());
            });
        if let Err(error) = spawned {
            tracing::error!(message = "Cannot start the UDP reflector thread.", %error, %addr);
            return;
        }
        tracing::info!(message = "UDP reflector serving.", %addr, relay = self.relay);
        // The thread ends within SHUTDOWN_POLL of cancellation (or if it panics, dropping the
        // sender).
        let _ = done_rx.await;
        // The thread handed over its last interval before ending; the records reach the sinks
        // before this returns (and so before the sinks close).
        if let Some(task) = records_task {
            let _ = task.await;
        }
    }
}

/// The serving loop (blocking).
///
/// Batched: one `recvmmsg` takes up to [`sys::BATCH`] queued requests (it waits only for the
/// first, so at low rates a batch is one packet and nothing waits for company), each is checked
/// and stamped in place, and one `sendmmsg` sends the replies, each from the address its request
/// was sent to (consecutive same-size replies to one sender as one UDP GSO send, cut by the
/// kernel into the same datagrams; see [`sys::Batch::send_replies`]). The HMAC keys are prepared
/// once ([`WireKey`]); nothing is allocated per packet. Per packet: t2 is that packet's own kernel receive stamp; t3 is read just before
/// that packet's MAC is computed, the latest moment a stamp inside the MAC can be taken. In a
/// batch of k the replies all leave at the `sendmmsg` call, so a packet's t3 may precede its real
/// send time by the MACs of the packets after it (k ≤ 64, under a microsecond each); the
/// reflector's time t3 − t2 — including the time a request waited in the socket queue and in the
/// batch — is still subtracted from each packet's RTT individually.
fn serve(
    socket: &UdpSocket,
    own_keys: &[Key],
    mut extra: Option<tokio::sync::watch::Receiver<ControllerKeys>>,
    mut relay: Option<Relay>,
    stats: &ReflectorStats,
    mut counting: Option<(Tally, Flusher)>,
    shutdown: &CancellationToken,
) {
    let mut keys: Vec<WireKey> = own_keys.iter().map(WireKey::new).collect();
    let fd = socket.as_raw_fd();
    // Counter handles taken once: incrementing them is one atomic add, no label lookup.
    let answered = counter("answered");
    let relayed = counter("relayed");
    let dropped = DropReason::ALL.map(|r| counter(r.as_str()));
    let mut batch = sys::Batch::new();
    let mut error_us = wire::error_bound_to_wire(clock_error_bound_ms());
    let mut error_read_at = Clock::now_ns();
    let mut stamps = StampMapper::default();
    // Who each queued reply answers (source IP, key id, length), in queue order: the counts are
    // credited once the kernel took the reply. Allocated once.
    let mut answers = [(std::net::IpAddr::from([0u8; 4]), 0u32, 0usize); sys::BATCH];
    loop {
        // One lock-free-enough check per batch: a busy reflector still stops promptly.
        if shutdown.is_cancelled() {
            if let Some((mut t, f)) = counting {
                f.finish(&mut t);
            }
            return;
        }
        if let Some((t, f)) = counting.as_mut() {
            f.maybe_flush(t, Clock::now_ns());
        }
        if let Some(rx) = extra.as_mut()
            && rx.has_changed().unwrap_or(false)
        {
            let ck = rx.borrow_and_update().clone();
            keys = own_keys.iter().chain(&ck.wire).map(WireKey::new).collect();
            if let Some(r) = relay.as_mut() {
                r.grant_keys = ck.grant.clone();
            }
            tracing::info!(
                message = "UDP reflector keys updated from the controller.",
                wire_keys = keys.len(),
                grant_keys = relay.as_ref().map_or(0, |r| r.grant_keys.len())
            );
        }
        let n = match batch.recv(fd) {
            Ok(n) => n,
            Err(e) => {
                match e.kind() {
                    std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted => {}
                    _ => {
                        tracing::debug!(message = "UDP reflector receive error.", error = %e);
                        // Do not spin on a persistent error; this is the reflector's own thread.
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                continue;
            }
        };
        let mut n_answers = 0;
        for i in 0..n {
            let Some((r, pkt)) = batch.packet_mut(i) else {
                continue;
            };
            let Some(peer) = r.peer else { continue };
            // The process clock for the relay's arithmetic and the reflector's own timers; the
            // wall clock for a reply's t2 and t3, which probers compare with their own wall
            // clocks for one-way delays (see `crate::clock`).
            let (t2, t2_wall) = match r.rx_realtime_ns {
                Some(ts) => (stamps.map(ts), clock::wall_from_realtime(ts)),
                None => (Clock::now_ns(), clock::wall_ns()),
            };
            if t2.saturating_sub(error_read_at) > ERROR_BOUND_REFRESH_NS {
                error_us = wire::error_bound_to_wire(clock_error_bound_ms());
                error_read_at = t2;
            }
            if let Some(relay) = relay.as_mut()
                && let Some((handled, src, returned)) =
                    relay.handle_attributed(pkt, peer, t2, &keys)
            {
                let len = pkt.len();
                match handled {
                    Ok(to) => match socket.send_to(pkt, to) {
                        Ok(_) => {
                            stats.relayed.fetch_add(1, Ordering::Relaxed);
                            relayed.inc();
                            if let Some((t, _)) = counting.as_mut() {
                                t.relayed(src, returned, len);
                            }
                        }
                        Err(error) => {
                            tracing::debug!(message = "UDP relay send error.", %error, %to);
                            if let Some((t, _)) = counting.as_mut() {
                                t.send_failed(src, len);
                            }
                        }
                    },
                    Err(reason) => {
                        if let Some((t, _)) = counting.as_mut() {
                            t.dropped(src, reason, len);
                        }
                        stats.drop_(reason);
                        if reason.is_relay() {
                            metrics::responder_drop("udp", reason.as_str(), peer);
                        } else if let Some(c) = dropped.get(reason as usize) {
                            c.inc();
                        }
                    }
                }
                continue;
            }
            let len = pkt.len();
            match reflect(pkt, &keys, t2_wall, error_us) {
                Ok(key_id) => {
                    // The reply is the request's own bytes, stamped in place: same length.
                    if batch.queue_reply(i, len)
                        && let Some(a) = answers.get_mut(n_answers)
                    {
                        *a = (peer.ip(), key_id, len);
                        n_answers += 1;
                    }
                }
                Err(reason) => {
                    if let Some((t, _)) = counting.as_mut() {
                        // Every reflect drop happens before the HMAC verified: unauthenticated.
                        t.dropped(
                            Source {
                                role: Role::Serve,
                                protocol: Protocol::Udp,
                                ip: Some(peer.ip()),
                                key_id: None,
                                dst: None,
                            },
                            reason,
                            len,
                        );
                    }
                    stats.drop_(reason);
                    if let Some(c) = dropped.get(reason as usize) {
                        c.inc();
                    }
                    tracing::debug!(message = "Responder dropped input.", protocol = "udp", reason = reason.as_str(), %peer);
                }
            }
        }
        let sent = batch.send_replies(fd);
        if let Some((t, _)) = counting.as_mut() {
            for (j, &(ip, key_id, len)) in answers.iter().take(n_answers).enumerate() {
                if sent.failed_mask & (1u64 << j) == 0 {
                    t.answered(ip, key_id, len);
                } else {
                    t.send_failed(
                        Source {
                            role: Role::Serve,
                            protocol: Protocol::Udp,
                            ip: Some(ip),
                            key_id: Some(key_id),
                            dst: None,
                        },
                        len,
                    );
                }
            }
        }
        if sent.sent > 0 {
            answered.inc_by(sent.sent as u64);
            stats
                .answered
                .fetch_add(sent.sent as u64, Ordering::Relaxed);
        }
        if let Some(error) = sent.error {
            tracing::debug!(message = "UDP reflector send error.", %error, failed = sent.failed);
        }
    }
}

/// Validates `pkt` and turns it into the reply in place; returns the id of the key it
/// authenticated with.
fn reflect(pkt: &mut [u8], keys: &[WireKey], t2: u64, error_us: u32) -> Result<u32, DropReason> {
    let (ty, key_id) = wire::peek(pkt).map_err(|e| DropReason::of(&e))?;
    if ty != MessageType::Request {
        return Err(DropReason::Type);
    }
    let key = keys
        .iter()
        .find(|k| k.id == key_id)
        .ok_or(DropReason::Auth)?;
    wire::verify(pkt, key).map_err(|e| DropReason::of(&e))?;
    wire::stamp_reply(pkt, key, t2, error_us, clock::wall_ns).map_err(|e| DropReason::of(&e))?;
    Ok(key_id)
}

/// Where a relayed packet's reply goes back to.
#[derive(Clone, Copy, Debug)]
struct Pending {
    /// The source A.
    src: SocketAddr,
    /// The destination B the packet was forwarded to (replies from elsewhere are not relayed).
    dst: SocketAddr,
    /// Length forwarded: the only length of reply relayed back (no amplification).
    len: usize,
    /// Process-clock time after which the entry is stale.
    expires_ns: u64,
}

/// The relay's state, owned by the serving thread.
#[derive(Debug)]
struct Relay {
    /// Public keys whose grants are accepted (never a private key).
    grant_keys: Vec<GrantPublicKey>,
    /// (session id, sequence) → return route.
    table: HashMap<(u64, u32), Pending>,
}

impl Relay {
    fn new(grant_keys: Vec<GrantPublicKey>) -> Self {
        Relay {
            grant_keys,
            table: HashMap::with_capacity(RELAY_TABLE_MAX),
        }
    }

    /// Handles `pkt` if it is relay traffic: `None` when it is not (the caller reflects or
    /// drops it as usual); `Some(Ok(to))` when it was stamped in place and must be sent to
    /// `to`; `Some(Err(reason))` when it must be dropped. `rx` is its receive stamp.
    #[cfg(test)]
    fn handle(
        &mut self,
        pkt: &mut [u8],
        peer: SocketAddr,
        rx: u64,
        keys: &[WireKey],
    ) -> Option<Result<SocketAddr, DropReason>> {
        self.handle_attributed(pkt, peer, rx, keys)
            .map(|(r, _, _)| r)
    }

    /// What `handle` returns, plus whom the packet is counted for (the source A as the packet
    /// proves it: its address, the verified key id, the verified grant's destination; see
    /// [`tally`]) and whether it is a return (B's reply going back to A).
    fn handle_attributed(
        &mut self,
        pkt: &mut [u8],
        peer: SocketAddr,
        rx: u64,
        keys: &[WireKey],
    ) -> Option<(Result<SocketAddr, DropReason>, Source, bool)> {
        let (ty, key_id) = wire::peek(pkt).ok()?;
        match ty {
            MessageType::RelayForward => {
                let mut src = Source {
                    role: Role::Relay,
                    protocol: Protocol::Udp,
                    ip: Some(peer.ip()),
                    key_id: None,
                    dst: None,
                };
                let r = self.forward(pkt, key_id, peer, rx, keys, &mut src);
                Some((r, src, false))
            }
            MessageType::Reply => {
                let id = wire::session_seq(pkt)?;
                let p = *self.table.get(&id)?;
                if p.dst != peer {
                    return None;
                }
                let key = keys.iter().find(|k| k.id == key_id)?;
                wire::verify(pkt, key).ok()?;
                self.table.remove(&id);
                if rx > p.expires_ns {
                    return None;
                }
                let src = Source {
                    role: Role::Relay,
                    protocol: Protocol::Udp,
                    ip: Some(p.src.ip()),
                    key_id: Some(key_id),
                    dst: Some(p.dst),
                };
                if pkt.len() != p.len {
                    return Some((Err(DropReason::RelaySize), src, true));
                }
                Some((
                    wire::stamp_relay_return(pkt, key, rx, Clock::now_ns)
                        .map(|()| p.src)
                        .map_err(|e| DropReason::of(&e)),
                    src,
                    true,
                ))
            }
            _ => None,
        }
    }

    fn forward(
        &mut self,
        pkt: &mut [u8],
        key_id: u32,
        peer: SocketAddr,
        rx: u64,
        keys: &[WireKey],
        src: &mut Source,
    ) -> Result<SocketAddr, DropReason> {
        let key = keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(DropReason::Auth)?;
        wire::verify(pkt, key).map_err(|e| DropReason::of(&e))?;
        src.key_id = Some(key_id);
        let field = wire::grant_field(pkt).ok_or(DropReason::Malformed)?;
        let grant =
            Grant::verify(field, &self.grant_keys, unix_now()).map_err(DropReason::of_grant)?;
        src.dst = Some(grant.dst);
        let id = wire::session_seq(pkt).ok_or(DropReason::Malformed)?;
        if self.table.len() >= RELAY_TABLE_MAX && !self.table.contains_key(&id) {
            self.table.retain(|_, p| p.expires_ns >= rx);
            if self.table.len() >= RELAY_TABLE_MAX {
                return Err(DropReason::RelayTableFull);
            }
        }
        self.table.insert(
            id,
            Pending {
                src: peer,
                dst: grant.dst,
                len: pkt.len(),
                expires_ns: rx.saturating_add(RELAY_TTL.as_nanos() as u64),
            },
        );
        wire::stamp_relay_forward(pkt, key, rx, Clock::now_ns).map_err(|e| DropReason::of(&e))?;
        Ok(grant.dst)
    }
}

fn counter(result: &str) -> Counter {
    metrics::get()
        .responder
        .get_or_create(&ResponderLabels {
            protocol: "udp".into(),
            result: result.into(),
        })
        .clone()
}

// Keep the reason table and the counter array in step.
const _: () = assert!(DropReason::ALL.len() == DropReason::COUNT);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::udp::wire::MAX_PACKET_BYTES;

    fn request(key: &WireKey, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        wire::encode(
            &wire::Header::request(key.id, 9, 1, 100, wire::ERROR_BOUND_UNKNOWN),
            key,
            &mut b,
        )
        .expect("valid size");
        b
    }

    fn relay_forward(key: &WireKey, seq: u32, grant: [u8; wire::GRANT_BYTES]) -> Vec<u8> {
        let mut h = wire::Header::request(key.id, 77, seq, 100, wire::ERROR_BOUND_UNKNOWN);
        h.msg_type = MessageType::RelayForward;
        h.grant = grant;
        let mut b = vec![0u8; 300];
        wire::encode(&h, key, &mut b).expect("valid size");
        b
    }

    #[test]
    fn relay_forwards_only_with_valid_grants_and_returns_replies() {
        let secret = Key::from_secret("shared-secret");
        let k = WireKey::new(&secret);
        let keys = [k.clone()];
        let gk = GrantSigner::derive_standalone(&secret.secret);
        let a: SocketAddr = "10.0.0.1:4000".parse().expect("addr");
        let b: SocketAddr = "10.0.0.2:7710".parse().expect("addr");
        let mut relay = Relay::new(standalone_grant_keys(std::slice::from_ref(&secret)));
        let good = gk.sign(b, unix_now() + 60);

        let mut p = relay_forward(&k, 1, good);
        assert_eq!(relay.handle(&mut p, a, 1_000, &keys), Some(Ok(b)));
        assert_eq!(p.len(), 300, "never larger");
        let h = wire::decode(&p, &keys).expect("resealed");
        assert_eq!((h.msg_type, h.r1), (MessageType::Request, 1_000));
        assert!(h.r2 >= h.r1);
        // B reflects it; R turns the reply into a relay-return for A.
        assert_eq!(reflect(&mut p, &keys, 2_000, 0), Ok(k.id));
        // A reply from anyone but B is not relayed.
        let mut q = p.clone();
        assert_eq!(relay.handle(&mut q, a, 3_000, &keys), None);
        assert_eq!(relay.handle(&mut p, b, 3_000, &keys), Some(Ok(a)));
        let h = wire::decode(&p, &keys).expect("resealed");
        assert_eq!((h.msg_type, h.r3), (MessageType::RelayReturn, 3_000));
        // The route is used once.
        let mut q2 = q.clone();
        assert_eq!(relay.handle(&mut q2, b, 3_000, &keys), None);

        // A reply of another length than was forwarded is not relayed back.
        let mut p = relay_forward(&k, 5, good);
        assert_eq!(relay.handle(&mut p, a, 1_000, &keys), Some(Ok(b)));
        let mut longer = vec![0u8; 400];
        wire::encode(
            &wire::Header::request(k.id, 77, 5, 100, wire::ERROR_BOUND_UNKNOWN),
            &k,
            &mut longer,
        )
        .expect("valid size");
        assert_eq!(reflect(&mut longer, &keys, 2_000, 0), Ok(k.id));
        assert_eq!(
            relay.handle(&mut longer, b, 3_000, &keys),
            Some(Err(DropReason::RelaySize))
        );

        let expired = gk.sign(b, unix_now() - 1);
        let forged = GrantSigner::derive_standalone(b"x").sign(b, unix_now() + 60);
        let old = meshlat_proto::grant::legacy_hmac_grant(b, unix_now() + 60, &secret.secret);
        let mut wrong_dst = good;
        wrong_dst[7] ^= 1;
        for (grant, reason) in [
            ([0u8; wire::GRANT_BYTES], DropReason::RelayNoGrant),
            (expired, DropReason::RelayExpired),
            (forged, DropReason::RelayBadGrant),
            (wrong_dst, DropReason::RelayBadGrant),
            (old, DropReason::RelayBadGrant),
        ] {
            let mut p = relay_forward(&k, 2, grant);
            assert_eq!(relay.handle(&mut p, a, 1, &keys), Some(Err(reason)));
        }
        // Wrong packet key: auth, before the grant is looked at.
        let other = WireKey::new(&Key::from_secret("other-secret"));
        let mut p = relay_forward(&other, 2, good);
        assert_eq!(
            relay.handle(&mut p, a, 1, &keys),
            Some(Err(DropReason::Auth))
        );
        // Table bound: entries do not expire within the TTL, so the table fills.
        for seq in 0..RELAY_TABLE_MAX as u32 + 10 {
            let mut p = relay_forward(&k, 100 + seq, good);
            let r = relay.handle(&mut p, a, 10_000, &keys);
            if (seq as usize) < RELAY_TABLE_MAX {
                assert_eq!(r, Some(Ok(b)), "seq {seq}");
            } else {
                assert_eq!(r, Some(Err(DropReason::RelayTableFull)));
            }
        }
        // After the TTL, stale entries are purged and forwarding resumes.
        let later = 10_000 + RELAY_TTL.as_nanos() as u64 + 1;
        let mut p = relay_forward(&k, 99_999, good);
        assert_eq!(relay.handle(&mut p, a, later, &keys), Some(Ok(b)));
        assert!(relay.table.len() <= 1);
    }

    #[test]
    fn reflect_stamps_and_rejects() {
        let k = WireKey::new(&Key::from_secret("k"));
        let keys = [k.clone()];
        let mut p = request(&k, 400);
        assert_eq!(reflect(&mut p, &keys, 200, 7), Ok(k.id));
        assert_eq!(p.len(), 400);
        let h = wire::decode(&p, &keys).expect("reply verifies");
        assert_eq!(h.msg_type, MessageType::Reply);
        assert_eq!((h.t1, h.t2, h.reflector_error_us), (100, 200, 7));
        assert!(h.t3 >= Clock::now_ns() - 1_000_000_000);
        // A reply is never reflected again.
        assert_eq!(reflect(&mut p, &keys, 1, 1), Err(DropReason::Type));
        let other = WireKey::new(&Key::from_secret("other"));
        let mut q = request(&other, wire::MIN_PACKET_BYTES);
        assert_eq!(reflect(&mut q, &keys, 1, 1), Err(DropReason::Auth));
        let mut q = request(&k, wire::MIN_PACKET_BYTES);
        q[30] ^= 1;
        assert_eq!(reflect(&mut q, &keys, 1, 1), Err(DropReason::Auth));
        let mut q = request(&k, wire::MIN_PACKET_BYTES);
        q[4] = 9;
        assert_eq!(reflect(&mut q, &keys, 1, 1), Err(DropReason::Version));
        assert_eq!(
            reflect(&mut [0u8; 10], &keys, 1, 1),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            reflect(&mut [0u8; MAX_PACKET_BYTES + 1], &keys, 1, 1),
            Err(DropReason::Oversize)
        );
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(
                *r as usize, i,
                "DropReason discriminants index the counters"
            );
        }
    }
}
