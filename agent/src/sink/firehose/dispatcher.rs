//! The dispatcher task: owns every sealed batch until Firehose accepts it (delivery state,
//! backoff, bounds), spooling through [`super::spool`] during outages and at shutdown. See the
//! module docs of [`super`] for the delivery rules.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::NAME;
use super::client::{self, FirehoseApi, FirehoseError, PutBatchOutcome};
use super::config::FirehoseSinkConfig;
use super::request::{self, PackedBatch, Packer, count_lines};
use super::retry::{self, ErrorClass, FirehoseRetryLogic, RetryAction, RetryLogic};
use super::sink::FirehoseStats;
use super::spool::{Spool, SpoolError, SpooledBatch};
use crate::metrics;

/// One sealed batch, owned by the dispatcher until delivered.
#[derive(Debug)]
struct Entry {
    /// The records still to send; `None` while they are only on disk.
    records: Option<Vec<Bytes>>,
    /// Size of the records (or of the spool file).
    bytes: u64,
    /// Lines in the records.
    lines: u64,
    /// Whether a spool file holds this batch.
    spooled: bool,
    /// Attempts so far (drives this batch's backoff).
    attempts: u32,
    /// Not to be sent before this (after a partial failure or 5xx).
    not_before: Option<Instant>,
    /// A request with this batch is in flight.
    in_flight: bool,
}

pub(super) struct Dispatcher<A> {
    cfg: FirehoseSinkConfig,
    /// The claimed spool directory's lock, held while batches may be written
    /// ([`super::spool::claim`]).
    _lock: Option<super::spool::SpoolLock>,
    api: A,
    retry: FirehoseRetryLogic,
    spool: Spool,
    packer: Packer,
    /// When the oldest line in the packer arrived (for the batch age).
    packer_since: Option<Instant>,
    /// Sealed batches by send order.
    pending: BTreeMap<u64, Entry>,
    next_seq: u64,
    /// Bytes of batches held in memory.
    mem_bytes: u64,
    inflight: JoinSet<(u64, Result<PutBatchOutcome, FirehoseError>)>,
    n_inflight: usize,
    /// The whole sink waits until then (throttling, outage).
    resume_at: Option<Instant>,
    /// Consecutive throttles/outages (drives the sink-wide backoff).
    sink_failures: u32,
    /// Firehose is unreachable: spool everything, probe with one request.
    outage: bool,
    rng: SmallRng,
    stats: Arc<FirehoseStats>,
}

impl<A: FirehoseApi> Dispatcher<A> {
    /// A dispatcher over `spool`, with the batches `spool` held at start queued for replay
    /// (oldest first).
    pub(super) fn new(
        cfg: FirehoseSinkConfig,
        api: A,
        spool: Spool,
        found: Vec<SpooledBatch>,
        stats: Arc<FirehoseStats>,
        lock: Option<super::spool::SpoolLock>,
    ) -> Self {
        let mut d = Dispatcher {
            _lock: lock,
            packer: Packer::new(cfg.limits),
            api,
            spool,
            packer_since: None,
            pending: BTreeMap::new(),
            next_seq: 0,
            mem_bytes: 0,
            inflight: JoinSet::new(),
            n_inflight: 0,
            resume_at: None,
            sink_failures: 0,
            outage: false,
            rng: SmallRng::from_os_rng(),
            retry: FirehoseRetryLogic,
            stats,
            cfg,
        };
        if !found.is_empty() {
            tracing::info!(
                message = "Replaying spooled Firehose batches.",
                batches = found.len(),
                lines = found.iter().map(|b| b.lines).sum::<u64>(),
                dir = %d.spool.dir().display()
            );
        }
        for b in found {
            d.pending.insert(
                b.seq,
                Entry {
                    records: None,
                    bytes: b.bytes,
                    lines: b.lines,
                    spooled: true,
                    attempts: 0,
                    not_before: None,
                    in_flight: false,
                },
            );
            d.next_seq = b.seq + 1;
        }
        d
    }

    /// Accepts lines from `rx` and delivers until `rx` closes and the drain ends (module docs).
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Vec<Bytes>>) {
        let mut drain_deadline: Option<Instant> = None;
        loop {
            self.launch();
            self.update_gauges();
            if drain_deadline.is_some() && self.pending.is_empty() && self.packer.is_empty() {
                break;
            }
            let wake = self.next_wake();
            tokio::select! {
                msg = rx.recv(), if drain_deadline.is_none() => match msg {
                    Some(lines) => self.accept(lines),
                    None => {
                        self.seal_packer();
                        drain_deadline = Some(Instant::now() + self.cfg.drain_timeout);
                    }
                },
                Some(res) = self.inflight.join_next(), if self.n_inflight > 0 => match res {
                    Ok((seq, result)) => self.complete(seq, result),
                    Err(error) => {
                        // A send task panicked: its batch stays pending and is retried.
                        metrics::sink_error(NAME, "send_task", 0, &error);
                        self.n_inflight = self.inflight.len();
                        for e in self.pending.values_mut() { e.in_flight = false; }
                    }
                },
                () = sleep_until_opt(wake) => {
                    if self.packer_expired() {
                        self.seal_packer();
                    }
                }
                () = sleep_until_opt(drain_deadline) => {
                    self.abandon();
                    break;
                }
            }
        }
        self.update_gauges();
    }

    fn update_gauges(&self) {
        let m = metrics::get();
        let l = metrics::SinkLabels { sink: NAME.into() };
        m.sink_backlog_bytes
            .get_or_create(&l)
            .set((self.mem_bytes + self.packer.pending_bytes()) as i64);
        m.sink_spool_bytes
            .get_or_create(&l)
            .set(self.spool.bytes() as i64);
    }

    fn packer_expired(&self) -> bool {
        self.packer_since
            .is_some_and(|t| t + self.cfg.batch_age <= Instant::now())
    }

    /// The next instant something timed is due: the batch age, or a backoff ending.
    fn next_wake(&self) -> Option<Instant> {
        let age = self.packer_since.map(|t| t + self.cfg.batch_age);
        let can_launch = self.n_inflight < self.limit();
        let retry = if can_launch {
            let entry_due = self
                .pending
                .values()
                .filter(|e| !e.in_flight)
                .map(|e| e.not_before)
                .min()
                .map(|nb| match (nb, self.resume_at) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                });
            entry_due.flatten()
        } else {
            None
        };
        match (age, retry) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn limit(&self) -> usize {
        if self.outage {
            1
        } else {
            self.cfg.max_in_flight
        }
    }

    fn accept(&mut self, lines: Vec<Bytes>) {
        for line in lines {
            if self.packer.is_empty() {
                self.packer_since = Some(Instant::now());
            }
            match self.packer.push(&line) {
                Ok(Some(batch)) => {
                    self.packer_since = (!self.packer.is_empty()).then(Instant::now);
                    self.seal(batch);
                }
                Ok(None) => {}
                Err(oversize) => {
                    if self.packer.is_empty() {
                        self.packer_since = None;
                    }
                    self.dead_letter(&[line], 1, &oversize);
                }
            }
        }
        self.enforce_bounds();
    }

    fn seal_packer(&mut self) {
        self.packer_since = None;
        if let Some(b) = self.packer.finish() {
            self.seal(b);
            self.enforce_bounds();
        }
    }

    fn seal(&mut self, b: PackedBatch) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.mem_bytes += b.bytes;
        self.pending.insert(
            seq,
            Entry {
                records: Some(b.records),
                bytes: b.bytes,
                lines: b.lines,
                spooled: false,
                attempts: 0,
                not_before: None,
                in_flight: false,
            },
        );
        if self.outage {
            self.spill(seq);
        } else if self.cfg.spool_always {
            self.persist(seq);
        }
    }

    /// Starts requests for the oldest eligible batches, up to the in-flight limit.
    fn launch(&mut self) {
        let now = Instant::now();
        if self.resume_at.is_some_and(|t| t > now) {
            return;
        }
        while self.n_inflight < self.limit() {
            let Some((&seq, _)) = self
                .pending
                .iter()
                .find(|(_, e)| !e.in_flight && e.not_before.is_none_or(|t| t <= now))
            else {
                return;
            };
            let records = match self.load(seq) {
                Ok(r) => r,
                Err(error) => {
                    // A batch whose body does not parse is kept as `*.corrupt` for inspection,
                    // never deleted; its lines count as dropped.
                    if let Some(e) = self.pending.remove(&seq) {
                        match self.spool.quarantine(seq) {
                            Ok(path) => {
                                tracing::error!(message = "Corrupt spool batch set aside.", path = %path.display(), %error)
                            }
                            Err(q) => {
                                tracing::error!(message = "Corrupt spool batch could not be renamed.", %error, rename_error = %q)
                            }
                        }
                        self.drop_lines("spool_corrupt", e.lines, &error);
                    }
                    continue;
                }
            };
            let Some(e) = self.pending.get_mut(&seq) else {
                continue;
            };
            e.in_flight = true;
            self.n_inflight += 1;
            let bytes: u64 = records.iter().map(|r| r.len() as u64).sum();
            let s = &self.stats;
            s.requests.fetch_add(1, Ordering::Relaxed);
            s.records_sent
                .fetch_add(records.len() as u64, Ordering::Relaxed);
            s.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
            s.bytes_billed
                .fetch_add(request::billed_bytes(&records), Ordering::Relaxed);
            let api = self.api.clone();
            let stream = self.cfg.stream.clone();
            self.inflight.spawn(async move {
                // The SDK has its own attempt timeout; this one also bounds fake transports.
                let limit = client::ATTEMPT_TIMEOUT + std::time::Duration::from_secs(5);
                let res = match tokio::time::timeout(limit, api.put_record_batch(&stream, records))
                    .await
                {
                    Ok(r) => r,
                    Err(_) => Err(FirehoseError::Unreachable {
                        message: format!("no answer within {limit:?}"),
                    }),
                };
                (seq, res)
            });
        }
    }

    /// The records of batch `seq`, from memory or the spool (then kept in memory while sent).
    fn load(&mut self, seq: u64) -> Result<Vec<Bytes>, SpoolError> {
        let Some(e) = self.pending.get_mut(&seq) else {
            return Ok(Vec::new());
        };
        if let Some(r) = &e.records {
            return Ok(r.clone());
        }
        let r = self.spool.read(seq)?;
        e.bytes = r.iter().map(|x| x.len() as u64).sum();
        self.mem_bytes += e.bytes;
        e.records = Some(r.clone());
        Ok(r)
    }

    fn complete(&mut self, seq: u64, result: Result<PutBatchOutcome, FirehoseError>) {
        self.n_inflight = self.n_inflight.saturating_sub(1);
        let now = Instant::now();
        match result {
            Ok(outcome) => {
                if self.outage {
                    tracing::info!(message = "Firehose reachable again; replaying the spool.");
                }
                self.outage = false;
                self.sink_failures = 0;
                self.resume_at = None;
                match self.retry.on_response(&outcome) {
                    RetryAction::Delivered => self.delivered(seq),
                    RetryAction::RetryPartial(idx) => self.retry_partial(seq, &idx, now),
                }
            }
            Err(error) => {
                self.stats.requests_failed.fetch_add(1, Ordering::Relaxed);
                let class = self.retry.classify(&error);
                let Some(e) = self.pending.get_mut(&seq) else {
                    return;
                };
                e.in_flight = false;
                e.attempts += 1;
                let lines = e.lines;
                match class {
                    ErrorClass::Permanent => {
                        let records = e.records.clone().unwrap_or_default();
                        self.forget(seq);
                        self.dead_letter(&records, lines, &error);
                    }
                    ErrorClass::Retriable => {
                        e.not_before = Some(
                            now + retry::BATCH.delay(e.attempts - 1, self.rng.random::<f64>()),
                        );
                        metrics::sink_retry(NAME, "server_error", lines, &error);
                    }
                    ErrorClass::Throttled => {
                        self.pause(now);
                        metrics::sink_retry(NAME, "throttled", lines, &error);
                    }
                    ErrorClass::Outage => {
                        if !self.outage {
                            tracing::warn!(
                                message = "Firehose unreachable; spooling to disk.",
                                %error,
                                dir = %self.spool.dir().display()
                            );
                        }
                        self.outage = true;
                        self.pause(now);
                        metrics::sink_retry(NAME, "unreachable", lines, &error);
                        let seqs: Vec<u64> = self.pending.keys().copied().collect();
                        for s in seqs {
                            self.spill(s);
                        }
                    }
                }
                self.release(seq);
            }
        }
        self.enforce_bounds();
    }

    fn pause(&mut self, now: Instant) {
        let d = retry::SINK.delay(self.sink_failures, self.rng.random::<f64>());
        self.sink_failures = self.sink_failures.saturating_add(1);
        self.resume_at = Some(now + d);
    }

    fn delivered(&mut self, seq: u64) {
        if let Some(e) = self.pending.get(&seq) {
            let lines = e.lines;
            self.forget(seq);
            self.stats
                .delivered_lines
                .fetch_add(lines, Ordering::Relaxed);
            metrics::get()
                .sink_delivered
                .get_or_create(&metrics::SinkLabels { sink: NAME.into() })
                .inc_by(lines);
        }
    }

    fn retry_partial(&mut self, seq: u64, idx: &[usize], now: Instant) {
        let Some(e) = self.pending.get_mut(&seq) else {
            return;
        };
        e.in_flight = false;
        e.attempts += 1;
        let all = e.records.take().unwrap_or_default();
        let mut subset: Vec<Bytes> = idx.iter().filter_map(|&i| all.get(i).cloned()).collect();
        if subset.is_empty() {
            // Indices outside the request: resend everything rather than guess.
            subset = all;
        }
        let old = e.bytes;
        e.bytes = subset.iter().map(|r| r.len() as u64).sum();
        e.lines = count_lines(&subset);
        e.not_before = Some(now + retry::BATCH.delay(e.attempts - 1, self.rng.random::<f64>()));
        let (lines, n, spooled) = (e.lines, subset.len(), e.spooled);
        self.mem_bytes = self.mem_bytes - old + e.bytes;
        self.stats
            .records_retried
            .fetch_add(n as u64, Ordering::Relaxed);
        metrics::sink_retry(
            NAME,
            "partial_failure",
            lines,
            &format_args!("{n} of {} records failed", idx.len().max(n)),
        );
        if spooled && let Err(error) = self.spool.write(seq, &subset, lines) {
            // The old file still holds a superset: a restart would resend more, never less.
            metrics::sink_error(NAME, "spool_write", 0, &error);
        }
        if let Some(e) = self.pending.get_mut(&seq) {
            e.records = Some(subset);
        }
        self.release(seq);
    }

    /// After an attempt: a spooled batch's records leave memory until it is sent again.
    fn release(&mut self, seq: u64) {
        if let Some(e) = self.pending.get_mut(&seq)
            && e.spooled
            && !e.in_flight
            && e.records.take().is_some()
        {
            self.mem_bytes = self.mem_bytes.saturating_sub(e.bytes);
        }
    }

    /// Removes a batch from memory and disk (delivered, dead-lettered or dropped).
    fn forget(&mut self, seq: u64) {
        if let Some(e) = self.pending.remove(&seq) {
            if e.records.is_some() {
                self.mem_bytes = self.mem_bytes.saturating_sub(e.bytes);
            }
            if e.spooled
                && let Err(error) = self.spool.remove(seq)
            {
                metrics::sink_error(NAME, "spool_remove", 0, &error);
            }
        }
    }

    /// Writes batch `seq` to the spool (if not there yet); frees its memory unless in flight.
    /// `--spool-always`: writes batch `seq` to the spool before its first send, keeping it in
    /// memory too; a SIGKILL then loses only the lines still being packed.
    fn persist(&mut self, seq: u64) {
        let Some(e) = self.pending.get_mut(&seq) else {
            return;
        };
        let (false, Some(records)) = (e.spooled, &e.records) else {
            return;
        };
        match self.spool.write(seq, records, e.lines) {
            Ok(_) => {
                e.spooled = true;
                self.stats.spooled_batches.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => metrics::sink_error(NAME, "spool_write", 0, &error),
        }
    }

    fn spill(&mut self, seq: u64) -> bool {
        let Some(e) = self.pending.get_mut(&seq) else {
            return false;
        };
        if !e.spooled {
            let Some(records) = &e.records else {
                return false;
            };
            match self.spool.write(seq, records, e.lines) {
                Ok(_) => {
                    e.spooled = true;
                    self.stats.spooled_batches.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => {
                    metrics::sink_error(NAME, "spool_write", 0, &error);
                    return false;
                }
            }
        }
        self.release(seq);
        true
    }

    fn enforce_bounds(&mut self) {
        // Memory: move the oldest batches to disk; if the disk refuses, drop them (counted).
        while self.mem_bytes + self.packer.pending_bytes() > self.cfg.memory_max_bytes {
            let Some(seq) = self
                .pending
                .iter()
                .find(|(_, e)| e.records.is_some() && !e.in_flight && !e.spooled)
                .map(|(&s, _)| s)
            else {
                break;
            };
            if !self.spill(seq)
                && let Some(lines) = self.pending.get(&seq).map(|e| e.lines)
            {
                self.forget(seq);
                self.drop_lines(
                    "memory_full",
                    lines,
                    &"memory bound reached and the spool is not writable",
                );
            }
        }
        // Spool: delete the oldest batches not being sent.
        while self.spool.bytes() > self.cfg.spool_max_bytes {
            let Some((seq, lines)) = self
                .pending
                .iter()
                .find(|(_, e)| e.spooled && !e.in_flight)
                .map(|(&s, e)| (s, e.lines))
            else {
                break;
            };
            self.forget(seq);
            self.drop_lines(
                "spool_full",
                lines,
                &format_args!(
                    "spool above --spool-max-bytes ({}); oldest batch deleted",
                    self.cfg.spool_max_bytes
                ),
            );
        }
    }

    fn drop_lines(&self, reason: &str, lines: u64, error: &dyn std::fmt::Display) {
        self.stats.dropped_lines.fetch_add(lines, Ordering::Relaxed);
        metrics::sink_error(NAME, reason, lines, error);
    }

    fn dead_letter(&mut self, records: &[Bytes], lines: u64, error: &dyn std::fmt::Display) {
        self.stats
            .dead_lettered_lines
            .fetch_add(lines, Ordering::Relaxed);
        match self.spool.dead_letter(records) {
            Ok(path) => metrics::sink_error(
                NAME,
                "rejected",
                lines,
                &format_args!("{error}; lines kept in {}", path.display()),
            ),
            Err(io) => {
                metrics::sink_error(NAME, "rejected", lines, error);
                self.drop_lines("dead_letter_write", lines, &io);
            }
        }
    }

    /// The drain time is over: stop sending and put everything undelivered on disk.
    fn abandon(&mut self) {
        self.inflight.abort_all();
        self.n_inflight = 0;
        self.seal_packer();
        let seqs: Vec<u64> = self.pending.keys().copied().collect();
        let mut spooled = 0u64;
        for seq in seqs {
            if let Some(e) = self.pending.get_mut(&seq) {
                e.in_flight = false;
            }
            if self.spill(seq) {
                spooled += 1;
            } else if let Some(lines) = self.pending.get(&seq).map(|e| e.lines) {
                self.forget(seq);
                self.drop_lines("shutdown", lines, &"could not spool at shutdown");
            }
        }
        self.enforce_bounds();
        if spooled > 0 {
            tracing::warn!(
                message = "Firehose not drained within the shutdown budget; batches left in the spool for the next start.",
                batches = spooled,
                dir = %self.spool.dir().display()
            );
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
