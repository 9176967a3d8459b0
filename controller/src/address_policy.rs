//! Which addresses an agent may advertise (issue 10 item 4): its own, or the operator's
//! `--agent-cidr` ranges.
//!
//! Every agent of the mesh probes the addresses others advertise, so an agent that advertises
//! someone else's address points the whole mesh's UDP, TCP and HTTP probes at that host (a
//! redirection attack needing only the join token). The controller therefore checks each
//! endpoint of a Hello before it registers the session:
//!
//! - **Without `--agent-cidr`** each advertised address must be the session's peer address —
//!   the IP the agent's connection comes from. A peer on loopback may advertise any loopback
//!   address (127.0.0.0/8, ::1): they all lead to the same host, so nothing new is reachable.
//! - **With `--agent-cidr`** (repeatable) each advertised address must lie inside one of the
//!   ranges, whatever the peer address. This is for agents behind a load balancer, NAT or proxy,
//!   where the peer address is not the agent's: the deployment passes its mesh (VPC) CIDRs.
//!   Inside the ranges an agent can still name another host of the ranges; the ranges bound
//!   where probes can be sent, not who is who.
//!
//! Addresses must be IP literals with a port (`10.0.0.7:7710`, `[fd00::7]:7710`): a host name
//! cannot be checked without trusting DNS at check time. IPv4-mapped IPv6 addresses
//! (`::ffff:10.0.0.7`) count as their IPv4 address on both sides.
//!
//! A refused Hello ends the stream with `PERMISSION_DENIED` naming the endpoint, the address and
//! the reason ([`AddressRefused`]; mapped in [`crate::grpc::status`]); nothing is registered. The
//! agent logs the reason and shows it at its stats server's `/status`, and retries with its
//! backoff (a fixed `--advertise` or `--agent-cidr` lets it in).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use meshlat_proto::pb;

/// One `--agent-cidr` range: a network address and a prefix length (`10.231.0.0/16`,
/// `fd00::/8`; a bare address is a single host).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Whether `ip` lies inside (an IPv4 range never holds an IPv6 address and vice versa,
    /// IPv4-mapped ones aside).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.net, ip.to_canonical()) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.prefix)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address (expected e.g. 10.0.0.0/16)"))?;
        let net = net.to_canonical();
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("prefix length {p:?} is not 0 to {max}"))?,
        };
        let cidr = Cidr { net, prefix };
        // Host bits set (10.0.0.7/16) is usually a typo for a host or for the network: say which.
        let masked = match net {
            IpAddr::V4(n) => IpAddr::from(std::net::Ipv4Addr::from(
                u32::from(n) & u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0),
            )),
            IpAddr::V6(n) => IpAddr::from(std::net::Ipv6Addr::from(
                u128::from(n) & u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0),
            )),
        };
        if masked != net {
            return Err(format!(
                "host bits are set: the network is {masked}/{prefix} (or give {net} alone for one host)"
            ));
        }
        Ok(cidr)
    }
}

/// The check applied to every Hello's endpoints (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AddressPolicy {
    cidrs: Vec<Cidr>,
}

/// Why an advertised address is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefusalReason {
    /// Not `IP:PORT` (a host name, or no port).
    #[error(
        "not an IP address with a port (a host name cannot be checked; advertise the IP others dial)"
    )]
    NotAnIp,
    /// Not the session's peer address (no `--agent-cidr` given).
    #[error(
        "not this agent's address: its connection comes from {peer} (advertise that address, or \
         run the controller with --agent-cidr when agents connect through a load balancer or NAT)"
    )]
    NotPeer {
        /// The session's peer address.
        peer: IpAddr,
    },
    /// Outside every `--agent-cidr`.
    #[error("outside the controller's --agent-cidr ranges ({cidrs})")]
    OutsideCidrs {
        /// The ranges, comma separated.
        cidrs: String,
    },
    /// The session's peer address is unknown (and no `--agent-cidr` given).
    #[error(
        "the controller cannot see this session's address to check it against (use --agent-cidr)"
    )]
    NoPeer,
}

/// A Hello endpoint the policy refuses: which one, its address, why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("hello.endpoints[{index}].address {address:?}: {reason}")]
pub struct AddressRefused {
    /// Index in `Hello.endpoints`.
    pub index: usize,
    /// The advertised `host:port`.
    pub address: String,
    /// Why.
    pub reason: RefusalReason,
}

impl AddressRefused {
    /// The field path (`hello.endpoints[N].address`).
    pub fn field(&self) -> String {
        format!("hello.endpoints[{}].address", self.index)
    }
}

impl AddressPolicy {
    /// Parses `--agent-cidr` values (empty entries are ignored).
    ///
    /// # Errors
    ///
    /// The bad value and why.
    pub fn parse(values: &[String]) -> Result<Self, (String, String)> {
        let mut cidrs = Vec::new();
        for v in values.iter().map(|v| v.trim()).filter(|v| !v.is_empty()) {
            let c = v
                .parse::<Cidr>()
                .map_err(|reason| (v.to_string(), reason))?;
            if !cidrs.contains(&c) {
                cidrs.push(c);
            }
        }
        Ok(AddressPolicy { cidrs })
    }

    /// The `--agent-cidr` ranges (empty: the peer-address rule).
    pub fn cidrs(&self) -> &[Cidr] {
        &self.cidrs
    }

    /// Checks one advertised `host:port` for a session from `peer`.
    ///
    /// # Errors
    ///
    /// Why it is refused.
    pub fn check_address(&self, peer: Option<IpAddr>, address: &str) -> Result<(), RefusalReason> {
        let ip = SocketAddr::from_str(address.trim())
            .map_err(|_| RefusalReason::NotAnIp)?
            .ip()
            .to_canonical();
        if !self.cidrs.is_empty() {
            return if self.cidrs.iter().any(|c| c.contains(ip)) {
                Ok(())
            } else {
                Err(RefusalReason::OutsideCidrs {
                    cidrs: self
                        .cidrs
                        .iter()
                        .map(Cidr::to_string)
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            };
        }
        let peer = peer.ok_or(RefusalReason::NoPeer)?.to_canonical();
        if ip == peer || (peer.is_loopback() && ip.is_loopback()) {
            Ok(())
        } else {
            Err(RefusalReason::NotPeer { peer })
        }
    }

    /// Checks every endpoint of a Hello for a session from `peer`.
    ///
    /// # Errors
    ///
    /// The first refused endpoint.
    pub fn check(
        &self,
        peer: Option<IpAddr>,
        endpoints: &[pb::ResponderEndpoint],
    ) -> Result<(), AddressRefused> {
        for (index, e) in endpoints.iter().enumerate() {
            self.check_address(peer, &e.address)
                .map_err(|reason| AddressRefused {
                    index,
                    address: e.address.clone(),
                    reason,
                })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Option<IpAddr> {
        Some(s.parse().expect("ip"))
    }

    fn policy(cidrs: &[&str]) -> AddressPolicy {
        AddressPolicy::parse(&cidrs.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .expect("policy")
    }

    #[test]
    fn cidrs_parse_and_bad_ones_say_why() {
        let p = policy(&[
            "10.231.0.0/16",
            " fd00::/8 ",
            "192.0.2.7",
            "",
            "10.231.0.0/16",
        ]);
        let shown: Vec<String> = p.cidrs().iter().map(Cidr::to_string).collect();
        assert_eq!(shown, ["10.231.0.0/16", "fd00::/8", "192.0.2.7/32"]);
        for (bad, why) in [
            (
                "10.231.1.5/16",
                "host bits are set: the network is 10.231.0.0/16",
            ),
            ("10.0.0.0/33", "prefix length \"33\" is not 0 to 32"),
            ("10.0.0.0/x", "prefix length"),
            ("vpc.example/16", "is not an IP address"),
            ("fd00::1/8", "the network is fd00::/8"),
        ] {
            let (v, reason) = AddressPolicy::parse(&[bad.to_string()]).expect_err(bad);
            assert_eq!(v, bad);
            assert!(reason.contains(why), "{bad}: {reason}");
        }
        assert!(policy(&["0.0.0.0/0"]).cidrs()[0].contains("203.0.113.9".parse().expect("ip")));
    }

    #[test]
    fn without_cidrs_only_the_peer_address_passes() {
        let p = AddressPolicy::default();
        let peer = ip("10.231.1.2");
        assert_eq!(p.check_address(peer, "10.231.1.2:7710"), Ok(()));
        assert_eq!(
            p.check_address(peer, "10.231.2.2:7710"),
            Err(RefusalReason::NotPeer {
                peer: peer.expect("ip")
            })
        );
        // Mapped addresses are their IPv4 address, on either side.
        assert_eq!(
            p.check_address(ip("::ffff:10.231.1.2"), "10.231.1.2:1"),
            Ok(())
        );
        assert_eq!(p.check_address(peer, "[::ffff:10.231.1.2]:1"), Ok(()));
        // Loopback peers may name any loopback address (same host), and nothing else.
        assert_eq!(p.check_address(ip("127.0.0.1"), "127.9.0.1:27710"), Ok(()));
        assert_eq!(p.check_address(ip("127.0.0.1"), "[::1]:1"), Ok(()));
        assert!(p.check_address(ip("127.0.0.1"), "10.0.0.1:1").is_err());
        assert!(p.check_address(peer, "127.0.0.1:1").is_err());
        assert_eq!(
            p.check_address(peer, "agent.example:7710"),
            Err(RefusalReason::NotAnIp)
        );
        assert_eq!(
            p.check_address(peer, "10.231.1.2"),
            Err(RefusalReason::NotAnIp)
        );
        assert_eq!(
            p.check_address(None, "10.231.1.2:1"),
            Err(RefusalReason::NoPeer)
        );
    }

    #[test]
    fn with_cidrs_the_ranges_decide_not_the_peer() {
        let p = policy(&["10.231.1.0/24", "fd00::/8"]);
        // Behind a load balancer: the peer is the balancer, the address the agent's.
        assert_eq!(p.check_address(ip("10.9.9.9"), "10.231.1.77:7710"), Ok(()));
        assert_eq!(p.check_address(None, "[fd00::7]:7710"), Ok(()));
        let e = p
            .check_address(ip("10.231.2.2"), "10.231.2.2:7710")
            .expect_err("outside");
        assert_eq!(
            e.to_string(),
            "outside the controller's --agent-cidr ranges (10.231.1.0/24, fd00::/8)"
        );
    }

    #[test]
    fn the_first_refused_endpoint_is_named() {
        let ep = |a: &str| pb::ResponderEndpoint {
            protocol: pb::Protocol::Udp as i32,
            address: a.into(),
        };
        let p = AddressPolicy::default();
        let e = p
            .check(
                ip("10.231.3.2"),
                &[ep("10.231.3.2:1"), ep("10.231.1.2:7710")],
            )
            .expect_err("victim");
        assert_eq!(e.index, 1);
        assert_eq!(e.field(), "hello.endpoints[1].address");
        assert!(
            e.to_string().starts_with(
                "hello.endpoints[1].address \"10.231.1.2:7710\": not this agent's address: its connection comes from 10.231.3.2"
            ),
            "{e}"
        );
        assert_eq!(p.check(ip("10.231.3.2"), &[]), Ok(()));
    }
}
