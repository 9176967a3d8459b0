//! Load seconds to the controller's live view (issue 15 item 5): [`LoadReporter`].
//!
//! A load job's runner calls [`LoadReporter::report`] with each [`SecondReport`] as the engine
//! hands it out (beside writing the second's `kind=load` record to the sinks). The reporter
//! counts the second in the agent's Prometheus metrics ([`crate::metrics::load_second`]) and
//! queues it as a [`pb::LoadReport`]; the controller session sends what is queued as
//! `LoadReports` on the agent → controller stream as soon as it is there.
//!
//! # Best effort, bounded
//!
//! The record in the sinks is the truth; the live view is a view. The queue holds at most
//! [`MAX_QUEUED`] seconds: while the controller is away (or slow) the oldest are dropped and
//! counted (`meshlat_load_live_dropped_reports_total`), so a long outage costs a fixed amount
//! of memory and, once back, the controller sees the latest seconds first-come. A message
//! carries the queued seconds that fit [`meshlat_proto::MAX_LOAD_REPORTS_BYTES`], oldest first;
//! the rest go in the next.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use meshlat_proto::pb;
use prost::Message;
use tokio::sync::Notify;

use super::stats::SecondReport;

/// Most load seconds queued for the controller (about 4 minutes of one job on one target).
pub const MAX_QUEUED: usize = 256;
/// Longest target kept in a report (the job spec's bound on URLs).
pub const MAX_TARGET_BYTES: usize = 2048;

/// Queues load seconds for the controller session (module docs). Cheap to clone: clones share
/// one queue.
#[derive(Clone, Debug, Default)]
pub struct LoadReporter {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    queue: Mutex<VecDeque<pb::LoadReport>>,
    /// Wakes the session when a report is queued.
    queued: Notify,
}

// === impl LoadReporter ===

impl LoadReporter {
    /// An empty queue.
    pub fn new() -> Self {
        LoadReporter::default()
    }

    /// One second of `job_id` against `target` ended: counts it in the metrics and queues it
    /// for the controller, dropping the oldest queued second when [`MAX_QUEUED`] are waiting.
    pub fn report(&self, job_id: &str, target: &str, r: &SecondReport) {
        crate::metrics::load_second(job_id, &r.tally);
        let report = to_pb(job_id, target, r, unix_ms());
        let dropped = {
            let mut q = self.lock();
            let mut dropped = 0u64;
            while q.len() >= MAX_QUEUED {
                q.pop_front();
                dropped += 1;
            }
            q.push_back(report);
            dropped
        };
        if dropped > 0 {
            crate::metrics::load_live_dropped(dropped);
            tracing::debug!(
                message = "Load live-view queue full; oldest second dropped.",
                job = %job_id,
                dropped,
                queued = MAX_QUEUED
            );
        }
        self.shared.queued.notify_one();
    }

    /// Seconds waiting to be sent.
    pub fn queued(&self) -> usize {
        self.lock().len()
    }

    /// Waits until something is queued (at once if something is).
    pub async fn ready(&self) {
        loop {
            let notified = self.shared.queued.notified();
            if !self.lock().is_empty() {
                return;
            }
            notified.await;
        }
    }

    /// Takes the oldest queued seconds that fit one message of
    /// [`meshlat_proto::MAX_LOAD_REPORTS_BYTES`] (at least one, whatever its size; none when
    /// nothing is queued).
    pub fn take_batch(&self) -> pb::LoadReports {
        let mut q = self.lock();
        let mut out = pb::LoadReports::default();
        let mut bytes = 0usize;
        while let Some(front) = q.front() {
            // Its length, a tag byte and a length varint (at most 3 bytes).
            let cost = front.encoded_len() + 4;
            if !out.reports.is_empty() && bytes + cost > meshlat_proto::MAX_LOAD_REPORTS_BYTES {
                break;
            }
            bytes += cost;
            if let Some(r) = q.pop_front() {
                out.reports.push(r);
            }
        }
        out
    }

    /// Puts back a batch the session could not send (it went away), ahead of newer seconds,
    /// within [`MAX_QUEUED`] (the oldest dropped and counted).
    pub fn put_back(&self, batch: pb::LoadReports) {
        let mut q = self.lock();
        for r in batch.reports.into_iter().rev() {
            q.push_front(r);
        }
        let mut dropped = 0u64;
        while q.len() > MAX_QUEUED {
            q.pop_front();
            dropped += 1;
        }
        drop(q);
        if dropped > 0 {
            crate::metrics::load_live_dropped(dropped);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<pb::LoadReport>> {
        self.shared
            .queue
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The wire form of one second (`end_unix_ms`: its wall-clock end).
pub fn to_pb(job_id: &str, target: &str, r: &SecondReport, end_unix_ms: i64) -> pb::LoadReport {
    let t = &r.tally;
    let mut target = target.to_string();
    if target.len() > MAX_TARGET_BYTES {
        let mut cut = MAX_TARGET_BYTES;
        while !target.is_char_boundary(cut) {
            cut -= 1;
        }
        target.truncate(cut);
    }
    pb::LoadReport {
        job_id: job_id.to_string(),
        target,
        second: r.second,
        length_ms: u32::try_from(r.length.as_millis()).unwrap_or(u32::MAX),
        step: r.step,
        workers: r.workers,
        level: r.level,
        intended: t.intended,
        sent: t.sent,
        status_2xx: t.status.s2xx,
        status_3xx: t.status.s3xx,
        status_4xx: t.status.s4xx,
        status_429: t.status.rate_limited,
        status_5xx: t.status.s5xx,
        status_other: t.status.other,
        errors_connect: t.errors.connect,
        errors_timeout: t.errors.timeout,
        errors_tls: t.errors.tls,
        errors_io: t.errors.io,
        corrected: Some(t.corrected.histogram.to_pb()),
        uncorrected: Some(t.uncorrected.histogram.to_pb()),
        corrected_max_ms: t.corrected.max_ms,
        uncorrected_max_ms: t.uncorrected.max_ms,
        end_unix_ms,
    }
}

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use meshlat_proto::sketch::RttHistogram;

    use super::*;
    use crate::load::stats::{ErrorClass, Tally};

    fn second(n: u64) -> SecondReport {
        let mut tally = Tally {
            intended: 12,
            sent: 11,
            ..Tally::default()
        };
        for code in [200, 200, 200, 301, 404, 429, 500, 102] {
            tally.status.add(code);
        }
        for ms in [1, 2, 3, 4, 5, 6, 7, 300] {
            tally.corrected.record(Duration::from_millis(ms));
            tally.uncorrected.record(Duration::from_millis(ms.min(8)));
        }
        tally.errors.add(ErrorClass::Connect);
        tally.errors.add(ErrorClass::Io);
        SecondReport {
            second: n,
            length: Duration::from_millis(1000),
            step: 2,
            workers: 20,
            level: 20.0,
            tally,
        }
    }

    #[test]
    fn the_wire_form_carries_every_count_and_both_histograms() {
        let r = second(7);
        let pb = to_pb("j1", "http://t/", &r, 1_700_000_000_000);
        assert_eq!(
            (pb.second, pb.length_ms, pb.step, pb.workers, pb.level),
            (7, 1000, 2, 20, 20.0)
        );
        assert_eq!((pb.intended, pb.sent), (12, 11));
        assert_eq!(
            [
                pb.status_2xx,
                pb.status_3xx,
                pb.status_4xx,
                pb.status_429,
                pb.status_5xx,
                pb.status_other
            ],
            [3, 1, 1, 1, 1, 1]
        );
        assert_eq!(
            [
                pb.errors_connect,
                pb.errors_timeout,
                pb.errors_tls,
                pb.errors_io
            ],
            [1, 0, 0, 1]
        );
        let c = RttHistogram::from_pb(pb.corrected.as_ref().expect("corrected")).expect("valid");
        assert_eq!(c, r.tally.corrected.histogram);
        assert_eq!(c.count(), 8);
        assert_eq!(pb.corrected_max_ms, Some(300.0));
        assert_eq!(pb.uncorrected_max_ms, Some(8.0));
        let long = "h".repeat(MAX_TARGET_BYTES + 10);
        assert_eq!(to_pb("j", &long, &r, 0).target.len(), MAX_TARGET_BYTES);
    }

    #[tokio::test]
    async fn the_queue_is_bounded_drops_the_oldest_and_batches_within_the_limit() {
        let rep = LoadReporter::new();
        let clone = rep.clone();
        let dropped = || crate::metrics::get().load_live_dropped.get();
        let before = dropped();
        for n in 0..(MAX_QUEUED as u64 + 10) {
            clone.report("j1", "http://t/", &second(n));
        }
        assert_eq!(rep.queued(), MAX_QUEUED);
        // Counted (other tests may drop too: at least these).
        assert!(dropped() - before >= 10);
        rep.ready().await;
        let batch = rep.take_batch();
        // Oldest first, the first 10 dropped.
        assert_eq!(batch.reports.first().map(|r| r.second), Some(10));
        assert!(batch.encoded_len() <= meshlat_proto::MAX_LOAD_REPORTS_BYTES);
        let sent = batch.reports.len();
        assert!(sent > 0);
        // A batch that could not be sent goes back in front.
        rep.put_back(batch);
        assert_eq!(rep.queued(), MAX_QUEUED);
        let mut seen = Vec::new();
        loop {
            let b = rep.take_batch();
            if b.reports.is_empty() {
                break;
            }
            seen.extend(b.reports.iter().map(|r| r.second));
        }
        assert_eq!(seen, (10..MAX_QUEUED as u64 + 10).collect::<Vec<_>>());
        assert_eq!(rep.queued(), 0);
    }

    #[tokio::test]
    async fn ready_wakes_when_a_second_is_queued() {
        let rep = LoadReporter::new();
        let waiter = tokio::spawn({
            let rep = rep.clone();
            async move {
                rep.ready().await;
                rep.take_batch().reports.len()
            }
        });
        tokio::task::yield_now().await;
        rep.report("j1", "http://t/", &second(0));
        let n = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .expect("task");
        assert_eq!(n, 1);
    }
}
