//! Pure HTTP phase arithmetic: perftest's columns (DESIGN §5) from phase marks.
//!
//! The driver ([`super::HttpProbe`]) stamps each phase boundary with
//! [`Clock::now_ns`](crate::clock::Clock::now_ns) into a [`PhaseMarks`]; this module turns the
//! marks into [`HttpData`]'s durations. It reads no clock and touches no socket, so every rule is unit-tested
//! with hand-written numbers.
//!
//! | field | from | to |
//! | --- | --- | --- |
//! | `dns_ms` | `start` | `dns_done` |
//! | `tcp_ms` | `connect_start` | `connected` — or the kernel's handshake RTT, see below |
//! | `tls_ms` | `connected` | `tls_done` |
//! | `first_byte_ms` | `request_written` | `first_byte` |
//! | `last_byte_ms` | `first_byte` | `last_byte` |
//! | `total_ms` | `connect_start` | `last_byte` |
//!
//! A failed sample has only the marks of the phases it completed; a field is `None` when either
//! of its ends is missing. Marks that are present must be in the order of the table above
//! (`start ≤ dns_done ≤ connect_start ≤ connected ≤ tls_done ≤ request_written ≤ first_byte ≤
//! last_byte`), otherwise [`HttpData::from_marks`] refuses them.
//!
//! `tcp_ms` is the kernel's handshake round trip (`handshake_rtt_ns`, from `TCP_INFO` right
//! after connect) when there is one that fits inside `connect_start..connected`, else the span
//! of the marks ([`connect_time`]); `tcp_time_source` says which. `tls_ms` and `total_ms` keep
//! to the marks, so the task's wake-up after connect, which the kernel figure leaves out, is in
//! neither `tcp_ms` nor `tls_ms` but still in `total_ms`.

use crate::probe::HttpData;
use crate::probe::tcp::handshake::connect_time;

/// Phase boundaries of one HTTP sample, in nanoseconds of the process clock.
///
/// `start` always exists (the sample began); every later mark is `None` until its phase
/// completed. `tls_done` stays `None` for plain `http://`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseMarks {
    /// The sample began (resolution starts).
    pub start: u64,
    /// Name resolution finished.
    pub dns_done: Option<u64>,
    /// The first TCP connect attempt began.
    pub connect_start: Option<u64>,
    /// The TCP connection was established.
    pub connected: Option<u64>,
    /// The TLS handshake finished (https only).
    pub tls_done: Option<u64>,
    /// The request was fully written and flushed.
    pub request_written: Option<u64>,
    /// The first response byte was read.
    pub first_byte: Option<u64>,
    /// The last response byte was read.
    pub last_byte: Option<u64>,
    /// Not a mark: the kernel's handshake RTT of the connection in nanoseconds, when it covers
    /// the whole connect phase (see [`crate::probe::tcp::handshake`]).
    pub handshake_rtt_ns: Option<u64>,
}

/// Marks that cannot come from one real sample.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    /// A phase mark is earlier than a mark of a phase that precedes it.
    #[error("phase mark {later} ({later_ns} ns) is earlier than {earlier} ({earlier_ns} ns)")]
    NonMonotonic {
        /// Name of the preceding mark.
        earlier: &'static str,
        /// Its value.
        earlier_ns: u64,
        /// Name of the out-of-order mark.
        later: &'static str,
        /// Its value.
        later_ns: u64,
    },
}

impl HttpData {
    /// Perftest's HTTP durations in milliseconds (DESIGN §5) from `marks`: the six phase fields,
    /// `None` where a phase did not complete. Status, bytes and versions are left unset (they
    /// are not timings; the driver adds them).
    ///
    /// # Errors
    ///
    /// [`TimingError::NonMonotonic`] when a present mark precedes an earlier phase's mark.
    pub fn from_marks(marks: &PhaseMarks) -> Result<Self, TimingError> {
        let ordered: [(&'static str, Option<u64>); 8] = [
            ("start", Some(marks.start)),
            ("dns_done", marks.dns_done),
            ("connect_start", marks.connect_start),
            ("connected", marks.connected),
            ("tls_done", marks.tls_done),
            ("request_written", marks.request_written),
            ("first_byte", marks.first_byte),
            ("last_byte", marks.last_byte),
        ];
        let mut prev: Option<(&'static str, u64)> = None;
        for (name, mark) in ordered {
            let Some(ns) = mark else { continue };
            if let Some((earlier, earlier_ns)) = prev
                && ns < earlier_ns
            {
                return Err(TimingError::NonMonotonic {
                    earlier,
                    earlier_ns,
                    later: name,
                    later_ns: ns,
                });
            }
            prev = Some((name, ns));
        }
        let tcp = match (marks.connect_start, marks.connected) {
            (Some(from), Some(to)) => Some(connect_time(to - from, marks.handshake_rtt_ns)),
            _ => None,
        };
        Ok(HttpData {
            dns_ms: span(Some(marks.start), marks.dns_done),
            tcp_ms: tcp.map(|t| t.ns as f64 / 1e6),
            tcp_time_source: tcp.map(|t| t.source),
            tls_ms: span(marks.connected, marks.tls_done),
            first_byte_ms: span(marks.request_written, marks.first_byte),
            last_byte_ms: span(marks.first_byte, marks.last_byte),
            total_ms: span(marks.connect_start, marks.last_byte),
            ..HttpData::default()
        })
    }
}

/// `to − from` in milliseconds when both exist (order already checked).
fn span(from: Option<u64>, to: Option<u64>) -> Option<f64> {
    Some((to? - from?) as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use meshlat_proto::record::TcpTimeSource;

    use super::*;

    const MS: u64 = 1_000_000;

    fn full_https() -> PhaseMarks {
        PhaseMarks {
            start: 1_000 * MS,
            dns_done: Some(1_002 * MS),
            connect_start: Some(1_003 * MS),
            connected: Some(1_013 * MS),
            tls_done: Some(1_033 * MS),
            request_written: Some(1_034 * MS),
            first_byte: Some(1_074 * MS),
            last_byte: Some(1_104 * MS + MS / 2),
            handshake_rtt_ns: None,
        }
    }

    #[test]
    fn every_field_spans_its_phases() {
        let t = HttpData::from_marks(&full_https()).expect("monotonic");
        assert_eq!(
            t,
            HttpData {
                dns_ms: Some(2.0),
                tcp_ms: Some(10.0),
                tcp_time_source: Some(TcpTimeSource::User),
                tls_ms: Some(20.0),
                first_byte_ms: Some(40.0),
                last_byte_ms: Some(30.5),
                total_ms: Some(101.5),
                ..HttpData::default()
            }
        );
    }

    #[test]
    fn tcp_is_the_kernel_handshake_when_it_fits_in_the_connect_phase() {
        // The task saw the connection 10 ms after connect start; the handshake took 4 ms.
        let m = PhaseMarks {
            handshake_rtt_ns: Some(4 * MS),
            ..full_https()
        };
        let t = HttpData::from_marks(&m).expect("monotonic");
        assert_eq!(
            (t.tcp_ms, t.tcp_time_source),
            (Some(4.0), Some(TcpTimeSource::Kernel))
        );
        // The other phases keep to the marks.
        assert_eq!((t.tls_ms, t.total_ms), (Some(20.0), Some(101.5)));
        // A kernel figure longer than the connect phase cannot be the handshake's.
        let m = PhaseMarks {
            handshake_rtt_ns: Some(11 * MS),
            ..full_https()
        };
        let t = HttpData::from_marks(&m).expect("monotonic");
        assert_eq!(
            (t.tcp_ms, t.tcp_time_source),
            (Some(10.0), Some(TcpTimeSource::User))
        );
        // No connection, no tcp_ms and no source, whatever else is set.
        let m = PhaseMarks {
            connected: None,
            tls_done: None,
            request_written: None,
            first_byte: None,
            last_byte: None,
            handshake_rtt_ns: Some(4 * MS),
            ..full_https()
        };
        let t = HttpData::from_marks(&m).expect("monotonic");
        assert_eq!((t.tcp_ms, t.tcp_time_source), (None, None));
    }

    #[test]
    fn plain_http_has_no_tls_but_everything_else() {
        let m = PhaseMarks {
            tls_done: None,
            ..full_https()
        };
        let t = HttpData::from_marks(&m).expect("monotonic");
        assert_eq!(t.tls_ms, None);
        assert_eq!((t.tcp_ms, t.first_byte_ms), (Some(10.0), Some(40.0)));
        assert_eq!(t.total_ms, Some(101.5));
    }

    #[test]
    fn failed_sample_keeps_completed_phases_only() {
        // Timed out waiting for the first byte.
        let m = PhaseMarks {
            first_byte: None,
            last_byte: None,
            ..full_https()
        };
        let t = HttpData::from_marks(&m).expect("monotonic");
        assert_eq!(
            (t.dns_ms, t.tcp_ms, t.tls_ms),
            (Some(2.0), Some(10.0), Some(20.0))
        );
        assert_eq!(
            (t.first_byte_ms, t.last_byte_ms, t.total_ms),
            (None, None, None)
        );

        // DNS failed: nothing but the start.
        let t = HttpData::from_marks(&PhaseMarks {
            start: 5,
            ..Default::default()
        })
        .expect("monotonic");
        assert_eq!(t, HttpData::default());
    }

    #[test]
    fn equal_marks_are_zero_not_errors() {
        let m = PhaseMarks {
            start: 7,
            dns_done: Some(7),
            connect_start: Some(7),
            connected: Some(7),
            tls_done: None,
            request_written: Some(7),
            first_byte: Some(7),
            last_byte: Some(7),
            handshake_rtt_ns: None,
        };
        let t = HttpData::from_marks(&m).expect("monotonic");
        assert_eq!(
            (t.dns_ms, t.last_byte_ms, t.total_ms),
            (Some(0.0), Some(0.0), Some(0.0))
        );
    }

    #[test]
    fn rejects_non_monotonic_marks_naming_them() {
        let m = PhaseMarks {
            first_byte: Some(1_030 * MS), // before request_written (1_034 ms)
            ..full_https()
        };
        assert_eq!(
            HttpData::from_marks(&m),
            Err(TimingError::NonMonotonic {
                earlier: "request_written",
                earlier_ns: 1_034 * MS,
                later: "first_byte",
                later_ns: 1_030 * MS,
            })
        );
        // The check skips absent marks: connected is compared with dns_done when
        // connect_start is missing.
        let m = PhaseMarks {
            start: 10,
            dns_done: Some(20),
            connect_start: None,
            connected: Some(15),
            ..Default::default()
        };
        let err = HttpData::from_marks(&m).expect_err("connected before dns_done");
        assert!(err.to_string().contains("connected"), "{err}");
        let m = PhaseMarks {
            start: 10,
            dns_done: Some(9),
            ..Default::default()
        };
        assert!(HttpData::from_marks(&m).is_err());
    }
}
