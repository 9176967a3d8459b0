//! Standard-output sink: perftest's table, or JSON lines.
//!
//! # Table format
//!
//! For HTTP(S) targets the output is perftest's, byte for byte: a tab-separated header
//!
//! ```text
//! # timestamp<TAB>DNS<TAB>TCP<TAB>TLS<TAB>First<TAB>LastB<TAB>Total<TAB>HTTP<TAB>Size<TAB>From_Location<TAB>Remote_Addr<TAB>proto://uri
//! ```
//!
//! then one numbered line per sample (`N EPOCH` then the columns; HTTP 500 for a failed
//! connection), and when the target's schedule ends a blank line, `Recorded N samples in Ts,
//! average values:`, the header again and the averages line. Other protocols get the same shape
//! with their own columns (see [`columns`]). Several targets run concurrently, so their sample
//! lines interleave (the last column names the target) and each target's summary block is printed
//! when it completes — as perftest does for multiple endpoints. Failure details go to stderr
//! through the log, keeping stdout machine-readable.

use std::collections::HashMap;
use std::io::Write;

use meshlat_proto::record::{Protocol, Record};

use super::{SharedRecord, Sink, SinkError};
use crate::cli::Format;

/// The stdout sink.
#[derive(Debug)]
pub struct StdoutSink {
    format: Format,
    tables: HashMap<(String, String), TableState>,
    out: Vec<u8>,
}

#[derive(Debug, Default)]
struct TableState {
    protocol: Option<Protocol>,
    n: u64,
    first_ts_us: Option<i64>,
    last_ts_us: i64,
    ok: u64,
    sums: Vec<f64>,
    done: bool,
}

/// Column headers for a protocol's table (after `# timestamp`).
pub fn columns(p: Protocol) -> &'static str {
    match p {
        Protocol::Http | Protocol::Https => {
            "DNS\tTCP\tTLS\tFirst\tLastB\tTotal\tHTTP\tSize\tFrom_Location\tRemote_Addr\tproto://uri"
        }
        Protocol::Udp => {
            "Sent\tRecv\tLost\tMin\tP50\tAvg\tP99\tMax\tJitter\tFrom_Location\tRemote_Addr\tproto://uri"
        }
        Protocol::Quic => {
            "Handshake\tSent\tRecv\tLost\tMin\tP50\tAvg\tP99\tMax\tFrom_Location\tRemote_Addr\tproto://uri"
        }
        Protocol::Tcp => "TCP\tFrom_Location\tRemote_Addr\tproto://uri",
    }
}

fn ms(v: Option<f64>) -> String {
    format!("{:.3}", v.unwrap_or(0.0))
}

/// `ip` of an `ip:port` (perftest prints the address without the port).
fn remote_ip(r: &Record) -> String {
    match r
        .remote_addr
        .as_deref()
        .and_then(|a| a.parse::<std::net::SocketAddr>().ok())
    {
        Some(sa) => sa.ip().to_string(),
        None => r.remote_addr.clone().unwrap_or_default(),
    }
}

fn ts_us(r: &Record) -> i64 {
    humantime::parse_rfc3339(&r.ts)
        .ok()
        .and_then(|t| t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_micros() as i64)
}

/// The packet-train values UDP and QUIC records share: sent, samples, lost, then RTT min, p50,
/// mean, p99 and max.
fn train_values(r: &Record) -> [f64; 8] {
    let v = |x: Option<f64>| x.unwrap_or(0.0);
    [
        f64::from(r.sent.unwrap_or(0)),
        f64::from(r.samples.unwrap_or(0)),
        f64::from(r.lost.unwrap_or(0)),
        v(r.rtt_min_ms),
        v(r.rtt_p50_ms),
        v(r.rtt_ms),
        v(r.rtt_p99_ms),
        v(r.rtt_max_ms),
    ]
}

/// The numeric values averaged in the summary line, per protocol.
fn values(r: &Record) -> Vec<f64> {
    let v = |x: Option<f64>| x.unwrap_or(0.0);
    match r.protocol {
        Some(Protocol::Http | Protocol::Https) => vec![
            v(r.dns_ms),
            v(r.tcp_ms),
            v(r.tls_ms),
            v(r.first_byte_ms),
            v(r.last_byte_ms),
            v(r.total_ms),
            r.bytes.unwrap_or(0) as f64,
        ],
        Some(Protocol::Udp) => {
            let mut out = train_values(r).to_vec();
            out.push(v(r.jitter_ms));
            out
        }
        Some(Protocol::Quic) => {
            let mut out = vec![v(r.handshake_ms)];
            out.extend(train_values(r));
            out
        }
        Some(Protocol::Tcp) | None => vec![v(r.tcp_ms)],
    }
}

/// The packet-train columns UDP and QUIC sample lines share (as [`train_values`]).
fn train_columns(r: &Record) -> String {
    format!(
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}",
        r.sent.unwrap_or(0),
        r.samples.unwrap_or(0),
        r.lost.unwrap_or(0),
        ms(r.rtt_min_ms),
        ms(r.rtt_p50_ms),
        ms(r.rtt_ms),
        ms(r.rtt_p99_ms),
        ms(r.rtt_max_ms),
    )
}

/// One sample line (without the leading `N EPOCH`).
fn sample_columns(r: &Record) -> String {
    let from = r.src_location.clone().unwrap_or_default();
    let tail = format!("{from}\t{}\t{}", remote_ip(r), r.target);
    match r.protocol {
        Some(Protocol::Http | Protocol::Https) => format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{}\t{}\t{tail}",
            ms(r.dns_ms),
            ms(r.tcp_ms),
            ms(r.tls_ms),
            ms(r.first_byte_ms),
            ms(r.last_byte_ms),
            ms(r.total_ms),
            // perftest prints 500 when no response was received.
            r.http_status.unwrap_or(500),
            r.bytes.unwrap_or(0),
        ),
        Some(Protocol::Udp) => format!("{}\t{}\t{tail}", train_columns(r), ms(r.jitter_ms)),
        Some(Protocol::Quic) => format!("{}\t{}\t{tail}", ms(r.handshake_ms), train_columns(r)),
        Some(Protocol::Tcp) | None => format!("{}\t{tail}", ms(r.tcp_ms)),
    }
}

impl StdoutSink {
    /// A stdout sink in the given format.
    pub fn new(format: Format) -> Self {
        StdoutSink {
            format,
            tables: HashMap::new(),
            out: Vec::with_capacity(4096),
        }
    }

    /// Formats a record into the pending output (exposed for tests through [`StdoutSink::render`]).
    fn push(&mut self, r: &Record) {
        match self.format {
            Format::Json => {
                self.out.extend_from_slice(r.to_json_line().as_bytes());
                self.out.push(b'\n');
            }
            Format::Table => {
                let st = self
                    .tables
                    .entry((r.job_id.clone(), r.target.clone()))
                    .or_default();
                let p = r.protocol.unwrap_or(Protocol::Tcp);
                if st.protocol.is_none() {
                    st.protocol = Some(p);
                    let _ = writeln!(self.out, "# timestamp\t{}", columns(p));
                }
                st.n += 1;
                let t = ts_us(r);
                st.first_ts_us.get_or_insert(t);
                st.last_ts_us = t;
                if r.ok {
                    st.ok += 1;
                    let v = values(r);
                    if st.sums.len() < v.len() {
                        st.sums.resize(v.len(), 0.0);
                    }
                    for (s, x) in st.sums.iter_mut().zip(v) {
                        *s += x;
                    }
                }
                let _ = writeln!(
                    self.out,
                    "{} {}\t{}",
                    st.n,
                    t / 1_000_000,
                    sample_columns(r)
                );
            }
        }
    }

    fn summary(&mut self, job: &str, target: &str, end_us: i64) {
        let Some(st) = self.tables.get_mut(&(job.to_string(), target.to_string())) else {
            return;
        };
        if st.done {
            return;
        }
        st.done = true;
        let p = st.protocol.unwrap_or(Protocol::Tcp);
        let secs = ((end_us - st.first_ts_us.unwrap_or(end_us)).max(0) as f64 / 1e6).round() as i64;
        let avg: Vec<f64> = st
            .sums
            .iter()
            .map(|s| if st.ok > 0 { s / st.ok as f64 } else { 0.0 })
            .collect();
        let a = |i: usize| format!("{:.3}", avg.get(i).copied().unwrap_or(0.0));
        let cols = match p {
            // perftest: averages, empty HTTP, mean size, empty From_Location, then the URL.
            Protocol::Http | Protocol::Https => format!(
                "{}\t{}\t{}\t{}\t{}\t{}\t\t{:.0}\t\t{target}",
                a(0),
                a(1),
                a(2),
                a(3),
                a(4),
                a(5),
                avg.get(6).copied().unwrap_or(0.0)
            ),
            // Nine averaged train columns, then empty From_Location and Remote_Addr.
            Protocol::Udp | Protocol::Quic => {
                let cols: Vec<String> = (0..9).map(a).collect();
                format!("{}\t\t\t{target}", cols.join("\t"))
            }
            Protocol::Tcp => format!("{}\t\t\t{target}", a(0)),
        };
        let _ = write!(
            self.out,
            "\nRecorded {n} samples in {secs}s, average values:\n# timestamp\t{}\n{n} {secs}s   \t{cols}\n",
            columns(p),
            n = st.n
        );
    }

    /// Renders records then summaries, as the sink would print them (for tests and docs).
    pub fn render(format: Format, records: &[Record], end_us: i64) -> String {
        let mut s = StdoutSink::new(format);
        for r in records {
            s.push(r);
        }
        let keys: Vec<_> = records
            .iter()
            .map(|r| (r.job_id.clone(), r.target.clone()))
            .collect();
        for (j, t) in keys {
            s.summary(&j, &t, end_us);
        }
        String::from_utf8_lossy(&s.out).into_owned()
    }

    fn emit(&mut self) -> Result<(), SinkError> {
        if self.out.is_empty() {
            return Ok(());
        }
        let mut stdout = std::io::stdout().lock();
        let r = stdout.write_all(&self.out).and_then(|()| stdout.flush());
        self.out.clear();
        r.map_err(|source| SinkError::Io {
            context: "writing to stdout".into(),
            source,
        })
    }
}

impl Sink for StdoutSink {
    fn name(&self) -> &'static str {
        "stdout"
    }

    fn batch_config(&self) -> super::batch::BatchConfig {
        // A person is watching: print each record as it comes.
        super::batch::BatchConfig {
            max_items: 1,
            max_age: std::time::Duration::from_millis(100),
        }
    }

    async fn write(&mut self, batch: &[SharedRecord]) -> Result<(), SinkError> {
        for r in batch {
            self.push(r);
        }
        self.emit()
    }

    async fn target_done(&mut self, job_id: &str, target: &str) -> Result<(), SinkError> {
        if self.format == Format::Table {
            let end = self
                .tables
                .get(&(job_id.to_string(), target.to_string()))
                .map_or(0, |s| s.last_ts_us);
            // perftest's "in Ts" spans to the end of the last sample; the last start is what we
            // have, so use the wall clock now when it is later.
            let now = crate::clock::realtime_ns() as i64 / 1000;
            self.summary(job_id, target, end.max(now));
        }
        self.emit()
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        self.emit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn http(i: u64, dns: f64, status: Option<u16>) -> Record {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_554_917_703 + 10 * i);
        let mut r = Record::new(t, "standalone", "https://www.google.com", "0.1.0");
        r.protocol = Some(Protocol::Https);
        r.ok = status.is_some();
        r.dns_ms = Some(dns);
        r.tcp_ms = Some(14.607);
        r.tls_ms = Some(127.732);
        r.first_byte_ms = Some(61.524);
        r.last_byte_ms = Some(1.333);
        r.total_ms = Some(209.282);
        r.http_status = status;
        r.bytes = status.map(|_| 12051);
        r.src_location = Some("192.168.2.35".into());
        r.remote_addr = Some("172.217.0.36:443".into());
        r
    }

    #[test]
    fn http_table_is_perftests_format() {
        let recs = vec![http(0, 24.168, Some(200)), http(1, 1.374, Some(200))];
        let out = StdoutSink::render(Format::Table, &recs, 1_554_917_744 * 1_000_000);
        let want = "# timestamp\tDNS\tTCP\tTLS\tFirst\tLastB\tTotal\tHTTP\tSize\tFrom_Location\tRemote_Addr\tproto://uri\n\
1 1554917703\t24.168\t14.607\t127.732\t61.524\t1.333\t209.282\t200\t12051\t192.168.2.35\t172.217.0.36\thttps://www.google.com\n\
2 1554917713\t1.374\t14.607\t127.732\t61.524\t1.333\t209.282\t200\t12051\t192.168.2.35\t172.217.0.36\thttps://www.google.com\n\
\n\
Recorded 2 samples in 41s, average values:\n\
# timestamp\tDNS\tTCP\tTLS\tFirst\tLastB\tTotal\tHTTP\tSize\tFrom_Location\tRemote_Addr\tproto://uri\n\
2 41s   \t12.771\t14.607\t127.732\t61.524\t1.333\t209.282\t\t12051\t\thttps://www.google.com\n";
        assert_eq!(out, want);
    }

    #[test]
    fn failed_http_sample_prints_500() {
        let out = StdoutSink::render(
            Format::Table,
            &[http(0, 1.0, None)],
            1_554_917_703 * 1_000_000,
        );
        let line = out.lines().nth(1).expect("sample line");
        assert_eq!(line.split('\t').nth(7), Some("500"), "{line}");
    }

    #[test]
    fn json_format_is_one_record_per_line() {
        let out = StdoutSink::render(
            Format::Json,
            &[http(0, 1.0, Some(200)), http(1, 2.0, Some(200))],
            0,
        );
        let lines: Vec<_> = out.lines().collect();
        assert_eq!(lines.len(), 2);
        let back: Record = serde_json::from_str(lines[1]).expect("record json");
        assert_eq!(back.dns_ms, Some(2.0));
    }

    #[test]
    fn udp_table_has_train_columns() {
        let mut r = Record::new(
            SystemTime::UNIX_EPOCH,
            "standalone",
            "udp://127.0.0.1:7710",
            "0.1.0",
        );
        r.protocol = Some(Protocol::Udp);
        r.ok = true;
        r.sent = Some(10);
        r.samples = Some(9);
        r.lost = Some(1);
        r.rtt_p50_ms = Some(0.042);
        r.remote_addr = Some("127.0.0.1:7710".into());
        let out = StdoutSink::render(Format::Table, &[r], 0);
        let mut lines = out.lines();
        assert_eq!(
            lines.next(),
            Some(
                "# timestamp\tSent\tRecv\tLost\tMin\tP50\tAvg\tP99\tMax\tJitter\tFrom_Location\tRemote_Addr\tproto://uri"
            )
        );
        assert_eq!(
            lines.next(),
            Some(
                "1 0\t10\t9\t1\t0.000\t0.042\t0.000\t0.000\t0.000\t0.000\t\t127.0.0.1\tudp://127.0.0.1:7710"
            )
        );
        let summary = out.lines().last().expect("summary line");
        assert_eq!(
            summary,
            "1 0s   \t10.000\t9.000\t1.000\t0.000\t0.042\t0.000\t0.000\t0.000\t0.000\t\t\tudp://127.0.0.1:7710"
        );
    }
}
