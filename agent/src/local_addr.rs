//! This host's own address: what `agent probe` writes as `src_location` (perftest's
//! From_Location) when no location label is given.
//!
//! perftest printed its "primary local IP" there when `REP_LOCATION` was unset: the source
//! address of a UDP socket connected to a public address. We ask the same question of the
//! address each sample actually probed, so the answer is the source address the probe's socket
//! used (127.0.0.1 for a loopback target, the host's primary address for an Internet one); a
//! sample that never got an address (a failed DNS lookup) gets perftest's primary address.
//!
//! Connecting a UDP socket sends nothing: the kernel only picks the route and source address.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

/// perftest's reference destinations for "the primary address" (Google's public DNS): connected
/// to, never sent to.
const PRIMARY_V4: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(8, 8, 8, 8)), 53);
const PRIMARY_V6: SocketAddr = SocketAddr::new(
    IpAddr::V6(Ipv6Addr::new(0x2001, 0x4860, 0x4860, 0, 0, 0, 0, 0x8888)),
    53,
);

/// The local address the host would send from to reach `remote`, or `None` when it has no
/// route there (or only an unspecified address).
pub fn toward(remote: SocketAddr) -> Option<IpAddr> {
    let bind = match remote {
        SocketAddr::V4(_) => SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
        SocketAddr::V6(_) => SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
    };
    let socket = UdpSocket::bind(bind).ok()?;
    socket.connect(remote).ok()?;
    let ip = socket.local_addr().ok()?.ip();
    (!ip.is_unspecified()).then_some(ip)
}

/// The host's primary address, as perftest found it: the source address toward a public IPv4
/// address, else toward a public IPv6 one.
pub fn primary() -> Option<IpAddr> {
    toward(PRIMARY_V4).or_else(|| toward(PRIMARY_V6))
}

/// The address a sample that probed `remote` was sent from: [`toward`] it, else [`primary`].
pub fn for_sample(remote: Option<SocketAddr>) -> Option<IpAddr> {
    remote.and_then(toward).or_else(primary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_targets_are_reached_from_loopback() {
        let v4: SocketAddr = "127.0.0.1:7710".parse().expect("literal");
        assert_eq!(toward(v4), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(for_sample(Some(v4)), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        // Where the host has IPv6 loopback at all, it is its own source.
        let v6: SocketAddr = "[::1]:7710".parse().expect("literal");
        if let Some(ip) = toward(v6) {
            assert_eq!(ip, IpAddr::V6(Ipv6Addr::LOCALHOST));
        }
    }

    #[test]
    fn a_sample_without_an_address_gets_the_primary_address() {
        assert_eq!(for_sample(None), primary());
        // A primary address, where the host has a route out, is a real one of this host.
        if let Some(ip) = primary() {
            assert!(!ip.is_unspecified(), "{ip}");
            assert!(
                UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok(),
                "{ip} is not an address of this host"
            );
        }
    }
}
