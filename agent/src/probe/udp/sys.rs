//! The UDP data plane's only unsafe code: kernel receive timestamps via `recvmsg`.
//!
//! On Linux, [`enable_rx_timestamps`] sets `SO_TIMESTAMPING` with
//! `SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE`, so each datagram carries an
//! `SCM_TIMESTAMPING` control message whose first `timespec` is the `CLOCK_REALTIME` time the
//! kernel received it — before any scheduling delay of ours. [`recv`] reads the datagram, the
//! peer address and that stamp with one `recvmsg` into stack buffers (no allocation). Elsewhere,
//! or when the option is refused, the stamp is `None` and callers fall back to
//! [`crate::clock::Clock::now_ns`].
#![allow(unsafe_code)]

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// `SO_TIMESTAMPING` (the "old" value, 37, whose control message holds native `timespec`s —
/// 64-bit fields on the 64-bit targets it is enabled for). Not every libc release exports it.
#[cfg(all(
    target_os = "linux",
    target_pointer_width = "64",
    not(any(target_arch = "mips64", target_arch = "sparc64"))
))]
const SO_TIMESTAMPING: libc::c_int = 37;

/// One received datagram.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// The datagram was larger than the buffer (`MSG_TRUNC`).
    pub truncated: bool,
    /// Sender address, when the kernel reported one.
    pub peer: Option<SocketAddr>,
    /// Kernel receive time, ns since the Unix epoch (`CLOCK_REALTIME`).
    pub rx_realtime_ns: Option<u64>,
}

/// Asks the kernel to timestamp received datagrams in software. Returns whether it agreed.
#[cfg(all(
    target_os = "linux",
    target_pointer_width = "64",
    not(any(target_arch = "mips64", target_arch = "sparc64"))
))]
pub(crate) fn enable_rx_timestamps(fd: RawFd) -> bool {
    let flags: libc::c_uint = libc::SOF_TIMESTAMPING_RX_SOFTWARE | libc::SOF_TIMESTAMPING_SOFTWARE;
    // SAFETY: `fd` is an open socket owned by the caller for the duration of the call; we pass a
    // pointer to a live c_uint and its exact size, which is what SO_TIMESTAMPING reads.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            SO_TIMESTAMPING,
            (&raw const flags).cast(),
            std::mem::size_of::<libc::c_uint>() as libc::socklen_t,
        )
    };
    rc == 0
}

/// Kernel timestamps are not supported on this target.
#[cfg(not(all(
    target_os = "linux",
    target_pointer_width = "64",
    not(any(target_arch = "mips64", target_arch = "sparc64"))
)))]
pub(crate) fn enable_rx_timestamps(_fd: RawFd) -> bool {
    false
}

/// Keeps receive timestamping switched on in the kernel for the life of the process.
///
/// Linux turns software receive stamps on globally when the first socket asks and off when the
/// last such socket closes, and switching on is deferred to a work queue: datagrams arriving
/// just after a fresh socket enables it carry no stamp. A prober opens a new socket per train,
/// so without this the first replies of each train would fall back to the (later) process
/// clock. One idle, unbound socket holding the option avoids that.
pub(crate) fn keep_rx_timestamps_enabled() {
    use std::os::fd::AsRawFd;
    static KEEPER: std::sync::OnceLock<Option<socket2::Socket>> = std::sync::OnceLock::new();
    KEEPER.get_or_init(|| {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).ok()?;
        enable_rx_timestamps(s.as_raw_fd()).then_some(s)
    });
}

/// Control buffer: room for one `scm_timestamping` (3 timespecs) plus slack, 8-aligned.
#[repr(C, align(8))]
struct Control([u8; 128]);

/// Receives one datagram into `buf` with `recvmsg` (blocking or not, as the socket is set).
///
/// # Errors
///
/// The OS error: `WouldBlock` on an empty non-blocking socket (or a receive timeout),
/// `ConnectionRefused` after an ICMP port unreachable on a connected socket, ...
pub(crate) fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<Received> {
    // SAFETY: all-zero is a valid sockaddr_storage (a plain C struct of integers).
    let mut addr: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut control = Control([0; 128]);
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: all-zero is a valid msghdr (null pointers, zero lengths); fields are set below.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&raw mut addr).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    // SAFETY: every pointer in `msg` refers to a live local (`addr`, `iov`, `control`) or to
    // `buf`, with the matching length; all outlive the call, and the kernel writes at most those
    // lengths.
    let n = unsafe { libc::recvmsg(fd, &raw mut msg, 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let len = (n as usize).min(buf.len());
    Ok(Received {
        len,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        peer: sockaddr_to_std(&addr, msg.msg_namelen),
        rx_realtime_ns: rx_timestamp(&msg),
    })
}

/// Finds the software receive stamp among the control messages `recvmsg` filled in.
#[cfg(all(
    target_os = "linux",
    target_pointer_width = "64",
    not(any(target_arch = "mips64", target_arch = "sparc64"))
))]
fn rx_timestamp(msg: &libc::msghdr) -> Option<u64> {
    // SAFETY: `msg` was just filled by a successful recvmsg, so msg_control/msg_controllen
    // describe our live control buffer and the kernel's well-formed cmsg chain in it; the CMSG_*
    // helpers stay within msg_controllen. The payload of SCM_TIMESTAMPING is three timespecs;
    // we check cmsg_len covers the first before reading it unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let h = &*c;
            if h.cmsg_level == libc::SOL_SOCKET && h.cmsg_type == SO_TIMESTAMPING {
                let need = libc::CMSG_LEN(std::mem::size_of::<libc::timespec>() as libc::c_uint);
                if h.cmsg_len as usize >= need as usize {
                    let ts: libc::timespec =
                        std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                    if ts.tv_sec > 0 {
                        return Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                    }
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    None
}

/// Kernel timestamps are not supported on this target.
#[cfg(not(all(
    target_os = "linux",
    target_pointer_width = "64",
    not(any(target_arch = "mips64", target_arch = "sparc64"))
)))]
fn rx_timestamp(_msg: &libc::msghdr) -> Option<u64> {
    None
}

fn sockaddr_to_std(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match libc::c_int::from(addr.ss_family) {
        libc::AF_INET if len >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the kernel wrote a sockaddr_in (family AF_INET, length checked) into the
            // storage, which is larger and suitably aligned for it.
            let a = unsafe { &*(std::ptr::from_ref(addr).cast::<libc::sockaddr_in>()) };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a sockaddr_in6.
            let a = unsafe { &*(std::ptr::from_ref(addr).cast::<libc::sockaddr_in6>()) };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn recv_reports_peer_truncation_and_timestamp() {
        keep_rx_timestamps_enabled();
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let stamped = enable_rx_timestamps(rx.as_raw_fd());
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        // The kernel switches stamping on asynchronously (see keep_rx_timestamps_enabled): allow
        // the first datagrams to arrive unstamped, but not all of them.
        let mut last = None;
        for _ in 0..100 {
            let before = crate::clock::realtime_ns();
            tx.send_to(&[7u8; 100], rx.local_addr().expect("addr"))
                .expect("send");
            let mut buf = [0u8; 64];
            let r = recv(rx.as_raw_fd(), &mut buf).expect("recv");
            assert_eq!(r.len, 64);
            assert!(r.truncated);
            assert_eq!(r.peer, tx.local_addr().ok());
            last = Some((before, r));
            if r.rx_realtime_ns.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let (before, r) = last.expect("at least one datagram");
        if cfg!(target_os = "linux") {
            assert!(stamped, "SO_TIMESTAMPING refused");
            let ts = r.rx_realtime_ns.expect("kernel timestamp");
            let after = crate::clock::realtime_ns();
            assert!(
                ts + 1_000_000 >= before && ts <= after + 1_000_000,
                "{before} {ts} {after}"
            );
        }
    }
}
