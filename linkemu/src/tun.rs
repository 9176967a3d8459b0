//! Tun routes: a packet-level link between two network namespaces (issue 16, item 2).
//!
//! `tun:NS_A/IP_A=NS_B/IP_B[,fwd=..,ret=..,loss_fwd=..,loss_ret=..,seed=..]` creates one TUN
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

#[cfg(test)]
mod tests {
    use super::*;

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
