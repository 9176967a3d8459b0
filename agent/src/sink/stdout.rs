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
//! with their own columns (see [`columns`]). Failure details go to stderr through the log,
//! keeping stdout machine-readable.
//!
//! # Several targets
//!
//! Several targets run concurrently, but the table keeps each target's lines together: one
//! block per target, in the order the targets first reported, each opened by a `# target URL`
//! line (blocks after the first are preceded by a blank line) and closed by its summary. The
//! first target's block is printed live; the other targets' lines are held until the block
//! before theirs is complete, then printed at once and live from there on. A target still
//! running when the agent stops (Ctrl-C) has its held lines printed then. Targets without a
//! sample count (`-n 0`) never complete a block: their lines print as they come, interleaved
//! (the last column names the target), each target's header before its first line.

use std::collections::HashMap;
use std::io::Write;

use meshlat_proto::record::{Protocol, Record};

use super::{SharedRecord, Sink, SinkError};
use crate::cli::Format;

/// The stdout sink.
#[derive(Debug)]
pub struct StdoutSink {
    format: Format,
    /// One labelled block per target (several targets, each with a sample count).
    grouped: bool,
    tables: HashMap<TableKey, TableState>,
    /// Tables in the order they first reported: the order of their blocks.
    order: Vec<TableKey>,
    /// The table whose block is being printed (the others' lines are held).
    live: Option<TableKey>,
    out: Vec<u8>,
}

/// A table: (job id, target).
type TableKey = (String, String);

#[derive(Debug, Default)]
struct TableState {
    protocol: Option<Protocol>,
    n: u64,
    first_ts_us: Option<i64>,
    last_ts_us: i64,
    ok: u64,
    sums: Vec<f64>,
    done: bool,
    /// Lines not printed yet (another table's block is live).
    held: Vec<u8>,
    /// The whole block, summary included, has been printed.
    printed: bool,
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
    /// A stdout sink in the given format, for one target (or JSON lines).
    pub fn new(format: Format) -> Self {
        Self::for_targets(format, 1)
    }

    /// A stdout sink in the given format for `targets` targets that each end (a sample count):
    /// with more than one, the table prints one labelled block per target (see the module
    /// docs). Targets that never end (`-n 0`) get [`StdoutSink::new`]: a block would never
    /// complete, so lines print as they come.
    pub fn for_targets(format: Format, targets: usize) -> Self {
        StdoutSink {
            format,
            grouped: targets > 1,
            tables: HashMap::new(),
            order: Vec::new(),
            live: None,
            out: Vec::with_capacity(4096),
        }
    }

    /// Sends `text`, part of `key`'s block, to stdout if that block is live (or nothing is),
    /// else holds it.
    fn route(&mut self, key: &TableKey, text: &[u8]) {
        if self.live.is_none() {
            self.live = Some(key.clone());
        }
        if !self.grouped || self.live.as_ref() == Some(key) {
            self.out.extend_from_slice(text);
        } else if let Some(st) = self.tables.get_mut(key) {
            st.held.extend_from_slice(text);
        }
    }

    /// `key`'s block is complete: the next block in order is printed up to where its table is,
    /// and becomes live unless it is complete too (then the next, and so on).
    fn block_done(&mut self, key: &TableKey) {
        if self.live.as_ref() != Some(key) {
            return;
        }
        self.live = None;
        if let Some(st) = self.tables.get_mut(key) {
            st.printed = true;
        }
        for k in &self.order {
            let Some(st) = self.tables.get_mut(k) else {
                continue;
            };
            if st.printed {
                continue;
            }
            self.out.append(&mut st.held);
            if st.done {
                st.printed = true;
            } else {
                self.live = Some(k.clone());
                break;
            }
        }
    }

    /// Prints every held line (at the end: blocks whose targets did not finish).
    fn release_held(&mut self) {
        for k in &self.order {
            if let Some(st) = self.tables.get_mut(k) {
                self.out.append(&mut st.held);
            }
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
                let key = (r.job_id.clone(), r.target.clone());
                let mut text = Vec::new();
                if !self.tables.contains_key(&key) {
                    if self.grouped {
                        if !self.order.is_empty() {
                            text.push(b'\n');
                        }
                        let _ = writeln!(text, "# target {}", r.target);
                    }
                    self.order.push(key.clone());
                }
                let st = self.tables.entry(key.clone()).or_default();
                let p = r.protocol.unwrap_or(Protocol::Tcp);
                if st.protocol.is_none() {
                    st.protocol = Some(p);
                    let _ = writeln!(text, "# timestamp\t{}", columns(p));
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
                let _ = writeln!(text, "{} {}\t{}", st.n, t / 1_000_000, sample_columns(r));
                self.route(&key, &text);
            }
        }
    }

    fn summary(&mut self, job: &str, target: &str, end_us: i64) {
        let key = (job.to_string(), target.to_string());
        let Some(st) = self.tables.get_mut(&key) else {
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
        let text = format!(
            "\nRecorded {n} samples in {secs}s, average values:\n# timestamp\t{}\n{n} {secs}s   \t{cols}\n",
            columns(p),
            n = st.n
        );
        self.route(&key, text.as_bytes());
        self.block_done(&key);
    }

    /// Renders records then summaries (in the order the targets first appear), as the sink
    /// would print them for that many targets (for tests and docs).
    pub fn render(format: Format, records: &[Record], end_us: i64) -> String {
        let mut keys: Vec<TableKey> = Vec::new();
        for r in records {
            let k = (r.job_id.clone(), r.target.clone());
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        let mut s = StdoutSink::for_targets(format, keys.len());
        for r in records {
            s.push(r);
        }
        for (j, t) in keys {
            s.summary(&j, &t, end_us);
        }
        s.release_held();
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

    async fn close(&mut self) {
        self.release_held();
        if let Err(e) = self.emit() {
            crate::metrics::sink_error(self.name(), "close", 0, &e);
        }
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
    fn several_targets_print_one_labelled_block_each() {
        let on = |i: u64, url: &str| {
            let mut r = http(i, 1.0, Some(200));
            r.target = url.into();
            r
        };
        let (a, b) = ("https://a.example/", "https://b.example/");
        // The targets' samples arrive interleaved, as concurrent targets deliver them.
        let recs = vec![on(0, a), on(0, b), on(1, b), on(1, a), on(2, a)];
        let out = StdoutSink::render(Format::Table, &recs, 1_554_917_744 * 1_000_000);
        let lines: Vec<&str> = out.lines().collect();
        let header = "# timestamp\tDNS\tTCP\tTLS\tFirst\tLastB\tTotal\tHTTP\tSize\tFrom_Location\tRemote_Addr\tproto://uri";
        let b_at = lines
            .iter()
            .position(|l| *l == format!("# target {b}"))
            .expect("b's label");
        let (block_a, block_b) = lines.split_at(b_at);
        assert_eq!(block_a[..2], [format!("# target {a}").as_str(), header]);
        assert_eq!(block_a.last(), Some(&""), "a blank line between blocks");
        assert_eq!(block_b[1], header);
        for (block, url, n) in [(block_a, a, 3), (block_b, b, 2)] {
            let samples: Vec<&str> = block
                .iter()
                .copied()
                .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with("Recorded"))
                .collect();
            // n numbered sample lines, then the averages line, all of this target only.
            assert_eq!(samples.len(), n + 1, "{url}: {block:?}");
            for (i, l) in samples[..n].iter().enumerate() {
                assert!(l.starts_with(&format!("{} ", i + 1)), "{l}");
            }
            assert!(samples.iter().all(|l| l.ends_with(url)), "{block:?}");
            let recorded = format!("Recorded {n} samples in ");
            assert_eq!(
                block.iter().filter(|l| l.starts_with(&recorded)).count(),
                1,
                "{block:?}"
            );
        }
    }

    #[test]
    fn a_held_block_is_printed_when_the_live_one_completes() {
        let on = |i: u64, url: &str| {
            let mut r = http(i, 1.0, Some(200));
            r.target = url.into();
            r
        };
        let (a, b) = ("https://a.example/", "https://b.example/");
        let mut s = StdoutSink::for_targets(Format::Table, 2);
        s.push(&on(0, a));
        s.push(&on(0, b));
        let taken =
            |s: &mut StdoutSink| String::from_utf8(std::mem::take(&mut s.out)).expect("utf8");
        let first = taken(&mut s);
        assert!(
            first.contains(a) && !first.contains(b),
            "a is live, b held: {first}"
        );
        s.push(&on(1, a));
        assert!(taken(&mut s).contains(a), "a's lines print as they come");
        s.summary("standalone", a, 0);
        let next = taken(&mut s);
        assert!(next.starts_with("\nRecorded 2 samples"), "{next}");
        assert!(
            next.contains(&format!("# target {b}\n")),
            "b's held lines follow: {next}"
        );
        s.push(&on(1, b));
        assert!(taken(&mut s).starts_with("2 "), "b is live now");
        // At the end, a block whose target did not finish is printed as far as it got.
        let mut s = StdoutSink::for_targets(Format::Table, 2);
        s.push(&on(0, a));
        s.push(&on(0, b));
        s.release_held();
        let all = taken(&mut s);
        assert!(
            all.contains(&format!("# target {a}")) && all.contains(&format!("# target {b}")),
            "{all}"
        );
        // Targets that never end (-n 0): every line prints as it comes.
        let mut s = StdoutSink::new(Format::Table);
        s.push(&on(0, a));
        s.push(&on(0, b));
        let both = taken(&mut s);
        assert!(
            both.contains(a) && both.contains(b) && !both.contains("# target"),
            "{both}"
        );
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
