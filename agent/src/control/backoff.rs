//! Jittered exponential backoff for reconnecting to the controller (linkerd `exp-backoff`).
//!
//! Delay `n` (from 0) is uniform in `[d/2, d]` with `d = min(max, base * 2^n)`: "equal jitter",
//! so a fleet of agents that lost their controller at once does not reconnect in lock step.

use std::time::Duration;

/// A validated backoff policy and its attempt counter.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
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

/// Default first reconnect delay.
pub const DEFAULT_BASE: Duration = Duration::from_millis(500);
/// Default largest reconnect delay.
pub const DEFAULT_MAX: Duration = Duration::from_secs(30);

impl Default for Backoff {
    /// From [`DEFAULT_BASE`] up to [`DEFAULT_MAX`].
    fn default() -> Self {
        Backoff {
            base: DEFAULT_BASE,
            max: DEFAULT_MAX,
            attempt: 0,
        }
    }
}

impl Backoff {
    /// A policy from `base` up to `max`.
    ///
    /// # Errors
    ///
    /// [`BackoffError`] if `base` is zero or above `max`.
    pub fn try_new(base: Duration, max: Duration) -> Result<Self, BackoffError> {
        if base.is_zero() || base > max {
            return Err(BackoffError { base, max });
        }
        Ok(Backoff {
            base,
            max,
            attempt: 0,
        })
    }

    /// The next delay, drawing the jitter from `unit` (uniform in `[0, 1)`).
    pub fn next_with(&mut self, unit: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << self.attempt.min(20));
        let d = exp.min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        d.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
    }

    /// The next delay with random jitter.
    pub fn next_delay(&mut self) -> Duration {
        self.next_with(rand::random::<f64>())
    }

    /// Back to the base delay (after a successful connection).
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_caps_jitters_and_resets() {
        let mut b =
            Backoff::try_new(Duration::from_millis(100), Duration::from_secs(2)).expect("valid");
        let top: Vec<Duration> = (0..8).map(|_| b.next_with(1.0)).collect();
        assert_eq!(top[0], Duration::from_millis(100));
        assert_eq!(top[1], Duration::from_millis(200));
        assert_eq!(top[4], Duration::from_millis(1600));
        assert_eq!(top[7], Duration::from_secs(2), "capped");
        b.reset();
        assert_eq!(
            b.next_with(0.0),
            Duration::from_millis(50),
            "half at the low end"
        );
        assert!(Backoff::try_new(Duration::ZERO, Duration::from_secs(1)).is_err());
        assert!(Backoff::try_new(Duration::from_secs(2), Duration::from_secs(1)).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn retries_follow_the_schedule_on_tokio_time() {
        let mut b =
            Backoff::try_new(Duration::from_millis(100), Duration::from_secs(1)).expect("valid");
        let start = tokio::time::Instant::now();
        for _ in 0..5 {
            tokio::time::sleep(b.next_delay()).await;
        }
        // Sum of maxima 100+200+400+800+1000 = 2.5 s; of minima half that.
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1250) && took <= Duration::from_millis(2500),
            "{took:?}"
        );
    }
}
