//! Firehose sink benchmark (run by `scripts/bench/firehose.sh`).
//!
//! 1. Steady load: 1,000 records/s for 60 s of (paused, simulated) tokio time through the real
//!    sink into a null endpoint: requests per second and billing efficiency (bytes sent / bytes
//!    billed with every record rounded up to 5 KB).
//! 2. Throughput: as many records as possible through the sink (JSON encoding, packing,
//!    dispatching) into a null endpoint on a single-threaded runtime (one core).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use meshlat_agent::sink::Sink;
use meshlat_agent::sink::firehose::FirehoseSinkConfig;
use meshlat_agent::sink::firehose::client::{FirehoseApi, FirehoseError, PutBatchOutcome};
use meshlat_agent::sink::firehose::request::PackLimits;
use meshlat_agent::sink::firehose::{FirehoseSink, FirehoseStats};
use meshlat_proto::record::Record;

/// Accepts everything at once.
#[derive(Clone, Debug)]
struct NullFirehose;

impl FirehoseApi for NullFirehose {
    async fn put_record_batch(
        &self,
        _stream: &str,
        _records: Vec<Bytes>,
    ) -> Result<PutBatchOutcome, FirehoseError> {
        Ok(PutBatchOutcome::default())
    }
}

/// Firehose is down: every request fails as unreachable.
#[derive(Clone, Debug)]
struct DownFirehose;

impl FirehoseApi for DownFirehose {
    async fn put_record_batch(
        &self,
        _stream: &str,
        _records: Vec<Bytes>,
    ) -> Result<PutBatchOutcome, FirehoseError> {
        Err(FirehoseError::Unreachable {
            message: "bench outage".into(),
        })
    }
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                total += e.metadata().map_or(0, |m| m.len());
            }
        }
    }
    total
}

fn cfg(dir: &std::path::Path, batch_age: Duration) -> FirehoseSinkConfig {
    FirehoseSinkConfig {
        stream: "bench".into(),
        region: None,
        endpoint: None,
        spool_dir: dir.to_path_buf(),
        spool_max_bytes: 1 << 30,
        memory_max_bytes: 64 << 20,
        batch_age,
        limits: PackLimits::default(),
        max_in_flight: 4,
        drain_timeout: Duration::from_secs(30),
        spool_always: false,
    }
}

/// A UDP-train-like record (10 RTT samples), as agents write them.
fn record(i: u64) -> Arc<Record> {
    let mut r = Record::new(
        SystemTime::now(),
        "mesh-udp",
        "udp://10.0.1.7:7710",
        "0.1.0",
    );
    r.seq = i;
    r.src_region = Some("eu-west-1".into());
    r.dst_region = Some("us-east-1".into());
    r.src_agent = Some("agent-eu-west-1a-01".into());
    r.dst_agent = Some("agent-us-east-1b-02".into());
    r.rtt_samples_ms = Some((0..10).map(|k| 70.0 + k as f64 * 0.137).collect());
    r.rtt_ms = Some(70.6);
    Arc::new(r)
}

fn report(name: &str, st: &FirehoseStats, secs: f64, lines: u64) {
    let sent = st.bytes_sent.load(Ordering::Relaxed);
    let billed = st.bytes_billed.load(Ordering::Relaxed);
    let reqs = st.requests.load(Ordering::Relaxed);
    println!(
        "{name}: lines={lines} delivered={} requests={reqs} ({:.2}/s) records={} bytes_sent={sent} bytes_billed={billed} billing_efficiency={:.2}% elapsed={secs:.2}s rate={:.0} records/s",
        st.delivered_lines.load(Ordering::Relaxed),
        reqs as f64 / secs,
        st.records_sent.load(Ordering::Relaxed),
        100.0 * sent as f64 / billed.max(1) as f64,
        lines as f64 / secs,
    );
}

fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("meshlat-fh-bench-{}", std::process::id()));
    let line_len = record(0).to_json_line().len() + 1;
    println!("record line: {line_len} bytes");

    // 1. Steady 1,000 records/s in simulated time.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(async {
        let mut sink = FirehoseSink::with_api(
            cfg(&dir.join("steady"), Duration::from_secs(2)),
            NullFirehose,
        )?;
        let secs = 60u64;
        let t0 = tokio::time::Instant::now();
        for s in 0..secs {
            // 1,000 records per second, handed over in 100 ms batches as the SinkSet does.
            for b in 0..10 {
                let batch: Vec<_> = (0..100).map(|i| record(s * 1000 + b * 100 + i)).collect();
                sink.write(&batch).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        let elapsed = t0.elapsed().as_secs_f64();
        sink.close().await;
        report("steady_1000_per_s", &sink.stats(), elapsed, secs * 1000);
        anyhow::Ok(())
    })?;

    // 2. A 60 s outage at 10,000 records/s (simulated time): memory stays within its bound,
    //    the rest goes to the spool, nothing is dropped.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()?;
    rt.block_on(async {
        let bound: u64 = 16 << 20;
        let mut c = cfg(&dir.join("outage"), Duration::from_secs(2));
        c.memory_max_bytes = bound;
        c.drain_timeout = Duration::from_millis(100);
        let spool_dir = c.spool_dir.clone();
        let mut sink = FirehoseSink::with_api(c, DownFirehose)?;
        let rss0 = rss_mib();
        let mut peak = rss0;
        for s in 0..60u64 {
            for b in 0..10 {
                let batch: Vec<_> = (0..1000).map(|i| record(s * 10_000 + b * 1000 + i)).collect();
                sink.write(&batch).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak = peak.max(rss_mib());
        }
        let st = sink.stats();
        sink.close().await;
        println!(
            "outage_60s_10000_per_s: lines=600000 memory_bound_mib={:.0} rss_start_mib={rss0:.1} rss_peak_mib={peak:.1} rss_growth_mib={:.1} spooled_batches={} spool_bytes={} dropped_lines={}",
            bound as f64 / 1048576.0,
            peak - rss0,
            st.spooled_batches.load(Ordering::Relaxed),
            dir_bytes(&spool_dir),
            st.dropped_lines.load(Ordering::Relaxed),
        );
        anyhow::Ok(())
    })?;

    // 3. Throughput on one core.
    let n: u64 = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300_000);
    let recs: Vec<_> = (0..n).map(record).collect();
    // The share of JSON encoding (meshlat-proto's serde), which dominates unoptimised builds.
    let t0 = tokio::time::Instant::now();
    let encoded: usize = recs.iter().map(|r| r.to_json_line().len()).sum();
    let enc = t0.elapsed().as_secs_f64();
    println!(
        "encode_only: lines={n} bytes={encoded} elapsed={enc:.2}s rate={:.0} records/s",
        n as f64 / enc
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut sink =
            FirehoseSink::with_api(cfg(&dir.join("null"), Duration::from_secs(2)), NullFirehose)?;
        let t0 = tokio::time::Instant::now();
        for chunk in recs.chunks(1024) {
            sink.write(chunk).await?;
        }
        sink.close().await;
        report(
            "throughput_null_endpoint",
            &sink.stats(),
            t0.elapsed().as_secs_f64(),
            n,
        );
        anyhow::Ok(())
    })?;
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
