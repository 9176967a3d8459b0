//! Per-second results of a load run: counts by status class and error kind, and latency
//! histograms corrected for coordinated omission and not.
//!
//! Sans-IO (STYLE §2): the engine hands in [`Sample`]s with their timestamps and asks for the
//! report of a second once it is over; nothing here reads a clock.
//!
//! # Latency and the correction
//!
//! Every answered request has three times: **intended** (when the schedule wanted it sent),
//! **sent** (when a connection was free to send it) and **done** (response body read to the
//! end). The *corrected* latency is `done − intended`, the *uncorrected* one `done − sent`.
//! In the open model a target that stalls makes requests queue behind the stall: their sent
//! time slips, so only the corrected figure shows what a user arriving on schedule would have
//! waited (Gil Tene's coordinated omission; wrk2 measures the same way). In the closed model a
//! request is intended when its worker is ready to send it, so both figures are the same.
//!
//! The intended times are the schedule's ([`super::plan::Pacer`]), not the moments the engine
//! woke up to send: the engine sleeps on tokio's timer (millisecond granularity), so above
//! 1,000 req/s requests leave in small bursts and the corrected figure includes up to about a
//! millisecond of that lag — the generator's own, reported rather than hidden.
//!
//! Latencies go into [`RttHistogram`]s (the live view's log-bucket sketch, 0.5 % relative
//! error), which merge: a step's or a run's percentiles come from adding its seconds' buckets,
//! not from averaging percentiles. The maximum is kept exactly beside them.
//!
//! # Which second
//!
//! A sample counts in the second (since the run's start) in which it was **done**; an intended
//! send time counts in the second it falls in. A sample that arrives after its second was
//! reported (it finished a hair before the boundary but was recorded after) counts in the next
//! unreported second, so nothing is lost or counted twice.

use std::collections::BTreeMap;
use std::time::Duration;

use meshlat_proto::sketch::RttHistogram;
use tokio::time::Instant;

/// How one request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestResult {
    /// A response with this status code (body read to the end).
    Status(u16),
    /// A response whose status the request's `expect_status` did not expect (counted in
    /// [`StatusCounts::other`]; never 429, which is always rate-limited —
    /// [`super::mix::classify`]).
    Unexpected(u16),
    /// No response: the failure's kind.
    Error(ErrorClass),
}

/// Kinds of failed requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Resolving or connecting failed (refused, unreachable, no address).
    Connect,
    /// No complete response within the request timeout.
    Timeout,
    /// The TLS handshake failed.
    Tls,
    /// The connection failed mid-request (reset, closed early, malformed response).
    Io,
}

/// One request's outcome and times.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// When the schedule wanted it sent (closed model: when it was sent).
    pub intended: Instant,
    /// When it was handed to the connection.
    pub sent: Instant,
    /// When it ended (response complete, or failed).
    pub done: Instant,
    /// How it ended.
    pub result: RequestResult,
}

/// Requests by status class. 429 counts as rate-limited, not in `s4xx`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// 200–299.
    pub s2xx: u64,
    /// 300–399 (redirects are not followed).
    pub s3xx: u64,
    /// 400–499 except 429.
    pub s4xx: u64,
    /// 429 Too Many Requests: the target's rate limit, not a success.
    pub rate_limited: u64,
    /// 500–599.
    pub s5xx: u64,
    /// Anything else (1xx reaching the client, codes above 599), and any status a request's
    /// `expect_status` did not expect.
    pub other: u64,
}

/// Failed requests by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// See [`ErrorClass::Connect`].
    pub connect: u64,
    /// See [`ErrorClass::Timeout`].
    pub timeout: u64,
    /// See [`ErrorClass::Tls`].
    pub tls: u64,
    /// See [`ErrorClass::Io`].
    pub io: u64,
}

/// Latency percentiles (nearest rank, within 0.5 %) and the exact maximum, in milliseconds;
/// all `None` when nothing was answered.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    /// Median.
    pub p50: Option<f64>,
    /// 90th percentile.
    pub p90: Option<f64>,
    /// 99th percentile.
    pub p99: Option<f64>,
    /// 99.9th percentile.
    pub p999: Option<f64>,
    /// Largest.
    pub max: Option<f64>,
}

/// Mergeable latency: histogram plus exact maximum (ms).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    /// Log-bucket counts.
    pub histogram: RttHistogram,
    /// Largest value recorded.
    pub max_ms: Option<f64>,
}

/// What a stretch of a run (a second, a step, the whole run) did. Adds up with
/// [`Tally::merge`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    /// Requests whose intended send time fell here (open model: the schedule; closed model:
    /// equal to `sent`).
    pub intended: u64,
    /// Requests sent.
    pub sent: u64,
    /// Responses by status class.
    pub status: StatusCounts,
    /// Failures by kind.
    pub errors: ErrorCounts,
    /// `done − intended` of answered requests.
    pub corrected: Latency,
    /// `done − sent` of answered requests.
    pub uncorrected: Latency,
}

/// One second of a run, as the engine reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct SecondReport {
    /// Second since the start (0-based).
    pub second: u64,
    /// Length of the stretch covered: 1 s, less for the last (stopped) one.
    pub length: Duration,
    /// Step of the schedule at the end of the second.
    pub step: u32,
    /// Workers (closed model) or open connections (open model) at the end of the second.
    pub workers: u32,
    /// Configured level at the end of the second: workers, or the arrival rate (req/s).
    pub level: f64,
    /// Counts and latencies.
    pub tally: Tally,
}

/// Accumulates samples per second and hands out finished seconds (module docs).
#[derive(Debug)]
pub struct Recorder {
    /// The run's start: second 0 begins here.
    origin: Instant,
    /// Seconds not yet reported.
    open: BTreeMap<u64, Tally>,
    /// Seconds up to this one (exclusive) are reported.
    reported_until: u64,
}

// === impl StatusCounts ===

impl StatusCounts {
    /// Counts one response with `code`.
    pub fn add(&mut self, code: u16) {
        match code {
            429 => self.rate_limited += 1,
            200..=299 => self.s2xx += 1,
            300..=399 => self.s3xx += 1,
            400..=499 => self.s4xx += 1,
            500..=599 => self.s5xx += 1,
            _ => self.other += 1,
        }
    }

    /// All responses.
    pub fn total(&self) -> u64 {
        self.s2xx + self.s3xx + self.s4xx + self.rate_limited + self.s5xx + self.other
    }

    fn merge(&mut self, o: &StatusCounts) {
        self.s2xx += o.s2xx;
        self.s3xx += o.s3xx;
        self.s4xx += o.s4xx;
        self.rate_limited += o.rate_limited;
        self.s5xx += o.s5xx;
        self.other += o.other;
    }
}

// === impl ErrorCounts ===

impl ErrorCounts {
    /// Counts one failure.
    pub fn add(&mut self, e: ErrorClass) {
        match e {
            ErrorClass::Connect => self.connect += 1,
            ErrorClass::Timeout => self.timeout += 1,
            ErrorClass::Tls => self.tls += 1,
            ErrorClass::Io => self.io += 1,
        }
    }

    /// All failures.
    pub fn total(&self) -> u64 {
        self.connect + self.timeout + self.tls + self.io
    }

    fn merge(&mut self, o: &ErrorCounts) {
        self.connect += o.connect;
        self.timeout += o.timeout;
        self.tls += o.tls;
        self.io += o.io;
    }
}

// === impl Latency ===

impl Latency {
    /// Adds one latency.
    pub fn record(&mut self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        self.histogram.record(ms);
        self.max_ms = Some(self.max_ms.map_or(ms, |m| m.max(ms)));
    }

    /// Adds `other`'s latencies.
    pub fn merge(&mut self, other: &Latency) {
        self.histogram.merge(&other.histogram);
        self.max_ms = match (self.max_ms, other.max_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// Percentiles and maximum.
    pub fn summary(&self) -> LatencySummary {
        let q = |p| self.histogram.quantile(p);
        LatencySummary {
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: self.max_ms,
        }
    }
}

// === impl Tally ===

impl Tally {
    /// Adds `other`'s counts and latencies.
    pub fn merge(&mut self, other: &Tally) {
        self.intended += other.intended;
        self.sent += other.sent;
        self.status.merge(&other.status);
        self.errors.merge(&other.errors);
        self.corrected.merge(&other.corrected);
        self.uncorrected.merge(&other.uncorrected);
    }

    /// Responses (any status): what "achieved" counts.
    pub fn responses(&self) -> u64 {
        self.status.total()
    }

    fn add(&mut self, s: &Sample) {
        self.sent += 1;
        match s.result {
            RequestResult::Status(_) | RequestResult::Unexpected(_) => {
                match s.result {
                    RequestResult::Unexpected(_) => self.status.other += 1,
                    RequestResult::Status(code) => self.status.add(code),
                    RequestResult::Error(_) => {}
                }
                self.corrected
                    .record(s.done.saturating_duration_since(s.intended));
                self.uncorrected
                    .record(s.done.saturating_duration_since(s.sent));
            }
            RequestResult::Error(e) => self.errors.add(e),
        }
    }
}

// === impl SecondReport ===

impl SecondReport {
    /// Responses per second over this report's length.
    pub fn achieved_rps(&self) -> f64 {
        per_second(self.tally.responses(), self.length)
    }

    /// Intended requests per second over this report's length.
    pub fn intended_rps(&self) -> f64 {
        per_second(self.tally.intended, self.length)
    }
}

/// `n` per second over `d` (0 for an empty stretch).
pub fn per_second(n: u64, d: Duration) -> f64 {
    if d.is_zero() {
        0.0
    } else {
        n as f64 / d.as_secs_f64()
    }
}

// === impl Recorder ===

impl Recorder {
    /// A recorder whose second 0 starts at `origin`.
    pub fn new(origin: Instant) -> Self {
        Recorder {
            origin,
            open: BTreeMap::new(),
            reported_until: 0,
        }
    }

    /// The second `t` falls in, moved to the first unreported second if that one is past.
    fn second_of(&self, t: Instant) -> u64 {
        let s = t.saturating_duration_since(self.origin).as_secs();
        s.max(self.reported_until)
    }

    /// Counts an intended send time (open model; the closed model counts its sends as intended
    /// in [`Recorder::record`]).
    pub fn intended(&mut self, t: Instant) {
        let s = self.second_of(t);
        self.open.entry(s).or_default().intended += 1;
    }

    /// Counts a finished request.
    pub fn record(&mut self, sample: &Sample) {
        let s = self.second_of(sample.done);
        self.open.entry(s).or_default().add(sample);
    }

    /// Counts a finished closed-model request, which is its own intended send.
    pub fn record_closed(&mut self, sample: &Sample) {
        let s = self.second_of(sample.done);
        let t = self.open.entry(s).or_default();
        t.intended += 1;
        t.add(sample);
    }

    /// Everything counted in seconds before `until` (exclusive), merged, and marks them
    /// reported: later samples of those seconds count in `until`.
    pub fn take_until(&mut self, until: u64) -> Tally {
        let mut out = Tally::default();
        let rest = self.open.split_off(&until);
        for t in std::mem::replace(&mut self.open, rest).values() {
            out.merge(t);
        }
        self.reported_until = self.reported_until.max(until);
        out
    }

    /// Everything not yet reported (the last, partial second at the end of a run).
    pub fn take_all(&mut self) -> Tally {
        let mut out = Tally::default();
        for t in std::mem::take(&mut self.open).values() {
            out.merge(t);
        }
        self.reported_until = u64::MAX;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn status_classes_and_rate_limiting() {
        let mut c = StatusCounts::default();
        for code in [200, 204, 301, 404, 429, 429, 503, 101, 999] {
            c.add(code);
        }
        assert_eq!(
            c,
            StatusCounts {
                s2xx: 2,
                s3xx: 1,
                s4xx: 1,
                rate_limited: 2,
                s5xx: 1,
                other: 2
            }
        );
        assert_eq!(c.total(), 9);
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        for result in [RequestResult::Unexpected(200), RequestResult::Status(200)] {
            r.record(&Sample {
                intended: t0,
                sent: t0,
                done: t0 + ms(1),
                result,
            });
        }
        let t = r.take_all();
        assert_eq!((t.status.other, t.status.s2xx, t.responses()), (1, 1, 2));
        assert_eq!(
            t.corrected.histogram.count(),
            2,
            "unexpected ones are timed too"
        );
    }

    #[test]
    fn samples_count_in_the_second_they_finish_and_late_ones_move_on() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        let ok = |intended: u64, sent: u64, done: u64| Sample {
            intended: t0 + ms(intended),
            sent: t0 + ms(sent),
            done: t0 + ms(done),
            result: RequestResult::Status(200),
        };
        r.record(&ok(900, 900, 990));
        r.record(&ok(990, 990, 1010));
        r.intended(t0 + ms(990));
        r.record(&Sample {
            result: RequestResult::Error(ErrorClass::Timeout),
            ..ok(100, 100, 500)
        });
        let s0 = r.take_until(1);
        assert_eq!((s0.sent, s0.responses(), s0.errors.timeout), (2, 1, 1));
        assert_eq!(s0.intended, 1);
        // Finished at 0.999 s but recorded after second 0 was reported: counts in second 1.
        r.record(&ok(995, 995, 999));
        let s1 = r.take_until(2);
        assert_eq!(s1.responses(), 2);
        assert_eq!(r.take_all(), Tally::default());
    }

    #[test]
    fn corrected_latency_starts_at_the_intended_time() {
        let t0 = Instant::now();
        let mut r = Recorder::new(t0);
        // Intended at 0, could only be sent at 300 ms (the connection was stuck), answered
        // 1 ms later.
        r.record(&Sample {
            intended: t0,
            sent: t0 + ms(300),
            done: t0 + ms(301),
            result: RequestResult::Status(200),
        });
        let t = r.take_all();
        let c = t.corrected.summary();
        let u = t.uncorrected.summary();
        assert!((c.p50.unwrap() - 301.0).abs() <= 301.0 * 0.005, "{c:?}");
        assert!((u.p50.unwrap() - 1.0).abs() <= 0.005, "{u:?}");
        assert_eq!((c.max, u.max), (Some(301.0), Some(1.0)));
    }

    /// An open model at 1,000 req/s over one connection to a server answering in 1 ms, which
    /// stalls for 300 ms at t = 2 s: a simulated link on a virtual clock. Only the corrected
    /// p99 shows the stall, and merging the seconds gives the run's figures.
    #[test]
    fn a_stall_shows_in_the_corrected_p99_only() {
        let t0 = Instant::now();
        let mut pacer = super::super::plan::Pacer::new(t0, 1000.0);
        let mut r = Recorder::new(t0);
        let (stall_at, stall) = (t0 + ms(2000), ms(300));
        let service = ms(1) / 2;
        let mut conn_free = t0;
        let mut seconds = Vec::new();
        let end = t0 + ms(5000);
        while let Some(intended) = pacer.next_due().filter(|t| *t < end) {
            assert_eq!(pacer.poll(intended), Some(intended));
            r.intended(intended);
            let sent = intended.max(conn_free);
            let mut done = sent + service;
            if sent <= stall_at && done > stall_at {
                done = stall_at + stall;
            }
            conn_free = done;
            r.record(&Sample {
                intended,
                sent,
                done,
                result: RequestResult::Status(200),
            });
            let s = intended.duration_since(t0).as_secs();
            while (seconds.len() as u64) < s {
                seconds.push(r.take_until(seconds.len() as u64 + 1));
            }
        }
        seconds.push(r.take_all());
        let mut run = Tally::default();
        for s in &seconds {
            run.merge(s);
        }
        assert_eq!(run.intended, 5000);
        assert_eq!(run.responses(), 5000);
        let (c, u) = (run.corrected.summary(), run.uncorrected.summary());
        // ~300 requests queued behind the stall (6 % of the run): corrected p99 well into it.
        assert!(c.p99.unwrap() > 100.0, "corrected {c:?}");
        // One request saw the stall on the wire: the uncorrected p99 is the service time.
        assert!(u.p99.unwrap() < 1.0, "uncorrected {u:?}");
        assert!(u.max.unwrap() >= 299.0, "the stuck request itself: {u:?}");
        // The second of the stall has it, the first does not.
        assert!(seconds[0].corrected.summary().p99.unwrap() < 1.0);
        assert!(seconds[2].corrected.summary().p99.unwrap() > 100.0);
    }
}
