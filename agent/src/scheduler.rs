//! The scheduler: runs a watched job set (STYLE §3, cloudprober's `probes/common/sched`).
//!
//! Each (job, target) pair gets its own task that starts a sample every `interval` (measured
//! between sample starts), turns the [`Measurement`](crate::probe::Measurement) into a
//! [`Record`] and hands it to the sinks. When the job set changes, pairs no longer wanted are
//! cancelled and new ones started (a new job version or a new signing key counts as a new
//! pair); unchanged pairs keep their cadence. Standalone `agent probe`
//! is the same scheduler with a fixed job set: when the sender of the set is dropped and every
//! pair has finished its count, [`Scheduler::run`] returns.
//!
//! Probes never schedule themselves and never see the sinks.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use meshlat_proto::record::{ControlMode, Kind, Record};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::AgentIdentity;
use crate::probe::{Outcome, ProbeRunner, ProbeSpec};
use crate::sink::SinkHandle;
use crate::target::Target;

/// Identity of the agent at the other end of a pair, if it is one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// Agent id.
    pub agent: Option<String>,
    /// Region.
    pub region: Option<String>,
    /// Availability zone.
    pub az: Option<String>,
    /// Location label.
    pub location: Option<String>,
}

/// One target of a job.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JobTarget {
    /// What to probe.
    pub target: Target,
    /// Who is there.
    pub dst: PeerInfo,
    /// For relay targets: the relay agent (empty standalone).
    pub relay: PeerInfo,
}

/// A job as the scheduler runs it.
#[derive(Clone, Debug)]
pub struct Job {
    /// Job id (`standalone` for `agent probe`).
    pub id: String,
    /// Bumped when the job changes; a change restarts its pairs.
    pub version: u64,
    /// Probe or relay.
    pub kind: Kind,
    /// Probe parameters; `spec.protocol` must match every target's.
    pub spec: ProbeSpec,
    /// Targets.
    pub targets: Vec<JobTarget>,
    /// Time between sample starts (0: back to back).
    pub interval: Duration,
    /// Samples per target (`None`: unbounded).
    pub count: Option<u64>,
    /// Spread first samples uniformly over one interval (mesh jobs), instead of starting at once.
    pub spread_start: bool,
}

/// The whole desired job set.
#[derive(Clone, Debug, Default)]
pub struct JobSet {
    /// Generation (from the controller; 0 standalone).
    pub generation: u64,
    /// Jobs.
    pub jobs: Vec<Arc<Job>>,
}

/// Counts of what the scheduler measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunSummary {
    /// Measurements that succeeded.
    pub ok: u64,
    /// Measurements that failed.
    pub failed: u64,
    /// Jobs whose probes could not be set up.
    pub setup_errors: u64,
}

#[derive(Debug, Default)]
struct Counters {
    ok: AtomicU64,
    failed: AtomicU64,
    setup_errors: AtomicU64,
}

/// Runs job sets.
#[derive(Debug)]
pub struct Scheduler {
    identity: AgentIdentity,
    sinks: SinkHandle,
    control_mode: watch::Receiver<ControlMode>,
    location_from_local_addr: bool,
}

/// A running pair: job id, job version, the id of the key its UDP packets are signed with (a
/// rotated mesh key restarts the pair, or it would sign with the old key forever), target.
type PairKey = (String, u64, u32, String);

impl Scheduler {
    /// A scheduler writing records with this identity to these sinks.
    pub fn new(
        identity: AgentIdentity,
        sinks: SinkHandle,
        control_mode: watch::Receiver<ControlMode>,
    ) -> Self {
        Scheduler {
            identity,
            sinks,
            control_mode,
            location_from_local_addr: false,
        }
    }

    /// Without a location label, write the address each sample was sent from as
    /// `src_location` ([`crate::local_addr::for_sample`]), as perftest's From_Location did
    /// (`agent probe`). A configured label always wins.
    #[must_use]
    pub fn with_local_addr_location(mut self) -> Self {
        self.location_from_local_addr = self.identity.location.is_none();
        self
    }

    /// Runs until `shutdown`, or until the job-set sender is dropped and every pair finished.
    pub async fn run(
        self,
        mut jobs: watch::Receiver<JobSet>,
        shutdown: CancellationToken,
    ) -> RunSummary {
        let counters = Arc::new(Counters::default());
        let identity = Arc::new(self.identity.clone());
        let mut pairs: HashMap<PairKey, CancellationToken> = HashMap::new();
        let mut tasks: JoinSet<PairKey> = JoinSet::new();
        let mut sender_alive = true;
        let mut current = jobs.borrow_and_update().clone();
        loop {
            self.reconcile(
                &current, &mut pairs, &mut tasks, &identity, &counters, &shutdown,
            );
            crate::metrics::get()
                .scheduled_pairs
                .set(pairs.len() as i64);
            if !sender_alive && tasks.is_empty() {
                break;
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = jobs.changed(), if sender_alive => {
                    match changed {
                        Ok(()) => current = jobs.borrow_and_update().clone(),
                        Err(_) => sender_alive = false,
                    }
                }
                Some(done) = tasks.join_next() => {
                    if let Ok(key) = done {
                        // A finished pair stays "wanted" until the job set drops it, so it is not
                        // restarted; remember it with a cancelled token.
                        if let Some(tok) = pairs.get(&key) { tok.cancel(); }
                    }
                }
            }
        }
        for tok in pairs.values() {
            tok.cancel();
        }
        while tasks.join_next().await.is_some() {}
        crate::metrics::get().scheduled_pairs.set(0);
        RunSummary {
            ok: counters.ok.load(Ordering::Relaxed),
            failed: counters.failed.load(Ordering::Relaxed),
            setup_errors: counters.setup_errors.load(Ordering::Relaxed),
        }
    }

    fn reconcile(
        &self,
        set: &JobSet,
        pairs: &mut HashMap<PairKey, CancellationToken>,
        tasks: &mut JoinSet<PairKey>,
        identity: &Arc<AgentIdentity>,
        counters: &Arc<Counters>,
        shutdown: &CancellationToken,
    ) {
        let mut wanted: HashMap<PairKey, (Arc<Job>, JobTarget)> = HashMap::new();
        for job in &set.jobs {
            for t in &job.targets {
                wanted.insert(
                    (
                        job.id.clone(),
                        job.version,
                        job.spec.key.id,
                        t.target.raw.clone(),
                    ),
                    (job.clone(), t.clone()),
                );
            }
        }
        pairs.retain(|k, tok| {
            let keep = wanted.contains_key(k);
            if !keep {
                tok.cancel();
            }
            keep
        });
        let mut runners: HashMap<(String, u64, u32), Option<Arc<ProbeRunner>>> = HashMap::new();
        for (key, (job, target)) in wanted {
            if pairs.contains_key(&key) {
                continue;
            }
            let runner = runners
                .entry((job.id.clone(), job.version, job.spec.key.id))
                .or_insert_with(|| match ProbeRunner::new(&job.spec) {
                    Ok(r) => Some(Arc::new(r)),
                    Err(error) => {
                        tracing::error!(message = "Job cannot run: probe setup failed.", job = %job.id, %error);
                        counters.setup_errors.fetch_add(1, Ordering::Relaxed);
                        None
                    }
                })
                .clone();
            let tok = shutdown.child_token();
            pairs.insert(key.clone(), tok.clone());
            let Some(runner) = runner else {
                tok.cancel();
                continue;
            };
            let pair = Pair {
                key,
                job,
                target,
                runner,
                identity: identity.clone(),
                sinks: self.sinks.clone(),
                control_mode: self.control_mode.clone(),
                counters: counters.clone(),
                location_from_local_addr: self.location_from_local_addr,
            };
            tasks.spawn(pair.run(tok));
        }
    }
}

/// One (job, target) pair's task state.
struct Pair {
    key: PairKey,
    job: Arc<Job>,
    target: JobTarget,
    runner: Arc<ProbeRunner>,
    identity: Arc<AgentIdentity>,
    sinks: SinkHandle,
    control_mode: watch::Receiver<ControlMode>,
    counters: Arc<Counters>,
    location_from_local_addr: bool,
}

/// The last probed address and the local address toward it: one route lookup per change of
/// the target's address, not per sample.
type LocalAddrCache = Option<(Option<SocketAddr>, Option<String>)>;

/// The local address a sample that probed `remote` was sent from, as text (cached).
fn local_location(cache: &mut LocalAddrCache, remote: Option<SocketAddr>) -> Option<String> {
    match cache {
        Some((r, l)) if *r == remote => l.clone(),
        _ => {
            let l = crate::local_addr::for_sample(remote).map(|ip| ip.to_string());
            *cache = Some((remote, l.clone()));
            l
        }
    }
}

impl Pair {
    async fn run(self, cancel: CancellationToken) -> PairKey {
        let job = &self.job;
        let mut next = Instant::now();
        if job.spread_start && !job.interval.is_zero() {
            next += job.interval.mul_f64(rand::random::<f64>());
        }
        let mut seq: u64 = 0;
        let mut local: LocalAddrCache = None;
        loop {
            if job.count.is_some_and(|c| seq >= c) {
                break;
            }
            tokio::select! {
                () = cancel.cancelled() => return self.key,
                () = tokio::time::sleep_until(next) => {}
            }
            let lag = Instant::now().saturating_duration_since(next);
            if lag > Duration::from_millis(1) {
                crate::metrics::get().sched_late.inc();
            }
            let m = tokio::select! {
                () = cancel.cancelled() => return self.key,
                m = self.runner.run_once(&self.target.target) => m,
            };
            let mut rec = self.record(&m, seq, lag);
            if self.location_from_local_addr {
                rec.src_location = local_location(&mut local, m.data.remote_addr);
            }
            let protocol = job.spec.protocol.as_str();
            match &m.outcome {
                Outcome::Ok => {
                    self.counters.ok.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::measurement(protocol, "ok");
                }
                Outcome::Failed { kind, detail } => {
                    self.counters.failed.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::measurement(protocol, kind.as_str());
                    tracing::warn!(
                        message = "Measurement failed.",
                        job = %job.id,
                        target = %self.target.target,
                        seq,
                        error_kind = kind.as_str(),
                        error = %detail
                    );
                }
            }
            crate::metrics::observe(&rec);
            self.sinks.send(rec).await;
            seq += 1;
            // Interval is between sample starts; a sample that overran starts the next at once.
            next += job.interval;
            let now = Instant::now();
            if next < now {
                next = now;
            }
        }
        self.sinks
            .target_done(&job.id, &self.target.target.raw)
            .await;
        self.key
    }

    fn record(&self, m: &crate::probe::Measurement, seq: u64, lag: Duration) -> Record {
        let id = &self.identity;
        let dst = &self.target.dst;
        let mut rec = Record::new(
            m.started,
            &self.job.id,
            &self.target.target.raw,
            crate::VERSION,
        );
        rec.kind = Some(self.job.kind);
        rec.protocol = Some(self.target.target.protocol);
        rec.src_agent = id.agent_id.clone();
        rec.src_region = Some(id.region.clone());
        rec.src_az = id.az.clone();
        rec.src_location = id.location.clone();
        rec.dst_agent = dst.agent.clone();
        rec.dst_region = dst.region.clone();
        rec.dst_az = dst.az.clone();
        rec.dst_location = dst.location.clone();
        let relay = &self.target.relay;
        rec.relay_agent = relay.agent.clone();
        rec.relay_region = relay.region.clone();
        rec.relay_az = relay.az.clone();
        rec.relay_location = relay.location.clone();
        rec.seq = seq;
        rec.control_mode = Some(*self.control_mode.borrow());
        rec.sched_lag_ms = Some(crate::probe::round_us(lag.as_secs_f64() * 1000.0));
        m.fill(&mut rec);
        flag_lag(&mut rec);
        rec
    }
}

/// Sets `lag_suspect` from the record's own lateness (start and, for trains, packet sends)
/// against the round trip it measured (a train's median, else the probe's single figure).
pub(crate) fn flag_lag(rec: &mut Record) {
    // A tcp probe's only figure is the kernel's handshake RTT when `tcp_time_source` is
    // `kernel`: no lateness of the agent's reaches it.
    if rec.protocol == Some(meshlat_proto::record::Protocol::Tcp)
        && rec.tcp_time_source == Some(meshlat_proto::record::TcpTimeSource::Kernel)
    {
        rec.lag_suspect = Some(false);
        return;
    }
    let lag = rec
        .sched_lag_ms
        .unwrap_or(0.0)
        .max(rec.send_lag_ms.unwrap_or(0.0));
    let rtt = rec
        .rtt_p50_ms
        .or(rec.handshake_ms)
        .or(rec.total_ms)
        .or(rec.rtt_ms);
    rec.lag_suspect = Some(meshlat_proto::record::lag_suspect(lag, rtt));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{SharedRecord, Sink, SinkError, SinkSet};
    use meshlat_proto::record::Protocol;
    use std::sync::Mutex;

    /// A sink set with one collecting sink, and that sink.
    fn collecting() -> (Collect, SinkSet) {
        let sink = Collect::default();
        let mut sinks = SinkSet::new();
        sinks.add(sink.clone());
        (sink, sinks)
    }

    #[derive(Clone, Default)]
    struct Collect(Arc<Mutex<Vec<SharedRecord>>>, Arc<Mutex<Vec<String>>>);

    impl Sink for Collect {
        fn name(&self) -> &'static str {
            "collect"
        }
        async fn write(&mut self, batch: &[SharedRecord]) -> Result<(), SinkError> {
            self.0
                .lock()
                .expect("test mutex")
                .extend(batch.iter().cloned());
            Ok(())
        }
        async fn target_done(&mut self, _job: &str, target: &str) -> Result<(), SinkError> {
            self.1.lock().expect("test mutex").push(target.to_string());
            Ok(())
        }
        async fn flush(&mut self) -> Result<(), SinkError> {
            Ok(())
        }
    }

    fn tcp_job(
        id: &str,
        version: u64,
        ports: &[u16],
        count: Option<u64>,
        interval: Duration,
    ) -> Arc<Job> {
        Arc::new(Job {
            id: id.into(),
            version,
            kind: Kind::Probe,
            spec: ProbeSpec {
                protocol: Protocol::Tcp,
                timeout: Duration::from_millis(200),
                ..ProbeSpec::default()
            },
            targets: ports
                .iter()
                .map(|p| JobTarget {
                    target: Target::parse(&format!("tcp://127.0.0.1:{p}")).expect("valid"),
                    dst: PeerInfo::default(),
                    relay: PeerInfo::default(),
                })
                .collect(),
            interval,
            count,
            spread_start: false,
        })
    }

    fn identity() -> AgentIdentity {
        AgentIdentity {
            agent_id: Some("a1".into()),
            region: "r1".into(),
            az: None,
            location: Some("lab".into()),
        }
    }

    /// Runs a connected scheduler on `first` (generation 1) for 2.5 s, then on `second`
    /// (generation 2) for `then`; returns the records of both.
    async fn switch_after_2500ms(
        first: Arc<Job>,
        second: Arc<Job>,
        then: Duration,
    ) -> Vec<SharedRecord> {
        let (sink, sinks) = collecting();
        let (_m, mode_rx) = watch::channel(ControlMode::Connected);
        let (tx, rx) = watch::channel(JobSet {
            generation: 1,
            jobs: vec![first],
        });
        let shutdown = CancellationToken::new();
        let run = tokio::spawn(
            Scheduler::new(identity(), sinks.handle(), mode_rx).run(rx, shutdown.clone()),
        );
        tokio::time::sleep(Duration::from_millis(2500)).await;
        tx.send(JobSet {
            generation: 2,
            jobs: vec![second],
        })
        .expect("scheduler alive");
        tokio::time::sleep(then).await;
        shutdown.cancel();
        run.await.expect("scheduler task");
        sinks.close(Duration::from_secs(5)).await;
        sink.0.lock().expect("test mutex").clone()
    }

    #[tokio::test(start_paused = true)]
    async fn fixed_job_set_runs_count_samples_per_target_then_returns() {
        let (sink, sinks) = collecting();
        let (_mode_tx, mode_rx) = watch::channel(ControlMode::Standalone);
        let sched = Scheduler::new(identity(), sinks.handle(), mode_rx);
        // Ports 1 and 2 on loopback are closed: every sample fails fast with a record.
        let (tx, rx) = watch::channel(JobSet {
            generation: 0,
            jobs: vec![tcp_job("j", 0, &[1, 2], Some(3), Duration::from_secs(1))],
        });
        drop(tx);
        let summary = sched.run(rx, CancellationToken::new()).await;
        sinks.close(Duration::from_secs(5)).await;
        let recs = sink.0.lock().expect("test mutex").clone();
        assert_eq!(summary.ok + summary.failed, 6);
        assert_eq!(recs.len(), 6);
        for port in [1, 2] {
            let mut seqs: Vec<u64> = recs
                .iter()
                .filter(|r| r.target == format!("tcp://127.0.0.1:{port}"))
                .map(|r| r.seq)
                .collect();
            seqs.sort_unstable();
            assert_eq!(seqs, vec![0, 1, 2]);
        }
        let r = &recs[0];
        assert_eq!(
            (
                r.src_agent.as_deref(),
                r.src_region.as_deref(),
                r.control_mode
            ),
            (Some("a1"), Some("r1"), Some(ControlMode::Standalone))
        );
        assert_eq!(
            sink.1.lock().expect("test mutex").len(),
            2,
            "each target reports done"
        );
    }

    /// One sample of a closed loopback TCP port (it fails at once, with the address it tried)
    /// by a standalone scheduler with `identity`; the record.
    async fn one_loopback_record(identity: AgentIdentity, local_addr_location: bool) -> Record {
        let (sink, sinks) = collecting();
        let (_m, mode_rx) = watch::channel(ControlMode::Standalone);
        let (tx, rx) = watch::channel(JobSet {
            generation: 0,
            jobs: vec![tcp_job("j", 0, &[1], Some(1), Duration::from_secs(1))],
        });
        drop(tx);
        let mut sched = Scheduler::new(identity, sinks.handle(), mode_rx);
        if local_addr_location {
            sched = sched.with_local_addr_location();
        }
        sched.run(rx, CancellationToken::new()).await;
        sinks.close(Duration::from_secs(5)).await;
        let recs = sink.0.lock().expect("test mutex").clone();
        assert_eq!(recs.len(), 1);
        (*recs[0]).clone()
    }

    #[tokio::test]
    async fn without_a_location_label_probe_records_carry_the_local_address() {
        let unlabelled = AgentIdentity {
            location: None,
            ..identity()
        };
        let r = one_loopback_record(unlabelled.clone(), true).await;
        assert_eq!(r.remote_addr.as_deref(), Some("127.0.0.1:1"), "{r:?}");
        assert_eq!(r.src_location.as_deref(), Some("127.0.0.1"));
        // A label wins over the address.
        let r = one_loopback_record(identity(), true).await;
        assert_eq!(r.src_location.as_deref(), Some("lab"));
        // Without the option (agents under a controller) no address stands in for the label.
        let r = one_loopback_record(unlabelled, false).await;
        assert_eq!(r.src_location, None);
    }

    #[tokio::test(start_paused = true)]
    async fn samples_start_one_interval_apart() {
        let (_sink, sinks) = collecting();
        let (_m, mode_rx) = watch::channel(ControlMode::Connected);
        let (tx, rx) = watch::channel(JobSet {
            generation: 1,
            jobs: vec![tcp_job("j", 0, &[1], Some(4), Duration::from_secs(10))],
        });
        drop(tx);
        let t0 = Instant::now();
        Scheduler::new(identity(), sinks.handle(), mode_rx)
            .run(rx, CancellationToken::new())
            .await;
        // 4 samples: starts at 0, 10, 20, 30 s of virtual time.
        assert!(Instant::now() - t0 >= Duration::from_secs(30));
        assert!(Instant::now() - t0 < Duration::from_secs(31));
        sinks.close(Duration::from_secs(5)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn job_set_changes_stop_removed_pairs_and_start_new_ones() {
        let recs = switch_after_2500ms(
            tcp_job("a", 0, &[1], None, Duration::from_secs(1)),
            tcp_job("b", 0, &[2], None, Duration::from_secs(1)),
            Duration::from_millis(2500),
        )
        .await;
        let a: Vec<_> = recs.iter().filter(|r| r.job_id == "a").collect();
        let b: Vec<_> = recs.iter().filter(|r| r.job_id == "b").collect();
        assert_eq!(a.len(), 3, "a ran at 0, 1, 2 s and stopped at 2.5 s");
        assert_eq!(b.len(), 3, "b ran at 2.5, 3.5, 4.5 s");
        assert!(
            recs.iter()
                .all(|r| r.control_mode == Some(ControlMode::Connected))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_signing_key_restarts_the_pairs_of_an_unchanged_job() {
        let with_key = |k: &str| {
            let mut j = (*tcp_job("a", 1, &[1], None, Duration::from_secs(1))).clone();
            j.spec.key = crate::probe::Key::from_secret(k);
            Arc::new(j)
        };
        // The same job (id and version), then to be signed with a rotated mesh key.
        let recs = switch_after_2500ms(
            with_key("old-mesh-key"),
            with_key("new-mesh-key"),
            Duration::from_millis(2000),
        )
        .await;
        let seqs: Vec<u64> = recs.iter().map(|r| r.seq).collect();
        assert_eq!(
            seqs.iter().filter(|&&s| s == 0).count(),
            2,
            "the pair restarted with the new key: {seqs:?}"
        );
    }

    /// The flag takes the worse of the start and send lags against the figure measured.
    #[test]
    fn records_flag_lag_against_their_own_rtt() {
        let mut rec = Record::new(std::time::SystemTime::UNIX_EPOCH, "j", "udp://h:1", "0");
        rec.sched_lag_ms = Some(0.4);
        rec.send_lag_ms = Some(3.0);
        rec.rtt_p50_ms = Some(0.2);
        flag_lag(&mut rec);
        assert_eq!(rec.lag_suspect, Some(true), "3 ms late on a 0.2 ms path");
        rec.rtt_p50_ms = Some(80.0);
        flag_lag(&mut rec);
        assert_eq!(rec.lag_suspect, Some(false), "3 ms late on an 80 ms path");
        // A tcp probe: its connect time is the RTT; the start lag counts.
        let mut tcp = Record::new(std::time::SystemTime::UNIX_EPOCH, "j", "tcp://h:1", "0");
        tcp.sched_lag_ms = Some(12.0);
        tcp.rtt_ms = Some(0.3);
        flag_lag(&mut tcp);
        assert_eq!(tcp.lag_suspect, Some(true));
        tcp.sched_lag_ms = Some(0.5);
        flag_lag(&mut tcp);
        assert_eq!(tcp.lag_suspect, Some(false));
        // Timed by the kernel, it is never suspect, however late the agent.
        tcp.protocol = Some(meshlat_proto::record::Protocol::Tcp);
        tcp.tcp_time_source = Some(meshlat_proto::record::TcpTimeSource::Kernel);
        tcp.sched_lag_ms = Some(12.0);
        flag_lag(&mut tcp);
        assert_eq!(tcp.lag_suspect, Some(false));
    }
}
