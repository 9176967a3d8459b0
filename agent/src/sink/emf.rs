//! CloudWatch Embedded Metric Format sink (`--emf`): latency, loss and a heartbeat as JSON log
//! lines on stdout, which the ECS `awslogs` driver turns into CloudWatch metrics (no API calls).
//!
//! Every interval (`--emf-interval`, default 60 s), at the interval's wall-clock boundary, the
//! sink writes for the interval that ended:
//!
//! - one line per (destination region, protocol) of the probe records it saw, with the metrics
//!   `RttP50` and `RttP99` (milliseconds; every RTT sample as in the records' field table: UDP/QUIC
//!   each packet, TCP the connect, HTTP(S) the total; quantiles from the mergeable sketch,
//!   [`meshlat_proto::sketch::RELATIVE_ERROR`]), `LossRatio` (lost / sent; TCP, HTTP(S): failed
//!   attempts) and `Samples`, under the dimension sets `[SrcRegion, DstRegion, Protocol]` and
//!   `[SrcRegion, Protocol]` (the latter: CloudWatch's Maximum over it is the worst destination
//!   region, what the HighLatency alarm watches);
//! - one heartbeat line, `AgentUp` = 1 under `[Region]`, also when nothing was measured.
//!
//! Each line's `Timestamp` is the middle of its interval, so with the 60 s default every agent
//! contributes exactly one data point to each one-minute CloudWatch period: `SampleCount` of
//! `AgentUp` is the number of agents alive in the region (the AgentDown alarm). Agent id,
//! location and the interval are properties of each line (searchable in Logs Insights), not
//! dimensions: dimensions are what CloudWatch bills per series.
//!
//! Format: <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meshlat_proto::record::{Kind, Record};
use meshlat_proto::sketch::RttHistogram;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::{SharedRecord, Sink, SinkError};
use crate::cli;
use crate::config::error::{ConfigError, secs};

/// Default of `--emf-namespace`.
pub const DEFAULT_NAMESPACE: &str = "meshlat";

/// The latency metrics' dimension sets (names as in the lines).
pub const LATENCY_DIMENSIONS: [&[&str]; 2] = [
    &["SrcRegion", "DstRegion", "Protocol"],
    &["SrcRegion", "Protocol"],
];

/// The heartbeat's dimension set.
pub const HEARTBEAT_DIMENSIONS: [&[&str]; 1] = [&["Region"]];

/// `--emf`, `--emf-namespace`, `--emf-interval`.
#[derive(Clone, Debug, PartialEq)]
pub struct EmfConfig {
    /// CloudWatch namespace of every metric.
    pub namespace: String,
    /// Length of an interval; lines are written at its multiples of wall-clock time.
    pub interval: Duration,
}

impl EmfConfig {
    /// Validates the EMF flags; `None` without `--emf`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the flag.
    pub fn from_args(a: &cli::SinkArgs) -> Result<Option<Self>, ConfigError> {
        if !a.emf {
            return Ok(None);
        }
        let interval = secs("--emf-interval", a.emf_interval, false)?;
        if interval < Duration::from_secs(1) || interval.subsec_nanos() != 0 {
            return Err(ConfigError::OutOfRange {
                flag: "--emf-interval",
                value: a.emf_interval.to_string(),
                range: "whole seconds, at least 1 (60: one data point per agent and minute)".into(),
            });
        }
        let ns = a.emf_namespace.trim();
        // CloudWatch: 1 to 255 characters, no colon-led names; keep to a safe printable set.
        if ns.is_empty()
            || ns.len() > 255
            || !ns
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "./-_#:".contains(c))
        {
            return Err(ConfigError::OutOfRange {
                flag: "--emf-namespace",
                value: a.emf_namespace.clone(),
                range: "1 to 255 characters of A-Z a-z 0-9 . / - _ # :".into(),
            });
        }
        Ok(Some(EmfConfig {
            namespace: ns.to_string(),
            interval,
        }))
    }
}

/// One destination region and protocol within an interval.
#[derive(Default)]
struct Acc {
    rtt: RttHistogram,
    sent: u64,
    lost: u64,
}

/// What the current interval has seen, keyed by (destination region, protocol).
#[derive(Default)]
struct Interval {
    src_region: String,
    agent: String,
    location: String,
    pairs: BTreeMap<(String, &'static str), Acc>,
}

impl Interval {
    fn add(&mut self, r: &Record) {
        let (Some(Kind::Probe), Some(protocol)) = (r.kind, r.protocol) else {
            return;
        };
        if let Some(s) = &r.src_region {
            self.src_region.clone_from(s);
        }
        if let Some(a) = &r.src_agent {
            self.agent.clone_from(a);
        }
        if let Some(l) = &r.src_location {
            self.location.clone_from(l);
        }
        let dst = r.dst_region.clone().unwrap_or_else(|| "(external)".into());
        let acc = self.pairs.entry((dst, protocol.as_str())).or_default();
        let (sent, lost) = crate::metrics::probe_samples(r, protocol, |v| acc.rtt.record(v));
        acc.sent += sent;
        acc.lost += lost;
    }
}

/// The lines for an interval that ended at `end` (unix ms), `len` long.
fn lines(
    cfg: &EmfConfig,
    iv: &Interval,
    fallback_region: &str,
    end_ms: u64,
    len: Duration,
) -> Vec<String> {
    let mid = end_ms.saturating_sub(u64::try_from(len.as_millis()).unwrap_or(0) / 2);
    let region = if iv.src_region.is_empty() {
        fallback_region
    } else {
        &iv.src_region
    };
    let aws = |dims: &[&[&str]], metrics: &[(&str, &str)]| {
        json!({
            "Timestamp": mid,
            "CloudWatchMetrics": [{
                "Namespace": cfg.namespace,
                "Dimensions": dims,
                "Metrics": metrics.iter().map(|(n, u)| json!({"Name": n, "Unit": u})).collect::<Vec<_>>(),
            }],
        })
    };
    let mut out = Vec::new();
    for ((dst, protocol), acc) in &iv.pairs {
        let mut line = json!({
            "_aws": aws(&LATENCY_DIMENSIONS, &[
                ("RttP50", "Milliseconds"),
                ("RttP99", "Milliseconds"),
                ("LossRatio", "None"),
                ("Samples", "Count"),
            ]),
            "SrcRegion": region,
            "DstRegion": dst,
            "Protocol": protocol,
            "Samples": acc.rtt.count(),
            "LossRatio": if acc.sent > 0 { acc.lost as f64 / acc.sent as f64 } else { 0.0 },
            "Agent": iv.agent,
            "Location": iv.location,
            "IntervalSeconds": len.as_secs(),
        });
        // A member a line names as a metric must be there as a number: without samples (every
        // attempt failed) the quantiles are left out of the line and of its metric list.
        if let (Some(p50), Some(p99)) = (acc.rtt.quantile(0.5), acc.rtt.quantile(0.99)) {
            line["RttP50"] = json!(p50);
            line["RttP99"] = json!(p99);
        } else {
            line["_aws"] = aws(
                &LATENCY_DIMENSIONS,
                &[("LossRatio", "None"), ("Samples", "Count")],
            );
        }
        out.push(line.to_string());
    }
    out.push(
        json!({
            "_aws": aws(&HEARTBEAT_DIMENSIONS, &[("AgentUp", "Count")]),
            "Region": region,
            "AgentUp": 1,
            "Agent": iv.agent,
            "Location": iv.location,
            "IntervalSeconds": len.as_secs(),
        })
        .to_string(),
    );
    out
}

type Out = Arc<Mutex<Box<dyn Write + Send>>>;

/// The EMF sink: records accumulate per interval; a task writes the lines at each boundary.
pub struct EmfSink {
    current: Arc<Mutex<Interval>>,
    stop: CancellationToken,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for EmfSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmfSink").finish_non_exhaustive()
    }
}

fn unix_ms(t: SystemTime) -> u64 {
    u64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(u64::MAX)
}

impl EmfSink {
    /// An EMF sink writing to stdout; `region` names the heartbeat's region before any record
    /// did. Starts its interval task (call within a tokio runtime).
    pub fn new(cfg: EmfConfig, region: &str) -> Self {
        Self::with_output(cfg, region, Box::new(std::io::stdout()))
    }

    /// The same, writing lines to `out`.
    pub fn with_output(cfg: EmfConfig, region: &str, out: Box<dyn Write + Send>) -> Self {
        let current = Arc::new(Mutex::new(Interval::default()));
        let stop = CancellationToken::new();
        let out: Out = Arc::new(Mutex::new(out));
        let ticker = tokio::spawn(tick(
            cfg,
            region.to_string(),
            current.clone(),
            out,
            stop.clone(),
        ));
        EmfSink {
            current,
            stop,
            ticker: Some(ticker),
        }
    }
}

/// Writes each interval's lines at its wall-clock boundary; at `stop`, the partial interval's.
async fn tick(
    cfg: EmfConfig,
    region: String,
    current: Arc<Mutex<Interval>>,
    out: Out,
    stop: CancellationToken,
) {
    let len_ms = u64::try_from(cfg.interval.as_millis())
        .unwrap_or(60_000)
        .max(1);
    loop {
        let now = unix_ms(SystemTime::now());
        let boundary = (now / len_ms + 1) * len_ms;
        let stopped = tokio::select! {
            () = stop.cancelled() => true,
            () = tokio::time::sleep(Duration::from_millis(boundary - now)) => false,
        };
        let end = if stopped {
            unix_ms(SystemTime::now())
        } else {
            boundary
        };
        let iv = std::mem::take(&mut *current.lock().unwrap_or_else(|e| e.into_inner()));
        let text: String = lines(&cfg, &iv, &region, end, cfg.interval)
            .into_iter()
            .map(|l| l + "\n")
            .collect();
        let mut w = out.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = w.write_all(text.as_bytes()).and_then(|()| w.flush()) {
            crate::metrics::sink_error("emf", "write", 1, &e);
        }
        drop(w);
        if stopped {
            return;
        }
    }
}

impl Sink for EmfSink {
    fn name(&self) -> &'static str {
        "emf"
    }

    async fn write(&mut self, batch: &[SharedRecord]) -> Result<(), SinkError> {
        let mut iv = self.current.lock().unwrap_or_else(|e| e.into_inner());
        for r in batch {
            iv.add(r);
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        Ok(())
    }

    async fn close(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.ticker.take() {
            let _ = t.await;
        }
    }
}

impl Drop for EmfSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Checks one line against the EMF specification: the `_aws` member with an integer
/// `Timestamp` and `CloudWatchMetrics` directives (a namespace; 1 to 30 dimensions per set, each
/// a top-level string member; metrics that are top-level numbers, at most 100, with a known unit).
///
/// # Errors
///
/// What is wrong, in words.
pub fn check_line(line: &str) -> Result<Value, String> {
    const UNITS: &[&str] = &[
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    ];
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let root = v.as_object().ok_or("not a JSON object")?;
    let aws = root
        .get("_aws")
        .and_then(Value::as_object)
        .ok_or("no _aws object")?;
    aws.get("Timestamp")
        .and_then(Value::as_u64)
        .ok_or("_aws.Timestamp is not a non-negative integer (ms)")?;
    let directives = aws
        .get("CloudWatchMetrics")
        .and_then(Value::as_array)
        .filter(|d| !d.is_empty())
        .ok_or("_aws.CloudWatchMetrics is not a non-empty array")?;
    for d in directives {
        let ns = d
            .get("Namespace")
            .and_then(Value::as_str)
            .ok_or("a directive has no Namespace string")?;
        if ns.is_empty() || ns.len() > 255 {
            return Err(format!("Namespace {ns:?} is not 1 to 255 characters"));
        }
        let sets = d
            .get("Dimensions")
            .and_then(Value::as_array)
            .ok_or("Dimensions is not an array")?;
        for set in sets {
            let names = set.as_array().ok_or("a dimension set is not an array")?;
            if names.is_empty() || names.len() > 30 {
                return Err(format!(
                    "a dimension set has {} names (1 to 30)",
                    names.len()
                ));
            }
            for n in names {
                let n = n.as_str().ok_or("a dimension name is not a string")?;
                if !root.get(n).is_some_and(Value::is_string) {
                    return Err(format!("dimension {n} is not a top-level string member"));
                }
            }
        }
        let metrics = d
            .get("Metrics")
            .and_then(Value::as_array)
            .ok_or("Metrics is not an array")?;
        if metrics.len() > 100 {
            return Err("more than 100 metrics".into());
        }
        for m in metrics {
            let name = m
                .get("Name")
                .and_then(Value::as_str)
                .ok_or("a metric has no Name")?;
            if !root.get(name).is_some_and(Value::is_number) {
                return Err(format!("metric {name} is not a top-level number"));
            }
            if let Some(u) = m.get("Unit") {
                let u = u.as_str().ok_or("a Unit is not a string")?;
                if !UNITS.contains(&u) {
                    return Err(format!("unit {u} of {name} is not a CloudWatch unit"));
                }
            }
        }
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlat_proto::record::Protocol;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn probe(protocol: Protocol, dst_region: &str) -> Record {
        let mut r = Record::new(SystemTime::now(), "j", "t", "0");
        r.kind = Some(Kind::Probe);
        r.protocol = Some(protocol);
        r.src_region = Some("eu-west-1".into());
        r.src_agent = Some("a1".into());
        r.src_location = Some("fra".into());
        r.dst_region = Some(dst_region.into());
        r
    }

    fn cfg() -> EmfConfig {
        EmfConfig {
            namespace: "meshlat".into(),
            interval: Duration::from_secs(60),
        }
    }

    #[test]
    fn lines_follow_the_specification_and_carry_the_numbers() {
        let mut iv = Interval::default();
        let mut udp = probe(Protocol::Udp, "us-east-1");
        udp.rtt_samples_ms = Some((1..=100).map(f64::from).collect());
        udp.sent = Some(110);
        udp.lost = Some(10);
        iv.add(&udp);
        let mut tcp = probe(Protocol::Tcp, "us-east-1");
        tcp.ok = false;
        iv.add(&tcp);
        let got = lines(&cfg(), &iv, "x", 120_000, Duration::from_secs(60));
        assert_eq!(got.len(), 3, "{got:?}");
        let parsed: Vec<Value> = got.iter().map(|l| check_line(l).unwrap()).collect();
        let tcp = &parsed[0];
        assert_eq!(tcp["Protocol"], "tcp");
        assert_eq!(tcp["LossRatio"], 1.0);
        assert!(
            tcp.get("RttP99").is_none(),
            "no samples, no quantile: {tcp}"
        );
        let udp = &parsed[1];
        assert_eq!(
            udp["_aws"]["Timestamp"], 90_000,
            "the middle of the interval"
        );
        assert_eq!(udp["SrcRegion"], "eu-west-1");
        assert_eq!(udp["DstRegion"], "us-east-1");
        assert_eq!(udp["Samples"], 100);
        assert!((udp["LossRatio"].as_f64().unwrap() - 10.0 / 110.0).abs() < 1e-12);
        let p99 = udp["RttP99"].as_f64().unwrap();
        assert!((p99 - 99.0).abs() <= 99.0 * 0.01, "p99 {p99}");
        assert_eq!(
            udp["_aws"]["CloudWatchMetrics"][0]["Dimensions"],
            json!([
                ["SrcRegion", "DstRegion", "Protocol"],
                ["SrcRegion", "Protocol"]
            ])
        );
        let hb = &parsed[2];
        assert_eq!(hb["AgentUp"], 1);
        assert_eq!(hb["Region"], "eu-west-1");
        assert_eq!(hb["Agent"], "a1");
    }

    #[test]
    fn an_idle_agent_still_sends_its_heartbeat_in_its_own_region() {
        let got = lines(
            &cfg(),
            &Interval::default(),
            "ap-south-1",
            60_000,
            Duration::from_secs(60),
        );
        assert_eq!(got.len(), 1);
        let hb = check_line(&got[0]).unwrap();
        assert_eq!(hb["Region"], "ap-south-1");
        assert_eq!(
            hb["_aws"]["CloudWatchMetrics"][0]["Metrics"][0]["Name"],
            "AgentUp"
        );
    }

    #[test]
    fn the_checker_refuses_what_cloudwatch_would() {
        for (line, says) in [
            ("{}", "no _aws"),
            (
                r#"{"_aws":{"Timestamp":-1,"CloudWatchMetrics":[]}}"#,
                "Timestamp",
            ),
            (
                r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"n","Dimensions":[["A"]],"Metrics":[]}]}}"#,
                "dimension A",
            ),
            (
                r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"n","Dimensions":[],"Metrics":[{"Name":"M"}]}]},"M":"x"}"#,
                "metric M",
            ),
            (
                r#"{"_aws":{"Timestamp":1,"CloudWatchMetrics":[{"Namespace":"n","Dimensions":[],"Metrics":[{"Name":"M","Unit":"ms"}]}]},"M":1}"#,
                "unit ms",
            ),
        ] {
            let e = check_line(line).unwrap_err();
            assert!(e.contains(says), "{line}: {e}");
        }
    }

    #[tokio::test]
    async fn the_sink_writes_at_boundaries_and_at_close() {
        let buf = Buf::default();
        let cfg = EmfConfig {
            namespace: "meshlat-test".into(),
            interval: Duration::from_secs(1),
        };
        let mut sink = EmfSink::with_output(cfg, "eu-west-1", Box::new(buf.clone()));
        let mut r = probe(Protocol::Udp, "us-east-1");
        r.rtt_samples_ms = Some(vec![5.0]);
        r.sent = Some(1);
        r.lost = Some(0);
        sink.write(&[Arc::new(r)]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(2100)).await;
        sink.close().await;
        let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let parsed: Vec<Value> = text.lines().map(|l| check_line(l).unwrap()).collect();
        let latency: Vec<&Value> = parsed
            .iter()
            .filter(|v| v.get("Protocol").is_some())
            .collect();
        assert_eq!(
            latency.len(),
            1,
            "the record counts in one interval only: {text}"
        );
        assert_eq!(latency[0]["RttP50"].as_f64().map(f64::round), Some(5.0));
        let beats = parsed.iter().filter(|v| v.get("AgentUp").is_some()).count();
        assert!(
            (3..=4).contains(&beats),
            "two or three boundaries and the close: {text}"
        );
        assert!(
            parsed
                .iter()
                .all(|v| v["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "meshlat-test")
        );
    }
}
