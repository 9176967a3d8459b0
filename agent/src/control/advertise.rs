//! Advertised responder endpoints (`agent run`, DESIGN §3).
//!
//! By default an agent advertises one host (`--advertise`, the ECS task IP, the listen address or
//! the detected address) with each responder's bound port. `--advertise-endpoint PROTO=HOST:PORT`
//! (repeatable; `MESHLAT_ADVERTISE_ENDPOINTS`, comma separated) replaces the advertised address of
//! one protocol — for a responder reached through NAT, a load balancer or a port mapping, or
//! through a link emulator standing in for an inter-region path (the local demo).
//!
//! Validation: the protocol is one of `udp`, `tcp`, `quic`, `http`, `https`; the address is
//! `HOST:PORT` with a non-zero port (IPv6 in brackets, `[::1]:7710`); a protocol appears at most
//! once; its responder is on (advertising a protocol nobody answers would only produce failed
//! probes elsewhere).

use std::net::Ipv6Addr;
use std::str::FromStr;

use meshlat_proto::pb;

use crate::respond::ResponderAddrs;

/// One `--advertise-endpoint PROTO=HOST:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdvertiseEndpoint {
    /// The protocol whose advertised address is replaced.
    pub protocol: pb::Protocol,
    /// `host:port` as others should dial it.
    pub address: String,
}

/// Protocols with responders, by their flag name.
const PROTOCOLS: [(&str, pb::Protocol); 5] = [
    ("udp", pb::Protocol::Udp),
    ("tcp", pb::Protocol::Tcp),
    ("quic", pb::Protocol::Quic),
    ("http", pb::Protocol::Http),
    ("https", pb::Protocol::Https),
];

/// The flag name of a protocol (`udp`, ...).
pub fn protocol_name(p: pb::Protocol) -> &'static str {
    PROTOCOLS
        .iter()
        .find(|(_, q)| *q == p)
        .map_or("unspecified", |(n, _)| n)
}

impl FromStr for AdvertiseEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let Some((proto, address)) = s.split_once('=') else {
            return Err("expected PROTO=HOST:PORT, e.g. udp=10.0.0.7:7710".into());
        };
        let proto = proto.trim().to_ascii_lowercase();
        let protocol = PROTOCOLS
            .iter()
            .find(|(n, _)| *n == proto)
            .map(|(_, p)| *p)
            .ok_or_else(|| {
                format!("unknown protocol {proto:?}: use udp, tcp, quic, http or https")
            })?;
        let address = address.trim();
        check_address(address)?;
        Ok(AdvertiseEndpoint {
            protocol,
            address: address.to_string(),
        })
    }
}

fn check_address(a: &str) -> Result<(), String> {
    let Some((host, port)) = a.rsplit_once(':') else {
        return Err(format!("{a:?} has no port: expected HOST:PORT"));
    };
    match port.parse::<u16>() {
        Ok(0) => {
            return Err(format!(
                "{a:?}: port 0 cannot be dialled; give the real port"
            ));
        }
        Ok(_) => {}
        Err(_) => return Err(format!("{a:?}: {port:?} is not a port (1-65535)")),
    }
    if let Some(v6) = host.strip_prefix('[') {
        let ok = v6
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<Ipv6Addr>().is_ok());
        return if ok {
            Ok(())
        } else {
            Err(format!(
                "{a:?}: {host:?} is not an IPv6 address in brackets"
            ))
        };
    }
    if host.contains(':') {
        return Err(format!(
            "{a:?}: put an IPv6 address in brackets, e.g. [2001:db8::7]:7710"
        ));
    }
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
    {
        return Err(format!(
            "{a:?}: {host:?} is not a host name or IPv4 address"
        ));
    }
    Ok(())
}

/// Checks a list of overrides against the responders that will run: each protocol at most once,
/// and only for a responder that is on (`enabled`). Returns `(value, reason)` of the first bad one.
///
/// # Errors
///
/// The offending `PROTO=HOST:PORT` and why.
pub fn validate(
    list: &[AdvertiseEndpoint],
    enabled: impl Fn(pb::Protocol) -> bool,
) -> Result<(), (String, String)> {
    for (i, e) in list.iter().enumerate() {
        let name = protocol_name(e.protocol);
        let value = format!("{name}={}", e.address);
        if list[..i].iter().any(|o| o.protocol == e.protocol) {
            return Err((value, format!("{name} is given more than once")));
        }
        if !enabled(e.protocol) {
            return Err((
                value,
                format!("the {name} responder is off (--{name}-port off); turn it on or drop this"),
            ));
        }
    }
    Ok(())
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// Advertised endpoints for bound responders: `host` with each bound port, except where
/// `overrides` names the protocol.
pub fn endpoints(
    addrs: &ResponderAddrs,
    host: &str,
    overrides: &[AdvertiseEndpoint],
) -> Vec<pb::ResponderEndpoint> {
    [
        (pb::Protocol::Udp, addrs.udp),
        (pb::Protocol::Tcp, addrs.tcp),
        (pb::Protocol::Quic, addrs.quic),
        (pb::Protocol::Http, addrs.http),
        (pb::Protocol::Https, addrs.https),
    ]
    .into_iter()
    .filter_map(|(p, a)| {
        let a = a?;
        let address = overrides
            .iter()
            .find(|o| o.protocol == p)
            .map_or_else(|| host_port(host, a.port()), |o| o.address.clone());
        Some(pb::ResponderEndpoint {
            protocol: p as i32,
            address,
        })
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<AdvertiseEndpoint, String> {
        s.parse()
    }

    #[test]
    fn parses_protocol_and_address() {
        assert_eq!(
            parse("udp=10.0.0.7:7710"),
            Ok(AdvertiseEndpoint {
                protocol: pb::Protocol::Udp,
                address: "10.0.0.7:7710".into()
            })
        );
        assert_eq!(
            parse(" HTTPS = lb.example.com:443 ").map(|e| (e.protocol, e.address)),
            Ok((pb::Protocol::Https, "lb.example.com:443".into()))
        );
        assert_eq!(
            parse("quic=[::1]:7712").map(|e| e.address),
            Ok("[::1]:7712".into())
        );
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        for (input, expect) in [
            ("10.0.0.7:7710", "expected PROTO=HOST:PORT"),
            ("icmp=10.0.0.7:1", "unknown protocol \"icmp\""),
            ("udp=10.0.0.7", "has no port"),
            ("udp=10.0.0.7:0", "port 0 cannot be dialled"),
            ("udp=10.0.0.7:99999", "is not a port"),
            ("udp=:7710", "is not a host name"),
            ("udp=::1:7710", "in brackets"),
            ("udp=[10.0.0.7]:7710", "not an IPv6 address"),
            ("tcp=a b:1", "is not a host name"),
        ] {
            let e = parse(input).expect_err(input);
            assert!(e.contains(expect), "{input}: {e}");
        }
    }

    #[test]
    fn validate_refuses_duplicates_and_disabled_responders() {
        let l = |v: &[&str]| v.iter().map(|s| parse(s).expect(s)).collect::<Vec<_>>();
        let all = |_| true;
        assert_eq!(validate(&l(&["udp=a:1", "tcp=a:2"]), all), Ok(()));
        let (v, why) = validate(&l(&["udp=a:1", "udp=b:1"]), all).expect_err("dup");
        assert_eq!(v, "udp=b:1");
        assert!(why.contains("more than once"), "{why}");
        let (v, why) = validate(&l(&["quic=a:3"]), |p| p != pb::Protocol::Quic).expect_err("off");
        assert_eq!(v, "quic=a:3");
        assert!(why.contains("--quic-port off"), "{why}");
    }

    #[test]
    fn overrides_replace_only_their_protocol() {
        let addrs = ResponderAddrs {
            udp: Some("127.0.0.1:4001".parse().expect("addr")),
            tcp: Some("127.0.0.1:4002".parse().expect("addr")),
            quic: None,
            http: None,
            https: Some("127.0.0.1:4005".parse().expect("addr")),
        };
        let ov = vec![
            parse("udp=127.9.0.1:27710").expect("udp"),
            parse("https=127.9.0.1:27743").expect("https"),
        ];
        let got: Vec<(i32, String)> = endpoints(&addrs, "10.1.2.3", &ov)
            .into_iter()
            .map(|e| (e.protocol, e.address))
            .collect();
        assert_eq!(
            got,
            vec![
                (pb::Protocol::Udp as i32, "127.9.0.1:27710".to_string()),
                (pb::Protocol::Tcp as i32, "10.1.2.3:4002".to_string()),
                (pb::Protocol::Https as i32, "127.9.0.1:27743".to_string()),
            ]
        );
        let v6 = endpoints(&addrs, "fd00::1", &[]);
        assert_eq!(v6[0].address, "[fd00::1]:4001");
    }
}
