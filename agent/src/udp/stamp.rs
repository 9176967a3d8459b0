//! Kernel receive stamps (`CLOCK_REALTIME`) mapped into the process timebase.

/// Maps kernel `CLOCK_REALTIME` receive stamps into the process timebase
/// ([`Clock::now_ns`](crate::clock::Clock::now_ns)).
///
/// [`Clock::from_realtime_ns`](crate::clock::Clock::from_realtime_ns) reads the two clocks one
/// after the other on every call; if the thread is preempted between the reads (milliseconds on a
/// busy host) the mapped stamp is off by that long, which showed up as negative RTTs in bursts.
/// This mapper measures the offset with a realtime–process–realtime sandwich, keeping the
/// tightest of a few tries, and reuses it while stamps stay within [`StampMapper::REFRESH_NS`] of
/// the measurement (a clock step moves stamps out of that window and forces a new measurement).
/// Per packet it is one comparison and an add.
#[derive(Debug, Default)]
pub(crate) struct StampMapper {
    /// Process clock minus realtime, ns.
    offset: i128,
    /// Realtime at the last measurement (0: never measured).
    measured_real: u64,
}

impl StampMapper {
    /// How long a measured offset is reused (slew is at most 500 ppm: ≤ 5 µs over 10 ms).
    pub(crate) const REFRESH_NS: u64 = 10_000_000;

    /// The stamp in the process timebase.
    pub(crate) fn map(&mut self, realtime_stamp: u64) -> u64 {
        if self.measured_real == 0 || realtime_stamp.abs_diff(self.measured_real) > Self::REFRESH_NS
        {
            self.measure();
        }
        (i128::from(realtime_stamp) + self.offset).clamp(0, i128::from(u64::MAX)) as u64
    }

    fn measure(&mut self) {
        self.offset = i128::from(crate::clock::realtime_offset_ns());
        self.measured_real = crate::clock::realtime_ns().max(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Clock;

    #[test]
    fn stamp_mapper_maps_realtime_close_to_now() {
        let mut m = StampMapper::default();
        for _ in 0..3 {
            let stamp = crate::clock::realtime_ns();
            let mapped = m.map(stamp);
            let now = Clock::now_ns();
            // The stamp precedes `now`; the mapping may err by the sandwich's half-width.
            let ahead = i128::from(mapped) - i128::from(now);
            assert!(
                ahead < 50_000,
                "mapped {mapped} is {ahead} ns after now {now}"
            );
            assert!(ahead > -50_000_000, "mapped {mapped} far before now {now}");
        }
        // A stamp far from the measurement (a clock step) triggers a new measurement.
        let before = m.measured_real;
        let _ = m.map(before + 20 * StampMapper::REFRESH_NS);
        assert_ne!(m.measured_real, before);
    }
}
