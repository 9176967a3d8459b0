//! UDP prober: TWAMP-light style trains to a meshlat reflector (DESIGN §4).
//!
//! # Layout
//!
//! - [`session`]: the sans-IO train core — pacing, timeout, classification, statistics.
//! - [`relay`]: the sans-IO relay train core (`relay://R/B` targets) and its arithmetic.
//! - `driver`: the one thin tokio driver of both, owning the sockets and the clock.
//! - this module: [`UdpProbe`], which resolves, opens the sockets and reads the outcome.
//!
//! The protocol itself — wire format, relay grants, socket calls, stamp mapping — lives in
//! [`crate::udp`], shared with the reflector ([`crate::respond::udp`]).
//!
//! # Driver
//!
//! Each [`UdpProbe::run_once`] resolves the target, binds an ephemeral UDP socket connected to
//! it (so ICMP port unreachable surfaces as `ECONNREFUSED`), and runs one [`session::UdpSession`]
//! (or, for `relay://` targets, one [`relay::RelaySession`] on a socket to the relay and one to
//! the destination) in the one driver: it sends paced requests (t1 =
//! [`Clock::now_ns`](crate::clock::Clock::now_ns) just before the send), receives replies with
//! their kernel receive time as t4 (`SO_TIMESTAMPING`, mapped into the process timebase by
//! `StampMapper`; `Clock::now_ns` if unavailable) and feeds them to the session. One-way
//! delays and the clock offset are then put on the wall clock with the process-minus-wall
//! offset measured as the train ends (see [`crate::clock`]).
//! Trains with packets less than 2 ms apart are paced precisely: waits sleep on tokio's timer
//! (≈1 ms granularity) until [`SPIN_NS`] before the due time, then yield-spin. Coarser trains
//! only sleep (a send may be up to 1 ms late, which moves t1 but not the RTT), so many
//! concurrent trains cost no spinning CPU. After the train, any replies already queued are read
//! and counted as late.
//!
//! Outcomes: `Ok` with at least one sample; otherwise `Refused` (ICMP port unreachable),
//! `Dns`, `Local`/`Unreachable` (socket errors, via [`super::classify_io`]), `Auth` (replies
//! arrived but failed authentication) or `Timeout` (no replies: wrong key, no reflector, or
//! loss).

mod driver;
pub mod relay;
pub mod session;

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::time::{Duration, SystemTime};

use meshlat_proto::record::ErrorKind;
use tokio::net::UdpSocket;

use self::relay::{Path, RelaySession};
use self::session::{SessionConfig, UdpSession};
use super::{Measurement, Outcome, ProbeSetupError, ProbeSpec};
use crate::clock::clock_error_bound_ms;
use crate::target::Target;
use crate::udp::wire::{self, WireKey};
pub use crate::udp::{MAX_PACKET_BYTES, MIN_PACKET_BYTES};
use crate::udp::{grant, sys};

/// Waits shorter than this are spent yield-spinning instead of on tokio's millisecond timer.
pub const SPIN_NS: u64 = 1_000_000;

/// Most packets one train may have (bounds the per-train state): the bound jobs are validated
/// against and `agent probe --packets` allows, so the prober accepts exactly what can reach it.
pub use meshlat_proto::job::MAX_PACKETS;

/// The UDP prober: one validated spec, reused for every train.
#[derive(Debug)]
pub struct UdpProbe {
    /// Packets per train.
    packets: u32,
    /// Gap between sends.
    interval_ns: u64,
    /// Wait after the last send.
    timeout_ns: u64,
    /// Size of every request (and so every reply).
    packet_bytes: usize,
    /// Prepared once: signing needs no per-train key setup.
    key: WireKey,
    /// Signs standalone relay grants (the key pair derived from the shared key).
    grant_key: grant::GrantSigner,
    /// Kept for `Debug` and for the timeout in failure messages.
    timeout: Duration,
}

impl UdpProbe {
    /// Validates the spec and prepares the key.
    ///
    /// # Errors
    ///
    /// [`ProbeSetupError::Invalid`] when `payload_bytes` is nonzero but below
    /// [`MIN_PACKET_BYTES`] or above [`MAX_PACKET_BYTES`], or `packets` is 0 or above
    /// [`MAX_PACKETS`].
    pub fn new(spec: &ProbeSpec) -> Result<Self, ProbeSetupError> {
        let packet_bytes = packet_size(spec.payload_bytes)?;
        if spec.packets == 0 || spec.packets > MAX_PACKETS {
            return Err(ProbeSetupError::Invalid(format!(
                "packets ({}) must be in 1..={MAX_PACKETS}",
                spec.packets
            )));
        }
        sys::keep_rx_timestamps_enabled();
        Ok(UdpProbe {
            packets: spec.packets,
            interval_ns: duration_ns(spec.packet_interval),
            timeout_ns: duration_ns(spec.timeout),
            packet_bytes,
            key: WireKey::new(&spec.key),
            grant_key: grant::GrantSigner::derive_standalone(&spec.key.secret),
            timeout: spec.timeout,
        })
    }

    /// Size of every packet this probe sends.
    pub fn packet_bytes(&self) -> usize {
        self.packet_bytes
    }

    /// Runs one train against `target` (a relay train for `relay://` targets). Never fails:
    /// failures are in the outcome.
    pub async fn run_once(&self, target: &Target) -> Measurement {
        let started = SystemTime::now();
        if let Some((rhost, rport)) = &target.relay {
            return self.run_relay(started, rhost, *rport, target).await;
        }
        let addr = match resolve_one(&target.host, target.port).await {
            Ok(a) => a,
            Err(o) => return Measurement::new(started, o),
        };
        let mut m = Measurement::new(started, Outcome::Ok);
        m.data.remote_addr = Some(addr);
        let sock = match open_socket(addr) {
            Ok(s) => s,
            Err(e) => {
                m.outcome = Outcome::failed(super::classify_io(&e), format!("socket: {e}"));
                return m;
            }
        };
        let mut session = UdpSession::new(self.session_config());
        let io_error = driver::drive(
            &[(&sock, Path::Direct)],
            &mut session,
            self.packet_bytes,
            self.interval_ns < 2 * SPIN_NS,
        )
        .await;
        let invalid = session.invalid();
        let stats = session.into_stats_on_wall(crate::clock::wall_offset_ns());
        m.outcome = train_outcome(stats.samples, io_error, invalid, addr, || {
            format!(
                "no replies from {addr} to {} packets within {:?} (no reflector, wrong key, \
                 or loss)",
                stats.sent, self.timeout
            )
        });
        m.data.train = Some(stats);
        m
    }
}

impl UdpProbe {
    fn session_config(&self) -> SessionConfig {
        SessionConfig {
            packets: self.packets,
            interval_ns: self.interval_ns,
            timeout_ns: self.timeout_ns,
            packet_bytes: self.packet_bytes,
            session_id: rand::random(),
            key: self.key.clone(),
            local_error_us: wire::error_bound_to_wire(clock_error_bound_ms()),
        }
    }

    /// One relay train through `rhost:rport` to `target` (see [`relay`]).
    async fn run_relay(
        &self,
        started: SystemTime,
        rhost: &str,
        rport: u16,
        target: &Target,
    ) -> Measurement {
        let (relay_addr, dst) = match (
            resolve_one(rhost, rport).await,
            resolve_one(&target.host, target.port).await,
        ) {
            (Ok(r), Ok(d)) => (r, d),
            (Err(o), _) | (_, Err(o)) => return Measurement::new(started, o),
        };
        let mut m = Measurement::new(started, Outcome::Ok);
        m.data.remote_addr = Some(dst);
        let socks = open_socket(relay_addr).and_then(|r| Ok((r, open_socket(dst)?)));
        let (via, direct) = match socks {
            Ok(s) => s,
            Err(e) => {
                m.outcome = Outcome::failed(super::classify_io(&e), format!("socket: {e}"));
                return m;
            }
        };
        let grant = target.grant.unwrap_or_else(|| {
            self.grant_key
                .sign(dst, grant::unix_now() + relay::STANDALONE_GRANT_TTL_S)
        });
        let mut session = RelaySession::new(self.session_config(), grant);
        let io_error = driver::drive(
            &[(&via, Path::Relayed), (&direct, Path::Direct)],
            &mut session,
            self.packet_bytes,
            true,
        )
        .await;
        let invalid = session.invalid();
        let r = session.into_result_on_wall(crate::clock::wall_offset_ns());
        m.outcome = if r.sum_mismatches > 0 {
            Outcome::failed(
                ErrorKind::Local,
                format!(
                    "{} relayed packets whose rtt is not the sum of legs and dwell",
                    r.sum_mismatches
                ),
            )
        } else {
            train_outcome(r.train.samples, io_error, invalid, relay_addr, || {
                format!(
                    "no relayed replies via {relay_addr} to {dst} for {} packets within {:?} \
                     (no relay, relaying off, wrong key, or loss)",
                    r.train.sent, self.timeout
                )
            })
        };
        m.data.train = Some(r.train);
        m.data.relay = Some(r.relay);
        m
    }
}

/// A train's outcome: ok with any sample; otherwise the socket error that ended it, replies that
/// failed authentication, or a timeout described by `timeout_detail`, in that order.
fn train_outcome(
    samples: u32,
    io_error: Option<io::Error>,
    invalid: u32,
    peer: SocketAddr,
    timeout_detail: impl FnOnce() -> String,
) -> Outcome {
    if samples > 0 {
        Outcome::Ok
    } else if let Some(e) = io_error {
        Outcome::failed(super::classify_io(&e), format!("{peer}: {e}"))
    } else if invalid > 0 {
        Outcome::failed(
            ErrorKind::Auth,
            format!("{invalid} replies from {peer} failed authentication (wrong key?)"),
        )
    } else {
        Outcome::failed(ErrorKind::Timeout, timeout_detail())
    }
}

/// Resolves to the first address, or the failed outcome.
async fn resolve_one(host: &str, port: u16) -> Result<SocketAddr, Outcome> {
    match super::resolve(host, port).await {
        Ok(addrs) => addrs
            .first()
            .copied()
            .ok_or_else(|| Outcome::failed(ErrorKind::Dns, format!("{host}: no addresses"))),
        Err((kind, detail)) => Err(Outcome::failed(kind, detail)),
    }
}

/// The packet size for a spec's `payload_bytes` (0 = [`MIN_PACKET_BYTES`]).
///
/// # Errors
///
/// [`ProbeSetupError::Invalid`] outside [`MIN_PACKET_BYTES`]..=[`MAX_PACKET_BYTES`].
pub fn packet_size(payload_bytes: usize) -> Result<usize, ProbeSetupError> {
    match payload_bytes {
        0 => Ok(MIN_PACKET_BYTES),
        n if (MIN_PACKET_BYTES..=MAX_PACKET_BYTES).contains(&n) => Ok(n),
        n => Err(ProbeSetupError::Invalid(format!(
            "udp payload_bytes ({n}) must be 0 (minimum) or in \
             {MIN_PACKET_BYTES}..={MAX_PACKET_BYTES}"
        ))),
    }
}

fn duration_ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// An ephemeral, non-blocking UDP socket connected to `remote`, with kernel receive timestamps
/// when the OS offers them.
fn open_socket(remote: SocketAddr) -> io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(
        Domain::for_address(remote),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    s.set_nonblocking(true)?;
    // Without kernel stamps t4 falls back to the clock read after wake-up (slightly larger RTTs).
    let _stamped = sys::enable_rx_timestamps(s.as_raw_fd());
    let local = match remote {
        SocketAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
    };
    s.bind(&local.into())?;
    s.connect(&remote.into())?;
    UdpSocket::from_std(s.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_sizes_are_validated() {
        assert_eq!(packet_size(0).ok(), Some(MIN_PACKET_BYTES));
        assert_eq!(packet_size(MIN_PACKET_BYTES).ok(), Some(MIN_PACKET_BYTES));
        assert_eq!(packet_size(1452).ok(), Some(1452));
        assert!(packet_size(MIN_PACKET_BYTES - 1).is_err());
        assert!(packet_size(1).is_err());
        assert!(packet_size(1453).is_err());
        let spec = ProbeSpec {
            payload_bytes: 100,
            ..ProbeSpec::default()
        };
        assert!(matches!(
            UdpProbe::new(&spec),
            Err(ProbeSetupError::Invalid(_))
        ));
        let spec = ProbeSpec {
            packets: 0,
            ..ProbeSpec::default()
        };
        assert!(UdpProbe::new(&spec).is_err());
        // The job bound: a train as long as a job may ask for is accepted, a longer one not.
        for (packets, ok) in [(MAX_PACKETS, true), (MAX_PACKETS + 1, false)] {
            let spec = ProbeSpec {
                packets,
                ..ProbeSpec::default()
            };
            assert_eq!(UdpProbe::new(&spec).is_ok(), ok, "packets {packets}");
        }
        let p = UdpProbe::new(&ProbeSpec::default()).expect("default spec is valid");
        assert_eq!(p.packet_bytes(), MIN_PACKET_BYTES);
    }
}
