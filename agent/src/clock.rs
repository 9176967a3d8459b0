//! The process clock: one monotonic clock per process, in a wall-clock timebase.
//!
//! Every timestamp an agent puts on the wire or uses for timing arithmetic comes from
//! [`Clock::now_ns`]: nanoseconds since the Unix epoch, computed as the wall-clock time at process
//! start plus the monotonic time elapsed since. It never jumps (NTP steps do not move it) and is
//! still roughly comparable across hosts, which is what clock-offset estimates need. `ts` in
//! records is plain wall-clock time ([`std::time::SystemTime`]).
//!
//! Kernel receive timestamps (`SO_TIMESTAMPING`, `CLOCK_REALTIME`) are mapped into this timebase
//! with [`Clock::from_realtime_ns`].

#![allow(clippy::disallowed_types)] // this module is the one place that reads the OS clocks

use std::sync::OnceLock;
use std::time::{Instant, SystemTime};

/// Anchor taken once per process.
struct Anchor {
    mono: Instant,
    wall_ns: u64,
}

static ANCHOR: OnceLock<Anchor> = OnceLock::new();

fn anchor() -> &'static Anchor {
    ANCHOR.get_or_init(|| Anchor {
        mono: Instant::now(),
        wall_ns: realtime_ns(),
    })
}

/// Nanoseconds since the Unix epoch from `CLOCK_REALTIME`.
pub fn realtime_ns() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// The process clock. Zero-sized; all instances share the process anchor.
#[derive(Clone, Copy, Debug, Default)]
pub struct Clock;

impl Clock {
    /// Monotonic nanoseconds in the wall-clock timebase.
    pub fn now_ns() -> u64 {
        let a = anchor();
        a.wall_ns + a.mono.elapsed().as_nanos() as u64
    }

    /// Maps a `CLOCK_REALTIME` stamp (e.g. a kernel receive timestamp) taken very recently into
    /// the process timebase, by measuring the current offset between the two clocks.
    ///
    /// The offset is read as process clock / realtime / process clock, three times, keeping the
    /// tightest sandwich, so a preemption between two reads cannot skew it.
    pub fn from_realtime_ns(realtime: u64) -> u64 {
        (realtime as i128 + realtime_offset_ns() as i128).max(0) as u64
    }
}

/// Process clock minus `CLOCK_REALTIME`, in ns, measured robustly against preemption: up to five
/// process clock / realtime / process clock sandwiches, keeping the narrowest (a sandwich under
/// 200 ns is good enough to stop early).
pub fn realtime_offset_ns() -> i64 {
    let mut best: Option<(u64, i64)> = None;
    for _ in 0..5 {
        let a = Clock::now_ns();
        let real = realtime_ns();
        let b = Clock::now_ns();
        let width = b.saturating_sub(a);
        let offset = (a as i128 + (width / 2) as i128 - real as i128) as i64;
        if best.is_none_or(|(w, _)| width < w) {
            best = Some((width, offset));
        }
        if width < 200 {
            break;
        }
    }
    best.map_or(0, |(_, o)| o)
}

/// The clock error bound this host's kernel reports (adjtimex `maxerror`), in milliseconds, or
/// `None` when the clock is unsynchronised or the call is unavailable.
pub fn clock_error_bound_ms() -> Option<f64> {
    // SAFETY: adjtimex with modes = 0 only reads the kernel's timex state into our struct.
    #[allow(unsafe_code)]
    let (rc, tx) = unsafe {
        let mut tx: libc::timex = std::mem::zeroed();
        let rc = libc::adjtimex(&mut tx);
        (rc, tx)
    };
    if rc < 0 || rc == libc::TIME_ERROR {
        return None;
    }
    // maxerror is in microseconds.
    Some(tx.maxerror as f64 / 1000.0)
}

/// Converts a nanosecond difference to milliseconds.
pub fn ns_to_ms(ns: i64) -> f64 {
    ns as f64 / 1e6
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_monotonic_and_close_to_wall_clock() {
        let a = Clock::now_ns();
        let b = Clock::now_ns();
        assert!(b >= a);
        let wall = realtime_ns();
        let diff = (wall as i128 - b as i128).abs();
        assert!(
            diff < 1_000_000_000,
            "process clock {b} is {diff} ns away from the wall clock"
        );
    }

    #[test]
    fn realtime_stamps_map_close_to_now() {
        let stamp = realtime_ns();
        let mapped = Clock::from_realtime_ns(stamp);
        let now = Clock::now_ns();
        assert!(now >= mapped.saturating_sub(1_000_000) && now - mapped < 50_000_000);
    }
}
