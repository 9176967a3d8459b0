//! Sans-IO core of one UDP train: no sockets, no clock reads; every call takes `now_ns`.
//!
//! # Calling protocol
//!
//! A driver owns the socket and the clock and loops:
//!
//! 1. `now = clock()`; [`UdpSession::handle_timeout`]`(now)`; stop when
//!    [`UdpSession::is_done`].
//! 2. While [`UdpSession::poll_transmit`]`(now, &mut buf)` returns `Some(seq)`, send `buf`
//!    (read `now` again right before each call: it becomes the packet's t1).
//! 3. Feed every received datagram to [`UdpSession::handle_datagram`] with its receive time t4
//!    (a kernel timestamp when available).
//! 4. Wait until [`UdpSession::poll_timeout`] or the next datagram, and go to 1.
//!
//! When done, the driver may still feed datagrams that are already queued (they count as
//! `late`), then calls [`UdpSession::into_stats`].
//!
//! # States and classification (DESIGN §5)
//!
//! Packets are sent `packet_interval` apart (measured from the previous actual send, so a late
//! driver never bursts). How late each paced send was against its due time is kept: the
//! worst is the train's `send_lag_ms`, the agent's own scheduling delay (issue 16, item 5). After the last send the session waits at most `timeout`; it is done
//! early once every sequence is answered. A reply (right size, right session, authentic) is:
//!
//! - a **sample** if its sequence was not yet answered and it arrives no later than
//!   `last_send + timeout`;
//! - **late** if it arrives after that and its sequence was not answered (not a sample);
//! - a **duplicate** if its sequence was already answered (in time or late);
//! - additionally **reordered** if it is a sample and a reply to a later sequence arrived first.
//!
//! Replies of the wrong size or session, of a non-reply type, for a sequence never sent, or with
//! t3 < t2 are ignored and counted ([`UdpSession::ignored`]); ones that fail to decode or
//! authenticate are counted ([`UdpSession::invalid`]) and returned as the error.
//!
//! Per sample: RTT = (t4 − t1) − (t3 − t2). Jitter is RFC 3550's interarrival jitter over the
//! forward transit t2 − t1, in arrival order: J += (|D| − J)/16, starting from 0 for each
//! train; `None` with fewer than two samples. The clock offset (remote minus local) comes from
//! the lowest-RTT sample: ((t2 − t1) + (t3 − t4)) / 2. One-way delays (means of t2 − t1 and
//! t4 − t3 over the samples, so they add up to the mean RTT) and `clock_error_ms` are published
//! only when both ends report a clock error bound (taken from the lowest-RTT sample).

use crate::probe::{ReplyCounts, TrainStats};
use crate::udp::wire::{self, Header, MessageType, WireError, WireKey};

/// Everything a train needs to know up front.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// Packets in the train (≥ 1).
    pub packets: u32,
    /// Gap between sends, ns.
    pub interval_ns: u64,
    /// How long to wait for replies after the last send, ns.
    pub timeout_ns: u64,
    /// Size of every packet (a valid wire size; replies of another size are ignored).
    pub packet_bytes: usize,
    /// Random per train, so replies to an earlier train on a reused port are ignored.
    pub session_id: u64,
    /// Key that seals requests and must authenticate replies.
    pub key: WireKey,
    /// This end's clock error bound for requests, µs ([`wire::ERROR_BOUND_UNKNOWN`] if unknown).
    pub local_error_us: u32,
}

/// What is known about one sequence.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    /// Not sent yet.
    Unsent,
    /// Sent at t1, no reply yet.
    Sent { t1: u64 },
    /// Answered in time with this RTT (ms) and raw round trip t4 − t1 (ms).
    Answered { rtt_ms: f64, raw_ms: f64 },
    /// Answered only after the timeout.
    Late,
}

/// The lowest-RTT sample so far: the offset and clock bounds are taken from it.
#[derive(Clone, Copy, Debug)]
struct Best {
    rtt_ns: i128,
    offset_ns: i128,
    sender_error_us: u32,
    reflector_error_us: u32,
}

/// One train's state machine. See the module doc for the calling protocol.
#[derive(Debug)]
pub struct UdpSession {
    cfg: SessionConfig,
    slots: Vec<Slot>,
    /// Next sequence to send.
    next_seq: u32,
    /// Earliest time the next packet may go.
    next_send_at: Option<u64>,
    /// Send time of the last packet, once every packet is sent.
    deadline: Option<u64>,
    /// Set by `handle_timeout` at the deadline (or when every sequence is answered).
    done: bool,
    samples: u32,
    counts: ReplyCounts,
    ignored: u32,
    invalid: u32,
    /// RFC 3550 state: previous forward transit (ns) and running jitter (ns).
    prev_transit: Option<i128>,
    jitter_ns: f64,
    /// Sums for the one-way-delay means.
    sum_fwd_ns: i128,
    sum_rev_ns: i128,
    best: Option<Best>,
    /// Set for the relayed half of a relay train: requests are `RelayForward` carrying this
    /// grant, and only `RelayReturn` packets are answers.
    relay_grant: Option<[u8; wire::GRANT_BYTES]>,
    /// Worst `now − due` of a paced send so far, ns (`None` before the second packet).
    send_lag_max_ns: Option<u64>,
}

impl UdpSession {
    /// A session that has sent nothing yet; the first packet may go at once.
    pub fn new(cfg: SessionConfig) -> Self {
        let n = cfg.packets as usize;
        UdpSession {
            slots: vec![Slot::Unsent; n],
            next_seq: 0,
            next_send_at: None,
            deadline: None,
            done: cfg.packets == 0,
            samples: 0,
            counts: ReplyCounts::default(),
            ignored: 0,
            invalid: 0,
            prev_transit: None,
            jitter_ns: 0.0,
            sum_fwd_ns: 0,
            sum_rev_ns: 0,
            best: None,
            relay_grant: None,
            send_lag_max_ns: None,
            cfg,
        }
    }

    /// Makes this the relayed half of a relay train (see [`super::relay`]): requests are sent
    /// as `RelayForward` with `grant`, answers are `RelayReturn` packets, and the RTT computed,
    /// (t4 − t1) − (t3 − t2), is the relayed RTT (a4 − a1) − (b2 − b1).
    pub fn with_relay_grant(mut self, grant: [u8; wire::GRANT_BYTES]) -> Self {
        self.relay_grant = Some(grant);
        self
    }

    /// Like [`UdpSession::poll_transmit`] but ignores pacing: sends the next packet now if any
    /// is left. The relay core uses it for the second packet of a pair.
    pub fn poll_transmit_unpaced(&mut self, now_ns: u64, buf: &mut Vec<u8>) -> Option<u32> {
        if self.done || self.next_seq >= self.cfg.packets {
            return None;
        }
        self.next_send_at = None;
        self.poll_transmit(now_ns, buf)
    }

    /// If a packet is due at `now_ns`, writes it into `buf` (resized to the packet size; no
    /// allocation once `buf` has the capacity) with t1 = `now_ns`, and returns its sequence.
    pub fn poll_transmit(&mut self, now_ns: u64, buf: &mut Vec<u8>) -> Option<u32> {
        if self.done || self.next_seq >= self.cfg.packets {
            return None;
        }
        if self.next_send_at.is_some_and(|at| now_ns < at) {
            return None;
        }
        if let Some(at) = self.next_send_at {
            let lag = now_ns - at;
            self.send_lag_max_ns = Some(self.send_lag_max_ns.map_or(lag, |m| m.max(lag)));
        }
        let seq = self.next_seq;
        buf.clear();
        buf.resize(self.cfg.packet_bytes, 0);
        let mut h = Header::request(
            self.cfg.key.id,
            self.cfg.session_id,
            seq,
            now_ns,
            self.cfg.local_error_us,
        );
        if let Some(g) = self.relay_grant {
            h.msg_type = MessageType::RelayForward;
            h.grant = g;
        }
        // The size was validated when the probe was built; a failure here would be a bug, and
        // sending nothing (the packet counts as lost) is the safe reaction.
        if wire::encode(&h, &self.cfg.key, buf).is_err() {
            buf.clear();
        }
        if let Some(s) = self.slots.get_mut(seq as usize) {
            *s = Slot::Sent { t1: now_ns };
        }
        self.next_seq += 1;
        self.next_send_at = Some(now_ns.saturating_add(self.cfg.interval_ns));
        if self.next_seq == self.cfg.packets {
            self.deadline = Some(now_ns.saturating_add(self.cfg.timeout_ns));
        }
        Some(seq)
    }

    /// Processes one received datagram with receive time t4 = `now_ns`.
    ///
    /// # Errors
    ///
    /// The [`WireError`] when the datagram does not decode or authenticate (also counted in
    /// [`UdpSession::invalid`]). Well-formed but irrelevant replies are not errors: they are
    /// counted in [`UdpSession::ignored`].
    pub fn handle_datagram(&mut self, now_ns: u64, datagram: &[u8]) -> Result<(), WireError> {
        if datagram.len() != self.cfg.packet_bytes {
            self.ignored += 1;
            return Ok(());
        }
        let h = match wire::decode(datagram, std::slice::from_ref(&self.cfg.key)) {
            Ok(h) => h,
            Err(e) => {
                self.invalid += 1;
                return Err(e);
            }
        };
        let answer = if self.relay_grant.is_some() {
            MessageType::RelayReturn
        } else {
            MessageType::Reply
        };
        if h.msg_type != answer || h.session_id != self.cfg.session_id || h.t3 < h.t2 {
            self.ignored += 1;
            return Ok(());
        }
        let Some(slot) = self.slots.get_mut(h.seq as usize) else {
            self.ignored += 1;
            return Ok(());
        };
        let t1 = match *slot {
            Slot::Unsent => {
                self.ignored += 1;
                return Ok(());
            }
            Slot::Answered { .. } | Slot::Late => {
                self.counts.duplicate();
                return Ok(());
            }
            Slot::Sent { t1 } => t1,
        };
        if self.deadline.is_some_and(|d| now_ns > d) {
            *slot = Slot::Late;
            self.counts.late();
            return Ok(());
        }
        let (t1, t2, t3, t4) = (
            i128::from(t1),
            i128::from(h.t2),
            i128::from(h.t3),
            i128::from(now_ns),
        );
        let rtt_ns = (t4 - t1) - (t3 - t2);
        *slot = Slot::Answered {
            rtt_ms: rtt_ns as f64 / 1e6,
            raw_ms: (t4 - t1) as f64 / 1e6,
        };
        self.samples += 1;
        self.counts.answered(h.seq);
        let transit = t2 - t1;
        if let Some(prev) = self.prev_transit {
            let d = (transit - prev).abs() as f64;
            self.jitter_ns += (d - self.jitter_ns) / 16.0;
        }
        self.prev_transit = Some(transit);
        self.sum_fwd_ns += t2 - t1;
        self.sum_rev_ns += t4 - t3;
        if self.best.is_none_or(|b| rtt_ns < b.rtt_ns) {
            self.best = Some(Best {
                rtt_ns,
                offset_ns: ((t2 - t1) + (t3 - t4)) / 2,
                sender_error_us: h.sender_error_us,
                reflector_error_us: h.reflector_error_us,
            });
        }
        if self.deadline.is_some() && self.samples == self.cfg.packets {
            self.done = true;
        }
        Ok(())
    }

    /// When the driver must call [`UdpSession::handle_timeout`] (or try to send) next; `None`
    /// once done.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.done {
            return None;
        }
        if self.next_seq < self.cfg.packets {
            return Some(self.next_send_at.unwrap_or(0));
        }
        self.deadline
    }

    /// Advances timers: the train is done once every packet is sent and `now_ns` has reached
    /// the reply deadline.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        if self.deadline.is_some_and(|d| now_ns >= d) {
            self.done = true;
        }
    }

    /// Whether the train is over (every packet sent, and answered or timed out).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Packets sent so far.
    pub fn sent(&self) -> u32 {
        self.next_seq
    }

    /// Samples so far.
    pub fn samples(&self) -> u32 {
        self.samples
    }

    /// Well-formed replies ignored (wrong size, session, type or sequence).
    pub fn ignored(&self) -> u32 {
        self.ignored
    }

    /// Datagrams that failed to decode or authenticate.
    pub fn invalid(&self) -> u32 {
        self.invalid
    }

    /// The train's results (DESIGN §5).
    pub fn into_stats(self) -> TrainStats {
        self.into_stats_on_wall(0)
    }

    /// [`UdpSession::into_stats`] with the one-way delays and the clock offset on this host's
    /// wall clock: `process_minus_wall_ns` is [`crate::clock::wall_offset_ns`] measured at the
    /// end of the train, so t1 and t4 (process clock) become t1 − δ and t4 − δ (wall clock),
    /// as the reflector's t2 and t3 are. The RTTs do not change (δ cancels in t4 − t1).
    pub fn into_stats_on_wall(self, process_minus_wall_ns: i64) -> TrainStats {
        let delta = i128::from(process_minus_wall_ns);
        let (rtts_ms, raw_rtts_ms): (Vec<f64>, Vec<f64>) = self
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Answered { rtt_ms, raw_ms } => Some((*rtt_ms, *raw_ms)),
                _ => None,
            })
            .unzip();
        let n = i128::from(self.samples.max(1));
        let bounds = self.best.and_then(|b| {
            Some((
                wire::error_bound_from_wire(b.sender_error_us)?,
                wire::error_bound_from_wire(b.reflector_error_us)?,
            ))
        });
        let ms = |ns: i128| ns as f64 / 1e6;
        TrainStats {
            jitter_ms: (self.samples >= 2).then(|| self.jitter_ns / 1e6),
            clock_offset_ms: self.best.map(|b| ms(b.offset_ns + delta)),
            owd_fwd_ms: bounds.map(|_| ms(self.sum_fwd_ns / n + delta)),
            owd_rev_ms: bounds.map(|_| ms(self.sum_rev_ns / n - delta)),
            clock_error_ms: bounds.map(|(a, b)| a + b),
            send_lag_ms: self.send_lag_max_ns.map(|ns| ns as f64 / 1e6),
            raw_rtts_ms,
            ..self.counts.stats(self.next_seq, rtts_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    //! Simulated-network tests (quinn `Pair` style): a session and a reflector joined by an
    //! in-memory link with per-direction delay, loss, duplication and reordering, on a virtual
    //! clock.

    use std::collections::BTreeMap;

    use super::*;
    use crate::probe::Key;

    const MS: u64 = 1_000_000;
    const T0: u64 = 1_700_000_000_000_000_000;

    /// Link impairments for one direction, chosen per sequence so results are exact.
    #[derive(Clone, Default)]
    struct Dir {
        delay_ns: u64,
        /// Extra delay for particular sequences (reordering, lateness).
        extra_ns: BTreeMap<u32, u64>,
        drop: Vec<u32>,
        duplicate: Vec<u32>,
    }

    impl Dir {
        fn delay(ns: u64) -> Self {
            Dir {
                delay_ns: ns,
                ..Default::default()
            }
        }
    }

    /// The virtual network: a session, a reflector whose clock is `skew_ns` ahead and takes
    /// `dwell_ns` to answer, and two directions of link.
    struct Pair {
        session: UdpSession,
        key: WireKey,
        fwd: Dir,
        rev: Dir,
        skew_ns: i64,
        dwell_ns: u64,
        reflector_error_us: u32,
        /// The prober's process clock minus its wall clock (`into_stats_on_wall`).
        wall_delta_ns: i64,
        now: u64,
        /// Datagrams in flight: (arrival time, tie-break, to_reflector, bytes).
        in_flight: Vec<(u64, u64, bool, Vec<u8>)>,
        counter: u64,
        dropped: u32,
    }

    impl Pair {
        fn new(packets: u32, interval_ns: u64, timeout_ns: u64, fwd: Dir, rev: Dir) -> Self {
            let key = WireKey::new(&Key::from_secret("test"));
            let session = UdpSession::new(SessionConfig {
                packets,
                interval_ns,
                timeout_ns,
                packet_bytes: wire::MIN_PACKET_BYTES + 32,
                session_id: 42,
                key: key.clone(),
                local_error_us: wire::ERROR_BOUND_UNKNOWN,
            });
            Pair {
                session,
                key,
                fwd,
                rev,
                skew_ns: 0,
                dwell_ns: 0,
                reflector_error_us: wire::ERROR_BOUND_UNKNOWN,
                wall_delta_ns: 0,
                now: T0,
                in_flight: Vec::new(),
                counter: 0,
                dropped: 0,
            }
        }

        fn seq_of(bytes: &[u8]) -> u32 {
            Header::parse(bytes).map(|h| h.seq).unwrap_or(u32::MAX)
        }

        fn put(&mut self, to_reflector: bool, at: u64, bytes: Vec<u8>) {
            let dir = if to_reflector { &self.fwd } else { &self.rev };
            let seq = Self::seq_of(&bytes);
            if dir.drop.contains(&seq) {
                self.dropped += 1;
                return;
            }
            let arrive = at + dir.delay_ns + dir.extra_ns.get(&seq).copied().unwrap_or(0);
            let copies = if dir.duplicate.contains(&seq) { 2 } else { 1 };
            for i in 0..copies {
                self.counter += 1;
                self.in_flight
                    .push((arrive + i, self.counter, to_reflector, bytes.clone()));
            }
        }

        /// The reflector's clock reading at true time `t`.
        fn remote(&self, t: u64) -> u64 {
            (t as i64 + self.skew_ns) as u64
        }

        /// Runs the train to completion, then delivers anything still in flight (late).
        fn run(mut self) -> (TrainStats, u32, Self) {
            let mut buf = Vec::new();
            loop {
                self.session.handle_timeout(self.now);
                if self.session.is_done() {
                    break;
                }
                while let Some(_seq) = self.session.poll_transmit(self.now, &mut buf) {
                    let b = buf.clone();
                    self.put(true, self.now, b);
                }
                // Next event: a timer or an arrival.
                let next_arrival = self.in_flight.iter().map(|f| (f.0, f.1)).min();
                let timer = self.session.poll_timeout();
                let next = match (next_arrival, timer) {
                    (Some((a, _)), Some(t)) => a.min(t),
                    (Some((a, _)), None) => a,
                    (None, Some(t)) => t,
                    (None, None) => break,
                };
                self.now = self.now.max(next);
                self.deliver_due();
            }
            // Drain: everything still in flight arrives after the deadline.
            while !self.in_flight.is_empty() {
                self.now = self.in_flight.iter().map(|f| f.0).min().unwrap_or(self.now);
                self.deliver_due();
            }
            let dropped = self.dropped;
            let session = std::mem::replace(
                &mut self.session,
                UdpSession::new(SessionConfig {
                    packets: 0,
                    interval_ns: 0,
                    timeout_ns: 0,
                    packet_bytes: wire::MIN_PACKET_BYTES,
                    session_id: 0,
                    key: self.key.clone(),
                    local_error_us: 0,
                }),
            );
            (
                session.into_stats_on_wall(self.wall_delta_ns),
                dropped,
                self,
            )
        }

        fn deliver_due(&mut self) {
            loop {
                let Some(i) = self
                    .in_flight
                    .iter()
                    .enumerate()
                    .filter(|(_, f)| f.0 <= self.now)
                    .min_by_key(|(_, f)| (f.0, f.1))
                    .map(|(i, _)| i)
                else {
                    return;
                };
                let (at, _, to_reflector, mut bytes) = self.in_flight.swap_remove(i);
                if to_reflector {
                    let t2 = self.remote(at);
                    let t3 = self.remote(at + self.dwell_ns);
                    wire::stamp_reply(&mut bytes, &self.key, t2, self.reflector_error_us, || t3)
                        .expect("valid size");
                    self.put(false, at + self.dwell_ns, bytes);
                } else {
                    // Errors are counted by the session; the tests assert on the counters.
                    let _ = self.session.handle_datagram(at, &bytes);
                }
            }
        }
    }

    #[test]
    fn rtt_equals_injected_delays_exactly() {
        let mut p = Pair::new(
            5,
            10 * MS,
            1000 * MS,
            Dir::delay(3 * MS),
            Dir::delay(2 * MS),
        );
        p.dwell_ns = 400_000; // excluded from RTT by (t3 - t2)
        let (s, dropped, _) = p.run();
        assert_eq!(dropped, 0);
        assert_eq!((s.sent, s.samples, s.lost()), (5, 5, 0));
        assert_eq!(s.rtts_ms, vec![5.0; 5]);
        assert_eq!((s.duplicates, s.reordered, s.late), (0, 0, 0));
        assert_eq!(s.jitter_ms, Some(0.0));
        assert_eq!(
            s.clock_offset_ms,
            Some(0.5),
            "(3 - 2) / 2 with synced clocks"
        );
        assert_eq!((s.owd_fwd_ms, s.clock_error_ms), (None, None));
    }

    #[test]
    fn lost_equals_dropped_in_either_direction() {
        let fwd = Dir {
            drop: vec![1, 4],
            ..Dir::delay(MS)
        };
        let rev = Dir {
            drop: vec![7],
            ..Dir::delay(MS)
        };
        let (s, dropped, _) = Pair::new(10, MS, 50 * MS, fwd, rev).run();
        assert_eq!(dropped, 3);
        assert_eq!((s.sent, s.samples, s.lost()), (10, 7, 3));
        assert_eq!(s.rtts_ms.len(), 7);
    }

    #[test]
    fn duplicates_reordering_and_late_are_counted() {
        let mut rev = Dir {
            duplicate: vec![2],
            ..Dir::delay(MS)
        };
        // Seq 3's reply overtaken by 4's: 4 is sent 1 ms later, 3 delayed by 2.5 ms.
        rev.extra_ns.insert(3, 2_500_000);
        // Seq 0's reply arrives long after the deadline (last send at 4 ms + 20 ms timeout).
        rev.extra_ns.insert(0, 100 * MS);
        let (s, _, _) = Pair::new(5, MS, 20 * MS, Dir::delay(MS), rev).run();
        assert_eq!(s.sent, 5);
        assert_eq!(s.samples, 4, "seqs 1-4 in time");
        assert_eq!(s.late, 1, "seq 0 after the timeout");
        assert_eq!(s.duplicates, 1, "second copy of seq 2");
        assert_eq!(s.reordered, 1, "seq 3 after seq 4");
        assert_eq!(
            s.rtts_ms,
            vec![2.0, 2.0, 4.5, 2.0],
            "sequence order, late excluded"
        );
    }

    #[test]
    fn jitter_matches_hand_computation() {
        // Forward transits 1, 3, 2, 2 ms (arrival order = sequence order here).
        let mut fwd = Dir::delay(MS);
        fwd.extra_ns.insert(1, 2 * MS);
        fwd.extra_ns.insert(2, MS);
        fwd.extra_ns.insert(3, MS);
        let (s, _, _) = Pair::new(4, 10 * MS, 100 * MS, fwd, Dir::delay(MS)).run();
        // J1 = 0 + (2 - 0)/16 = 0.125; J2 = 0.125 + (1 - 0.125)/16 = 0.1796875;
        // J3 = 0.1796875 + (0 - 0.1796875)/16 = 0.168457031...
        let j1 = 2.0 / 16.0;
        let j2 = j1 + (1.0 - j1) / 16.0;
        let j3 = j2 + (0.0 - j2) / 16.0;
        let got = s.jitter_ms.expect("4 samples");
        assert!((got - j3).abs() < 1e-12, "jitter {got} != {j3}");
    }

    #[test]
    fn offset_recovered_for_skewed_remote_clock() {
        let mut p = Pair::new(6, MS, 100 * MS, Dir::delay(2 * MS), Dir::delay(2 * MS));
        p.skew_ns = 37_250_000; // remote 37.25 ms ahead
        p.dwell_ns = 123_000;
        // Make one packet's path asymmetric and slower; the lowest-RTT (symmetric) wins.
        p.fwd.extra_ns.insert(2, 5 * MS);
        let (s, _, _) = p.run();
        assert_eq!(s.samples, 6);
        assert_eq!(s.clock_offset_ms, Some(37.25));
        assert_eq!(s.rtts_ms[2], 9.0);
        assert_eq!(s.rtts_ms[0], 4.0);
    }

    #[test]
    fn one_way_delays_only_with_both_error_bounds() {
        let mut p = Pair::new(3, MS, 100 * MS, Dir::delay(3 * MS), Dir::delay(MS));
        p.session.cfg.local_error_us = 500;
        p.reflector_error_us = 250;
        let (s, _, _) = p.run();
        assert_eq!(s.owd_fwd_ms, Some(3.0));
        assert_eq!(s.owd_rev_ms, Some(1.0));
        assert_eq!(s.clock_error_ms, Some(0.75));

        // The prober's process clock is 2 ms ahead of its wall clock (its wall clock stepped
        // back 2 ms after the process started); the reflector stamps in wall time, which agrees
        // with the prober's. One-way delays are right only on the wall clock; the RTT is the
        // same either way.
        for (delta, fwd, rev) in [(0, 1.0, 3.0), (2 * MS as i64, 3.0, 1.0)] {
            let mut p = Pair::new(3, MS, 100 * MS, Dir::delay(3 * MS), Dir::delay(MS));
            p.session.cfg.local_error_us = 500;
            p.reflector_error_us = 250;
            p.skew_ns = -2 * MS as i64;
            p.wall_delta_ns = delta;
            let (s, _, _) = p.run();
            assert_eq!(
                (s.owd_fwd_ms, s.owd_rev_ms),
                (Some(fwd), Some(rev)),
                "δ {delta}"
            );
            // The offset estimate assumes symmetric paths: 3 ms out and 1 ms back put it
            // (3 − 1) / 2 = 1 ms above the clocks' real difference (−2 ms, then 0).
            assert_eq!(s.clock_offset_ms, Some(if delta == 0 { -1.0 } else { 1.0 }));
            assert_eq!(s.rtts_ms, vec![4.0; 3], "δ {delta}");
        }

        let mut p = Pair::new(3, MS, 100 * MS, Dir::delay(3 * MS), Dir::delay(MS));
        p.session.cfg.local_error_us = 500; // reflector's unknown
        let (s, _, _) = p.run();
        assert_eq!(
            (s.owd_fwd_ms, s.owd_rev_ms, s.clock_error_ms),
            (None, None, None)
        );
    }

    #[test]
    fn pacing_and_timeout_timers() {
        let key = WireKey::new(&Key::from_secret("k"));
        let mut s = UdpSession::new(SessionConfig {
            packets: 3,
            interval_ns: 5 * MS,
            timeout_ns: 20 * MS,
            packet_bytes: wire::MIN_PACKET_BYTES,
            session_id: 1,
            key,
            local_error_us: 0,
        });
        let mut buf = Vec::new();
        assert_eq!(s.poll_transmit(T0, &mut buf), Some(0));
        assert_eq!(buf.len(), wire::MIN_PACKET_BYTES);
        assert_eq!(s.poll_transmit(T0 + MS, &mut buf), None, "paced");
        assert_eq!(s.poll_timeout(), Some(T0 + 5 * MS));
        assert_eq!(s.poll_transmit(T0 + 6 * MS, &mut buf), Some(1));
        assert_eq!(s.poll_timeout(), Some(T0 + 11 * MS), "from the actual send");
        assert_eq!(s.poll_transmit(T0 + 11 * MS, &mut buf), Some(2));
        assert_eq!(s.poll_timeout(), Some(T0 + 31 * MS));
        s.handle_timeout(T0 + 30 * MS);
        assert!(!s.is_done());
        s.handle_timeout(T0 + 31 * MS);
        assert!(s.is_done());
        assert_eq!(s.poll_timeout(), None);
        let st = s.into_stats();
        assert_eq!((st.sent, st.samples, st.lost()), (3, 0, 3));
        assert_eq!((st.jitter_ms, st.clock_offset_ms), (None, None));
        // Packet 1 was due at 5 ms and went at 6 ms; packet 2 went on time.
        assert_eq!(st.send_lag_ms, Some(1.0), "the worst send lag");
    }

    /// A one-packet train paces nothing: no send lag to report.
    #[test]
    fn a_single_packet_has_no_send_lag() {
        let mut s = UdpSession::new(SessionConfig {
            packets: 1,
            interval_ns: MS,
            timeout_ns: MS,
            packet_bytes: wire::MIN_PACKET_BYTES,
            session_id: 1,
            key: WireKey::new(&Key::from_secret("k")),
            local_error_us: 0,
        });
        assert_eq!(s.poll_transmit(T0 + 50 * MS, &mut Vec::new()), Some(0));
        s.handle_timeout(T0 + 60 * MS);
        assert_eq!(s.into_stats().send_lag_ms, None);
    }

    #[test]
    fn foreign_and_forged_replies_are_ignored() {
        let key = WireKey::new(&Key::from_secret("k"));
        let cfg = SessionConfig {
            packets: 1,
            interval_ns: MS,
            timeout_ns: 10 * MS,
            packet_bytes: wire::MIN_PACKET_BYTES,
            session_id: 1,
            key: key.clone(),
            local_error_us: 0,
        };
        let mut s = UdpSession::new(cfg);
        let mut buf = Vec::new();
        assert_eq!(s.poll_transmit(T0, &mut buf), Some(0));
        // The request itself echoed back unchanged (not a reply).
        assert_eq!(s.handle_datagram(T0 + MS, &buf), Ok(()));
        // Other session.
        let mut other = buf.clone();
        let mut h = Header::parse(&other).expect("valid");
        h.session_id = 2;
        h.msg_type = MessageType::Reply;
        wire::encode(&h, &key, &mut other).expect("valid size");
        assert_eq!(s.handle_datagram(T0 + MS, &other), Ok(()));
        // Wrong size.
        assert_eq!(s.handle_datagram(T0 + MS, &[0u8; 250]), Ok(()));
        assert_eq!(s.ignored(), 3);
        // Wrong key.
        let evil = WireKey::new(&Key::from_secret("evil"));
        let mut forged = buf.clone();
        wire::stamp_reply(&mut forged, &evil, T0, 0, || T0).expect("valid size");
        assert_eq!(s.handle_datagram(T0 + MS, &forged), Err(WireError::BadMac));
        assert_eq!(s.invalid(), 1);
        assert_eq!(s.samples(), 0);
        // The genuine reply still counts.
        let mut good = buf.clone();
        wire::stamp_reply(&mut good, &key, T0 + 1, 0, || T0 + 2).expect("valid size");
        assert_eq!(s.handle_datagram(T0 + 3, &good), Ok(()));
        assert_eq!(s.samples(), 1);
        assert!(s.is_done(), "every sequence answered");
    }
}
