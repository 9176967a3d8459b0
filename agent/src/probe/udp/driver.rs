//! The one train driver: runs a direct train ([`UdpSession`], one socket) or a relay train
//! ([`RelaySession`], a socket to the relay and one to the destination) to completion. It owns
//! the sockets and reads the clock; the sessions are sans-IO (STYLE §2).

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::Interest;
use tokio::net::UdpSocket;

use super::SPIN_NS;
use super::relay::{Path, RelaySession};
use super::session::UdpSession;
use crate::clock::Clock;
use crate::udp::{MAX_PACKET_BYTES, StampMapper, sys};

/// What the driver needs of a train core.
pub(super) trait Train {
    /// Ends the train once its deadline has passed.
    fn handle_timeout(&mut self, now_ns: u64);
    /// Whether the train is over.
    fn is_done(&self) -> bool;
    /// Writes the next packet due at `now_ns` (the clock read of this turn) into `tx`; the path
    /// says which socket it leaves on.
    fn poll_transmit(&mut self, now_ns: u64, tx: &mut Vec<u8>) -> Option<Path>;
    /// Feeds a datagram received on `path`'s socket at `t4_ns`. Decode failures are counted by
    /// the session (and reported as `Auth` if nothing else arrives).
    fn handle_datagram(&mut self, path: Path, t4_ns: u64, datagram: &[u8]);
    /// When the train next needs the driver.
    fn poll_timeout(&self) -> Option<u64>;
}

impl Train for UdpSession {
    fn handle_timeout(&mut self, now_ns: u64) {
        UdpSession::handle_timeout(self, now_ns);
    }
    fn is_done(&self) -> bool {
        UdpSession::is_done(self)
    }
    fn poll_transmit(&mut self, now_ns: u64, tx: &mut Vec<u8>) -> Option<Path> {
        UdpSession::poll_transmit(self, now_ns, tx).map(|_| Path::Direct)
    }
    fn handle_datagram(&mut self, _path: Path, t4_ns: u64, datagram: &[u8]) {
        let _ = UdpSession::handle_datagram(self, t4_ns, datagram);
    }
    fn poll_timeout(&self) -> Option<u64> {
        UdpSession::poll_timeout(self)
    }
}

impl Train for RelaySession {
    fn handle_timeout(&mut self, now_ns: u64) {
        RelaySession::handle_timeout(self, now_ns);
    }
    fn is_done(&self) -> bool {
        RelaySession::is_done(self)
    }
    fn poll_transmit(&mut self, _now_ns: u64, tx: &mut Vec<u8>) -> Option<Path> {
        // A relay train stamps t1 with a clock read of its own, just before the send.
        RelaySession::poll_transmit(self, Clock::now_ns(), tx).map(|(path, _)| path)
    }
    fn handle_datagram(&mut self, path: Path, t4_ns: u64, datagram: &[u8]) {
        let _ = RelaySession::handle_datagram(self, path, t4_ns, datagram);
    }
    fn poll_timeout(&self) -> Option<u64> {
        RelaySession::poll_timeout(self)
    }
}

/// Runs `train` to completion on `socks` (one socket per [`Path`] the train sends on). Returns
/// the socket error that ended it early, if any (the train's state up to then is kept).
///
/// Waits sleep on tokio's timer; with `spin`, only until [`SPIN_NS`] before the due time, then
/// they yield-spin, so packets (and a relay pair's second packet, sent right after the first)
/// leave on time. Without `spin` (coarse trains, interval >= 2 ms) they only sleep: tokio's ~1 ms
/// timer may send a packet up to 1 ms late, which moves t1 but not the RTT, and 100 concurrent
/// trains must not burn a core each.
pub(super) async fn drive<T: Train>(
    socks: &[(&UdpSocket, Path)],
    train: &mut T,
    packet_bytes: usize,
    spin: bool,
) -> Option<io::Error> {
    // Both buffers live for the whole train: nothing on the per-packet path allocates.
    let mut tx = Vec::with_capacity(packet_bytes);
    let mut rx = [0u8; MAX_PACKET_BYTES + 1];
    let mut stamps = StampMapper::default();
    let end = loop {
        let now = Clock::now_ns();
        train.handle_timeout(now);
        if train.is_done() {
            break None;
        }
        if let Some(path) = train.poll_transmit(now, &mut tx) {
            if let Err(e) = socket(socks, path).send(&tx).await {
                break Some(e);
            }
            continue;
        }
        if let Err(e) = drain(socks, train, &mut rx, &mut stamps) {
            break Some(e);
        }
        let Some(wake) = train.poll_timeout() else {
            break None;
        };
        let now = Clock::now_ns();
        let Some(wait) = wake.checked_sub(now).filter(|w| *w > 0) else {
            continue;
        };
        if wait > SPIN_NS || !spin {
            let sleep = if spin { wait - SPIN_NS } else { wait };
            tokio::select! {
                r = ready(socks) => {
                    if let Err(e) = r {
                        break Some(e);
                    }
                }
                () = tokio::time::sleep(Duration::from_nanos(sleep)) => {}
            }
        } else {
            tokio::task::yield_now().await;
        }
    };
    // Replies already queued after the deadline are late; count them.
    let late_err = drain(socks, train, &mut rx, &mut stamps).err();
    end.or(late_err)
}

/// The socket of `path` (the first one if `socks` has none for it).
fn socket<'a>(socks: &[(&'a UdpSocket, Path)], path: Path) -> &'a UdpSocket {
    socks
        .iter()
        .find(|(_, p)| *p == path)
        .or(socks.first())
        .map(|(s, _)| *s)
        // Both callers (`UdpProbe::run_once` and `run_relay`) pass one socket or two.
        .expect("drive is given at least one socket")
}

/// Resolves when any of `socks` is readable or has an error queued.
async fn ready(socks: &[(&UdpSocket, Path)]) -> io::Result<()> {
    const INTEREST: Interest = Interest::READABLE.add(Interest::ERROR);
    match socks {
        [(a, _)] => a.ready(INTEREST).await.map(drop),
        [(a, _), (b, _), ..] => tokio::select! {
            r = a.ready(INTEREST) => r.map(drop),
            r = b.ready(INTEREST) => r.map(drop),
        },
        [] => std::future::pending().await,
    }
}

/// Feeds every datagram already queued on `socks` (in order) to the train.
///
/// # Errors
///
/// A socket error, e.g. `ConnectionRefused` after an ICMP port unreachable.
fn drain<T: Train>(
    socks: &[(&UdpSocket, Path)],
    train: &mut T,
    rx: &mut [u8],
    stamps: &mut StampMapper,
) -> io::Result<()> {
    for &(sock, path) in socks {
        let fd = sock.as_raw_fd();
        // Note: tokio's `try_io` masks readiness per single interest (a combined
        // `READABLE | ERROR` matches nothing), so the two are tried separately.
        for interest in [Interest::READABLE, Interest::ERROR] {
            loop {
                match sock.try_io(interest, || sys::recv(fd, rx)) {
                    Ok(r) => {
                        let t4 = r
                            .rx_realtime_ns
                            .map_or_else(Clock::now_ns, |ts| stamps.map(ts));
                        let len = if r.truncated { rx.len() } else { r.len };
                        train.handle_datagram(path, t4, rx.get(..len).unwrap_or_default());
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}
