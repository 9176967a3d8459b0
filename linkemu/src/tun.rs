//! Tun routes: a packet-level link between two network namespaces (issue 16, item 2).
//!
//! `tun:NS_A/IP_A=NS_B/IP_B[,fwd=..,ret=..,loss_fwd=..,loss_ret=..,seed=..,warm=..]` creates one TUN
//! device per end (`IFF_TUN | IFF_NO_PI`: raw IP packets, no Ethernet), moves each into its
//! namespace (`ip link set ... netns`), gives it its address with the other end as its
//! point-to-point peer (`ip -n NS addr add IP_A peer IP_B/32`) and brings it up. The namespaces
//! must exist (`ip netns add`); this needs root (CAP_NET_ADMIN).
//!
//! Every IPv4 packet NS_A sends to IP_B then leaves through its TUN device, is read here, held
//! for `fwd` (and dropped with `loss_fwd`) by the same hold threads as the udp and tcp routes,
//! and written into NS_B's device, where NS_B's kernel receives it as arriving from IP_A; the
//! way back gets `ret`. Unlike the udp and tcp routes, which terminate connections at the
//! emulator, nothing here answers for the far end: a TCP handshake, a TLS or QUIC exchange and
//! every retransmission cross the link with its delay, so connect and handshake times carry
//! the emulated round trip. Packets other than IPv4 (IPv6 neighbour and router traffic the
//! kernel sends on any link) are not forwarded, counted or logged.
//!
//! Several tun routes between the same namespaces (different address pairs) give the same two
//! hosts an undelayed and a delayed path, as the accuracy tests use. The devices disappear when
//! the emulator stops (their file descriptors close).
//!
//! # Warm-up
//!
//! `warm=DUR` (off by default, at most [`MAX_WARM`](super::MAX_WARM)) keeps a delayed path's
//! answers as warm as an undelayed path's. After a quiet spell of milliseconds, the kernel behind
//! a device takes longer to take a packet in (inside the emulator's `write()`: measured 55–170 µs
//! against 15–60 µs when packets follow each other closely, on a 2-core VM whose idle vCPUs
//! halt). On an undelayed path an answer (a SYN-ACK, a reflected datagram) reaches its
//! requester microseconds after the request left, while everything is warm; on a delayed path it
//! arrives after a quiet spell as long as the delay, so a delayed connect rises over an
//! undelayed one by the delay plus some 20–50 µs that the emulated delay does not account for.
//! With `warm`, the hold thread writes one warm-up packet into the device `warm` before a held
//! packet is due when that packet answers the end it goes to — that end sent a packet on this
//! route within one round trip (`fwd + ret`) plus [`ANSWER_SLACK`](super::ANSWER_SLACK) before
//! the due time — and the lane has not itself sent a packet within `warm` before then. A packet
//! that answers nothing (the first SYN of a connect, the first packet of a train) arrives cold,
//! as it would on an undelayed path: warming those too made a delayed connect 10–40 µs faster
//! than an undelayed one, whose SYN meets a cold far end.
//!
//! The warm-up packet ([`warm_up_packet`]) is a 40-byte IPv4 TCP segment from the held packet's
//! source to its destination address with ports 0 → 0, the RST flag and valid checksums: no
//! socket can have port 0, so the receiving kernel looks the segment up, finds no socket and
//! drops it, and a RST is never answered, so nothing comes back through the emulator. Warm-up
//! packets are not counted or logged as the route's packets;
//! [`RouteStats::warm_packets`](super::RouteStats) counts them (and the summary line shows them).
//! Held packets that are not IPv4 with a full header get none.

use std::fs::File;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::Arc;
use std::sync::mpsc::Sender;
use std::time::Instant;

use super::{BUF, Counters, Dir, Lane, LogLine, Out, POLL, RouteSpec, Shared, lane};

/// Whether `ns` can name a network namespace here (what `ip netns` accepts, kept simple).
pub fn valid_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 64
        && ns
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && ns != "."
        && ns != ".."
}

/// Creates a TUN device named `name` (`IFF_TUN | IFF_NO_PI`): its file.
fn create(name: &str) -> io::Result<File> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: an all-zero ifreq is valid; the name is copied within its 16 bytes (NUL kept).
    #[allow(unsafe_code)]
    let rc = unsafe {
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes().take(15)) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
        libc::ioctl(f.as_raw_fd(), libc::TUNSETIFF as _, &req)
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(f)
}

/// Runs `ip ARGS`, failing with its stderr.
fn ip(args: &[&str]) -> io::Result<()> {
    let out = std::process::Command::new("ip").args(args).output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "`ip {}` failed: {} (tun routes need root and existing namespaces: ip netns add NAME)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Moves device `dev` into `ns`, gives it `local` with `peer` as its point-to-point peer, and
/// brings it up.
fn configure(dev: &str, ns: &str, local: SocketAddr, peer: SocketAddr) -> io::Result<()> {
    ip(&["link", "set", "dev", dev, "netns", ns])?;
    let (local, peer) = (local.ip().to_string(), format!("{}/32", peer.ip()));
    ip(&["-n", ns, "addr", "add", &local, "peer", &peer, "dev", dev])?;
    ip(&["-n", ns, "link", "set", "dev", dev, "up"])
}

/// Starts tun route `i` (see the module doc): creates and configures both devices and starts a
/// reader thread per device. Returns the first end's address (port 0).
pub(super) fn start(
    i: usize,
    spec: &RouteSpec,
    shared: &Arc<Shared>,
    counters: &Arc<Counters>,
    log: Option<Sender<LogLine>>,
) -> io::Result<SocketAddr> {
    let (ns_a, ns_b) = spec
        .namespaces
        .clone()
        .ok_or_else(|| io::Error::other("tun route without namespaces"))?;
    // Unique per process and route, within IFNAMSIZ (15 characters).
    let base = format!("ml{}r{i}", std::process::id() % 10_000_000);
    let (name_a, name_b) = (format!("{base}a"), format!("{base}b"));
    let (dev_a, dev_b) = (Arc::new(create(&name_a)?), Arc::new(create(&name_b)?));
    configure(&name_a, &ns_a, spec.listen, spec.upstream)?;
    configure(&name_b, &ns_b, spec.upstream, spec.listen)?;
    let fwd = lane(i, Dir::Fwd, spec, shared, counters, log.clone())?;
    let ret = lane(i, Dir::Ret, spec, shared, counters, log)?;
    for (from, to, lane, d) in [
        (dev_a.clone(), dev_b.clone(), fwd, "fwd"),
        (dev_b, dev_a, ret, "ret"),
    ] {
        let s = shared.clone();
        shared.spawn(format!("linkemu-{i}-tun-{d}"), move || {
            read_loop(&from, &to, &lane, &s);
        })?;
    }
    Ok(spec.listen)
}

/// Reads packets from `from` until the emulator stops, offering each IPv4 one to `lane` for
/// `to`.
fn read_loop(from: &Arc<File>, to: &Arc<File>, lane: &Lane, shared: &Shared) {
    let fd = from.as_raw_fd();
    // A second handle on the same descriptor for reading (the Arc's is shared with writers);
    // ManuallyDrop: the descriptor belongs to `from`.
    // SAFETY: `fd` stays open while `from` lives, which outlives this loop.
    #[allow(unsafe_code)]
    let mut reader = std::mem::ManuallyDrop::new(unsafe { File::from_raw_fd(fd) });
    let mut buf = vec![0u8; BUF];
    let timeout_ms = i32::try_from(POLL.as_millis()).unwrap_or(20);
    while !shared.stopped() {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        #[allow(unsafe_code)]
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout_ms) };
        if ready <= 0 {
            continue;
        }
        let n = match reader.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let received = Instant::now();
        if n == 0 || buf[0] >> 4 != 4 {
            continue;
        }
        lane.offer(received, buf[..n].to_vec(), Out::Tun(to.clone()));
    }
}

/// The warm-up packet for `packet` (see "Warm-up" above): a TCP RST from its source to its
/// destination address, ports 0 -> 0, with valid IPv4 and TCP checksums. `None` when `packet`
/// is not IPv4 with a full 20-byte header.
pub fn warm_up_packet(packet: &[u8]) -> Option<Vec<u8>> {
    const LEN: u16 = 40;
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    let mut p = vec![0u8; usize::from(LEN)];
    p[0] = 0x45; // version 4, header 5 words
    p[2..4].copy_from_slice(&LEN.to_be_bytes());
    p[6] = 0x40; // don't fragment
    p[8] = 64; // TTL
    p[9] = 6; // TCP
    p[12..20].copy_from_slice(&packet[12..20]); // source, destination
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    // TCP: ports 0 and 0, sequence 0, no ack, data offset 5 words, RST, window 0.
    p[32] = 5 << 4;
    p[33] = 0x04;
    // Pseudo-header: source, destination, protocol, TCP length.
    let pseudo = packet[12..20]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum::<u32>()
        + 6
        + u32::from(LEN - 20);
    let tcp_sum = checksum(&p[20..], pseudo);
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    Some(p)
}

/// The Internet checksum (RFC 1071) of `bytes`, starting from the partial sum `sum`.
fn checksum(bytes: &[u8], mut sum: u32) -> u16 {
    for w in bytes.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]));
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SYN from 10.78.1.1:40000 to 10.78.1.2:5201 (IPv4 header only matters here).
    fn syn() -> Vec<u8> {
        let mut p = vec![0u8; 60];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&60u16.to_be_bytes());
        p[9] = 6;
        p[12..16].copy_from_slice(&[10, 78, 1, 1]);
        p[16..20].copy_from_slice(&[10, 78, 1, 2]);
        p
    }

    #[test]
    fn warm_up_packet_is_a_valid_rst_between_the_same_addresses_on_port_zero() {
        let w = warm_up_packet(&syn()).unwrap();
        assert_eq!(w.len(), 40);
        assert_eq!(
            (w[0], u16::from_be_bytes([w[2], w[3]]), w[9]),
            (0x45, 40, 6)
        );
        assert_eq!(
            &w[12..20],
            &[10, 78, 1, 1, 10, 78, 1, 2],
            "same source and destination"
        );
        // A correct checksum sums (with itself) to 0xffff, so checksum() of it is 0.
        assert_eq!(checksum(&w[..20], 0), 0, "IPv4 header checksum");
        let pseudo = [10u32 * 256 + 78, 256 + 1, 10 * 256 + 78, 256 + 2]
            .iter()
            .sum::<u32>()
            + 6
            + 20;
        assert_eq!(checksum(&w[20..], pseudo), 0, "TCP checksum");
        assert_eq!(
            (&w[20..22], &w[22..24]),
            (&[0u8, 0][..], &[0u8, 0][..]),
            "ports 0 -> 0"
        );
        assert_eq!((w[32] >> 4, w[33]), (5, 0x04), "20-byte header, RST only");
    }

    #[test]
    fn warm_up_packet_needs_an_ipv4_header() {
        assert!(warm_up_packet(&syn()[..19]).is_none());
        let mut v6 = syn();
        v6[0] = 0x60;
        assert!(warm_up_packet(&v6).is_none());
        assert!(warm_up_packet(&[]).is_none());
    }

    #[test]
    fn checksum_matches_rfc_1071_example() {
        // RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2 (one's complement).
        assert_eq!(
            checksum(&[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7], 0),
            !0xddf2
        );
    }

    #[test]
    fn namespace_names_are_checked() {
        for ok in ["mla", "ml-1_b.c", "x"] {
            assert!(valid_namespace(ok), "{ok}");
        }
        for bad in ["", ".", "..", "a/b", "a b", "a;b", &"n".repeat(65)] {
            assert!(!valid_namespace(bad), "{bad:?}");
        }
    }
}
