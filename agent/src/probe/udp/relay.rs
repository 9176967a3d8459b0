//! Relay trains (DESIGN §4): A → R → B → R → A through a relay agent R, with a direct A ↔ B
//! packet interleaved for each relayed one.
//!
//! # Target syntax (standalone)
//!
//! `relay://R_HOST:PORT/B_HOST:PORT` — protocol udp: R is an `agent serve --relay` UDP
//! responder, B any meshlat UDP reflector. Records get `kind = relay`, `target` = the whole
//! string. Standalone grants are signed locally with the Ed25519 key pair derived from the
//! shared `--key` ([`crate::udp::grant::GrantSigner::derive_standalone`]; a standalone relay trusts
//! the same derived public key), valid for [`STANDALONE_GRANT_TTL_S`]. Under a controller every
//! relay target carries the controller's grant instead.
//!
//! # Sans-IO core
//!
//! [`RelaySession`] owns two [`UdpSession`]s of the same size, interval and timeout: the
//! relayed half (requests are `RelayForward` packets carrying the grant, answers `RelayReturn`)
//! and the direct half (plain requests to B, session id `session_id ^ 1`). Packets go in pairs
//! (one relayed, one direct, sequence i each): the first of pair i is paced by the interval, the
//! second follows it at once (the driver sends it without waiting, so well within 1 ms); the
//! relayed packet goes first in even pairs and second in odd ones.
//!
//! Per answered relayed packet (A stamps a1 = t1 and a4 = receive time; R stamps r1..r4; B
//! stamps b1 = t2 and b2 = t3), all in integer ns:
//!
//! - `leg_src_relay = (a4 − a1) − (r4 − r1)`
//! - `leg_relay_dst = (r3 − r2) − (b2 − b1)`
//! - `dwell = (r2 − r1) + (r4 − r3)`
//! - relayed `rtt = (a4 − a1) − (b2 − b1)`, checked to equal the sum of the three exactly
//!   ([`RelayResult::sum_mismatches`] counts violations; there should be none).
//!
//! Answers with r1 = 0, r2 < r1, r4 < r3 or b2 < b1 are ignored. The record's train fields come
//! from the relayed half; [`RelayData`] holds the medians (nearest rank) of the legs and dwell,
//! `direct_rtt_ms` (median of the direct half) and `relay_penalty_ms` (median over pairs with
//! both answers of relayed − direct).

use super::session::{SessionConfig, UdpSession};
use crate::probe::{RelayData, TrainStats, nearest_rank};
use crate::udp::wire::{self, GRANT_BYTES, MessageType, WireError};

/// Lifetime of a standalone grant, seconds.
pub const STANDALONE_GRANT_TTL_S: u64 = 300;

/// Which half of the train a packet belongs to (and so which socket it uses).
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum Path {
    /// A → R → B → R → A.
    Relayed,
    /// A → B → A.
    Direct,
}

impl Path {
    fn other(self) -> Self {
        match self {
            Path::Relayed => Path::Direct,
            Path::Direct => Path::Relayed,
        }
    }
}

/// The relay arithmetic of one answered relayed packet, ns.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct PacketLegs {
    /// Sequence.
    pub seq: u32,
    /// (a4 − a1) − (b2 − b1).
    pub rtt_ns: i128,
    /// (a4 − a1) − (r4 − r1).
    pub src_relay_ns: i128,
    /// (r3 − r2) − (b2 − b1).
    pub relay_dst_ns: i128,
    /// (r2 − r1) + (r4 − r3).
    pub dwell_ns: i128,
}

impl PacketLegs {
    /// Computes the legs from an answer's header and its receive time a4.
    pub fn of(h: &wire::Header, a4: u64) -> Self {
        let [a1, a4, b1, b2, r1, r2, r3, r4] =
            [h.t1, a4, h.t2, h.t3, h.r1, h.r2, h.r3, h.r4].map(i128::from);
        PacketLegs {
            seq: h.seq,
            rtt_ns: (a4 - a1) - (b2 - b1),
            src_relay_ns: (a4 - a1) - (r4 - r1),
            relay_dst_ns: (r3 - r2) - (b2 - b1),
            dwell_ns: (r2 - r1) + (r4 - r3),
        }
    }

    /// Whether rtt = src_relay + relay_dst + dwell, exactly.
    pub fn sums_exactly(&self) -> bool {
        self.rtt_ns == self.src_relay_ns + self.relay_dst_ns + self.dwell_ns
    }
}

/// The sans-IO relay train. Calling protocol as [`UdpSession`]'s, with a [`Path`] on every
/// transmit and datagram.
#[derive(Debug)]
pub struct RelaySession {
    relayed: UdpSession,
    direct: UdpSession,
    key: wire::WireKey,
    session_id: u64,
    /// The second packet of the pair in progress, to be sent at once.
    pending_second: Option<Path>,
    legs: Vec<Option<PacketLegs>>,
    direct_rtt_ns: Vec<Option<i128>>,
    ignored: u32,
}

/// Everything a finished relay train measured.
#[derive(Clone, Debug, PartialEq)]
pub struct RelayResult {
    /// Train fields of the record (the relayed half).
    pub train: TrainStats,
    /// The direct half.
    pub direct: TrainStats,
    /// Medians for the record.
    pub relay: RelayData,
    /// Per answered relayed packet, in sequence order.
    pub packets: Vec<PacketLegs>,
    /// Packets whose rtt was not exactly the sum of legs and dwell.
    pub sum_mismatches: u32,
}

impl RelaySession {
    /// A relay train: `cfg` describes each half (both send `cfg.packets`); `grant` goes into
    /// every relayed packet.
    pub fn new(cfg: SessionConfig, grant: [u8; GRANT_BYTES]) -> Self {
        let n = cfg.packets as usize;
        let direct_cfg = SessionConfig {
            session_id: cfg.session_id ^ 1,
            ..cfg.clone()
        };
        RelaySession {
            key: cfg.key.clone(),
            session_id: cfg.session_id,
            relayed: UdpSession::new(cfg).with_relay_grant(grant),
            direct: UdpSession::new(direct_cfg),
            pending_second: None,
            legs: vec![None; n],
            direct_rtt_ns: vec![None; n],
            ignored: 0,
        }
    }

    fn half(&mut self, p: Path) -> &mut UdpSession {
        match p {
            Path::Relayed => &mut self.relayed,
            Path::Direct => &mut self.direct,
        }
    }

    /// If a packet is due, writes it into `buf` with t1 = `now_ns` and says which path it
    /// takes.
    pub fn poll_transmit(&mut self, now_ns: u64, buf: &mut Vec<u8>) -> Option<(Path, u32)> {
        if let Some(p) = self.pending_second.take()
            && let Some(seq) = self.half(p).poll_transmit_unpaced(now_ns, buf)
        {
            return Some((p, seq));
        }
        let pair = self.relayed.sent().min(self.direct.sent());
        let first = if pair.is_multiple_of(2) {
            Path::Relayed
        } else {
            Path::Direct
        };
        let seq = self.half(first).poll_transmit(now_ns, buf)?;
        self.pending_second = Some(first.other());
        Some((first, seq))
    }

    /// Processes a datagram received on `path`'s socket at `now_ns`.
    ///
    /// # Errors
    ///
    /// The [`WireError`] when it does not decode or authenticate.
    pub fn handle_datagram(
        &mut self,
        path: Path,
        now_ns: u64,
        datagram: &[u8],
    ) -> Result<(), WireError> {
        match path {
            Path::Relayed => {
                let Ok(h) = wire::decode(datagram, std::slice::from_ref(&self.key)) else {
                    // Let the half count it as invalid.
                    return self.relayed.handle_datagram(now_ns, datagram);
                };
                if h.msg_type == MessageType::RelayReturn
                    && h.session_id == self.session_id
                    && (h.r1 == 0 || h.r2 < h.r1 || h.r4 < h.r3)
                {
                    self.ignored += 1;
                    return Ok(());
                }
                let before = self.relayed.samples();
                self.relayed.handle_datagram(now_ns, datagram)?;
                if self.relayed.samples() > before
                    && let Some(slot) = self.legs.get_mut(h.seq as usize)
                {
                    *slot = Some(PacketLegs::of(&h, now_ns));
                }
                Ok(())
            }
            Path::Direct => {
                let before = self.direct.samples();
                self.direct.handle_datagram(now_ns, datagram)?;
                if self.direct.samples() > before
                    && let Ok(h) = wire::Header::parse(datagram)
                    && let Some(slot) = self.direct_rtt_ns.get_mut(h.seq as usize)
                {
                    let [a1, a4, b1, b2] = [h.t1, now_ns, h.t2, h.t3].map(i128::from);
                    *slot = Some((a4 - a1) - (b2 - b1));
                }
                Ok(())
            }
        }
    }

    /// When to call back; `Some(t ≤ now)` means at once.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.pending_second.is_some() {
            return Some(0);
        }
        match (self.relayed.poll_timeout(), self.direct.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Advances both halves' timers.
    pub fn handle_timeout(&mut self, now_ns: u64) {
        self.relayed.handle_timeout(now_ns);
        self.direct.handle_timeout(now_ns);
    }

    /// Both halves done.
    pub fn is_done(&self) -> bool {
        self.relayed.is_done() && self.direct.is_done()
    }

    /// Datagrams that failed to decode or authenticate, both halves.
    pub fn invalid(&self) -> u32 {
        self.relayed.invalid() + self.direct.invalid()
    }

    /// Answers ignored, both halves (including relay answers with impossible stamps).
    pub fn ignored(&self) -> u32 {
        self.relayed.ignored() + self.direct.ignored() + self.ignored
    }

    /// The train's results.
    pub fn into_result(self) -> RelayResult {
        self.into_result_on_wall(0)
    }

    /// [`RelaySession::into_result`] with one-way delays on the wall clock (see
    /// [`UdpSession::into_stats_on_wall`]).
    pub fn into_result_on_wall(self, process_minus_wall_ns: i64) -> RelayResult {
        let packets: Vec<PacketLegs> = self.legs.iter().flatten().copied().collect();
        let sum_mismatches = packets.iter().filter(|p| !p.sums_exactly()).count() as u32;
        let med = |v: Vec<i128>| -> Option<f64> {
            let mut ms: Vec<f64> = v.into_iter().map(|ns| ns as f64 / 1e6).collect();
            ms.sort_by(f64::total_cmp);
            nearest_rank(&ms, 50.0)
        };
        let penalties: Vec<i128> = self
            .legs
            .iter()
            .zip(&self.direct_rtt_ns)
            .filter_map(|(l, d)| Some(l.as_ref()?.rtt_ns - (*d)?))
            .collect();
        let relay = RelayData {
            leg_src_relay_rtt_ms: med(packets.iter().map(|p| p.src_relay_ns).collect()),
            leg_relay_dst_rtt_ms: med(packets.iter().map(|p| p.relay_dst_ns).collect()),
            relay_dwell_ms: med(packets.iter().map(|p| p.dwell_ns).collect()),
            direct_rtt_ms: med(self.direct_rtt_ns.iter().flatten().copied().collect()),
            relay_penalty_ms: med(penalties),
        };
        let (mut train, direct) = (
            self.relayed.into_stats_on_wall(process_minus_wall_ns),
            self.direct.into_stats_on_wall(process_minus_wall_ns),
        );
        // Both halves are the agent's sends: the record's lag is the worse of the two.
        train.send_lag_ms = match (train.send_lag_ms, direct.send_lag_ms) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        RelayResult {
            train,
            direct,
            relay,
            packets,
            sum_mismatches,
        }
    }
}

#[cfg(test)]
mod tests {
    //! A virtual network: A, relay R and reflector B with per-hop one-way delays on a virtual
    //! clock; R and B have their own clock offsets, so the arithmetic must cancel them.

    use std::collections::BTreeMap;

    use super::*;
    use crate::probe::Key;
    use crate::udp::grant::GrantSigner;
    use crate::udp::wire::WireKey;

    const MS: u64 = 1_000_000;
    const US: u64 = 1_000;
    const T0: u64 = 1_700_000_000_000_000_000;

    /// Where a packet in flight goes next.
    #[derive(Debug)]
    enum Hop {
        /// A → R (relayed, forward).
        ToRelay,
        /// R → B (relayed, forward).
        RelayToB,
        /// B → R (relayed, return).
        BToRelay,
        /// R → A.
        RelayToA,
        /// A → B (direct).
        ToB,
        /// B → A (direct).
        BToA,
    }

    struct Net {
        /// One-way delays (ns): A→R, R→A, R→B, B→R, A→B, B→A.
        d: [u64; 6],
        /// Relay's clock offset and processing time per direction.
        r_off: u64,
        r_proc: u64,
        /// Reflector's clock offset and processing time.
        b_off: u64,
        b_proc: u64,
        key: WireKey,
        now: u64,
        in_flight: BTreeMap<(u64, u64), (Hop, Vec<u8>)>,
        n: u64,
        /// Send times of the pairs, (path, seq, t).
        sends: Vec<(Path, u32, u64)>,
        drop_relayed: Vec<u32>,
    }

    impl Net {
        fn new(d: [u64; 6]) -> Self {
            Net {
                d,
                r_off: 5_000 * MS,
                r_proc: 30 * US,
                b_off: 77 * MS,
                b_proc: 20 * US,
                key: WireKey::new(&Key::from_secret("k")),
                now: T0,
                in_flight: BTreeMap::new(),
                n: 0,
                sends: Vec::new(),
                drop_relayed: Vec::new(),
            }
        }

        fn put(&mut self, at: u64, hop: Hop, bytes: Vec<u8>) {
            self.n += 1;
            self.in_flight.insert((at, self.n), (hop, bytes));
        }

        fn session(&self, packets: u32) -> RelaySession {
            let gk = GrantSigner::derive_standalone(b"k");
            let grant = gk.sign("127.0.0.1:9".parse().expect("addr"), u64::MAX);
            RelaySession::new(
                SessionConfig {
                    packets,
                    interval_ns: 10 * MS,
                    timeout_ns: 500 * MS,
                    packet_bytes: 200,
                    session_id: 42,
                    key: self.key.clone(),
                    local_error_us: wire::ERROR_BOUND_UNKNOWN,
                },
                grant,
            )
        }

        fn run(&mut self, s: &mut RelaySession) {
            let mut buf = Vec::new();
            loop {
                s.handle_timeout(self.now);
                if s.is_done() {
                    return;
                }
                while let Some((path, seq)) = s.poll_transmit(self.now, &mut buf) {
                    self.sends.push((path, seq, self.now));
                    let pkt = std::mem::take(&mut buf);
                    match path {
                        Path::Relayed if self.drop_relayed.contains(&seq) => {}
                        Path::Relayed => self.put(self.now + self.d[0], Hop::ToRelay, pkt),
                        Path::Direct => self.put(self.now + self.d[4], Hop::ToB, pkt),
                    }
                }
                let next_timer = s.poll_timeout().unwrap_or(u64::MAX).max(self.now);
                let next_pkt = self.in_flight.keys().next().map_or(u64::MAX, |k| k.0);
                let next = next_timer.min(next_pkt);
                if next == u64::MAX {
                    return;
                }
                self.now = next;
                while let Some(e) = self.in_flight.first_entry() {
                    if e.key().0 > self.now {
                        break;
                    }
                    let (hop, mut pkt) = e.remove();
                    let now = self.now;
                    let (r, b) = (now + self.r_off, now + self.b_off);
                    match hop {
                        Hop::ToRelay => {
                            wire::stamp_relay_forward(&mut pkt, &self.key, r, || r + self.r_proc)
                                .expect("size");
                            self.put(now + self.r_proc + self.d[2], Hop::RelayToB, pkt);
                        }
                        Hop::RelayToB | Hop::ToB => {
                            wire::stamp_reply(&mut pkt, &self.key, b, 0, || b + self.b_proc)
                                .expect("size");
                            let (back, d) = if matches!(hop, Hop::ToB) {
                                (Hop::BToA, self.d[5])
                            } else {
                                (Hop::BToRelay, self.d[3])
                            };
                            self.put(now + self.b_proc + d, back, pkt);
                        }
                        Hop::BToRelay => {
                            wire::stamp_relay_return(&mut pkt, &self.key, r, || r + self.r_proc)
                                .expect("size");
                            self.put(now + self.r_proc + self.d[1], Hop::RelayToA, pkt);
                        }
                        Hop::RelayToA => {
                            s.handle_datagram(Path::Relayed, now, &pkt).expect("valid");
                        }
                        Hop::BToA => {
                            s.handle_datagram(Path::Direct, now, &pkt).expect("valid");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn legs_match_injected_delays_exactly_and_sum() {
        // A→R 10 ms, R→A 1 ms, R→B 2 ms, B→R 3 ms, A→B 4 ms, B→A 5 ms.
        let mut net = Net::new([10 * MS, MS, 2 * MS, 3 * MS, 4 * MS, 5 * MS]);
        let mut s = net.session(6);
        net.run(&mut s);
        let r = s.into_result();
        assert_eq!(r.train.sent, 6);
        assert_eq!(r.train.samples, 6);
        assert_eq!(r.direct.samples, 6);
        assert_eq!(r.packets.len(), 6);
        assert_eq!(r.sum_mismatches, 0);
        for p in &r.packets {
            assert_eq!(p.src_relay_ns, 11 * MS as i128);
            assert_eq!(p.relay_dst_ns, 5 * MS as i128);
            assert_eq!(p.dwell_ns, 60 * US as i128);
            assert_eq!(p.rtt_ns, (16 * MS + 60 * US) as i128);
            assert!(p.sums_exactly());
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        assert_eq!(r.relay.leg_src_relay_rtt_ms, Some(11.0));
        assert_eq!(r.relay.leg_relay_dst_rtt_ms, Some(5.0));
        assert_eq!(r.relay.relay_dwell_ms, Some(ms(60 * US)));
        assert_eq!(r.relay.direct_rtt_ms, Some(9.0));
        assert_eq!(r.relay.relay_penalty_ms, Some(ms(7 * MS + 60 * US)));
        assert_eq!(r.train.rtts_ms, vec![ms(16 * MS + 60 * US); 6]);
    }

    #[test]
    fn pairs_alternate_order_and_go_together() {
        let mut net = Net::new([MS; 6]);
        let mut s = net.session(4);
        net.run(&mut s);
        let sends = &net.sends;
        assert_eq!(sends.len(), 8);
        for (i, pair) in sends.chunks(2).enumerate() {
            let seq = i as u32;
            let expect = if i % 2 == 0 {
                [Path::Relayed, Path::Direct]
            } else {
                [Path::Direct, Path::Relayed]
            };
            assert_eq!([pair[0].0, pair[1].0], expect, "pair {i}");
            assert_eq!((pair[0].1, pair[1].1), (seq, seq));
            assert_eq!(pair[0].2, pair[1].2, "same virtual instant");
            assert_eq!(pair[0].2, T0 + 10 * MS * i as u64, "paced by the interval");
        }
    }

    #[test]
    fn lost_relayed_packets_have_no_pair_and_impossible_stamps_are_ignored() {
        let mut net = Net::new([2 * MS; 6]);
        net.drop_relayed = vec![1, 2];
        let mut s = net.session(5);
        net.run(&mut s);
        let r = s.into_result();
        assert_eq!((r.train.sent, r.train.samples), (5, 3));
        assert_eq!(r.direct.samples, 5);
        assert_eq!(
            r.packets.iter().map(|p| p.seq).collect::<Vec<_>>(),
            vec![0, 3, 4]
        );
        assert_eq!(r.relay.relay_penalty_ms, Some(4.0 + 0.06));

        // An authentic RelayReturn with r2 < r1 is ignored, not a sample.
        let net = Net::new([MS; 6]);
        let mut s = net.session(1);
        let mut buf = Vec::new();
        let (path, _) = s.poll_transmit(T0, &mut buf).expect("first");
        assert_eq!(path, Path::Relayed);
        wire::stamp_relay_forward(&mut buf, &net.key, 500, || 400).expect("size");
        wire::stamp_reply(&mut buf, &net.key, 1, 0, || 2).expect("size");
        wire::stamp_relay_return(&mut buf, &net.key, 600, || 700).expect("size");
        assert_eq!(s.handle_datagram(Path::Relayed, T0 + MS, &buf), Ok(()));
        assert_eq!(s.ignored(), 1);
        // Garbage is invalid.
        assert!(
            s.handle_datagram(Path::Relayed, T0 + MS, &[0u8; 200])
                .is_err()
        );
        assert_eq!(s.invalid(), 1);
    }
}
