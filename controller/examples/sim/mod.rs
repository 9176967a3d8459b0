//! What the controller's examples simulate alike: the regions and responder endpoints of a
//! large mesh of agents.

use meshlat_proto::pb;

/// The name of region `i`: `r00`, `r01`, …
pub fn region(i: usize) -> String {
    format!("r{i:02}")
}

/// Agent `i`'s region and AZ when `regions` regions are dealt round robin.
pub fn region_and_az(i: usize, regions: usize) -> (String, String) {
    let r = region(i % regions);
    let az = format!("{r}a");
    (r, az)
}

/// Agent `i`'s UDP (port 7710) and TCP (port 7711) responders, on its own address
/// `NET.x.y.z` (`x.y.z` the low 24 bits of `i`).
pub fn endpoints(net: u8, i: usize) -> Vec<pb::ResponderEndpoint> {
    let host = format!("{net}.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255);
    vec![
        pb::ResponderEndpoint {
            protocol: pb::Protocol::Udp as i32,
            address: format!("{host}:7710"),
        },
        pb::ResponderEndpoint {
            protocol: pb::Protocol::Tcp as i32,
            address: format!("{host}:7711"),
        },
    ]
}

/// A UDP probe job spec from and to every one of `regions` regions (selectors `region=rNN`).
pub fn spec(
    strategy: pb::PinglistStrategy,
    k: u32,
    regions: usize,
    interval_ms: u32,
) -> pb::JobSpec {
    let sel = |i| pb::Endpoint {
        endpoint: Some(pb::endpoint::Endpoint::Selector(format!(
            "region={}",
            region(i)
        ))),
    };
    pb::JobSpec {
        kind: pb::JobKind::Probe as i32,
        protocols: vec![pb::Protocol::Udp as i32],
        sources: (0..regions).map(sel).collect(),
        targets: (0..regions).map(sel).collect(),
        interval_ms,
        timeout_ms: 500,
        strategy: strategy as i32,
        k,
        ..Default::default()
    }
}
