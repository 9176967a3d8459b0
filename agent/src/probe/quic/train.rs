//! The QUIC echo train: a sans-IO core (no sockets, no clock reads; `now_ns` is an argument).
//!
//! # Wire format
//!
//! Each datagram the prober sends (and the responder echoes back unchanged) is:
//!
//! ```text
//! offset  size  field
//! 0       4     magic "MLQE" (meshlat QUIC echo)
//! 4       4     sequence number, big-endian u32 (0, 1, 2, ... within one train)
//! 8       8     send timestamp, big-endian u64, ns of the prober's process clock
//! 16      ..    zero padding up to the train's payload size
//! ```
//!
//! The RTT of a packet is its receive time minus the send time *the train recorded*
//! (the echoed timestamp is informational: the peer is not trusted with our timing). The echo has
//! no remote stamps, so the RTT includes the responder's (tiny) turnaround time.
//!
//! # Classification (DESIGN §5, the UDP train semantics)
//!
//! - **sample**: the first reply to a sequence, received within `timeout` of that packet's send.
//! - **late**: the first reply to a sequence, received more than `timeout` after its send.
//! - **duplicate**: any further reply to a sequence already answered (sample or late).
//! - **reordered**: a first reply whose sequence is lower than a sequence already answered.
//! - Anything else (wrong magic, too short, a sequence never sent) is ignored and counted in
//!   [`EchoTrain::invalid`].
//!
//! # Calling protocol
//!
//! ```text
//! let mut t = EchoTrain::new(cfg, now);
//! loop {
//!     while let Some(seq) = t.poll_transmit(now, &mut buf) { send(buf) }
//!     match t.poll_timeout() { None => break, Some(deadline) => wait for a datagram or deadline }
//!     on datagram: t.handle_datagram(now, &bytes)
//! }
//! let stats = t.into_stats();
//! ```
//!
//! The train is finished ([`EchoTrain::poll_timeout`] returns `None`) once every packet has been
//! sent and either every sequence has been answered or `timeout` has passed since the last send.

use std::time::Duration;

use crate::probe::{ReplyCounts, TrainStats};

/// Magic prefix of every echo datagram.
pub const MAGIC: [u8; 4] = *b"MLQE";

/// Smallest echo datagram: magic, sequence and timestamp.
pub const MIN_PAYLOAD: usize = 16;

/// Parameters of one train.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrainConfig {
    /// Packets to send.
    pub packets: u32,
    /// Gap between consecutive sends.
    pub interval: Duration,
    /// How long a packet's reply may take to count as a sample; the train also waits this long
    /// after the last send.
    pub timeout: Duration,
    /// Datagram size; values below [`MIN_PAYLOAD`] (including 0) mean [`MIN_PAYLOAD`].
    pub payload_bytes: usize,
}

/// What became of one sequence.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Slot {
    /// Not sent yet.
    Unsent,
    /// Sent at this time (ns), no reply yet.
    Sent(u64),
    /// Answered in time with this RTT (ns).
    Answered(u64),
    /// First reply came after the timeout.
    Late,
}

/// Why a received datagram was not part of this train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EchoError {
    /// Shorter than [`MIN_PAYLOAD`].
    #[error("datagram of {0} bytes is shorter than {MIN_PAYLOAD}")]
    TooShort(usize),
    /// Does not start with [`MAGIC`].
    #[error("datagram has the wrong magic")]
    BadMagic,
    /// Names a sequence this train has not sent.
    #[error("sequence {0} was never sent")]
    UnknownSequence(u32),
}

/// One echo train's state: what was sent when, and what came back.
#[derive(Clone, Debug)]
pub struct EchoTrain {
    cfg: TrainConfig,
    /// When packet 0 is due; packet `i` is due at `start + i * interval`.
    start_ns: u64,
    /// Next sequence to send.
    next_seq: u32,
    /// Send time of the last packet, for the end-of-train deadline.
    last_send_ns: Option<u64>,
    /// Per-sequence state, indexed by sequence.
    slots: Vec<Slot>,
    /// Sequences answered (in time or late) so far, for the early finish.
    answered: u32,
    counts: ReplyCounts,
    invalid: u32,
    /// Worst `now − due` of a send after the first, ns.
    send_lag_max_ns: Option<u64>,
}

impl EchoTrain {
    /// A train whose first packet is due at `now_ns`.
    pub fn new(cfg: TrainConfig, now_ns: u64) -> Self {
        EchoTrain {
            cfg,
            start_ns: now_ns,
            next_seq: 0,
            last_send_ns: None,
            slots: vec![Slot::Unsent; cfg.packets as usize],
            answered: 0,
            counts: ReplyCounts::default(),
            invalid: 0,
            send_lag_max_ns: None,
        }
    }

    /// The datagram size this train sends.
    pub fn payload_len(&self) -> usize {
        self.cfg.payload_bytes.max(MIN_PAYLOAD)
    }

    fn due_ns(&self, seq: u32) -> u64 {
        let gap = u64::try_from(self.cfg.interval.as_nanos()).unwrap_or(u64::MAX);
        self.start_ns
            .saturating_add(gap.saturating_mul(u64::from(seq)))
    }

    fn timeout_ns(&self) -> u64 {
        u64::try_from(self.cfg.timeout.as_nanos()).unwrap_or(u64::MAX)
    }

    /// If a packet is due at `now_ns`, writes it into `buf` (replacing its contents), records it
    /// as sent at `now_ns` and returns its sequence. Call again until it returns `None`.
    pub fn poll_transmit(&mut self, now_ns: u64, buf: &mut Vec<u8>) -> Option<u32> {
        let seq = self.next_seq;
        if seq >= self.cfg.packets || now_ns < self.due_ns(seq) {
            return None;
        }
        if seq > 0 {
            let lag = now_ns - self.due_ns(seq);
            self.send_lag_max_ns = Some(self.send_lag_max_ns.map_or(lag, |m| m.max(lag)));
        }
        buf.clear();
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&seq.to_be_bytes());
        buf.extend_from_slice(&now_ns.to_be_bytes());
        buf.resize(self.payload_len(), 0);
        self.slots[seq as usize] = Slot::Sent(now_ns);
        self.last_send_ns = Some(now_ns);
        self.next_seq += 1;
        Some(seq)
    }

    /// When the driver must call back: the next packet's due time, or the end of the train.
    /// `None` when the train is finished.
    pub fn poll_timeout(&self) -> Option<u64> {
        if self.next_seq < self.cfg.packets {
            return Some(self.due_ns(self.next_seq));
        }
        if self.answered >= self.cfg.packets {
            return None;
        }
        self.last_send_ns
            .map(|t| t.saturating_add(self.timeout_ns()))
    }

    /// Whether the train is finished at `now_ns` (every packet sent, and every one answered or
    /// the wait after the last send over).
    pub fn is_done(&self, now_ns: u64) -> bool {
        self.next_seq >= self.cfg.packets && self.poll_timeout().is_none_or(|d| now_ns >= d)
    }

    /// Accounts for a datagram received at `now_ns`.
    ///
    /// # Errors
    ///
    /// [`EchoError`] if the datagram is not a reply to this train (it is then counted in
    /// [`EchoTrain::invalid`] and otherwise ignored).
    pub fn handle_datagram(&mut self, now_ns: u64, data: &[u8]) -> Result<(), EchoError> {
        let r = self.classify(now_ns, data);
        if r.is_err() {
            self.invalid += 1;
        }
        r
    }

    fn classify(&mut self, now_ns: u64, data: &[u8]) -> Result<(), EchoError> {
        if data.len() < MIN_PAYLOAD {
            return Err(EchoError::TooShort(data.len()));
        }
        if data[..4] != MAGIC {
            return Err(EchoError::BadMagic);
        }
        let seq = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let timeout = self.timeout_ns();
        let slot = self
            .slots
            .get_mut(seq as usize)
            .ok_or(EchoError::UnknownSequence(seq))?;
        match *slot {
            Slot::Unsent => return Err(EchoError::UnknownSequence(seq)),
            Slot::Answered(_) | Slot::Late => {
                self.counts.duplicate();
                return Ok(());
            }
            Slot::Sent(sent) => {
                let rtt = now_ns.saturating_sub(sent);
                if rtt > timeout {
                    *slot = Slot::Late;
                    self.counts.late();
                } else {
                    *slot = Slot::Answered(rtt);
                }
            }
        }
        self.answered += 1;
        self.counts.answered(seq);
        Ok(())
    }

    /// Datagrams that were not replies to this train.
    pub fn invalid(&self) -> u32 {
        self.invalid
    }

    /// The train's results. Packets still unanswered count as lost; jitter and clock fields are
    /// `None` (an echo has no remote timestamps).
    pub fn into_stats(self) -> TrainStats {
        let rtts_ms: Vec<f64> = self
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Answered(ns) => Some(*ns as f64 / 1e6),
                _ => None,
            })
            .collect();
        TrainStats {
            send_lag_ms: self.send_lag_max_ns.map(|ns| ns as f64 / 1e6),
            ..self.counts.stats(self.next_seq, rtts_ms)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn cfg(packets: u32) -> TrainConfig {
        TrainConfig {
            packets,
            interval: Duration::from_millis(10),
            timeout: Duration::from_millis(100),
            payload_bytes: 0,
        }
    }

    /// Sends everything due at `now`, returning the datagrams.
    fn send_due(t: &mut EchoTrain, now: u64) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = Vec::new();
        while t.poll_transmit(now, &mut buf).is_some() {
            out.push(buf.clone());
        }
        out
    }

    #[test]
    fn paces_packets_by_interval_and_ends_after_timeout() {
        let mut t = EchoTrain::new(cfg(3), 1000 * MS);
        assert_eq!(send_due(&mut t, 1000 * MS).len(), 1);
        assert_eq!(t.poll_timeout(), Some(1010 * MS));
        assert!(send_due(&mut t, 1009 * MS).is_empty());
        assert_eq!(send_due(&mut t, 1010 * MS).len(), 1);
        // A late driver catches up by sending what is due.
        assert_eq!(send_due(&mut t, 1025 * MS).len(), 1);
        assert_eq!(t.poll_timeout(), Some(1125 * MS));
        assert!(!t.is_done(1124 * MS));
        assert!(t.is_done(1125 * MS));
        let s = t.into_stats();
        assert_eq!((s.sent, s.samples, s.lost()), (3, 0, 3));
        // Packet 2 was due at 1020 ms and went at 1025 ms.
        assert_eq!(s.send_lag_ms, Some(5.0));
    }

    #[test]
    fn replies_give_rtts_in_sequence_order_and_finish_early() {
        let mut t = EchoTrain::new(cfg(3), 0);
        let mut sent = Vec::new();
        for i in 0..3 {
            sent.extend(send_due(&mut t, i * 10 * MS));
        }
        assert_eq!(sent.len(), 3);
        assert!(sent.iter().all(|d| d.len() == MIN_PAYLOAD));
        // Replies: seq 2 first (RTT 5 ms), then 0 (RTT 31 ms, reordered), then 1 (reordered).
        assert_eq!(t.handle_datagram(25 * MS, &sent[2]), Ok(()));
        assert_eq!(t.handle_datagram(31 * MS, &sent[0]), Ok(()));
        assert!(!t.is_done(31 * MS));
        assert_eq!(t.handle_datagram(32 * MS, &sent[1]), Ok(()));
        assert_eq!(t.poll_timeout(), None);
        assert!(t.is_done(32 * MS));
        let s = t.into_stats();
        assert_eq!(s.rtts_ms, vec![31.0, 22.0, 5.0]);
        assert_eq!((s.samples, s.reordered, s.duplicates, s.late), (3, 2, 0, 0));
        assert_eq!((s.jitter_ms, s.clock_offset_ms), (None, None));
        assert_eq!(s.send_lag_ms, Some(0.0), "every packet went on time");
    }

    #[test]
    fn duplicates_late_and_garbage_are_classified() {
        let mut t = EchoTrain::new(cfg(2), 0);
        let a = send_due(&mut t, 0).remove(0);
        let b = send_due(&mut t, 10 * MS).remove(0);
        assert_eq!(t.handle_datagram(MS, &a), Ok(()));
        assert_eq!(t.handle_datagram(2 * MS, &a), Ok(()));
        // b's reply comes 100.5 ms after its send: late, not a sample.
        assert_eq!(t.handle_datagram(110 * MS + MS / 2, &b), Ok(()));
        assert_eq!(t.handle_datagram(111 * MS, &b), Ok(()));
        assert_eq!(
            t.handle_datagram(3 * MS, b"short"),
            Err(EchoError::TooShort(5))
        );
        let mut wrong = a.clone();
        wrong[0] = b'X';
        assert_eq!(t.handle_datagram(3 * MS, &wrong), Err(EchoError::BadMagic));
        let mut unknown = a.clone();
        unknown[4..8].copy_from_slice(&7u32.to_be_bytes());
        assert_eq!(
            t.handle_datagram(3 * MS, &unknown),
            Err(EchoError::UnknownSequence(7))
        );
        assert_eq!(t.invalid(), 3);
        let s = t.into_stats();
        assert_eq!(
            (s.sent, s.samples, s.duplicates, s.late, s.reordered),
            (2, 1, 2, 1, 0)
        );
        assert_eq!(s.rtts_ms, vec![1.0]);
        assert_eq!(s.lost(), 1);
    }

    #[test]
    fn pads_to_payload_and_carries_seq_and_stamp() {
        let mut t = EchoTrain::new(
            TrainConfig {
                payload_bytes: 100,
                ..cfg(1)
            },
            42,
        );
        let d = send_due(&mut t, 42).remove(0);
        assert_eq!(d.len(), 100);
        assert_eq!(&d[..4], b"MLQE");
        assert_eq!(&d[4..8], &0u32.to_be_bytes());
        assert_eq!(&d[8..16], &42u64.to_be_bytes());
        assert!(d[16..].iter().all(|b| *b == 0));
    }

    #[test]
    fn reply_to_unsent_sequence_is_rejected() {
        let mut t = EchoTrain::new(cfg(2), 0);
        let a = send_due(&mut t, 0).remove(0);
        let mut future = a.clone();
        future[4..8].copy_from_slice(&1u32.to_be_bytes());
        assert_eq!(
            t.handle_datagram(MS, &future),
            Err(EchoError::UnknownSequence(1))
        );
    }

    #[test]
    fn empty_train_is_done_at_once() {
        let t = EchoTrain::new(cfg(0), 0);
        assert!(t.is_done(0));
        assert_eq!(t.poll_timeout(), None);
    }
}
