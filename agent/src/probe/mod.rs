//! Probers: one module per protocol behind one closed enum (STYLE §3).
//!
//! A probe takes a [`Target`] and returns a [`Measurement`]: a failure is an [`Outcome`], never
//! an `Err` (STYLE §4). `Err` is only for setup ([`ProbeSetupError`]). Probes do not schedule
//! themselves; [`crate::scheduler`] calls [`ProbeRunner::run_once`].
//!
//! # Layout
//!
//! - [`udp`]: TWAMP-light trains — `wire` (packet format), `session` (sans-IO core), driver.
//! - [`tcp`]: connect time — `handshake` (sans-IO: the kernel's `TCP_INFO` handshake RTT), driver.
//! - [`quic`]: handshake time and a datagram echo train.
//! - [`http`]: perftest's phases over HTTP and HTTPS — `timings` (pure) and the driver.

pub mod http;
pub mod quic;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use meshlat_proto::record::{ErrorKind, Protocol, Record, TcpTimeSource};

use crate::target::Target;
use crate::tls::TlsClientOptions;

/// Parameters shared by every probe of one job.
#[derive(Clone, Debug)]
pub struct ProbeSpec {
    /// Protocol (must match the targets').
    pub protocol: Protocol,
    /// Whole-sample timeout (trains: wait for replies this long after the last packet is sent).
    pub timeout: Duration,
    /// Packets per train (udp, quic).
    pub packets: u32,
    /// Gap between packets of a train.
    pub packet_interval: Duration,
    /// UDP/QUIC datagram size; 0 means the smallest that carries every wire slot.
    pub payload_bytes: usize,
    /// HMAC key for UDP packets.
    pub key: Key,
    /// How to verify targets' TLS certificates (https, quic).
    pub tls: TlsClientOptions,
}

impl Default for ProbeSpec {
    fn default() -> Self {
        ProbeSpec {
            protocol: Protocol::Udp,
            timeout: Duration::from_secs(2),
            packets: meshlat_proto::job::DEFAULT_PACKETS,
            packet_interval: Duration::from_millis(10),
            payload_bytes: 0,
            key: Key::default_key(),
            tls: TlsClientOptions::default(),
        }
    }
}

pub use crate::udp::{DEFAULT_KEY, Key};

/// A spec a probe cannot run with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeSetupError {
    /// A parameter is out of range.
    #[error("{0}")]
    Invalid(String),
    /// TLS configuration (CA file etc.) could not be loaded.
    #[error("tls: {0}")]
    Tls(String),
}

/// Result of one sample or train.
#[derive(Clone, Debug)]
pub struct Measurement {
    /// Wall-clock start (the record's `ts`).
    pub started: SystemTime,
    /// Success or why not.
    pub outcome: Outcome,
    /// What was measured (partial on failure: phases completed before it).
    pub data: Data,
}

/// Whether a measurement succeeded.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Succeeded.
    Ok,
    /// Failed; the record gets `ok = false`, `error_kind` and `error`.
    Failed {
        /// Failure class.
        kind: ErrorKind,
        /// Human-readable detail.
        detail: String,
    },
}

impl Outcome {
    /// A failure.
    pub fn failed(kind: ErrorKind, detail: impl Into<String>) -> Self {
        Outcome::Failed {
            kind,
            detail: detail.into(),
        }
    }

    /// Whether this is [`Outcome::Ok`].
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }
}

/// The measured values; every probe fills what applies to it.
#[derive(Clone, Debug, Default)]
pub struct Data {
    /// Train results (udp, quic echo, relay).
    pub train: Option<TrainStats>,
    /// HTTP phases (http, https).
    pub http: Option<HttpData>,
    /// TCP connect time (tcp; http's is in `http`).
    pub tcp_ms: Option<f64>,
    /// Where `tcp_ms` comes from (kernel handshake RTT or process clock).
    pub tcp_time_source: Option<TcpTimeSource>,
    /// QUIC handshake time.
    pub handshake_ms: Option<f64>,
    /// Address actually probed.
    pub remote_addr: Option<SocketAddr>,
    /// Relay legs.
    pub relay: Option<RelayData>,
}

/// HTTP results, perftest's columns (DESIGN §5).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HttpData {
    /// Resolution time.
    pub dns_ms: Option<f64>,
    /// The TCP handshake: the kernel's SYN → SYN-ACK round trip, or connect start → connected
    /// on the process clock ([`tcp::handshake::connect_time`]).
    pub tcp_ms: Option<f64>,
    /// Where `tcp_ms` comes from.
    pub tcp_time_source: Option<TcpTimeSource>,
    /// Connected → TLS handshake done (https).
    pub tls_ms: Option<f64>,
    /// Request written → first response byte.
    pub first_byte_ms: Option<f64>,
    /// First → last body byte.
    pub last_byte_ms: Option<f64>,
    /// Connect start → last byte.
    pub total_ms: Option<f64>,
    /// Response status.
    pub status: Option<u16>,
    /// Body bytes.
    pub bytes: Option<u64>,
    /// e.g. `HTTP/1.1`.
    pub http_version: Option<String>,
    /// e.g. `TLSv1.3`.
    pub tls_version: Option<String>,
}

/// Relay arithmetic results (DESIGN §4), medians over the train.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RelayData {
    /// (a4−a1) − (r4−r1).
    pub leg_src_relay_rtt_ms: Option<f64>,
    /// (r3−r2) − (b2−b1).
    pub leg_relay_dst_rtt_ms: Option<f64>,
    /// (r2−r1) + (r4−r3).
    pub relay_dwell_ms: Option<f64>,
    /// Direct A ↔ B RTT.
    pub direct_rtt_ms: Option<f64>,
    /// Median of per-pair (relayed − direct).
    pub relay_penalty_ms: Option<f64>,
}

/// Result of one train (DESIGN §5, "Trains").
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TrainStats {
    /// Packets sent.
    pub sent: u32,
    /// Distinct sequences answered within the timeout.
    pub samples: u32,
    /// Replies for an already answered sequence.
    pub duplicates: u32,
    /// Replies that arrived after a reply to a later sequence.
    pub reordered: u32,
    /// Replies after the timeout.
    pub late: u32,
    /// Per-packet RTTs in ms, in sequence order, one per answered sequence.
    pub rtts_ms: Vec<f64>,
    /// Raw round trips t4 − t1 in ms (remote processing included), same order; not written to
    /// records (benchmarks compare them with tools that report raw RTT). Empty where the probe
    /// has no remote timestamps.
    pub raw_rtts_ms: Vec<f64>,
    /// RFC 3550 jitter over forward transit.
    pub jitter_ms: Option<f64>,
    /// Remote minus local clock from the lowest-RTT packet.
    pub clock_offset_ms: Option<f64>,
    /// Forward one-way delay (with clock error bounds only).
    pub owd_fwd_ms: Option<f64>,
    /// Reverse one-way delay (with clock error bounds only).
    pub owd_rev_ms: Option<f64>,
    /// Sum of both ends' error bounds.
    pub clock_error_ms: Option<f64>,
    /// The worst lateness of a packet's send against its intended time within the train (its
    /// pacing), ms: the agent's own scheduling delay. `None` where nothing was paced.
    pub send_lag_ms: Option<f64>,
}

/// Summary statistics of a set of RTTs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RttSummary {
    /// Mean.
    pub mean: f64,
    /// Minimum.
    pub min: f64,
    /// Median, nearest rank.
    pub p50: f64,
    /// 99th percentile, nearest rank.
    pub p99: f64,
    /// Maximum.
    pub max: f64,
}

/// Nearest-rank percentile of an ascending slice: the value at rank ⌈p/100 · n⌉.
/// Returns `None` for an empty slice.
pub fn nearest_rank(sorted: &[f64], p: f64) -> Option<f64> {
    meshlat_proto::sketch::nearest_rank(sorted, p / 100.0)
}

impl RttSummary {
    /// Summarises RTTs; `None` when there are none.
    pub fn of(rtts: &[f64]) -> Option<Self> {
        if rtts.is_empty() {
            return None;
        }
        let mut s = rtts.to_vec();
        s.sort_by(f64::total_cmp);
        Some(RttSummary {
            mean: s.iter().sum::<f64>() / s.len() as f64,
            min: s[0],
            p50: nearest_rank(&s, 50.0)?,
            p99: nearest_rank(&s, 99.0)?,
            max: s[s.len() - 1],
        })
    }
}

impl TrainStats {
    /// sent − samples.
    pub fn lost(&self) -> u32 {
        self.sent.saturating_sub(self.samples)
    }
}

/// How a train's replies were classified, the counts both train state machines keep (UDP
/// sessions and QUIC echo trains); each decides itself which reply is a duplicate, late or an
/// answer.
#[derive(Clone, Debug, Default)]
pub(crate) struct ReplyCounts {
    duplicates: u32,
    reordered: u32,
    late: u32,
    /// Highest sequence answered so far (reordering detection).
    highest_answered: Option<u32>,
}

impl ReplyCounts {
    /// A reply for a sequence already answered (or already late).
    pub(crate) fn duplicate(&mut self) {
        self.duplicates += 1;
    }

    /// A reply after the timeout.
    pub(crate) fn late(&mut self) {
        self.late += 1;
    }

    /// A reply for `seq`: reordered when a later sequence was answered before it.
    pub(crate) fn answered(&mut self, seq: u32) {
        match self.highest_answered {
            Some(h) if seq < h => self.reordered += 1,
            _ => self.highest_answered = Some(seq),
        }
    }

    /// The train's results from these counts, `sent` and the RTTs of the answered sequences
    /// (one sample each); jitter, clock fields and raw RTTs are left for the caller.
    pub(crate) fn stats(&self, sent: u32, rtts_ms: Vec<f64>) -> TrainStats {
        TrainStats {
            sent,
            samples: u32::try_from(rtts_ms.len()).unwrap_or(u32::MAX),
            duplicates: self.duplicates,
            reordered: self.reordered,
            late: self.late,
            rtts_ms,
            ..TrainStats::default()
        }
    }
}

/// Rounds to microseconds (records keep µs resolution).
pub fn round_us(ms: f64) -> f64 {
    (ms * 1000.0).round() / 1000.0
}

fn r(v: Option<f64>) -> Option<f64> {
    v.map(round_us)
}

impl Measurement {
    /// A measurement with no data yet.
    pub fn new(started: SystemTime, outcome: Outcome) -> Self {
        Measurement {
            started,
            outcome,
            data: Data::default(),
        }
    }

    /// Writes the outcome and measured fields into a record (identity is the caller's).
    pub fn fill(&self, rec: &mut Record) {
        match &self.outcome {
            Outcome::Ok => rec.ok = true,
            Outcome::Failed { kind, detail } => {
                rec.ok = false;
                rec.error_kind = Some(*kind);
                rec.error = Some(detail.clone());
            }
        }
        let d = &self.data;
        rec.remote_addr = d.remote_addr.map(|a| a.to_string());
        if let Some(t) = &d.train {
            rec.sent = Some(t.sent);
            rec.samples = Some(t.samples);
            rec.lost = Some(t.lost());
            rec.duplicates = Some(t.duplicates);
            rec.reordered = Some(t.reordered);
            rec.late = Some(t.late);
            if let Some(s) = RttSummary::of(&t.rtts_ms) {
                rec.rtt_ms = Some(round_us(s.mean));
                rec.rtt_min_ms = Some(round_us(s.min));
                rec.rtt_p50_ms = Some(round_us(s.p50));
                rec.rtt_p99_ms = Some(round_us(s.p99));
                rec.rtt_max_ms = Some(round_us(s.max));
            }
            rec.rtt_samples_ms = Some(t.rtts_ms.iter().copied().map(round_us).collect());
            rec.jitter_ms = r(t.jitter_ms);
            rec.clock_offset_ms = r(t.clock_offset_ms);
            rec.owd_fwd_ms = r(t.owd_fwd_ms);
            rec.owd_rev_ms = r(t.owd_rev_ms);
            rec.clock_error_ms = r(t.clock_error_ms);
            rec.send_lag_ms = r(t.send_lag_ms);
            // A train that kept some packets but lost others is ok, with the loss noted.
            if rec.ok && t.lost() > 0 {
                rec.error_kind = Some(ErrorKind::Loss);
                rec.error = Some(format!("{} of {} packets lost", t.lost(), t.sent));
            }
        }
        if let Some(ms) = d.tcp_ms {
            rec.tcp_ms = Some(round_us(ms));
            rec.tcp_time_source = d.tcp_time_source;
            if d.train.is_none() && d.http.is_none() {
                rec.rtt_ms = Some(round_us(ms));
            }
        }
        rec.handshake_ms = r(d.handshake_ms);
        if let Some(h) = &d.http {
            rec.dns_ms = r(h.dns_ms);
            rec.tcp_ms = r(h.tcp_ms);
            rec.tcp_time_source = h.tcp_time_source;
            rec.tls_ms = r(h.tls_ms);
            rec.first_byte_ms = r(h.first_byte_ms);
            rec.last_byte_ms = r(h.last_byte_ms);
            rec.total_ms = r(h.total_ms);
            rec.http_status = h.status;
            rec.bytes = h.bytes;
            rec.http_version = h.http_version.clone();
            rec.tls_version = h.tls_version.clone();
        }
        if let Some(x) = &d.relay {
            rec.leg_src_relay_rtt_ms = r(x.leg_src_relay_rtt_ms);
            rec.leg_relay_dst_rtt_ms = r(x.leg_relay_dst_rtt_ms);
            rec.relay_dwell_ms = r(x.relay_dwell_ms);
            rec.direct_rtt_ms = r(x.direct_rtt_ms);
            rec.relay_penalty_ms = r(x.relay_penalty_ms);
        }
    }
}

/// Every probe kind behind one enum: exhaustive dispatch, no boxing.
#[derive(Debug)]
pub enum ProbeRunner {
    /// UDP trains.
    Udp(udp::UdpProbe),
    /// TCP connect.
    Tcp(tcp::TcpProbe),
    /// QUIC handshake + echo train.
    Quic(quic::QuicProbe),
    /// HTTP and HTTPS.
    Http(http::HttpProbe),
}

impl ProbeRunner {
    /// Builds the probe for `spec.protocol`.
    ///
    /// # Errors
    ///
    /// [`ProbeSetupError`] when the spec is unusable (bad CA file, payload too small, ...).
    pub fn new(spec: &ProbeSpec) -> Result<Self, ProbeSetupError> {
        Ok(match spec.protocol {
            Protocol::Udp => ProbeRunner::Udp(udp::UdpProbe::new(spec)?),
            Protocol::Tcp => ProbeRunner::Tcp(tcp::TcpProbe::new(spec)?),
            Protocol::Quic => ProbeRunner::Quic(quic::QuicProbe::new(spec)?),
            Protocol::Http | Protocol::Https => ProbeRunner::Http(http::HttpProbe::new(spec)?),
        })
    }

    /// Takes one sample (or train) of `target`. Never fails: failures are in the outcome.
    pub async fn run_once(&self, target: &Target) -> Measurement {
        match self {
            ProbeRunner::Udp(p) => p.run_once(target).await,
            ProbeRunner::Tcp(p) => p.run_once(target).await,
            ProbeRunner::Quic(p) => p.run_once(target).await,
            ProbeRunner::Http(p) => p.run_once(target).await,
        }
    }
}

/// Classifies an I/O error from connect/send/recv into a record error kind.
pub fn classify_io(e: &std::io::Error) -> ErrorKind {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => ErrorKind::Refused,
        K::TimedOut => ErrorKind::Timeout,
        K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe | K::UnexpectedEof => {
            ErrorKind::Reset
        }
        K::HostUnreachable | K::NetworkUnreachable | K::AddrNotAvailable => ErrorKind::Unreachable,
        _ => match e.raw_os_error() {
            Some(libc::EHOSTUNREACH | libc::ENETUNREACH) => ErrorKind::Unreachable,
            _ => ErrorKind::Local,
        },
    }
}

/// Resolves `host:port` with the system resolver, timing it. DNS failures become
/// [`ErrorKind::Dns`].
pub async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, (ErrorKind, String)> {
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    match tokio::net::lookup_host((host, port)).await {
        Ok(it) => {
            let v: Vec<_> = it.collect();
            if v.is_empty() {
                Err((ErrorKind::Dns, format!("{host}: no addresses")))
            } else {
                Ok(v)
            }
        }
        Err(e) => Err((ErrorKind::Dns, format!("{host}: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_definition() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 50.0), Some(50.0));
        assert_eq!(nearest_rank(&v, 99.0), Some(99.0));
        assert_eq!(nearest_rank(&[3.0], 99.0), Some(3.0));
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0, 4.0], 50.0), Some(2.0));
        assert_eq!(nearest_rank(&[], 50.0), None);
    }

    #[test]
    fn train_fills_record_with_loss_noted() {
        let m = Measurement {
            started: SystemTime::UNIX_EPOCH,
            outcome: Outcome::Ok,
            data: Data {
                train: Some(TrainStats {
                    sent: 4,
                    samples: 3,
                    rtts_ms: vec![3.0, 1.0, 2.0],
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let mut rec = Record::default();
        m.fill(&mut rec);
        assert!(rec.ok);
        assert_eq!(
            (rec.sent, rec.samples, rec.lost),
            (Some(4), Some(3), Some(1))
        );
        assert_eq!(
            (rec.rtt_min_ms, rec.rtt_p50_ms, rec.rtt_max_ms, rec.rtt_ms),
            (Some(1.0), Some(2.0), Some(3.0), Some(2.0))
        );
        assert_eq!(rec.error_kind, Some(ErrorKind::Loss));
    }

    #[test]
    fn empty_train_has_null_percentiles() {
        let m = Measurement {
            started: SystemTime::UNIX_EPOCH,
            outcome: Outcome::failed(ErrorKind::Timeout, "no replies"),
            data: Data {
                train: Some(TrainStats {
                    sent: 5,
                    ..Default::default()
                }),
                ..Default::default()
            },
        };
        let mut rec = Record::default();
        m.fill(&mut rec);
        assert!(!rec.ok);
        assert_eq!(
            (rec.lost, rec.rtt_p50_ms, rec.error_kind),
            (Some(5), None, Some(ErrorKind::Timeout))
        );
    }

    #[test]
    fn key_ids_derive_from_secret() {
        assert_eq!(Key::from_secret("a"), Key::from_secret("a"));
        assert_ne!(Key::from_secret("a").id, Key::from_secret("b").id);
        assert!(!format!("{:?}", Key::from_secret("hunter2")).contains("hunter2"));
    }
}
