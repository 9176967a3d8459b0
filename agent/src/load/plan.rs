//! What load to offer when: the stepped schedule, the per-agent caps and the open model's pacer.
//!
//! Sans-IO (STYLE §2): nothing here reads a clock or touches a socket; every function takes the
//! time elapsed since the run started (or `now`) as an argument, so the arithmetic is tested on a
//! virtual clock.

use std::time::Duration;

use tokio::time::Instant;

/// Which load model a run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    /// N workers, each on its own keep-alive connection, looping request → response (→ think
    /// time). The offered rate is whatever the target lets the workers do.
    Closed,
    /// Requests at an arrival rate (req/s), scheduled at intended send times whatever the target
    /// does; latency is measured from the intended time (coordinated-omission correction).
    Open,
}

/// A load level over time: `start` for the first step, then `step` more each `step_duration`,
/// for `steps` steps in all (`steps = 1` is a constant load). After the last step the level holds.
///
/// For the closed model the level is a worker count, for the open model a rate in req/s.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Steps {
    /// Level of step 0.
    pub start: f64,
    /// Added at each following step (may be negative: a descending staircase).
    pub step: f64,
    /// Number of steps (at least 1).
    pub steps: u32,
    /// How long each step lasts (irrelevant when `steps == 1`).
    pub step_duration: Duration,
}

/// A point of the schedule: which step, at what level.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepPoint {
    /// Step index, from 0.
    pub step: u32,
    /// Level (already capped).
    pub level: f64,
}

/// Per-agent caps, enforced whatever a job or the command line asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Caps {
    /// Most connections open at once (closed model: most workers).
    pub max_connections: u32,
    /// Highest arrival rate, req/s (open model).
    pub max_rate: f64,
}

/// The schedule of one run: the steps, capped, and an operator override from an update.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    model: Model,
    steps: Steps,
    caps: Caps,
    /// Set by [`Schedule::set_level`]: the level for the rest of the run (the staircase stops
    /// changing it; step numbers keep following time).
    level_override: Option<f64>,
}

impl Steps {
    /// A constant level.
    pub fn constant(level: f64) -> Self {
        Steps {
            start: level,
            step: 0.0,
            steps: 1,
            step_duration: Duration::ZERO,
        }
    }

    /// How long the staircase takes to reach its last step.
    pub fn ramp(&self) -> Duration {
        self.step_duration
            .saturating_mul(self.steps.saturating_sub(1))
    }

    /// The level at step `i` (uncapped).
    pub fn level_of(&self, i: u32) -> f64 {
        self.start + self.step * f64::from(i)
    }
}

impl Schedule {
    /// A schedule of `steps` for `model`, within `caps`.
    pub fn new(model: Model, steps: Steps, caps: Caps) -> Self {
        Schedule {
            model,
            steps,
            caps,
            level_override: None,
        }
    }

    /// The model.
    pub fn model(&self) -> Model {
        self.model
    }

    /// The caps.
    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Replaces the caps (an agent's caps shared by more runs).
    pub fn set_caps(&mut self, caps: Caps) {
        self.caps = caps;
    }

    /// `level` within the caps of this model: a whole worker count in
    /// `0..=max_connections` for the closed model, a rate in `0..=max_rate` for the open one.
    pub fn cap(&self, level: f64) -> f64 {
        let level = if level.is_finite() {
            level.max(0.0)
        } else {
            0.0
        };
        match self.model {
            Model::Closed => level.round().min(f64::from(self.caps.max_connections)),
            Model::Open => level.min(self.caps.max_rate),
        }
    }

    /// Whether `level` is above what the caps allow (so it was, or would be, capped).
    pub fn exceeds_caps(&self, level: f64) -> bool {
        self.cap(level) < level
    }

    /// The step and capped level `elapsed` after the start.
    pub fn at(&self, elapsed: Duration) -> StepPoint {
        let step = if self.steps.steps <= 1 || self.steps.step_duration.is_zero() {
            0
        } else {
            let i = elapsed.as_nanos() / self.steps.step_duration.as_nanos();
            u32::try_from(i)
                .unwrap_or(u32::MAX)
                .min(self.steps.steps - 1)
        };
        let level = self
            .level_override
            .unwrap_or_else(|| self.steps.level_of(step));
        StepPoint {
            step,
            level: self.cap(level),
        }
    }

    /// When (since the start) the level next changes after `elapsed`, if it does.
    pub fn next_change(&self, elapsed: Duration) -> Option<Duration> {
        if self.level_override.is_some() || self.steps.steps <= 1 {
            return None;
        }
        let d = self.steps.step_duration;
        if d.is_zero() {
            return None;
        }
        let next = self.at(elapsed).step.checked_add(1)?;
        (next < self.steps.steps).then(|| d.saturating_mul(next))
    }

    /// Sets the level for the rest of the run (an update on a running engine); returns the
    /// capped level that takes effect.
    pub fn set_level(&mut self, level: f64) -> f64 {
        let capped = self.cap(level);
        self.level_override = Some(capped);
        capped
    }
}

// === Pacer ===

/// The open model's clock of intended send times: one every `1/rate` seconds from the start,
/// whether or not earlier requests have been answered (wrk2's constant-throughput schedule).
///
/// Calling protocol: sleep until [`Pacer::next_due`] (when it is `Some`), then call
/// [`Pacer::poll`] with the current time until it returns `None`; each `Some(t)` is one request
/// whose intended send time is `t`. A rate change ([`Pacer::set_rate`]) applies from the last
/// intended time on, so a step up takes effect within one new interval.
#[derive(Clone, Debug)]
pub struct Pacer {
    /// Requests per second; 0 pauses.
    rate: f64,
    /// Intended time of the last request handed out (or the start, before the first).
    last: Instant,
    /// Whether the first request is still to come (it is intended at the start itself).
    first: bool,
    /// Intended time of the next request; `None` while paused.
    next: Option<Instant>,
}

impl Pacer {
    /// A pacer starting at `start`, its first request intended then.
    pub fn new(start: Instant, rate: f64) -> Self {
        let mut p = Pacer {
            rate: 0.0,
            last: start,
            first: true,
            next: None,
        };
        p.set_rate(rate);
        p
    }

    /// The rate in force.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// Changes the rate: the next request is intended `1/rate` after the last one (at the start
    /// for the very first one).
    pub fn set_rate(&mut self, rate: f64) {
        self.rate = if rate.is_finite() { rate.max(0.0) } else { 0.0 };
        self.next = if self.rate > 0.0 {
            Some(if self.first {
                self.last
            } else {
                self.last + Duration::from_secs_f64(1.0 / self.rate)
            })
        } else {
            None
        };
    }

    /// When the next request is intended; `None` while the rate is 0.
    pub fn next_due(&self) -> Option<Instant> {
        self.next
    }

    /// The intended time of the next request if it is due at `now`, advancing the schedule.
    pub fn poll(&mut self, now: Instant) -> Option<Instant> {
        let due = self.next.filter(|t| *t <= now)?;
        self.last = due;
        self.first = false;
        self.next = Some(due + Duration::from_secs_f64(1.0 / self.rate));
        Some(due)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps {
        max_connections: 100,
        max_rate: 1000.0,
    };

    fn staircase() -> Steps {
        // 10 → 50 in 5 steps of 10 s.
        Steps {
            start: 10.0,
            step: 10.0,
            steps: 5,
            step_duration: Duration::from_secs(10),
        }
    }

    #[test]
    fn steps_climb_then_hold() {
        let s = Schedule::new(Model::Closed, staircase(), CAPS);
        let at = |secs: f64| s.at(Duration::from_secs_f64(secs));
        assert_eq!(
            at(0.0),
            StepPoint {
                step: 0,
                level: 10.0
            }
        );
        assert_eq!(
            at(9.999),
            StepPoint {
                step: 0,
                level: 10.0
            }
        );
        assert_eq!(
            at(10.0),
            StepPoint {
                step: 1,
                level: 20.0
            }
        );
        assert_eq!(
            at(45.0),
            StepPoint {
                step: 4,
                level: 50.0
            }
        );
        assert_eq!(
            at(500.0),
            StepPoint {
                step: 4,
                level: 50.0
            }
        );
        assert_eq!(s.next_change(Duration::ZERO), Some(Duration::from_secs(10)));
        assert_eq!(
            s.next_change(Duration::from_secs(31)),
            Some(Duration::from_secs(40))
        );
        assert_eq!(s.next_change(Duration::from_secs(41)), None);
        assert_eq!(staircase().ramp(), Duration::from_secs(40));
    }

    #[test]
    fn caps_hold_whatever_the_steps_say() {
        let caps = Caps {
            max_connections: 25,
            max_rate: 150.0,
        };
        let closed = Schedule::new(Model::Closed, staircase(), caps);
        assert_eq!(closed.at(Duration::from_secs(45)).level, 25.0);
        assert!(closed.exceeds_caps(26.0) && !closed.exceeds_caps(25.0));
        let mut open = Schedule::new(
            Model::Open,
            Steps {
                start: 100.0,
                step: 100.0,
                steps: 3,
                step_duration: Duration::from_secs(1),
            },
            caps,
        );
        assert_eq!(open.at(Duration::from_secs(2)).level, 150.0);
        assert_eq!(open.set_level(1e9), 150.0);
        assert_eq!(open.cap(f64::NAN), 0.0);
        assert_eq!(open.cap(-5.0), 0.0);
    }

    #[test]
    fn an_update_overrides_the_staircase() {
        let mut s = Schedule::new(Model::Closed, staircase(), CAPS);
        assert_eq!(s.set_level(4.4), 4.0);
        assert_eq!(
            s.at(Duration::from_secs(25)),
            StepPoint {
                step: 2,
                level: 4.0
            }
        );
        assert_eq!(s.next_change(Duration::from_secs(25)), None);
    }

    #[test]
    fn pacer_hands_out_intended_times_at_the_rate() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 100.0);
        assert_eq!(p.next_due(), Some(t0));
        // Polled late (the sender was busy): every missed intended time comes out, in order,
        // each with its own intended time — none is skipped or moved to "now".
        let late = t0 + Duration::from_millis(35);
        let mut got = Vec::new();
        while let Some(t) = p.poll(late) {
            got.push(t - t0);
        }
        assert_eq!(
            got,
            [0, 10, 20, 30].map(Duration::from_millis).to_vec(),
            "intended times"
        );
        assert_eq!(p.next_due(), Some(t0 + Duration::from_millis(40)));
        // Step up to 1,000/s: the next one is 1 ms after the last, not 10 ms.
        p.set_rate(1000.0);
        assert_eq!(p.next_due(), Some(t0 + Duration::from_millis(31)));
        // Pause and resume.
        p.set_rate(0.0);
        assert_eq!(p.next_due(), None);
        assert_eq!(p.poll(t0 + Duration::from_secs(10)), None);
        p.set_rate(10.0);
        assert_eq!(p.next_due(), Some(t0 + Duration::from_millis(130)));
    }

    #[test]
    fn pacer_counts_match_the_rate_over_a_long_run() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0, 2000.0);
        let mut n = 0u64;
        // Poll every 7 ms of virtual time for 30 s.
        let mut now = t0;
        while now < t0 + Duration::from_secs(30) {
            while p.poll(now).is_some() {
                n += 1;
            }
            now += Duration::from_millis(7);
        }
        // 60,000 intended in [0, 30 s) (one at 0), give or take the last poll's rounding.
        assert!((59_990..=60_001).contains(&n), "{n}");
    }
}
