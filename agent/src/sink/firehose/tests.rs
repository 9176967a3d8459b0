#![cfg(test)]
//! Sink pipeline tests on a scripted fake [`FirehoseApi`] (STYLE §6): Delivered, Rejected,
//! Errored, partial failures, throttling, outage → spool → replay, and the spool bound.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use meshlat_proto::record::Record;

use bytes::Bytes;
use tokio::time::Instant;

use super::client::{FirehoseApi, FirehoseError, PutBatchOutcome};
use super::spool::Spool;
use super::*;
use crate::sink::firehose::request::PackLimits;
use crate::sink::{SharedRecord, Sink};

#[derive(Clone, Debug)]
enum Step {
    Answer(Vec<usize>),
    Fail(FirehoseError),
}

#[derive(Debug, Default)]
struct FakeState {
    script: VecDeque<Step>,
    /// When the script is exhausted: fail everything with this (an outage), or accept.
    otherwise: Option<FirehoseError>,
    /// Records accepted, in acceptance order.
    accepted: Vec<Bytes>,
    /// Sizes (in records) of every request.
    requests: Vec<usize>,
    /// Never answer (a request in flight when the agent is killed).
    hang: bool,
}

#[derive(Clone, Debug, Default)]
struct FakeFirehose(Arc<Mutex<FakeState>>);

impl FakeFirehose {
    fn scripted(steps: Vec<Step>) -> Self {
        let f = FakeFirehose::default();
        f.0.lock().expect("lock").script = steps.into();
        f
    }
    fn state(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.0.lock().expect("lock")
    }
    fn accepted_seqs(&self) -> Vec<u64> {
        seqs(&self.state().accepted)
    }
}

impl FirehoseApi for FakeFirehose {
    async fn put_record_batch(
        &self,
        _stream: &str,
        records: Vec<Bytes>,
    ) -> Result<PutBatchOutcome, FirehoseError> {
        if self.state().hang {
            std::future::pending::<()>().await;
        }
        let mut s = self.state();
        s.requests.push(records.len());
        let step = match s.script.pop_front() {
            Some(step) => step,
            None => match &s.otherwise {
                Some(e) => Step::Fail(e.clone()),
                None => Step::Answer(Vec::new()),
            },
        };
        match step {
            Step::Fail(e) => Err(e),
            Step::Answer(failed) => {
                for (i, r) in records.into_iter().enumerate() {
                    if !failed.contains(&i) {
                        s.accepted.push(r);
                    }
                }
                Ok(PutBatchOutcome {
                    failed: failed
                        .into_iter()
                        .map(|i| (i, "ServiceUnavailableException".to_string()))
                        .collect(),
                })
            }
        }
    }
}

fn seqs(records: &[Bytes]) -> Vec<u64> {
    let mut out: Vec<u64> = records
        .iter()
        .flat_map(|r| {
            std::str::from_utf8(r)
                .expect("utf8")
                .lines()
                .map(|l| serde_json::from_str::<Record>(l).expect("whole line").seq)
                .collect::<Vec<_>>()
        })
        .collect();
    out.sort_unstable();
    out
}

fn throttled() -> FirehoseError {
    FirehoseError::Throttled {
        code: "ServiceUnavailableException".into(),
        message: "Slow down.".into(),
    }
}

fn unreachable() -> FirehoseError {
    FirehoseError::Unreachable {
        message: "connection refused".into(),
    }
}

fn tmpdir(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "meshlat-fh-{name}-{}-{}",
        std::process::id(),
        crate::clock::realtime_ns()
    ))
}

fn cfg(dir: &std::path::Path) -> FirehoseSinkConfig {
    FirehoseSinkConfig {
        stream: "test-stream".into(),
        region: None,
        endpoint: None,
        spool_dir: dir.to_path_buf(),
        spool_max_bytes: 1 << 30,
        memory_max_bytes: 64 << 20,
        batch_age: Duration::from_secs(1),
        // Small limits: several lines per record, several records per request, many requests.
        limits: PackLimits {
            max_record_bytes: 4096,
            max_batch_records: 4,
            max_batch_bytes: 16384,
        },
        max_in_flight: 2,
        drain_timeout: Duration::from_secs(60),
        spool_always: false,
    }
}

fn records(range: std::ops::Range<u64>) -> Vec<SharedRecord> {
    range
        .map(|i| {
            let mut r = Record::new(SystemTime::now(), "j", "udp://h:1", "0.1.0");
            r.seq = i;
            Arc::new(r)
        })
        .collect()
}

async fn send_all(sink: &mut FirehoseSink, n: u64) {
    let recs = records(0..n);
    for chunk in recs.chunks(10) {
        sink.write(chunk).await.expect("sink accepts");
    }
}

fn spool_files(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".fhb"))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn delivered_every_line_once_and_acks_empty_the_spool() {
    let dir = tmpdir("ok");
    let api = FakeFirehose::default();
    let mut sink = FirehoseSink::with_api(cfg(&dir), api.clone()).expect("start");
    send_all(&mut sink, 100).await;
    sink.close().await;
    assert_eq!(api.accepted_seqs(), (0..100).collect::<Vec<_>>());
    let st = sink.stats();
    assert_eq!(st.delivered_lines.load(Ordering::Relaxed), 100);
    assert_eq!(st.dropped_lines.load(Ordering::Relaxed), 0);
    assert!(
        api.state().requests.iter().all(|&n| n <= 4),
        "batch record limit respected"
    );
    assert_eq!(spool_files(&dir), 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(start_paused = true)]
async fn batch_age_seals_a_partial_request() {
    let dir = tmpdir("age");
    let api = FakeFirehose::default();
    let mut sink = FirehoseSink::with_api(cfg(&dir), api.clone()).expect("start");
    send_all(&mut sink, 1).await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(
        api.state().requests.is_empty(),
        "younger than the batch age"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(api.accepted_seqs(), vec![0], "sealed by age, not by close");
    sink.close().await;
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(start_paused = true)]
async fn partial_failure_resends_only_the_failed_records() {
    let dir = tmpdir("partial");
    let api = FakeFirehose::scripted(vec![Step::Answer(vec![1, 3]), Step::Answer(vec![0])]);
    let mut c = cfg(&dir);
    c.max_in_flight = 1;
    let mut sink = FirehoseSink::with_api(c, api.clone()).expect("start");
    send_all(&mut sink, 60).await;
    sink.close().await;
    assert_eq!(
        api.accepted_seqs(),
        (0..60).collect::<Vec<_>>(),
        "every line exactly once"
    );
    let (sent, accepted) = {
        let st = api.state();
        (st.requests.iter().sum::<usize>(), st.accepted.len())
    };
    assert_eq!(
        sent,
        accepted + 3,
        "resends carry only the 2 failed records, then the 1 that failed again"
    );
    assert_eq!(sink.stats().records_retried.load(Ordering::Relaxed), 3);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(start_paused = true)]
async fn errored_is_retried_and_throttling_slows_without_dropping() {
    let dir = tmpdir("throttle");
    let server = FirehoseError::Server {
        status: Some(500),
        code: "InternalFailure".into(),
        message: String::new(),
    };
    let api = FakeFirehose::scripted(vec![
        Step::Fail(server),
        Step::Fail(throttled()),
        Step::Fail(throttled()),
        Step::Fail(throttled()),
    ]);
    let mut c = cfg(&dir);
    c.max_in_flight = 1;
    let mut sink = FirehoseSink::with_api(c, api.clone()).expect("start");
    let t0 = Instant::now();
    send_all(&mut sink, 40).await;
    sink.close().await;
    assert_eq!(api.accepted_seqs(), (0..40).collect::<Vec<_>>());
    let st = sink.stats();
    assert_eq!(st.requests_failed.load(Ordering::Relaxed), 4);
    assert_eq!(st.dropped_lines.load(Ordering::Relaxed), 0);
    // Three sink-wide pauses of at least 250 ms, 500 ms, 1 s (half of each ceiling).
    assert!(
        t0.elapsed() >= Duration::from_millis(1750),
        "{:?}",
        t0.elapsed()
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(start_paused = true)]
async fn rejected_goes_to_the_dead_letter_file_and_is_counted() {
    let dir = tmpdir("rejected");
    let api = FakeFirehose::scripted(vec![Step::Fail(FirehoseError::Rejected {
        code: "InvalidArgumentException".into(),
        message: "bad".into(),
    })]);
    let mut c = cfg(&dir);
    c.max_in_flight = 1;
    let mut sink = FirehoseSink::with_api(c, api.clone()).expect("start");
    send_all(&mut sink, 30).await;
    sink.close().await;
    let st = sink.stats();
    let dead = st.dead_lettered_lines.load(Ordering::Relaxed);
    assert!(dead > 0);
    let text = std::fs::read(dir.join("dead-letter.ndjson")).expect("dead letter file");
    let dead_seqs = seqs(&[Bytes::from(text)]);
    assert_eq!(dead_seqs.len() as u64, dead);
    let mut all = api.accepted_seqs();
    all.extend(dead_seqs);
    all.sort_unstable();
    assert_eq!(
        all,
        (0..30).collect::<Vec<_>>(),
        "rejected xor delivered, never lost"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(start_paused = true)]
async fn outage_spools_and_a_restart_replays_the_spool() {
    let dir = tmpdir("outage");
    let down = FakeFirehose::default();
    down.state().otherwise = Some(unreachable());
    let mut c = cfg(&dir);
    c.drain_timeout = Duration::from_secs(5);
    let mut sink = FirehoseSink::with_api(c.clone(), down.clone()).expect("start");
    send_all(&mut sink, 80).await;
    sink.close().await;
    assert!(down.accepted_seqs().is_empty());
    assert!(spool_files(&dir) > 0, "undelivered batches are on disk");
    assert_eq!(sink.stats().dropped_lines.load(Ordering::Relaxed), 0);

    let up = FakeFirehose::default();
    let mut sink = FirehoseSink::with_api(c, up.clone()).expect("restart");
    sink.close().await;
    assert_eq!(up.accepted_seqs(), (0..80).collect::<Vec<_>>());
    assert_eq!(spool_files(&dir), 0, "acknowledged batches are deleted");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(start_paused = true)]
async fn outage_then_recovery_delivers_everything_in_one_run() {
    let dir = tmpdir("recover");
    let api = FakeFirehose::default();
    api.state().otherwise = Some(unreachable());
    let mut sink = FirehoseSink::with_api(cfg(&dir), api.clone()).expect("start");
    send_all(&mut sink, 50).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(spool_files(&dir) > 0, "spooled during the outage");
    api.state().otherwise = None;
    send_all(&mut sink, 0).await;
    sink.close().await;
    assert_eq!(api.accepted_seqs(), (0..50).collect::<Vec<_>>());
    assert_eq!(spool_files(&dir), 0);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(start_paused = true)]
async fn spool_bound_drops_oldest_and_counts_it() {
    let dir = tmpdir("bound");
    let api = FakeFirehose::default();
    api.state().otherwise = Some(unreachable());
    let mut c = cfg(&dir);
    c.spool_max_bytes = 20_000;
    c.drain_timeout = Duration::from_secs(1);
    let mut sink = FirehoseSink::with_api(c, api.clone()).expect("start");
    send_all(&mut sink, 200).await;
    sink.close().await;
    let st = sink.stats();
    let dropped = st.dropped_lines.load(Ordering::Relaxed);
    assert!(dropped > 0, "the bound forced batches out");
    let (spool, found, _) = Spool::open(&dir).expect("open");
    assert!(spool.bytes() <= 20_000 + 16_384, "{}", spool.bytes());
    let kept: u64 = found.iter().map(|b| b.lines).sum();
    assert_eq!(
        kept + dropped,
        200,
        "every line is spooled or counted as dropped"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// What a SIGKILL leaves: a copy of the spool directory taken while requests are in flight.
fn snapshot(dir: &std::path::Path, name: &str) -> PathBuf {
    let to = tmpdir(name);
    std::fs::create_dir_all(&to).expect("snapshot dir");
    for e in std::fs::read_dir(dir).expect("spool").flatten() {
        if e.file_name().to_string_lossy().ends_with(".fhb") {
            std::fs::copy(e.path(), to.join(e.file_name())).expect("copy");
        }
    }
    to
}

#[tokio::test(start_paused = true)]
async fn spool_always_puts_every_sealed_batch_on_disk_before_sending() {
    for always in [false, true] {
        let dir = tmpdir(if always { "always" } else { "not-always" });
        let hung = FakeFirehose::default();
        hung.state().hang = true;
        let mut c = cfg(&dir);
        c.spool_always = always;
        let mut sink = FirehoseSink::with_api(c.clone(), hung.clone()).expect("start");
        send_all(&mut sink, 40).await;
        // Past the batch age: everything is sealed and in flight (or waiting), nothing answered.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let killed = snapshot(&dir, "killed");
        let on_disk = spool_files(&killed);
        // Restart on what the kill left behind, with Firehose answering.
        let up = FakeFirehose::default();
        let mut c2 = c.clone();
        c2.spool_dir = killed.clone();
        let mut again = FirehoseSink::with_api(c2, up.clone()).expect("restart");
        again.close().await;
        let replayed = up.accepted_seqs();
        println!(
            "spool_always={always}: {on_disk} batch files on disk at the kill, {} of 40 lines replayed",
            replayed.len()
        );
        if always {
            assert_eq!(
                replayed,
                (0..40).collect::<Vec<_>>(),
                "every sealed line survives"
            );
        } else {
            assert_eq!(
                on_disk, 0,
                "without --spool-always in-flight batches are only in memory"
            );
            assert!(replayed.is_empty());
        }
        drop(sink);
        std::fs::remove_dir_all(&dir).ok();
        std::fs::remove_dir_all(&killed).ok();
    }
}

#[tokio::test(start_paused = true)]
async fn a_spooled_batch_with_a_truncated_body_is_renamed_corrupt_at_send_time() {
    let dir = tmpdir("truncated");
    let down = FakeFirehose::default();
    down.state().otherwise = Some(unreachable());
    let mut c = cfg(&dir);
    c.drain_timeout = Duration::from_secs(5);
    let mut sink = FirehoseSink::with_api(c.clone(), down).expect("start");
    send_all(&mut sink, 8).await;
    sink.close().await;
    let files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("spool")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "fhb"))
        .collect();
    assert!(!files.is_empty(), "the outage left batches on disk");
    // Cut one batch's body short: its header still parses, so startup queues it.
    let victim = &files[0];
    let full = std::fs::read(victim).expect("read");
    std::fs::write(victim, &full[..full.len() - 5]).expect("truncate");
    let up = FakeFirehose::default();
    let mut sink = FirehoseSink::with_api(c, up.clone()).expect("restart");
    sink.close().await;
    let corrupt = victim.with_extension("fhb.corrupt");
    assert!(corrupt.exists(), "renamed, not deleted");
    assert_eq!(
        std::fs::read(&corrupt).expect("kept"),
        &full[..full.len() - 5]
    );
    assert!(!victim.exists());
    let st = sink.stats();
    let dropped = st.dropped_lines.load(Ordering::Relaxed);
    assert!(dropped > 0, "its lines are counted as dropped");
    assert_eq!(
        up.accepted_seqs().len() as u64 + dropped,
        8,
        "the other batches are delivered"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Batch files directly in `dir` and in its subdirectories, by directory.
fn batches_by_dir(base: &std::path::Path) -> Vec<(PathBuf, usize)> {
    let mut v: Vec<(PathBuf, usize)> = std::fs::read_dir(base)
        .expect("base")
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| (e.path(), spool_files(&e.path())))
        .collect();
    v.sort();
    v
}

#[test]
fn live_processes_never_share_a_spool_directory_and_orphans_are_adopted() {
    let base = tmpdir("claim");
    let a = spool::claim(&base).expect("first claim");
    let b = spool::claim(&base).expect("second claim");
    assert_ne!(a.dir(), b.dir(), "two live owners, two directories");
    for l in [&a, &b] {
        let name = l.dir().file_name().unwrap().to_string_lossy().into_owned();
        assert!(name.starts_with(spool::INSTANCE_PREFIX), "{name}");
        assert_eq!(l.dir().parent(), Some(base.as_path()));
    }
    // a spools three batches and dies (its lock is released); b is alive with one of its own.
    let write = |dir: &std::path::Path, seqs: &[u64]| {
        let (mut s, _, _) = Spool::open(dir).expect("open");
        for &q in seqs {
            s.write(q, &[Bytes::from(format!("{{\"seq\":{q}}}\n"))], 1)
                .expect("write");
        }
    };
    write(a.dir(), &[0, 1, 2]);
    write(b.dir(), &[7]);
    // A pre-subdirectory agent's batch, directly in the stream directory.
    write(&base, &[4]);
    let a_dir = a.dir().to_path_buf();
    drop(a);
    // A restarted process adopts the orphan, takes the legacy batch, and leaves b's alone.
    let c = spool::claim(&base).expect("restart");
    assert_eq!(c.dir(), a_dir, "the orphan is adopted");
    assert_eq!(spool_files(c.dir()), 4, "its 3 batches + the legacy one");
    assert_eq!(
        spool_files(b.dir()),
        1,
        "a live owner's batches are never touched"
    );
    assert_eq!(spool_files(&base), 0);
    // b dies too: the next claimer finds c busy, adopts b's directory.
    let b_dir = b.dir().to_path_buf();
    drop(b);
    let d = spool::claim(&base).expect("claim while c runs");
    assert_eq!(d.dir(), b_dir);
    // Two orphans: a claimer adopts the first and moves the other's batches into it.
    drop(c);
    drop(d);
    let e = spool::claim(&base).expect("claim with two orphans");
    assert_eq!(spool_files(e.dir()), 5, "{:?}", batches_by_dir(&base));
    let (_, found, problems) = Spool::open(e.dir()).expect("open");
    assert!(problems.is_empty(), "{problems:?}");
    let seqs: Vec<u64> = found.iter().map(|b| b.seq).collect();
    // Which orphan comes first depends on the random directory names: the adopter keeps its
    // own numbers (a's 0..=3 with the legacy batch, or b's 7) and the other's follow them.
    let first = if e.dir() == a_dir { 0 } else { 7 };
    assert_eq!(
        seqs,
        (first..first + 5).collect::<Vec<u64>>(),
        "renumbered after the adopter's own ({} adopted)",
        if first == 0 {
            "a's directory"
        } else {
            "b's directory"
        }
    );
    assert_eq!(found.iter().map(|b| b.lines).sum::<u64>(), 5);
    drop(e);
    std::fs::remove_dir_all(&base).ok();
}

#[tokio::test(start_paused = true)]
async fn a_claiming_sink_replays_what_a_dead_sink_sharing_its_directory_spooled() {
    let base = tmpdir("claim-sink");
    let down = FakeFirehose::default();
    down.state().otherwise = Some(unreachable());
    let mut c = cfg(&base);
    c.drain_timeout = Duration::from_secs(1);
    // A live neighbour on the same directory (another task on the same EFS volume).
    let neighbour = FirehoseSink::claiming(c.clone(), FakeFirehose::default()).expect("start");
    let mut dead = FirehoseSink::claiming(c.clone(), down.clone()).expect("start");
    send_all(&mut dead, 40).await;
    dead.close().await;
    drop(dead);
    let spooled: usize = batches_by_dir(&base).iter().map(|(_, n)| n).sum();
    assert!(spooled > 0, "the outage spooled batches");
    let up = FakeFirehose::default();
    let mut again = FirehoseSink::claiming(c, up.clone()).expect("restart");
    again.close().await;
    assert_eq!(
        up.accepted_seqs(),
        (0..40).collect::<Vec<_>>(),
        "every spooled line replayed, once"
    );
    drop(neighbour);
    std::fs::remove_dir_all(&base).ok();
}
