//! Jittered exponential backoff, the one implementation used by every retry loop: the agent's
//! reconnects to its controller, the Firehose sink's batch and sink-wide retries, and the
//! controller's state uploads to S3 (linkerd `exp-backoff`, Vector's retry backoff).
//!
//! Attempt `n` (from 0) waits a time uniform in `[d/2, d]` with `d = min(max, base * 2^n)`:
//! "equal jitter", never zero, so a fleet that failed at once does not retry in lock step.
//! The jitter is passed in (`unit`, uniform in `[0, 1)`): this module draws no randomness and
//! reads no clock, so its schedule is tested exactly.

use std::time::Duration;

/// A backoff policy: the delay scale of the first retry and the cap of every delay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    base: Duration,
    max: Duration,
}

/// An invalid backoff policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("backoff: base ({base:?}) must be above zero and not above max ({max:?})")]
pub struct BackoffError {
    /// Base delay.
    pub base: Duration,
    /// Maximum delay.
    pub max: Duration,
}

impl Backoff {
    /// A policy from `base` up to `max`, checked at compile time where it is a `const`.
    ///
    /// # Panics
    ///
    /// If `base` is zero or above `max` (in a `const`, a compile error).
    pub const fn new(base: Duration, max: Duration) -> Self {
        match Self::check(base, max) {
            Ok(b) => b,
            Err(_) => panic!("backoff: base must be above zero and not above max"),
        }
    }

    /// A policy from `base` up to `max`, for values read at run time.
    ///
    /// # Errors
    ///
    /// [`BackoffError`] if `base` is zero or above `max`.
    pub fn try_new(base: Duration, max: Duration) -> Result<Self, BackoffError> {
        Self::check(base, max)
    }

    const fn check(base: Duration, max: Duration) -> Result<Self, BackoffError> {
        if base.is_zero() || base.as_nanos() > max.as_nanos() {
            return Err(BackoffError { base, max });
        }
        Ok(Backoff { base, max })
    }

    /// The delay scale of the first retry.
    pub fn base(&self) -> Duration {
        self.base
    }

    /// The cap of every delay.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The ceiling of attempt `attempt` (0-based), before jitter: `min(max, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// The delay of attempt `attempt` (0-based) with jitter `unit` (uniform in `[0, 1)`;
    /// clamped to `[0, 1]`): `ceiling/2 + ceiling/2 * unit`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let half = self.ceiling(attempt) / 2;
        half + half.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A [`Backoff`] with its attempt counter, for a loop that retries until it succeeds and then
/// starts over ([`Retries::reset`]).
#[derive(Clone, Debug)]
pub struct Retries {
    policy: Backoff,
    attempt: u32,
}

impl Retries {
    /// A counter at attempt 0 of `policy`.
    pub fn new(policy: Backoff) -> Self {
        Retries { policy, attempt: 0 }
    }

    /// The policy.
    pub fn policy(&self) -> Backoff {
        self.policy
    }

    /// The next delay, with jitter `unit` (uniform in `[0, 1)`).
    pub fn next_delay(&mut self, unit: f64) -> Duration {
        let d = self.policy.delay(self.attempt, unit);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Back to the base delay (after a success).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut r = Retries::new(Backoff::try_new(MS(100), Duration::from_secs(2)).expect("valid"));
        let top: Vec<Duration> = (0..8).map(|_| r.next_delay(1.0)).collect();
        assert_eq!(top[0], MS(100));
        assert_eq!(top[1], MS(200));
        assert_eq!(top[4], MS(1600));
        assert_eq!(top[7], Duration::from_secs(2), "capped");
        r.reset();
        assert_eq!(r.next_delay(0.0), MS(50), "half at the low end");
        assert!(Backoff::try_new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }

    #[test]
    fn ceilings_are_exponential_and_capped_for_any_attempt() {
        let b = Backoff::new(MS(200), Duration::from_secs(20));
        assert_eq!(b.ceiling(0), MS(200));
        assert_eq!(b.ceiling(3), MS(1600));
        assert_eq!(b.ceiling(40), Duration::from_secs(20));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(20));
        let s3 = Backoff::new(MS(500), Duration::from_secs(30));
        for n in 0..40 {
            let cap = MS(500)
                .saturating_mul(1 << n.min(16))
                .min(Duration::from_secs(30));
            assert_eq!(s3.ceiling(n), cap, "attempt {n}");
        }
    }

    #[test]
    fn delays_stay_within_half_and_whole_ceiling_and_spread() {
        let b = Backoff::new(MS(200), Duration::from_secs(20));
        let mut seen = std::collections::BTreeSet::new();
        for n in 0..10 {
            for i in 0..50 {
                let d = b.delay(n, f64::from(i) / 50.0);
                assert!(d >= b.ceiling(n) / 2 && d <= b.ceiling(n), "{n}: {d:?}");
                seen.insert(d);
            }
            assert_eq!(b.delay(n, 0.0), b.ceiling(n) / 2);
            assert_eq!(b.delay(n, 1.0), b.ceiling(n));
            assert_eq!(b.delay(n, 7.0), b.ceiling(n), "unit clamped");
        }
        assert!(seen.len() > 100, "delays are jittered: {}", seen.len());
    }

    #[test]
    fn five_retries_sum_between_the_half_and_the_whole_schedule() {
        // Sum of maxima 100+200+400+800+1000 = 2.5 s; of minima half that.
        let mut r = Retries::new(Backoff::new(MS(100), Duration::from_secs(1)));
        let lows: Duration = (0..5).map(|_| r.next_delay(0.0)).sum();
        r.reset();
        let highs: Duration = (0..5).map(|_| r.next_delay(1.0)).sum();
        assert_eq!((lows, highs), (MS(1250), MS(2500)));
    }
}
