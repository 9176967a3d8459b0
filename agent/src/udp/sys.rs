//! The UDP data plane's only unsafe code: `recvmsg`/`recvmmsg`/`sendmmsg` with control messages.
//!
//! On Linux, `enable_rx_timestamps` sets `SO_TIMESTAMPING` with
//! `SOF_TIMESTAMPING_RX_SOFTWARE | SOF_TIMESTAMPING_SOFTWARE`, so each datagram carries an
//! `SCM_TIMESTAMPING` control message whose first `timespec` is the `CLOCK_REALTIME` time the
//! kernel received it — before any scheduling delay of ours. `enable_pktinfo` adds
//! `IP_PKTINFO` / `IPV6_PKTINFO`: the address a datagram was sent to, so a reflector bound to a
//! wildcard address can answer from exactly that address ([`Batch::send_replies`]).
//!
//! `recv` reads one datagram, its sender, stamp and destination with one `recvmsg` into stack
//! buffers (the prober's path). [`Batch`] does the same for up to [`BATCH`] datagrams per
//! `recvmmsg`, each with its own control buffer, and sends replies in place with one `sendmmsg`
//! (the reflector's path); its buffers are allocated once. Elsewhere, or when an option is
//! refused, the stamp is `None` (callers fall back to [`crate::clock::Clock::now_ns`]), the
//! destination is `None` (the kernel picks the reply's source) and batches hold one datagram.
//!
//! Public (hidden from the docs) only so that the benchmark driver can batch too.
#![allow(unsafe_code)]

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// `SO_TIMESTAMPING` (the "old" value, 37, whose control message holds native `timespec`s —
/// 64-bit fields on the 64-bit targets it is enabled for). Not every libc release exports it.
#[cfg(all(
    target_os = "linux",
    target_pointer_width = "64",
    not(any(target_arch = "mips64", target_arch = "sparc64"))
))]
const SO_TIMESTAMPING: libc::c_int = 37;

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

/// Asks the kernel to report each datagram's destination address and interface
/// (`IP_PKTINFO`; on IPv6 sockets `IPV6_RECVPKTINFO` too, and `IP_PKTINFO` for IPv4-mapped
/// traffic on dual-stack sockets). Returns whether it agreed to at least one. Only a socket
/// bound to a wildcard address needs it, to answer from the address a request was sent to.
#[cfg(target_os = "linux")]
pub(crate) fn enable_pktinfo(fd: RawFd, ipv6: bool) -> bool {
    let on: libc::c_int = 1;
    let set = |level: libc::c_int, name: libc::c_int| {
        // SAFETY: `fd` is an open socket owned by the caller for the duration of the call; we
        // pass a pointer to a live c_int and its exact size, which is what these options read.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        rc == 0
    };
    let v4 = set(libc::IPPROTO_IP, libc::IP_PKTINFO);
    let v6 = ipv6 && set(libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO);
    v4 || v6
}

/// Destination addresses are not reported on this target.
#[cfg(not(target_os = "linux"))]
pub(crate) fn enable_pktinfo(_fd: RawFd, _ipv6: bool) -> bool {
    false
}

/// Where a datagram was sent to, from its `IP_PKTINFO` / `IPV6_PKTINFO` control message.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub enum PktInfo {
    /// An IPv4 datagram (also on a dual-stack IPv6 socket).
    V4 {
        /// The header's destination address.
        dst: Ipv4Addr,
        /// The local address the kernel would answer from (differs from `dst` for broadcast).
        spec_dst: Ipv4Addr,
        /// Interface it arrived on.
        ifindex: u32,
    },
    /// An IPv6 datagram.
    V6 {
        /// The header's destination address.
        dst: Ipv6Addr,
        /// Interface it arrived on.
        ifindex: u32,
    },
}

impl PktInfo {
    /// The destination address of the datagram.
    pub fn dst(&self) -> IpAddr {
        match *self {
            PktInfo::V4 { dst, .. } => IpAddr::V4(dst),
            PktInfo::V6 { dst, .. } => IpAddr::V6(dst),
        }
    }
}

/// One received datagram.
#[derive(Clone, Copy, Debug, Default)]
pub struct Received {
    /// Bytes written into the buffer.
    pub len: usize,
    /// The datagram was larger than the buffer (`MSG_TRUNC`).
    pub truncated: bool,
    /// Sender address, when the kernel reported one.
    pub peer: Option<SocketAddr>,
    /// Kernel receive time, ns since the Unix epoch (`CLOCK_REALTIME`).
    pub rx_realtime_ns: Option<u64>,
    /// Destination address and interface, when `IP_PKTINFO` / `IPV6_RECVPKTINFO` is on.
    pub local: Option<PktInfo>,
}

/// Control buffer: room for one `scm_timestamping` (3 timespecs) and one pktinfo, 8-aligned.
#[derive(Clone, Copy)]
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
    let (rx_realtime_ns, local) = control_info(&msg);
    Ok(Received {
        len: (n as usize).min(buf.len()),
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        peer: sockaddr_to_std(&addr, msg.msg_namelen),
        rx_realtime_ns,
        local,
    })
}

/// Reads the software receive stamp and the destination address (pktinfo) from the control
/// messages a successful `recvmsg` filled in.
fn control_info(msg: &libc::msghdr) -> (Option<u64>, Option<PktInfo>) {
    let (mut stamp, mut local) = (None, None);
    // SAFETY: `msg` was just filled by a successful recvmsg/recvmmsg, so msg_control and
    // msg_controllen describe our live control buffer and the kernel's well-formed cmsg chain in
    // it; the CMSG_* helpers stay within msg_controllen. Each payload is read unaligned, and only
    // after checking that cmsg_len covers it.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let h = &*c;
            let data = libc::CMSG_DATA(c);
            let fits = |n: usize| h.cmsg_len as usize >= libc::CMSG_LEN(n as libc::c_uint) as usize;
            #[cfg(all(
                target_os = "linux",
                target_pointer_width = "64",
                not(any(target_arch = "mips64", target_arch = "sparc64"))
            ))]
            if h.cmsg_level == libc::SOL_SOCKET
                && h.cmsg_type == SO_TIMESTAMPING
                && fits(std::mem::size_of::<libc::timespec>())
            {
                let ts: libc::timespec = std::ptr::read_unaligned(data.cast::<libc::timespec>());
                if ts.tv_sec > 0 {
                    stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
            }
            #[cfg(target_os = "linux")]
            if h.cmsg_level == libc::IPPROTO_IP
                && h.cmsg_type == libc::IP_PKTINFO
                && fits(std::mem::size_of::<libc::in_pktinfo>())
            {
                let p: libc::in_pktinfo = std::ptr::read_unaligned(data.cast::<libc::in_pktinfo>());
                local = Some(PktInfo::V4 {
                    dst: Ipv4Addr::from(u32::from_be(p.ipi_addr.s_addr)),
                    spec_dst: Ipv4Addr::from(u32::from_be(p.ipi_spec_dst.s_addr)),
                    ifindex: p.ipi_ifindex as u32,
                });
            } else if h.cmsg_level == libc::IPPROTO_IPV6
                && h.cmsg_type == libc::IPV6_PKTINFO
                && fits(std::mem::size_of::<libc::in6_pktinfo>())
            {
                let p: libc::in6_pktinfo =
                    std::ptr::read_unaligned(data.cast::<libc::in6_pktinfo>());
                local = Some(PktInfo::V6 {
                    dst: Ipv6Addr::from(p.ipi6_addr.s6_addr),
                    ifindex: p.ipi6_ifindex,
                });
            }
            #[cfg(not(target_os = "linux"))]
            let _ = (data, &fits, &mut local);
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    (stamp, local)
}

/// Appends one control message carrying `value` at byte `off` of `control`; returns the offset
/// after it, or `None` (nothing written) when it does not fit.
#[cfg(target_os = "linux")]
fn push_cmsg<T: Copy>(
    control: &mut Control,
    off: usize,
    level: libc::c_int,
    ty: libc::c_int,
    value: T,
) -> Option<usize> {
    let payload = std::mem::size_of::<T>() as libc::c_uint;
    // SAFETY: CMSG_SPACE/CMSG_LEN only compute sizes.
    let (space, len) = unsafe { (libc::CMSG_SPACE(payload), libc::CMSG_LEN(payload)) };
    let end = off.checked_add(space as usize)?;
    if end > control.0.len() || !off.is_multiple_of(std::mem::align_of::<libc::cmsghdr>()) {
        return None;
    }
    // SAFETY: [off, end) lies inside `control`, whose start is 8-aligned, and `off` is a multiple
    // of cmsghdr's alignment (checked; every offset is a sum of CMSG_SPACEs), so the header write
    // is aligned and in bounds; CMSG_DATA of it is within the CMSG_SPACE reserved, and the payload
    // is written unaligned.
    unsafe {
        let c = control.0.as_mut_ptr().add(off).cast::<libc::cmsghdr>();
        c.write(libc::cmsghdr {
            cmsg_len: len as _,
            cmsg_level: level,
            cmsg_type: ty,
        });
        libc::CMSG_DATA(c).cast::<T>().write_unaligned(value);
    }
    Some(end)
}

/// Writes the control messages of one send: the pktinfo that makes the reply leave from the
/// address `local` says the request was sent to, and `UDP_SEGMENT` when `gso_size` is set.
/// Returns the control length to send (0: none; the kernel chooses the source).
///
/// IPv4: `IP_PKTINFO` with `ipi_spec_dst` = the request's destination (the kernel's own choice
/// `spec_dst` when that was a broadcast or multicast address) and `ipi_ifindex` = 0: the source
/// address is pinned, the route (and so the egress interface) stays the kernel's — a nonzero
/// index would force the reply out of the arrival interface even where the route back is
/// elsewhere, and per ip(7) would make that interface's primary address override the source for
/// the route lookup. IPv6: `IPV6_PKTINFO` with the destination and the arrival interface (which a
/// link-local source needs; a multicast destination is left to the kernel).
#[cfg(target_os = "linux")]
fn write_control(local: Option<&PktInfo>, gso_size: Option<u16>, control: &mut Control) -> usize {
    let mut off = 0;
    match local.copied() {
        Some(PktInfo::V4 { dst, spec_dst, .. }) => {
            let src = if dst.is_multicast() || dst.is_broadcast() || dst.is_unspecified() {
                spec_dst
            } else {
                dst
            };
            let p = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(src).to_be(),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            off = push_cmsg(control, off, libc::IPPROTO_IP, libc::IP_PKTINFO, p).unwrap_or(off);
        }
        Some(PktInfo::V6 { dst, ifindex }) => {
            let src = if dst.is_multicast() {
                Ipv6Addr::UNSPECIFIED
            } else {
                dst
            };
            let p = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: src.octets(),
                },
                ipi6_ifindex: ifindex,
            };
            off = push_cmsg(control, off, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, p).unwrap_or(off);
        }
        None => {}
    }
    if let Some(size) = gso_size {
        off = push_cmsg(control, off, libc::SOL_UDP, libc::UDP_SEGMENT, size).unwrap_or(off);
    }
    off
}

/// Replies leave from the kernel's choice of address, unsegmented, on this target.
#[cfg(not(target_os = "linux"))]
fn write_control(
    _local: Option<&PktInfo>,
    _gso_size: Option<u16>,
    _control: &mut Control,
) -> usize {
    0
}

/// Most replies coalesced into one UDP GSO send (the kernel's limit is at least 64).
const GSO_MAX_SEGMENTS: usize = 64;

/// Largest total UDP payload of one GSO send (an IP datagram's limit, with room for headers).
const GSO_MAX_BYTES: usize = 65_000;

/// Most datagrams one [`Batch`] receives or sends per system call.
pub const BATCH: usize = 64;
// `Sent::failed_mask` has one bit per reply of a batch.
const _: () = assert!(BATCH <= 64);

/// Bytes per receive slot: the largest valid packet plus one, so oversize input is detected.
pub const SLOT_BYTES: usize = super::wire::MAX_PACKET_BYTES + 1;

#[cfg(target_os = "linux")]
type Mmsg = libc::mmsghdr;

/// `struct mmsghdr` where libc has none (filled one at a time with recvmsg/sendmsg).
#[cfg(not(target_os = "linux"))]
#[derive(Clone, Copy)]
#[repr(C)]
struct Mmsg {
    msg_hdr: libc::msghdr,
    msg_len: libc::c_uint,
}

/// `recvmmsg(MSG_WAITFORONE)`: waits (as the socket is set) for one datagram, then takes the
/// others already queued; with `wait` false (`MSG_DONTWAIT`) never waits. Returns the count or
/// -1 with errno set.
///
/// # Safety
///
/// `hdrs` points to `n >= 1` initialised headers whose buffers are live and writable.
#[cfg(target_os = "linux")]
unsafe fn recv_many(fd: RawFd, hdrs: *mut Mmsg, n: usize, wait: bool) -> isize {
    let flags = if wait {
        libc::MSG_WAITFORONE
    } else {
        libc::MSG_DONTWAIT
    };
    // SAFETY: as the caller guarantees; a null timeout is allowed (and the argument is buggy).
    unsafe {
        libc::recvmmsg(
            fd,
            hdrs,
            n as libc::c_uint,
            flags as _,
            std::ptr::null_mut(),
        ) as isize
    }
}

/// One `recvmsg` into the first header.
///
/// # Safety
///
/// As the Linux version.
#[cfg(not(target_os = "linux"))]
unsafe fn recv_many(fd: RawFd, hdrs: *mut Mmsg, _n: usize, wait: bool) -> isize {
    let flags = if wait { 0 } else { libc::MSG_DONTWAIT };
    // SAFETY: as the caller guarantees for the first header.
    unsafe {
        let r = libc::recvmsg(fd, &raw mut (*hdrs).msg_hdr, flags);
        if r < 0 {
            return -1;
        }
        (*hdrs).msg_len = r as libc::c_uint;
        1
    }
}

/// `sendmmsg`: returns how many of the `n` headers were sent, or -1 with errno set (the first
/// failed).
///
/// # Safety
///
/// `hdrs` points to `n >= 1` initialised headers whose buffers are live.
#[cfg(target_os = "linux")]
unsafe fn send_many(fd: RawFd, hdrs: *mut Mmsg, n: usize) -> isize {
    // SAFETY: as the caller guarantees.
    unsafe { libc::sendmmsg(fd, hdrs, n as libc::c_uint, 0) as isize }
}

/// One `sendmsg` of the first header.
///
/// # Safety
///
/// As the Linux version.
#[cfg(not(target_os = "linux"))]
unsafe fn send_many(fd: RawFd, hdrs: *mut Mmsg, _n: usize) -> isize {
    // SAFETY: as the caller guarantees for the first header.
    unsafe {
        if libc::sendmsg(fd, &raw const (*hdrs).msg_hdr, 0) < 0 {
            return -1;
        }
        1
    }
}

/// What [`Batch::send_replies`] did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Replies the kernel accepted.
    pub sent: usize,
    /// Replies refused (each skipped after its error).
    pub failed: usize,
    /// The first error, if any.
    pub error: Option<io::Error>,
    /// Which replies were refused: bit `j` for the `j`-th reply queued ([`Batch::queue_reply`]
    /// order; [`BATCH`] fits in 64 bits).
    pub failed_mask: u64,
}

/// Up to [`BATCH`] datagrams received with one `recvmmsg` — each with its own buffer, sender
/// address and control buffer (kernel receive stamp, destination address) — and the replies to
/// some of them, sent in place with one `sendmmsg`, each from the address its request was sent to.
///
/// Everything is allocated once in [`Batch::new`]; receiving and replying allocate nothing.
pub struct Batch {
    bufs: Box<[[u8; SLOT_BYTES]]>,
    names: Box<[libc::sockaddr_storage]>,
    name_lens: Box<[libc::socklen_t]>,
    rx_control: Box<[Control]>,
    tx_control: Box<[Control]>,
    iovs: Box<[libc::iovec]>,
    hdrs: Box<[Mmsg]>,
    got: Box<[Received]>,
    /// Datagrams received by the last [`Batch::recv`].
    n: usize,
    /// Queued replies: (slot, length).
    replies: Box<[(usize, usize)]>,
    n_replies: usize,
    /// Per send header: (first reply, replies in it).
    groups: Box<[(usize, usize)]>,
    /// Coalesce replies to one peer with UDP GSO (off once the kernel refuses it).
    gso: bool,
}

impl std::fmt::Debug for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Batch {{ received: {}, replies: {} }}",
            self.n, self.n_replies
        )
    }
}

impl Default for Batch {
    fn default() -> Self {
        Self::new()
    }
}

impl Batch {
    /// Allocates the buffers for [`BATCH`] datagrams.
    pub fn new() -> Self {
        // SAFETY: all-zero is a valid sockaddr_storage, iovec (null, 0) and (m)msghdr (null
        // pointers, zero lengths): plain C structs of integers and pointers.
        let (name, iov, hdr): (libc::sockaddr_storage, libc::iovec, Mmsg) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed(), std::mem::zeroed()) };
        Batch {
            bufs: vec![[0u8; SLOT_BYTES]; BATCH].into_boxed_slice(),
            names: vec![name; BATCH].into_boxed_slice(),
            name_lens: vec![0; BATCH].into_boxed_slice(),
            rx_control: vec![Control([0; 128]); BATCH].into_boxed_slice(),
            tx_control: vec![Control([0; 128]); BATCH].into_boxed_slice(),
            iovs: vec![iov; BATCH].into_boxed_slice(),
            hdrs: vec![hdr; BATCH].into_boxed_slice(),
            got: vec![Received::default(); BATCH].into_boxed_slice(),
            n: 0,
            replies: vec![(0, 0); BATCH].into_boxed_slice(),
            n_replies: 0,
            groups: vec![(0, 0); BATCH].into_boxed_slice(),
            gso: cfg!(target_os = "linux"),
        }
    }

    /// Receives up to [`BATCH`] datagrams with one `recvmmsg`: waits for the first as the socket
    /// is set (blocking, with its receive timeout, or not), then takes only what is already
    /// queued. Forgets the previous datagrams and any unsent replies.
    ///
    /// # Errors
    ///
    /// The OS error when nothing was received: `WouldBlock` on timeout or an empty non-blocking
    /// socket, `ConnectionRefused` on a connected socket after an ICMP port unreachable, ...
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_with(fd, true)
    }

    /// [`Batch::recv`] without waiting, whatever the socket's mode: `WouldBlock` if nothing is
    /// queued. A thread polling this way is never asleep on the socket, so senders to it do not
    /// pay for waking it.
    ///
    /// # Errors
    ///
    /// As [`Batch::recv`].
    pub fn try_recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_with(fd, false)
    }

    fn recv_with(&mut self, fd: RawFd, wait: bool) -> io::Result<usize> {
        self.n = 0;
        self.n_replies = 0;
        for i in 0..BATCH {
            let (Some(buf), Some(iov), Some(name), Some(ctl), Some(h)) = (
                self.bufs.get_mut(i),
                self.iovs.get_mut(i),
                self.names.get_mut(i),
                self.rx_control.get_mut(i),
                self.hdrs.get_mut(i),
            ) else {
                break;
            };
            *iov = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: buf.len(),
            };
            let m = &mut h.msg_hdr;
            m.msg_name = std::ptr::from_mut(name).cast();
            m.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            m.msg_iov = std::ptr::from_mut(iov);
            m.msg_iovlen = 1;
            m.msg_control = ctl.0.as_mut_ptr().cast();
            m.msg_controllen = ctl.0.len() as _;
            m.msg_flags = 0;
            h.msg_len = 0;
        }
        let want = BATCH.min(self.hdrs.len());
        // SAFETY: the first `want` headers were just pointed at this batch's live buffers,
        // sockaddr storage, iovecs and control buffers, with their exact lengths; all are owned by
        // `self` (boxed, so they do not move) and outlive the call.
        let r = unsafe { recv_many(fd, self.hdrs.as_mut_ptr(), want, wait) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = (r as usize).min(want);
        for i in 0..n {
            let (Some(h), Some(name), Some(len_out), Some(got)) = (
                self.hdrs.get(i),
                self.names.get(i),
                self.name_lens.get_mut(i),
                self.got.get_mut(i),
            ) else {
                break;
            };
            let (rx_realtime_ns, local) = control_info(&h.msg_hdr);
            *len_out = h.msg_hdr.msg_namelen;
            *got = Received {
                len: (h.msg_len as usize).min(SLOT_BYTES),
                truncated: h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
                peer: sockaddr_to_std(name, h.msg_hdr.msg_namelen),
                rx_realtime_ns,
                local,
            };
        }
        self.n = n;
        Ok(n)
    }

    /// Datagrams received by the last [`Batch::recv`].
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the last [`Batch::recv`] got nothing.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Datagram `i` of the last receive: what the kernel said about it, and its bytes (the whole
    /// slot when it was truncated, so an oversize datagram stays detectably oversize).
    pub fn packet_mut(&mut self, i: usize) -> Option<(&Received, &mut [u8])> {
        if i >= self.n {
            return None;
        }
        let got = self.got.get(i)?;
        let len = if got.truncated { SLOT_BYTES } else { got.len };
        let buf = self.bufs.get_mut(i)?.get_mut(..len)?;
        Some((got, buf))
    }

    /// Queues datagram `i`'s buffer, as modified through [`Batch::packet_mut`], as the reply to
    /// its sender. The reply is the first `len` bytes, never more than was received. Returns
    /// false (nothing queued) for a slot not received, one without a sender address, or a
    /// truncated one.
    pub fn queue_reply(&mut self, i: usize, len: usize) -> bool {
        let Some(got) = self.got.get(i).filter(|_| i < self.n) else {
            return false;
        };
        if got.truncated || got.peer.is_none() || len > got.len {
            return false;
        }
        let Some(r) = self.replies.get_mut(self.n_replies) else {
            return false;
        };
        *r = (i, len);
        self.n_replies += 1;
        true
    }

    /// Sends the queued replies with `sendmmsg` (as few calls as the kernel allows), each to its
    /// request's sender and from the address the request was sent to (when known), then
    /// forgets them. A reply the kernel refuses is counted and skipped.
    ///
    /// Consecutive replies of one length to one sender (from one address) go out as one UDP GSO
    /// send (`UDP_SEGMENT`, a scatter list over their buffers: no copy) that the kernel — or the
    /// NIC — cuts into exactly the same datagrams: one trip through the IP stack instead of one
    /// per reply. If the kernel refuses GSO the rest is sent unsegmented, and GSO stays off.
    pub fn send_replies(&mut self, fd: RawFd) -> Sent {
        let mut out = Sent::default();
        let count = self.n_replies.min(self.replies.len());
        self.n_replies = 0;
        let mut from = 0;
        while let Some(retry) = self.send_from(fd, from, count, &mut out) {
            self.gso = false;
            from = retry;
        }
        out
    }

    /// Sends replies `from..count`. Returns the first reply to send again without GSO when the
    /// kernel refused a GSO send.
    fn send_from(&mut self, fd: RawFd, from: usize, count: usize, out: &mut Sent) -> Option<usize> {
        let mut n_hdrs = 0;
        let mut j = from;
        while j < count {
            let Some(&(slot, len)) = self.replies.get(j) else {
                break;
            };
            let Some(got) = self.got.get(slot).copied() else {
                break;
            };
            let mut m = 1;
            if self.gso {
                while j + m < count && m < GSO_MAX_SEGMENTS && (m + 1) * len <= GSO_MAX_BYTES {
                    let same = self.replies.get(j + m).is_some_and(|&(s2, l2)| {
                        l2 == len
                            && self
                                .got
                                .get(s2)
                                .is_some_and(|g| g.peer == got.peer && g.local == got.local)
                    });
                    if !same {
                        break;
                    }
                    m += 1;
                }
            }
            for k in j..j + m {
                let (Some(&(s, l)), Some(iov)) = (self.replies.get(k), self.iovs.get_mut(k)) else {
                    break;
                };
                let Some(buf) = self.bufs.get_mut(s) else {
                    break;
                };
                *iov = libc::iovec {
                    iov_base: buf.as_mut_ptr().cast(),
                    iov_len: l.min(buf.len()),
                };
            }
            let gso_size = (m > 1).then(|| u16::try_from(len).unwrap_or(u16::MAX));
            let (Some(ctl), Some(h), Some(g), Some(name), Some(&name_len), Some(iov)) = (
                self.tx_control.get_mut(n_hdrs),
                self.hdrs.get_mut(n_hdrs),
                self.groups.get_mut(n_hdrs),
                self.names.get_mut(slot),
                self.name_lens.get(slot),
                self.iovs.get_mut(j),
            ) else {
                break;
            };
            let control_len = write_control(got.local.as_ref(), gso_size, ctl);
            let mh = &mut h.msg_hdr;
            mh.msg_name = std::ptr::from_mut(name).cast();
            mh.msg_namelen = name_len;
            mh.msg_iov = std::ptr::from_mut(iov);
            mh.msg_iovlen = m as _;
            mh.msg_control = if control_len == 0 {
                std::ptr::null_mut()
            } else {
                ctl.0.as_mut_ptr().cast()
            };
            mh.msg_controllen = control_len as _;
            mh.msg_flags = 0;
            h.msg_len = 0;
            *g = (j, m);
            n_hdrs += 1;
            j += m;
        }
        let mut done = 0;
        while done < n_hdrs {
            let Some(rest) = self.hdrs.get_mut(done..n_hdrs) else {
                break;
            };
            // SAFETY: headers [done, n_hdrs) were just pointed at this batch's live buffers
            // (through iovecs [from, count), lengths at most the slot's), sender addresses (with
            // the kernel's own lengths) and control buffers (with the length written); all are
            // owned by `self` (boxed: they do not move) and outlive the call.
            let r = unsafe { send_many(fd, rest.as_mut_ptr(), rest.len()) };
            if r > 0 {
                let r = (r as usize).min(n_hdrs - done);
                for &(_, m) in self.groups.get(done..done + r).unwrap_or_default() {
                    out.sent += m;
                }
                done += r;
                continue;
            }
            let e = io::Error::last_os_error();
            if r < 0 && e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            let (first, m) = self.groups.get(done).copied().unwrap_or((0, 1));
            if m > 1
                && matches!(
                    e.raw_os_error(),
                    Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
                )
            {
                return Some(first);
            }
            out.failed += m;
            for k in first..first + m {
                out.failed_mask |= 1u64.checked_shl(k as u32).unwrap_or(0);
            }
            out.error.get_or_insert(e);
            done += 1;
        }
        None
    }
}

/// Sends `pkt` `count` times (at most [`BATCH`]) on a connected socket with one `sendmmsg`.
/// Returns how many the kernel accepted.
///
/// # Errors
///
/// The OS error when none was sent.
pub fn send_copies(fd: RawFd, pkt: &[u8], count: usize) -> io::Result<usize> {
    let count = count.clamp(1, BATCH);
    let mut iov = libc::iovec {
        // sendmmsg only reads through this pointer.
        iov_base: pkt.as_ptr().cast_mut().cast(),
        iov_len: pkt.len(),
    };
    // SAFETY: all-zero is a valid (m)msghdr.
    let mut hdrs: [Mmsg; BATCH] = unsafe { std::mem::zeroed() };
    for h in hdrs.iter_mut().take(count) {
        h.msg_hdr.msg_iov = &raw mut iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: the first `count` headers point to `iov`, which points to `pkt` with its length;
    // both outlive the call, and the kernel only reads them (no name: the socket is connected).
    let r = unsafe { send_many(fd, hdrs.as_mut_ptr(), count) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
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
