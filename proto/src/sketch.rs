//! A mergeable RTT histogram with a stated relative error (a DDSketch-style log histogram).
//!
//! Agents summarise each pair's window of RTT samples for the controller's live view; the
//! controller merges pairs (jobs measuring the same pair, agents of one region) into matrix
//! cells. Percentiles do not merge, but bucket counts do: [`RttHistogram`] keeps a count per
//! logarithmic bucket, so merged p50 and p99 are as good as each agent's.
//!
//! # Buckets and error
//!
//! Bucket `i` holds the values `v` (ms) with `γ^(i-1) < v ≤ γ^i`, `γ = (1+α)/(1-α)`,
//! [`RELATIVE_ERROR`] `α = 0.005`; values at or below [`MIN_MS`] (1 µs, including 0) share one
//! zero bucket. A quantile reads the bucket holding the nearest-rank sample (rank `⌈p·n⌉`) and
//! answers its representative `2γ^i/(γ+1)`, which lies within `α` (relative) of every value
//! in the bucket — so a quantile of a merged histogram is within 0.5 % of the exact nearest-rank
//! quantile of the union of the samples (within 1 µs for the zero bucket).
//!
//! # Size and trust
//!
//! RTTs of one pair cluster, so a window of 4,096 samples takes a few dozen buckets, not
//! thousands. The wire form ([`pb::RttHistogram`]) is sparse: delta-coded bucket indexes and
//! their counts. [`RttHistogram::from_pb`] refuses what a lying agent could send to hurt the
//! controller: more than [`MAX_BUCKETS`] buckets, indexes outside the range of
//! [`MIN_MS`]..[`MAX_MS`], mismatched lengths, zero counts, a total over
//! [`MAX_TOTAL_COUNT`].

use std::collections::BTreeMap;

use crate::pb;

/// Relative error of a bucket's representative value (α).
pub const RELATIVE_ERROR: f64 = 0.005;
/// Values at or below this (ms) count in the zero bucket.
pub const MIN_MS: f64 = 0.001;
/// Largest value (ms) with its own bucket; larger ones count in the last bucket (an hour).
pub const MAX_MS: f64 = 3_600_000.0;
/// Most buckets a histogram may carry on the wire.
pub const MAX_BUCKETS: usize = 4096;
/// Largest total count accepted from the wire (as the live view's other counts).
pub const MAX_TOTAL_COUNT: u64 = 1_000_000_000_000;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ERROR) / (1.0 - RELATIVE_ERROR)
}

/// Bucket index of `v` (ms) above [`MIN_MS`]: the `i` with `γ^(i-1) < v ≤ γ^i`.
fn index_of(v: f64) -> i32 {
    let v = v.min(MAX_MS);
    // Bounded: MIN_MS < v ≤ MAX_MS gives about −690..=1,520.
    (v.ln() / gamma().ln()).ceil() as i32
}

fn min_index() -> i32 {
    index_of(MIN_MS) + 1
}

fn max_index() -> i32 {
    index_of(MAX_MS)
}

/// The value a bucket stands for: within α of every value in it.
/// The nearest-rank quantile `p` (0..=1) of `total` samples, `zero` of them zero and the rest
/// in `buckets` (index and count, ascending index): the representative of the bucket holding
/// the sample of rank `⌈p·total⌉` (at least 1); `None` when empty. Should the counts fall
/// short of `total` (not while the callers keep it their sum), the last bucket.
fn bucket_quantile(
    p: f64,
    total: u64,
    zero: u64,
    buckets: impl Iterator<Item = (i32, u64)>,
) -> Option<f64> {
    if total == 0 {
        return None;
    }
    let rank = ((p.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
    let mut acc = zero;
    if acc >= rank {
        return Some(0.0);
    }
    let mut last = None;
    for (i, c) in buckets {
        last = Some(i);
        acc = acc.saturating_add(c);
        if acc >= rank {
            break;
        }
    }
    last.map(representative)
}

fn representative(i: i32) -> f64 {
    let g = gamma();
    2.0 * g.powi(i) / (g + 1.0)
}

/// Counts of RTT samples per logarithmic bucket (module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RttHistogram {
    zero: u64,
    buckets: BTreeMap<i32, u64>,
    total: u64,
}

/// Why a wire histogram was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HistogramError {
    /// `index_deltas` and `counts` differ in length.
    #[error("rtt histogram: {indexes} bucket indexes but {counts} counts")]
    Lengths {
        /// Indexes given.
        indexes: usize,
        /// Counts given.
        counts: usize,
    },
    /// More buckets than [`MAX_BUCKETS`].
    #[error("rtt histogram: {0} buckets, at most {MAX_BUCKETS}")]
    TooManyBuckets(usize),
    /// An index outside the buckets of [`MIN_MS`]..[`MAX_MS`], or not ascending.
    #[error("rtt histogram: bucket index {0} out of range or not ascending")]
    Index(i64),
    /// A bucket with a count of zero (never sent).
    #[error("rtt histogram: bucket {0} has a count of zero")]
    ZeroCount(i32),
    /// The counts sum above [`MAX_TOTAL_COUNT`].
    #[error("rtt histogram: more than {MAX_TOTAL_COUNT} samples")]
    TooManySamples,
}

impl RttHistogram {
    /// An empty histogram.
    pub fn new() -> Self {
        RttHistogram::default()
    }

    /// Adds one sample (ms). Non-finite and negative values count as zero: the agent's own
    /// samples are never that, and a histogram must not panic on them.
    pub fn record(&mut self, ms: f64) {
        self.record_n(ms, 1);
    }

    fn record_n(&mut self, ms: f64, n: u64) {
        if ms.is_nan() || ms <= MIN_MS || ms.is_infinite() {
            self.zero = self.zero.saturating_add(n);
        } else {
            let c = self.buckets.entry(index_of(ms)).or_insert(0);
            *c = c.saturating_add(n);
        }
        self.total = self.total.saturating_add(n);
    }

    /// Samples counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Buckets in use (the zero bucket not included).
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &RttHistogram) {
        self.zero = self.zero.saturating_add(other.zero);
        for (i, c) in &other.buckets {
            let e = self.buckets.entry(*i).or_insert(0);
            *e = e.saturating_add(*c);
        }
        self.total = self.total.saturating_add(other.total);
    }

    /// The nearest-rank quantile `p` (0..=1): the representative of the bucket holding the
    /// sample of rank `⌈p·n⌉` (at least 1); `None` when empty.
    pub fn quantile(&self, p: f64) -> Option<f64> {
        bucket_quantile(
            p,
            self.total,
            self.zero,
            self.buckets.iter().map(|(i, c)| (*i, *c)),
        )
    }

    /// The non-empty buckets, ascending: each one's representative value (ms; 0 for the zero
    /// bucket) and count. What a load record's `lat_hist_ms` / `lat_hist_counts` hold.
    pub fn nonempty_buckets(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        (self.zero > 0)
            .then_some((0.0, self.zero))
            .into_iter()
            .chain(self.buckets.iter().map(|(i, c)| (representative(*i), *c)))
    }

    /// The wire form: ascending buckets, delta-coded indexes.
    pub fn to_pb(&self) -> pb::RttHistogram {
        let mut prev = 0i32;
        let mut index_deltas = Vec::with_capacity(self.buckets.len());
        let mut counts = Vec::with_capacity(self.buckets.len());
        for (i, c) in &self.buckets {
            index_deltas.push(i - prev);
            counts.push(*c);
            prev = *i;
        }
        pb::RttHistogram {
            index_deltas,
            counts,
            zero_count: self.zero,
        }
    }

    /// Reads a wire histogram, refusing what could not come from [`RttHistogram::to_pb`].
    ///
    /// # Errors
    ///
    /// [`HistogramError`] naming what is wrong.
    pub fn from_pb(h: &pb::RttHistogram) -> Result<Self, HistogramError> {
        let total = validate(h)?;
        let mut buckets = BTreeMap::new();
        let mut i = 0i32;
        for (d, c) in h.index_deltas.iter().zip(&h.counts) {
            i += d;
            buckets.insert(i, *c);
        }
        Ok(RttHistogram {
            zero: h.zero_count,
            buckets,
            total,
        })
    }
}

/// Many wire histograms merged into one: a dense count per bucket, for the controller, which
/// merges thousands of pairs into one matrix cell (adding is O(buckets sent), the quantile scan
/// O(all buckets), about 2,200).
#[derive(Clone, Debug)]
pub struct MergedHistogram {
    zero: u64,
    counts: Vec<u64>,
    total: u64,
}

impl Default for MergedHistogram {
    fn default() -> Self {
        MergedHistogram::new()
    }
}

impl MergedHistogram {
    /// Nothing merged yet.
    pub fn new() -> Self {
        MergedHistogram {
            zero: 0,
            counts: Vec::new(),
            total: 0,
        }
    }

    /// Samples merged.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Adds a wire histogram; a refused one adds nothing.
    ///
    /// # Errors
    ///
    /// [`HistogramError`], as [`RttHistogram::from_pb`].
    pub fn add(&mut self, h: &pb::RttHistogram) -> Result<(), HistogramError> {
        let sum = validate(h)?;
        let lo = min_index();
        if self.counts.is_empty() {
            self.counts = vec![0; (max_index() - lo + 1) as usize];
        }
        self.zero = self.zero.saturating_add(h.zero_count);
        let mut i = 0i32;
        for (d, c) in h.index_deltas.iter().zip(&h.counts) {
            i += d;
            let slot = &mut self.counts[(i - lo) as usize];
            *slot = slot.saturating_add(*c);
        }
        self.total = self.total.saturating_add(sum);
        Ok(())
    }

    /// The nearest-rank quantile `p` of everything merged, as [`RttHistogram::quantile`].
    pub fn quantile(&self, p: f64) -> Option<f64> {
        let lo = min_index();
        bucket_quantile(
            p,
            self.total,
            self.zero,
            self.counts
                .iter()
                .enumerate()
                .filter(|(_, c)| **c != 0)
                .map(|(k, c)| (lo + k as i32, *c)),
        )
    }
}

/// Checks a wire histogram (module docs) without keeping it; its total count.
///
/// # Errors
///
/// [`HistogramError`], as [`RttHistogram::from_pb`].
pub fn validate(h: &pb::RttHistogram) -> Result<u64, HistogramError> {
    if h.index_deltas.len() != h.counts.len() {
        return Err(HistogramError::Lengths {
            indexes: h.index_deltas.len(),
            counts: h.counts.len(),
        });
    }
    if h.counts.len() > MAX_BUCKETS {
        return Err(HistogramError::TooManyBuckets(h.counts.len()));
    }
    let (lo, hi) = (i64::from(min_index()), i64::from(max_index()));
    let mut total = h.zero_count;
    let mut prev: i64 = 0;
    for (k, (d, c)) in h.index_deltas.iter().zip(&h.counts).enumerate() {
        let i = prev + i64::from(*d);
        if !(lo..=hi).contains(&i) || (k > 0 && *d <= 0) {
            return Err(HistogramError::Index(i));
        }
        prev = i;
        if *c == 0 {
            // In range (checked above).
            return Err(HistogramError::ZeroCount(i as i32));
        }
        total = total.saturating_add(*c);
    }
    if total > MAX_TOTAL_COUNT {
        return Err(HistogramError::TooManySamples);
    }
    Ok(total)
}

/// Nearest-rank percentile of sorted values (`p` in 0..=1): the sample of rank `⌈p·n⌉`
/// (at least 1); `None` when empty. The one definition of a percentile in meshlat's numbers.
pub fn nearest_rank(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p.clamp(0.0, 1.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn exact(samples: &[f64], p: f64) -> f64 {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        nearest_rank(&s, p).expect("samples")
    }

    fn within(est: f64, exact: f64) -> bool {
        if exact <= MIN_MS {
            return est <= MIN_MS;
        }
        (est - exact).abs() <= RELATIVE_ERROR * exact * (1.0 + 1e-9)
    }

    /// A small deterministic generator (xorshift), so the test needs no seed handling.
    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    /// The property the live view relies on: p50 and p99 of merged histograms are within 1 %
    /// (here 0.5 %) of the exact nearest-rank quantiles of the union of the samples, for parts
    /// with different distributions (a fast and a slow path, a long tail, sub-ms loopback).
    #[test]
    fn merged_quantiles_are_within_the_stated_error_of_the_union() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut worst: f64 = 0.0;
        for round in 0..200 {
            let parts: Vec<Vec<f64>> = (0..1 + round % 5)
                .map(|k| {
                    let base = [0.05, 1.0, 12.0, 70.0, 240.0][(round + k) % 5];
                    let n = 1 + (rng.unit() * 2000.0) as usize;
                    (0..n)
                        .map(|_| {
                            let tail = if rng.unit() < 0.02 { 8.0 } else { 1.0 };
                            base * (1.0 + rng.unit() * 0.3) * tail
                        })
                        .collect()
                })
                .collect();
            let mut merged = RttHistogram::new();
            let mut union = Vec::new();
            for part in &parts {
                let mut h = RttHistogram::new();
                for v in part {
                    h.record(*v);
                }
                // Through the wire form, as agents send them.
                let wire = pb::RttHistogram::decode(h.to_pb().encode_to_vec().as_slice())
                    .expect("decodes");
                merged.merge(&RttHistogram::from_pb(&wire).expect("valid"));
                union.extend_from_slice(part);
            }
            assert_eq!(merged.count(), union.len() as u64);
            let mut dense = MergedHistogram::new();
            for part in &parts {
                let mut h = RttHistogram::new();
                for v in part {
                    h.record(*v);
                }
                dense.add(&h.to_pb()).expect("valid");
            }
            assert_eq!(dense.count(), merged.count());
            for p in [0.5, 0.9, 0.99, 1.0] {
                let (est, ex) = (merged.quantile(p).expect("n > 0"), exact(&union, p));
                assert!(within(est, ex), "round {round} p{p}: {est} vs exact {ex}");
                assert_eq!(dense.quantile(p), Some(est), "dense and sparse agree");
                worst = worst.max((est - ex).abs() / ex);
            }
        }
        println!(
            "worst relative error over 200 merges: {:.4} %",
            worst * 100.0
        );
        assert!(worst <= RELATIVE_ERROR * (1.0 + 1e-9));
    }

    #[test]
    fn zero_and_hostile_values_do_not_panic() {
        let mut h = RttHistogram::new();
        for v in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300, 0.0005] {
            h.record(v);
        }
        assert_eq!(h.count(), 6);
        assert_eq!(h.quantile(0.5), Some(0.0));
        // 1e300 counts in the last bucket: about an hour.
        let top = h.quantile(1.0).expect("n > 0");
        assert!(
            (top - MAX_MS).abs() <= MAX_MS * RELATIVE_ERROR * 2.0,
            "{top}"
        );
        assert_eq!(RttHistogram::new().quantile(0.5), None);
    }

    #[test]
    fn a_window_of_clustered_rtts_takes_few_buckets_on_the_wire() {
        let mut h = RttHistogram::new();
        let mut rng = Rng(7);
        for _ in 0..4096 {
            h.record(70.0 + rng.unit() * 10.0);
        }
        let bytes = h.to_pb().encoded_len();
        println!(
            "4096 samples in 70..80 ms: {} buckets, {bytes} bytes",
            h.buckets()
        );
        assert!(h.buckets() <= 20, "{} buckets", h.buckets());
        assert!(bytes <= 200, "{bytes} bytes");
    }

    #[test]
    fn hostile_wire_histograms_are_refused_by_name() {
        let ok = pb::RttHistogram {
            index_deltas: vec![100, 1, 5],
            counts: vec![1, 2, 3],
            zero_count: 4,
        };
        let h = RttHistogram::from_pb(&ok).expect("valid");
        assert_eq!(h.count(), 10);
        let cases = [
            (
                pb::RttHistogram {
                    index_deltas: vec![1],
                    counts: vec![],
                    zero_count: 0,
                },
                "1 bucket indexes but 0 counts",
            ),
            (
                pb::RttHistogram {
                    index_deltas: vec![i32::MAX],
                    counts: vec![1],
                    zero_count: 0,
                },
                "out of range",
            ),
            (
                pb::RttHistogram {
                    index_deltas: vec![10, 0],
                    counts: vec![1, 1],
                    zero_count: 0,
                },
                "not ascending",
            ),
            (
                pb::RttHistogram {
                    index_deltas: vec![10],
                    counts: vec![0],
                    zero_count: 0,
                },
                "count of zero",
            ),
            (
                pb::RttHistogram {
                    index_deltas: vec![10, 1],
                    counts: vec![u64::MAX, u64::MAX],
                    zero_count: 0,
                },
                "more than",
            ),
            (
                pb::RttHistogram {
                    index_deltas: vec![1; MAX_BUCKETS + 1],
                    counts: vec![1; MAX_BUCKETS + 1],
                    zero_count: 0,
                },
                "buckets, at most",
            ),
        ];
        for (h, want) in cases {
            let e = RttHistogram::from_pb(&h).expect_err(want).to_string();
            assert!(e.contains(want), "{e} should say {want}");
            let mut m = MergedHistogram::new();
            assert!(m.add(&h).is_err(), "{want}");
            assert_eq!(m.count(), 0, "a refused histogram adds nothing");
        }
    }

    #[test]
    fn nearest_rank_matches_its_definition() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(nearest_rank(&s, 0.5), Some(50.0));
        assert_eq!(nearest_rank(&s, 0.99), Some(99.0));
        assert_eq!(nearest_rank(&s, 0.0), Some(1.0));
        assert_eq!(nearest_rank(&s, 1.0), Some(100.0));
        assert_eq!(nearest_rank(&[], 0.5), None);
    }
}
