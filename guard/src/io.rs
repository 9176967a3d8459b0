//! [`Guarded`]: an admitted connection's stream, holding its [`Slot`] and enforcing the idle
//! deadline (and, for HTTP/2, the first-request header deadline).
//!
//! A deadline that passes makes the pending read or write fail with `TimedOut`; the HTTP
//! server then drops the connection, which closes the socket and frees the slot.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use crate::limits::{Closed, Slot};

/// A stream with a connection slot, an idle deadline and an optional HTTP/2 header deadline.
#[derive(Debug)]
pub struct Guarded<IO> {
    io: IO,
    peer: SocketAddr,
    slot: Slot,
    idle: Duration,
    /// Last time bytes moved either way.
    last_active: Instant,
    /// HTTP/2: the scanner and the deadline for the first request head.
    header: Option<(H2FirstHeaders, Instant)>,
    /// One timer, armed at the earliest deadline (re-armed lazily when it fires early).
    timer: Pin<Box<Sleep>>,
    /// Set once a deadline passed; every later poll fails too.
    expired: Option<Closed>,
}

impl<IO> Guarded<IO> {
    /// Wraps `io` (from `peer`, admitted with `slot`) with the slot's listener's idle timeout.
    pub fn new(io: IO, peer: SocketAddr, slot: Slot) -> Self {
        let idle = slot.tracker().limits().idle_timeout;
        let now = Instant::now();
        Guarded {
            io,
            peer,
            slot,
            idle,
            last_active: now,
            header: None,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
            expired: None,
        }
    }

    /// Also requires the first HTTP/2 request head within the listener's header timeout from
    /// now (call after the TLS handshake, for gRPC).
    #[must_use]
    pub fn with_h2_header_deadline(mut self) -> Self {
        let t = self.slot.tracker().limits().header_timeout;
        self.header = Some((H2FirstHeaders::default(), Instant::now() + t));
        self
    }

    /// The inner stream.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// The peer address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// Polls the deadlines; `Ready` with the error once one passed.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if let Some(why) = self.expired {
                return Poll::Ready(expired_error(why));
            }
            let idle_at = self.last_active + self.idle;
            let due = match self.header {
                Some((_, h)) => h.min(idle_at),
                None => idle_at,
            };
            if self.timer.deadline() != due {
                self.timer.as_mut().reset(due);
            }
            match self.timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    let now = Instant::now();
                    let why = match self.header {
                        Some((_, h)) if now >= h => Closed::Header,
                        _ if now >= self.last_active + self.idle => Closed::Idle,
                        // Activity moved the deadline: re-arm.
                        _ => continue,
                    };
                    self.expired = Some(why);
                    self.slot.tracker().closed(why, self.peer);
                }
            }
        }
    }
}

fn expired_error(why: Closed) -> io::Error {
    let what = match why {
        Closed::Header => "request head not received within the header timeout",
        Closed::Idle => "no traffic within the idle timeout",
        Closed::Handshake => "TLS handshake not done within the handshake timeout",
    };
    io::Error::new(io::ErrorKind::TimedOut, what)
}

impl<IO: AsyncRead + Unpin> AsyncRead for Guarded<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(why) = this.expired {
            return Poll::Ready(Err(expired_error(why)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if !new.is_empty() {
                    this.last_active = Instant::now();
                    // The deadline is checked only when the peer has nothing more to give
                    // (`Pending`, below): bytes that arrived in time but were read late, by a
                    // busy server, must not count against the client.
                    if let Some((scan, _)) = &mut this.header
                        && scan.feed(new)
                    {
                        this.header = None;
                    }
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending => this.poll_deadline(cx).map(Err),
            other => other,
        }
    }
}

impl<IO> Guarded<IO> {
    /// Accounts for the outcome of a write: bytes written count as activity; a write the peer
    /// does not take (`Pending`) is where the idle deadline is checked, since a peer that reads
    /// nothing for the idle timeout is idle too.
    fn wrote(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match r {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.last_active = Instant::now();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending => self.poll_deadline(cx).map(Err),
            other => other,
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Guarded<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(why) = this.expired {
            return Poll::Ready(Err(expired_error(why)));
        }
        let r = Pin::new(&mut this.io).poll_write(cx, buf);
        this.wrote(cx, r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(why) = this.expired {
            return Poll::Ready(Err(expired_error(why)));
        }
        let r = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.wrote(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(feature = "tonic")]
impl<IO: tonic::transport::server::Connected> tonic::transport::server::Connected for Guarded<IO> {
    type ConnectInfo = IO::ConnectInfo;

    /// The inner stream's info, so `Request::remote_addr()` and peer certificates work as
    /// without the guard.
    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

// === H2FirstHeaders ===

/// Sans-IO scanner of a server-side HTTP/2 byte stream that tells when the first request head
/// is complete: after the 24-byte client preface, frames are skipped by their 9-byte headers
/// until a `HEADERS` (type 1) or `CONTINUATION` (type 9) frame with `END_HEADERS` (flag 4).
/// It validates nothing (hyper does); it only measures progress.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct H2FirstHeaders {
    /// Bytes consumed of the preface (up to 24).
    preface: usize,
    /// The frame header being assembled.
    head: [u8; 9],
    /// Bytes of `head` filled.
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: usize,
    /// The first request head is complete.
    done: bool,
}

impl H2FirstHeaders {
    /// Length of the HTTP/2 client connection preface.
    pub const PREFACE_LEN: usize = 24;

    /// Feeds received bytes; `true` once the first request head is complete.
    pub fn feed(&mut self, mut bytes: &[u8]) -> bool {
        while !self.done && !bytes.is_empty() {
            if self.preface < Self::PREFACE_LEN {
                let n = (Self::PREFACE_LEN - self.preface).min(bytes.len());
                self.preface += n;
                bytes = &bytes[n..];
            } else if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else {
                let n = (9 - self.have).min(bytes.len());
                self.head[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == 9 {
                    self.have = 0;
                    let len = u32::from_be_bytes([0, self.head[0], self.head[1], self.head[2]]);
                    let (kind, flags) = (self.head[3], self.head[4]);
                    if (kind == 1 || kind == 9) && flags & 4 != 0 {
                        self.done = true;
                    }
                    self.skip = len as usize;
                }
            }
        }
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: usize) -> Vec<u8> {
        let len = (payload as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, flags, 0, 0, 0, 1];
        f.extend(std::iter::repeat_n(0u8, payload));
        f
    }

    fn stream(frames: &[Vec<u8>]) -> Vec<u8> {
        let mut s = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for f in frames {
            s.extend_from_slice(f);
        }
        s
    }

    #[test]
    fn done_at_the_end_of_the_first_headers_frame_header() {
        // SETTINGS, WINDOW_UPDATE, then HEADERS with END_HEADERS.
        let s = stream(&[frame(4, 0, 18), frame(8, 0, 4), frame(1, 4, 30)]);
        let end_of_headers_head = s.len() - 30;
        let mut scan = H2FirstHeaders::default();
        assert!(!scan.feed(&s[..end_of_headers_head - 1]));
        assert!(scan.feed(&s[end_of_headers_head - 1..end_of_headers_head]));
    }

    #[test]
    fn byte_by_byte_and_continuation() {
        // HEADERS without END_HEADERS, then CONTINUATION with it.
        let s = stream(&[frame(4, 0, 6), frame(1, 0, 10), frame(9, 4, 5)]);
        let mut scan = H2FirstHeaders::default();
        let mut done_at = None;
        for (i, b) in s.iter().enumerate() {
            if scan.feed(std::slice::from_ref(b)) {
                done_at = Some(i);
                break;
            }
        }
        assert_eq!(done_at, Some(s.len() - 5 - 1));
    }

    #[test]
    fn settings_alone_never_complete_a_request() {
        let s = stream(&[frame(4, 0, 18), frame(4, 1, 0), frame(6, 0, 8)]);
        assert!(!H2FirstHeaders::default().feed(&s));
        // A HEADERS frame's flag byte inside another frame's payload is skipped, not read.
        let mut s = stream(&[]);
        let mut f = frame(0, 0, 9);
        f[9..].copy_from_slice(&[0, 0, 0, 1, 4, 0, 0, 0, 1]);
        s.extend(f);
        assert!(!H2FirstHeaders::default().feed(&s));
    }
}
