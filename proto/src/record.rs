//! The measurement record, schema version 1 (DESIGN §5).
//!
//! One record per measurement: one sample of an HTTP/TCP/QUIC-handshake target, or one train of a
//! UDP/QUIC/relay target — and, from servers, one record per interval, source and outcome
//! (`kind` = `serve` for a responder — UDP, TCP, QUIC, HTTP, HTTPS — and `relay_serve` for a
//! relay: answered, relayed or dropped by reason; see the agent's `respond::tally`). The server
//! fields, then `send_lag_ms`/`lag_suspect`, then `tcp_time_source`, then the load fields
//! (`kind` = `load`, `load_step` … `lat_hist_counts`, issue 15) were added to schema
//! version 1 as nullable columns at the end of the table: older records read them as null.
//! Serialized as one JSON object per line, snake_case keys, `null` for absent values, keys
//! in the order of [`FIELDS`]. The same lines go to the file sink and (packed)
//! to Firehose; Athena reads them with the JSON SerDe using DDL generated from [`FIELDS`]
//! ([`athena_columns`]).
//!
//! Times are milliseconds as `f64` (microsecond resolution is kept). `ts` is the wall-clock start
//! of the sample or train, RFC 3339 UTC with microseconds and `Z`.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Version written in `schema_version`. Bump on any incompatible change to [`Record`].
pub const SCHEMA_VERSION: u32 = 1;

/// What a record measured.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Point to point.
    Probe,
    /// Through a relay agent.
    Relay,
    /// A UDP reflector's per-source counts for one interval (written by the server).
    Serve,
    /// A relay's per-source counts for one interval (written by the relay).
    RelayServe,
    /// One second of a load job on one agent (issue 15): rates, status classes, errors and
    /// latency from the intended send time.
    Load,
}

/// Measurement protocol.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, Ord, PartialEq, PartialOrd, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// UDP train to a reflector.
    Udp,
    /// TCP connect time.
    Tcp,
    /// QUIC handshake and datagram echo train.
    Quic,
    /// HTTP phases.
    Http,
    /// HTTPS phases.
    Https,
}

impl Protocol {
    /// Lower-case name as in URLs and records.
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
            Protocol::Quic => "quic",
            Protocol::Http => "http",
            Protocol::Https => "https",
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the agent was being controlled when it took the measurement (DESIGN §3, fail-static).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ControlMode {
    /// `agent probe`: a fixed job set from the command line.
    Standalone,
    /// Connected to its controller.
    Connected,
    /// Controller unreachable, running the last job set within its lease.
    Static,
    /// Controller unreachable and the lease expired.
    Degraded,
}

/// Why a measurement failed. A fixed list so SQL can group by it.
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Name resolution failed.
    Dns,
    /// Connection refused (TCP RST or ICMP port unreachable).
    Refused,
    /// No answer within the timeout.
    Timeout,
    /// TLS handshake or certificate failure.
    Tls,
    /// HTTP protocol error or a status the job treats as failure.
    Http,
    /// The peer refused our credentials (wrong key, missing grant).
    Auth,
    /// A local problem: socket, resource or configuration on this agent.
    Local,
    /// Connection reset or closed mid-exchange.
    Reset,
    /// Network or host unreachable.
    Unreachable,
    /// The peer answered with something that is not the protocol.
    Protocol,
    /// Some packets of a train were lost (the train still has samples).
    Loss,
}

impl ErrorKind {
    /// snake_case name as written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Dns => "dns",
            ErrorKind::Refused => "refused",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Tls => "tls",
            ErrorKind::Http => "http",
            ErrorKind::Auth => "auth",
            ErrorKind::Local => "local",
            ErrorKind::Reset => "reset",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::Protocol => "protocol",
            ErrorKind::Loss => "loss",
        }
    }
}

/// Where a record's `tcp_ms` comes from (`tcp_time_source`).
#[derive(Clone, Copy, Debug, Deserialize, Eq, Hash, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TcpTimeSource {
    /// The kernel's round-trip sample of the handshake (`TCP_INFO` `tcpi_rtt` right after
    /// connect: SYN sent → SYN-ACK processed, in microseconds); free of the agent's scheduling.
    Kernel,
    /// The agent's process clock around the connect (start of the first attempt → connected as
    /// seen by the agent): includes the runtime's wake-up. Used where the kernel gives no
    /// figure for the whole handshake (non-Linux, a retransmitted SYN, an earlier address that
    /// failed).
    User,
}

impl TcpTimeSource {
    /// snake_case name as written in records.
    pub fn as_str(self) -> &'static str {
        match self {
            TcpTimeSource::Kernel => "kernel",
            TcpTimeSource::User => "user",
        }
    }
}

/// One measurement. Field order is the column order of [`FIELDS`].
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    // --- identity and context ---
    /// UUID v7, set when measured (never by a sink); deduplication key.
    pub record_id: String,
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Sample or train start, RFC 3339 UTC with microseconds and `Z`.
    pub ts: String,
    /// Job that produced it (`standalone` for `agent probe`).
    pub job_id: String,
    /// `probe` or `relay`.
    pub kind: Option<Kind>,
    /// Protocol measured.
    pub protocol: Option<Protocol>,
    /// Measuring agent id.
    pub src_agent: Option<String>,
    /// Measuring agent region.
    pub src_region: Option<String>,
    /// Measuring agent availability zone.
    pub src_az: Option<String>,
    /// Measuring agent location label (perftest's `REP_LOCATION`).
    pub src_location: Option<String>,
    /// Target agent id (null for external targets).
    pub dst_agent: Option<String>,
    /// Target agent region.
    pub dst_region: Option<String>,
    /// Target agent availability zone.
    pub dst_az: Option<String>,
    /// Target agent location label.
    pub dst_location: Option<String>,
    /// What was probed: URL or proto://host:port.
    pub target: String,
    /// Relay agent id (relay records).
    pub relay_agent: Option<String>,
    /// Relay agent region.
    pub relay_region: Option<String>,
    /// Relay agent availability zone.
    pub relay_az: Option<String>,
    /// Relay agent location label.
    pub relay_location: Option<String>,
    /// Sample/train number for this (job, target), from 0.
    pub seq: u64,
    /// How the agent was controlled.
    pub control_mode: Option<ControlMode>,
    /// How late the agent started this sample against its schedule.
    pub sched_lag_ms: Option<f64>,
    /// Agent version.
    pub agent_version: String,
    // --- outcome ---
    /// Whether the measurement succeeded (trains: at least one packet answered).
    pub ok: bool,
    /// Failure class, null when ok and nothing was lost.
    pub error_kind: Option<ErrorKind>,
    /// Failure detail, free text.
    pub error: Option<String>,
    // --- trains (udp, quic, relay) ---
    /// Packets sent in the train.
    pub sent: Option<u32>,
    /// Distinct sequences answered within the timeout.
    pub samples: Option<u32>,
    /// sent − samples.
    pub lost: Option<u32>,
    /// Replies for a sequence already answered.
    pub duplicates: Option<u32>,
    /// Replies arriving after a reply to a later sequence.
    pub reordered: Option<u32>,
    /// Replies arriving after the timeout (not counted in samples).
    pub late: Option<u32>,
    /// Mean RTT (train) or the sample's RTT (tcp: = tcp_ms).
    pub rtt_ms: Option<f64>,
    /// Minimum per-packet RTT.
    pub rtt_min_ms: Option<f64>,
    /// Median per-packet RTT (nearest rank).
    pub rtt_p50_ms: Option<f64>,
    /// 99th percentile per-packet RTT (nearest rank).
    pub rtt_p99_ms: Option<f64>,
    /// Maximum per-packet RTT.
    pub rtt_max_ms: Option<f64>,
    /// Every per-packet RTT, in sequence order, for exact percentiles across trains.
    pub rtt_samples_ms: Option<Vec<f64>>,
    /// RFC 3550 interarrival jitter over forward transit, restarted per train.
    pub jitter_ms: Option<f64>,
    /// Estimated remote clock minus local clock, from the lowest-RTT packet.
    pub clock_offset_ms: Option<f64>,
    /// Forward one-way delay (only when both clocks report an error bound).
    pub owd_fwd_ms: Option<f64>,
    /// Reverse one-way delay (only when both clocks report an error bound).
    pub owd_rev_ms: Option<f64>,
    /// Sum of both ends' clock error bounds, bounding the one-way delays' error.
    pub clock_error_ms: Option<f64>,
    // --- HTTP (perftest's columns) ---
    /// DNS resolution time.
    pub dns_ms: Option<f64>,
    /// TCP handshake time: the kernel's SYN → SYN-ACK round trip, or the process clock from
    /// connect start to connected; `tcp_time_source` says which.
    pub tcp_ms: Option<f64>,
    /// Connected → TLS handshake done.
    pub tls_ms: Option<f64>,
    /// Request fully written → first response byte read.
    pub first_byte_ms: Option<f64>,
    /// First → last body byte.
    pub last_byte_ms: Option<f64>,
    /// Connect start → last byte.
    pub total_ms: Option<f64>,
    /// HTTP status (null on connection failure).
    pub http_status: Option<u16>,
    /// Body size in bytes (serve/relay_serve: bytes of the row's packets, of the QUIC datagrams
    /// echoed, or of the HTTP(S) response bodies).
    pub bytes: Option<u64>,
    /// Address actually connected to (ip:port).
    pub remote_addr: Option<String>,
    /// `HTTP/1.1`, `HTTP/2`.
    pub http_version: Option<String>,
    /// `TLSv1.3`, `TLSv1.2`.
    pub tls_version: Option<String>,
    // --- QUIC ---
    /// QUIC handshake time.
    pub handshake_ms: Option<f64>,
    // --- relay ---
    /// (a4−a1) − (r4−r1): A ↔ R round trip, free of clock offset.
    pub leg_src_relay_rtt_ms: Option<f64>,
    /// (r3−r2) − (b2−b1): R ↔ B round trip.
    pub leg_relay_dst_rtt_ms: Option<f64>,
    /// (r2−r1) + (r4−r3): time spent inside the relay.
    pub relay_dwell_ms: Option<f64>,
    /// RTT of the interleaved direct A ↔ B probe.
    pub direct_rtt_ms: Option<f64>,
    /// Median of per-pair differences (relayed − direct).
    pub relay_penalty_ms: Option<f64>,

    // --- server records (kind = serve | relay_serve) ---
    /// Length of the counting interval that starts at `ts`, in milliseconds.
    pub interval_ms: Option<f64>,
    /// Source IP address the row's packets came from (`null`: the overflow bucket).
    pub src_addr: Option<String>,
    /// Id of the wire key whose HMAC the row's packets passed (hex, `0x…`); `null` when they
    /// were dropped before authentication.
    pub key_id: Option<String>,
    /// Packets answered (serve), forwarded (relay_serve) or dropped (`drop_reason` set); for
    /// the tcp/quic/http/https responders' serve rows, connections accepted, handshakes
    /// completed or requests answered (or, with `drop_reason`, refused or failed).
    pub packets: Option<u64>,
    /// relay_serve: the destination's replies relayed back to the source; quic serve: the
    /// datagrams echoed.
    pub returned: Option<u64>,
    /// Why the row's packets were dropped (`null`: answered or relayed).
    pub drop_reason: Option<String>,

    // --- the agent's own scheduling (issue 16, item 5) ---
    /// Trains: the worst lateness of a packet's send against its paced due time, ms.
    pub send_lag_ms: Option<f64>,
    /// Whether the agent's own lateness (the worse of `sched_lag_ms` and `send_lag_ms`)
    /// exceeded [`LAG_SUSPECT_FLOOR_MS`] and [`LAG_SUSPECT_FRACTION`] of the measured RTT: the
    /// timings may carry the agent's load rather than the network's. `None` on server records.
    pub lag_suspect: Option<bool>,

    // --- the TCP handshake figure's source (issue 16, item 1) ---
    /// Where `tcp_ms` (and, for tcp, `rtt_ms`) comes from: the kernel's handshake RTT or the
    /// process clock around the connect; null when there is no `tcp_ms`.
    pub tcp_time_source: Option<TcpTimeSource>,

    // --- load jobs (kind = load, issue 15): one record per agent, job and second ---
    /// Step of the job's schedule at the end of the second, from 0.
    pub load_step: Option<u32>,
    /// Workers (closed model) or open connections (open model) at the end of the second.
    pub load_workers: Option<u32>,
    /// The configured level at the end of the second: workers (closed) or req/s (open).
    pub load_level: Option<f64>,
    /// Requests per second the schedule intended (open model; closed: equal to sent).
    pub intended_rps: Option<f64>,
    /// Responses (any status) per second.
    pub achieved_rps: Option<f64>,
    /// Requests sent in the second.
    pub requests: Option<u64>,
    /// Responses 200–299.
    pub status_2xx: Option<u64>,
    /// Responses 300–399 (redirects are not followed).
    pub status_3xx: Option<u64>,
    /// Responses 400–499 except 429.
    pub status_4xx: Option<u64>,
    /// 429 Too Many Requests: the target's rate limit, not a success.
    pub status_429: Option<u64>,
    /// Responses 500–599.
    pub status_5xx: Option<u64>,
    /// Responses with any other status, or a status the request's `expect_status` did not
    /// expect (counted here instead of in its class).
    pub status_other: Option<u64>,
    /// Requests that failed to connect (refused, unreachable, no address).
    pub errors_connect: Option<u64>,
    /// Requests with no complete response within the timeout.
    pub errors_timeout: Option<u64>,
    /// Requests whose TLS handshake failed.
    pub errors_tls: Option<u64>,
    /// Requests whose connection failed mid-request.
    pub errors_io: Option<u64>,
    /// Median latency from the intended send time (coordinated-omission corrected), ms.
    pub lat_p50_ms: Option<f64>,
    /// 90th percentile, corrected.
    pub lat_p90_ms: Option<f64>,
    /// 99th percentile, corrected.
    pub lat_p99_ms: Option<f64>,
    /// 99.9th percentile, corrected.
    pub lat_p999_ms: Option<f64>,
    /// Largest latency, corrected.
    pub lat_max_ms: Option<f64>,
    /// Median latency from the actual send (uncorrected, as wrk without -R reports it), ms.
    pub uncorrected_p50_ms: Option<f64>,
    /// 99th percentile, uncorrected.
    pub uncorrected_p99_ms: Option<f64>,
    /// Largest latency, uncorrected.
    pub uncorrected_max_ms: Option<f64>,
    /// The corrected latency histogram: each non-empty bucket's representative value (ms,
    /// ascending; within 0.5 % of every value in it). With [`Record::lat_hist_counts`] it merges
    /// across agents and seconds in SQL (sum counts per bucket value).
    pub lat_hist_ms: Option<Vec<f64>>,
    /// The count of each bucket of [`Record::lat_hist_ms`], in the same order.
    pub lat_hist_counts: Option<Vec<f64>>,
}

/// Lateness below this never makes a record [`Record::lag_suspect`]: tokio's timer wakes up to
/// about 1 ms late by design, and a late send moves t1 with it without touching the RTT.
pub const LAG_SUSPECT_FLOOR_MS: f64 = 2.0;

/// Lateness above this fraction of the measured RTT (and above [`LAG_SUSPECT_FLOOR_MS`]) makes
/// a record [`Record::lag_suspect`].
pub const LAG_SUSPECT_FRACTION: f64 = 0.5;

/// Whether an agent that was `lag_ms` late while measuring `rtt_ms` (`None`: nothing measured)
/// should flag the record as [`Record::lag_suspect`].
pub fn lag_suspect(lag_ms: f64, rtt_ms: Option<f64>) -> bool {
    lag_ms > LAG_SUSPECT_FLOOR_MS && rtt_ms.is_none_or(|r| lag_ms > LAG_SUSPECT_FRACTION * r)
}

/// Column type of a record field, as Athena (Hive DDL) names it.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum FieldType {
    /// `string`
    String,
    /// `int`
    Int,
    /// `bigint`
    BigInt,
    /// `double`
    Double,
    /// `boolean`
    Boolean,
    /// `array<double>`
    DoubleArray,
}

impl FieldType {
    /// The Athena/Hive DDL type name.
    pub fn athena(self) -> &'static str {
        match self {
            FieldType::String => "string",
            FieldType::Int => "int",
            FieldType::BigInt => "bigint",
            FieldType::Double => "double",
            FieldType::Boolean => "boolean",
            FieldType::DoubleArray => "array<double>",
        }
    }
}

/// One row of the field table.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// JSON key and column name.
    pub name: &'static str,
    /// Column type.
    pub ty: FieldType,
    /// What it means (README's table and the Glue column comment).
    pub meaning: &'static str,
}

macro_rules! fields {
    ($( $name:ident : $ty:ident = $meaning:literal ),* $(,)?) => {
        /// The machine-readable field table: every [`Record`] field in order, with type and meaning.
        pub const FIELDS: &[Field] = &[ $( Field { name: stringify!($name), ty: FieldType::$ty, meaning: $meaning } ),* ];
    };
}

fields! {
    record_id: String = "UUID v7 set when measured; deduplication key",
    schema_version: Int = "record schema version (1)",
    ts: String = "sample or train start, RFC 3339 UTC with microseconds",
    job_id: String = "job that produced the record ('standalone' for agent probe)",
    kind: String = "probe, relay, serve (reflector counts), relay_serve (relay counts) or load (one second of a load job)",
    protocol: String = "udp, tcp, quic, http or https",
    src_agent: String = "measuring agent id",
    src_region: String = "measuring agent region",
    src_az: String = "measuring agent availability zone",
    src_location: String = "measuring agent location label",
    dst_agent: String = "target agent id (null for external targets)",
    dst_region: String = "target agent region",
    dst_az: String = "target agent availability zone",
    dst_location: String = "target agent location label",
    target: String = "URL or proto://host:port probed",
    relay_agent: String = "relay agent id (relay records)",
    relay_region: String = "relay agent region",
    relay_az: String = "relay agent availability zone",
    relay_location: String = "relay agent location label",
    seq: BigInt = "sample or train number for this job and target, from 0",
    control_mode: String = "standalone, connected, static or degraded",
    sched_lag_ms: Double = "how late the agent started this sample against its schedule",
    agent_version: String = "agent version",
    ok: Boolean = "measurement succeeded (trains: at least one reply)",
    error_kind: String = "dns, refused, timeout, tls, http, auth, local, reset, unreachable, protocol, loss",
    error: String = "failure detail",
    sent: Int = "packets sent in the train",
    samples: Int = "distinct sequences answered within the timeout",
    lost: Int = "sent minus samples",
    duplicates: Int = "replies to an already answered sequence",
    reordered: Int = "replies arriving after a reply to a later sequence",
    late: Int = "replies after the timeout",
    rtt_ms: Double = "mean per-packet RTT (tcp: connect time)",
    rtt_min_ms: Double = "minimum per-packet RTT",
    rtt_p50_ms: Double = "median per-packet RTT, nearest rank",
    rtt_p99_ms: Double = "99th percentile per-packet RTT, nearest rank",
    rtt_max_ms: Double = "maximum per-packet RTT",
    rtt_samples_ms: DoubleArray = "every per-packet RTT of the train",
    jitter_ms: Double = "RFC 3550 jitter over forward transit, per train",
    clock_offset_ms: Double = "remote minus local clock, from the lowest-RTT packet",
    owd_fwd_ms: Double = "forward one-way delay (only with clock error bounds)",
    owd_rev_ms: Double = "reverse one-way delay (only with clock error bounds)",
    clock_error_ms: Double = "sum of both clocks' error bounds",
    dns_ms: Double = "DNS resolution time",
    tcp_ms: Double = "TCP handshake: kernel SYN to SYN-ACK RTT, or connect start to connected (see tcp_time_source)",
    tls_ms: Double = "connected to TLS handshake done",
    first_byte_ms: Double = "request written to first response byte",
    last_byte_ms: Double = "first to last body byte",
    total_ms: Double = "connect start to last byte",
    http_status: Int = "HTTP status (null on connection failure)",
    bytes: BigInt = "response body size (serve/relay_serve: bytes of the row's packets, datagrams echoed or response bodies)",
    remote_addr: String = "address connected to",
    http_version: String = "HTTP version",
    tls_version: String = "TLS version",
    handshake_ms: Double = "QUIC handshake time",
    leg_src_relay_rtt_ms: Double = "source to relay round trip, (a4-a1)-(r4-r1)",
    leg_relay_dst_rtt_ms: Double = "relay to destination round trip, (r3-r2)-(b2-b1)",
    relay_dwell_ms: Double = "time inside the relay, (r2-r1)+(r4-r3)",
    direct_rtt_ms: Double = "RTT of the interleaved direct probe",
    relay_penalty_ms: Double = "median of per-pair (relayed - direct)",
    interval_ms: Double = "serve/relay_serve: length of the counting interval starting at ts",
    src_addr: String = "serve/relay_serve: source IP address (null: the overflow bucket of sources beyond the per-interval limit)",
    key_id: String = "serve/relay_serve: wire key id the packets authenticated with (null: dropped before authentication)",
    packets: BigInt = "serve/relay_serve: packets answered, forwarded or (with drop_reason) dropped; tcp/quic/http(s) serve: connections accepted, handshakes completed, requests answered or (with drop_reason) refused/failed",
    returned: BigInt = "relay_serve: replies relayed back to the source; quic serve: datagrams echoed",
    drop_reason: String = "serve/relay_serve: why the packets were dropped (null: answered or relayed)",
    send_lag_ms: Double = "trains: worst lateness of a packet's send against its paced due time",
    lag_suspect: Boolean = "the agent's own lateness (worse of sched_lag_ms and send_lag_ms) exceeded 2 ms and half the measured RTT: timings may carry the agent's load",
    tcp_time_source: String = "where tcp_ms comes from: kernel (TCP_INFO handshake RTT) or user (process clock around connect)",
    load_step: Int = "load: step of the job's schedule at the end of the second, from 0",
    load_workers: Int = "load: workers (closed model) or open connections (open model) at the end of the second",
    load_level: Double = "load: configured level, workers (closed) or req/s (open)",
    intended_rps: Double = "load: requests per second the schedule intended (closed: equal to sent)",
    achieved_rps: Double = "load: responses (any status) per second",
    requests: BigInt = "load: requests sent in the second",
    status_2xx: BigInt = "load: responses 200-299",
    status_3xx: BigInt = "load: responses 300-399 (redirects not followed)",
    status_4xx: BigInt = "load: responses 400-499 except 429",
    status_429: BigInt = "load: 429 Too Many Requests, the target's rate limit (not a success)",
    status_5xx: BigInt = "load: responses 500-599",
    status_other: BigInt = "load: other statuses, or a status the request's expect_status did not expect",
    errors_connect: BigInt = "load: requests that failed to connect",
    errors_timeout: BigInt = "load: requests with no complete response within the timeout",
    errors_tls: BigInt = "load: requests whose TLS handshake failed",
    errors_io: BigInt = "load: requests whose connection failed mid-request",
    lat_p50_ms: Double = "load: median latency from the intended send time (coordinated-omission corrected)",
    lat_p90_ms: Double = "load: 90th percentile latency, corrected",
    lat_p99_ms: Double = "load: 99th percentile latency, corrected",
    lat_p999_ms: Double = "load: 99.9th percentile latency, corrected",
    lat_max_ms: Double = "load: largest latency, corrected",
    uncorrected_p50_ms: Double = "load: median latency from the actual send (uncorrected)",
    uncorrected_p99_ms: Double = "load: 99th percentile latency, uncorrected",
    uncorrected_max_ms: Double = "load: largest latency, uncorrected",
    lat_hist_ms: DoubleArray = "load: corrected latency histogram, each non-empty bucket's value (ms, ascending, within 0.5 percent)",
    lat_hist_counts: DoubleArray = "load: count of each bucket of lat_hist_ms, same order (sum per bucket value to merge)",
}

/// Athena column list (`name type COMMENT '...'`), one per line, generated from [`FIELDS`].
pub fn athena_columns() -> String {
    FIELDS
        .iter()
        .map(|f| {
            format!(
                "  `{}` {} COMMENT '{}'",
                f.name,
                f.ty.athena(),
                f.meaning.replace('\'', "''")
            )
        })
        .collect::<Vec<_>>()
        .join(",\n")
}

/// Formats a wall-clock time as `ts` wants it: RFC 3339 UTC, microseconds, `Z`.
pub fn format_ts(t: SystemTime) -> String {
    humantime::format_rfc3339_micros(t).to_string()
}

/// A new record id: UUID v7 (time-ordered) from the given wall-clock time.
pub fn new_record_id(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let ts = uuid::Timestamp::from_unix(uuid::NoContext, d.as_secs(), d.subsec_nanos());
    uuid::Uuid::new_v7(ts).to_string()
}

impl Record {
    /// A record with identity fields set and everything measured left null.
    pub fn new(started: SystemTime, job_id: &str, target: &str, agent_version: &str) -> Self {
        Record {
            record_id: new_record_id(started),
            schema_version: SCHEMA_VERSION,
            ts: format_ts(started),
            job_id: job_id.to_string(),
            target: target.to_string(),
            agent_version: agent_version.to_string(),
            ..Record::default()
        }
    }

    /// The record as one JSON line (no trailing newline).
    pub fn to_json_line(&self) -> String {
        // Serializing a struct of plain fields into a String cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record with every optional field set, so every key appears with a non-null value.
    fn full() -> Record {
        let s = Some("x".to_string());
        let d = Some(1.5);
        Record {
            kind: Some(Kind::Relay),
            protocol: Some(Protocol::Udp),
            src_agent: s.clone(),
            src_region: s.clone(),
            src_az: s.clone(),
            src_location: s.clone(),
            dst_agent: s.clone(),
            dst_region: s.clone(),
            dst_az: s.clone(),
            dst_location: s.clone(),
            relay_agent: s.clone(),
            relay_region: s.clone(),
            relay_az: s.clone(),
            relay_location: s.clone(),
            control_mode: Some(ControlMode::Connected),
            sched_lag_ms: d,
            error_kind: Some(ErrorKind::Loss),
            error: s.clone(),
            sent: Some(1),
            samples: Some(1),
            lost: Some(0),
            duplicates: Some(0),
            reordered: Some(0),
            late: Some(0),
            rtt_ms: d,
            rtt_min_ms: d,
            rtt_p50_ms: d,
            rtt_p99_ms: d,
            rtt_max_ms: d,
            rtt_samples_ms: Some(vec![1.5]),
            jitter_ms: d,
            clock_offset_ms: d,
            owd_fwd_ms: d,
            owd_rev_ms: d,
            clock_error_ms: d,
            dns_ms: d,
            tcp_ms: d,
            tls_ms: d,
            first_byte_ms: d,
            last_byte_ms: d,
            total_ms: d,
            http_status: Some(200),
            bytes: Some(1),
            remote_addr: s.clone(),
            http_version: s.clone(),
            tls_version: s.clone(),
            handshake_ms: d,
            leg_src_relay_rtt_ms: d,
            leg_relay_dst_rtt_ms: d,
            relay_dwell_ms: d,
            direct_rtt_ms: d,
            relay_penalty_ms: d,
            interval_ms: d,
            src_addr: s.clone(),
            key_id: s.clone(),
            packets: Some(1),
            returned: Some(1),
            drop_reason: s.clone(),
            send_lag_ms: d,
            lag_suspect: Some(true),
            tcp_time_source: Some(TcpTimeSource::Kernel),
            load_step: Some(1),
            load_workers: Some(1),
            load_level: d,
            intended_rps: d,
            achieved_rps: d,
            requests: Some(1),
            status_2xx: Some(1),
            status_3xx: Some(1),
            status_4xx: Some(1),
            status_429: Some(1),
            status_5xx: Some(1),
            status_other: Some(1),
            errors_connect: Some(1),
            errors_timeout: Some(1),
            errors_tls: Some(1),
            errors_io: Some(1),
            lat_p50_ms: d,
            lat_p90_ms: d,
            lat_p99_ms: d,
            lat_p999_ms: d,
            lat_max_ms: d,
            uncorrected_p50_ms: d,
            uncorrected_p99_ms: d,
            uncorrected_max_ms: d,
            lat_hist_ms: Some(vec![1.5]),
            lat_hist_counts: Some(vec![1.0]),
            ..Record::new(SystemTime::UNIX_EPOCH, "j", "udp://h:1", "0.1.0")
        }
    }

    #[test]
    fn lag_is_suspect_above_the_floor_and_half_the_rtt() {
        // Below the floor, never, however small the RTT (tokio's timer is ~1 ms late by design).
        assert!(!lag_suspect(1.9, Some(0.01)));
        assert!(!lag_suspect(1.9, None));
        // Above the floor: when it is over half the RTT, or nothing was measured.
        assert!(lag_suspect(2.5, Some(0.3)));
        assert!(lag_suspect(2.5, None));
        assert!(!lag_suspect(2.5, Some(70.0)));
        assert!(lag_suspect(40.0, Some(70.0)));
        assert!(
            !lag_suspect(35.0, Some(70.0)),
            "exactly half is not over half"
        );
    }

    fn json_type_matches(ty: FieldType, v: &serde_json::Value) -> bool {
        match ty {
            FieldType::String => v.is_string(),
            FieldType::Int | FieldType::BigInt => v.is_u64() || v.is_i64(),
            FieldType::Double => v.is_f64(),
            FieldType::Boolean => v.is_boolean(),
            FieldType::DoubleArray => v.as_array().is_some_and(|a| a.iter().all(|x| x.is_f64())),
        }
    }

    #[test]
    fn field_table_and_struct_agree_in_names_order_and_types() {
        let line = full().to_json_line();
        // serde_json keeps struct order; parse keys in order with a streaming look at the object.
        let v: serde_json::Value = serde_json::from_str(&line).expect("own output parses");
        let obj = v.as_object().expect("record is an object");
        let table: Vec<&str> = FIELDS.iter().map(|f| f.name).collect();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        let mut sorted_table = table.clone();
        keys.sort_unstable();
        sorted_table.sort_unstable();
        assert_eq!(keys, sorted_table, "field table and Record fields differ");
        // Order: every key appears in the line in table order.
        let mut pos = 0;
        for f in FIELDS {
            let needle = format!("\"{}\":", f.name);
            let at = line[pos..]
                .find(&needle)
                .unwrap_or_else(|| panic!("{} out of order", f.name));
            pos += at + needle.len();
            assert!(
                json_type_matches(f.ty, &obj[f.name]),
                "{} is {:?}, table says {:?}",
                f.name,
                obj[f.name],
                f.ty
            );
        }
        let mut seen = std::collections::HashSet::new();
        assert!(
            FIELDS.iter().all(|f| seen.insert(f.name)),
            "duplicate field in table"
        );
    }

    #[test]
    fn absent_values_serialize_as_null_and_round_trip() {
        let r = Record::new(SystemTime::UNIX_EPOCH, "j", "tcp://h:1", "0.1.0");
        let line = r.to_json_line();
        assert!(line.contains("\"rtt_ms\":null"), "{line}");
        let back: Record = serde_json::from_str(&line).expect("round trip");
        assert_eq!(back, r);
        let f = full();
        let back: Record = serde_json::from_str(&f.to_json_line()).expect("round trip");
        assert_eq!(back, f);
    }

    #[test]
    fn ts_is_rfc3339_utc_micros() {
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_micros(1_700_000_000_123_456);
        assert_eq!(format_ts(t), "2023-11-14T22:13:20.123456Z");
    }

    #[test]
    fn record_ids_are_v7_and_distinct() {
        let now = SystemTime::now();
        let a = new_record_id(now);
        let b = new_record_id(now);
        assert_ne!(a, b);
        assert_eq!(
            uuid::Uuid::parse_str(&a).expect("uuid").get_version_num(),
            7
        );
    }

    #[test]
    fn athena_columns_cover_the_table() {
        let ddl = athena_columns();
        assert_eq!(ddl.lines().count(), FIELDS.len());
        assert!(ddl.contains("`rtt_samples_ms` array<double>"));
    }
}
