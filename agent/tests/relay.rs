//! Relay responder against bad input: relay-forward packets without a grant, with a forged,
//! tampered or expired grant, or sealed with an unknown key get nothing forwarded and are
//! counted per reason; a valid grant is forwarded to exactly its destination, same size.
//! (Timing accuracy of relay trains is in `accuracy.rs`, with separate processes.)

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use meshlat_agent::probe::Key;
use meshlat_agent::probe::udp::grant::{Grant, GrantKey, unix_now};
use meshlat_agent::probe::udp::wire::{self, GRANT_BYTES, Header, MessageType, WireKey};
use meshlat_agent::respond::udp::{DropReason, UdpReflector};
use tokio_util::sync::CancellationToken;

fn relay_forward(key: &WireKey, seq: u32, grant: [u8; GRANT_BYTES]) -> Vec<u8> {
    let mut h = Header::request(key.id, 5, seq, 1, wire::ERROR_BOUND_UNKNOWN);
    h.msg_type = MessageType::RelayForward;
    h.grant = grant;
    let mut b = vec![0u8; 256];
    wire::encode(&h, key, &mut b).unwrap();
    b
}

/// Every datagram `sock` receives within `wait`.
fn received(sock: &UdpSocket, wait: Duration) -> Vec<Vec<u8>> {
    sock.set_read_timeout(Some(wait)).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 2048];
    while let Ok((n, _)) = sock.recv_from(&mut buf) {
        out.push(buf[..n].to_vec());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_forwards_only_granted_packets_and_counts_the_rest() {
    let secret = Key::from_secret("relay-test-secret");
    let r = UdpReflector::bind("127.0.0.1:0".parse().unwrap(), vec![secret.clone()])
        .await
        .unwrap()
        .with_relay(true);
    let relay = r.local_addr();
    let stats = r.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));

    // "B": a plain socket that records what the relay forwards to it.
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b_addr: SocketAddr = b.local_addr().unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let k = WireKey::new(&secret);
    let gk = GrantKey::derive(&secret.secret);
    let good = Grant::sign(b_addr, unix_now() + 60, &gk);
    let expired = Grant::sign(b_addr, unix_now() - 10, &gk);
    let forged = Grant::sign(
        b_addr,
        unix_now() + 60,
        &GrantKey::derive(b"attacker-secret"),
    );
    // A valid grant for B with the destination rewritten to A: the tag no longer matches.
    let mut redirected = good;
    let a_port = a.local_addr().unwrap().port().to_be_bytes();
    redirected[2..4].copy_from_slice(&a_port);
    let other = WireKey::new(&Key::from_secret("not-the-relay-key"));

    let bad = [
        relay_forward(&k, 1, [0; GRANT_BYTES]),
        relay_forward(&k, 2, expired),
        relay_forward(&k, 3, forged),
        relay_forward(&k, 4, redirected),
        relay_forward(&other, 5, good),
    ];
    for p in &bad {
        a.send_to(p, relay).unwrap();
    }
    assert!(
        received(&b, Duration::from_millis(300)).is_empty(),
        "nothing forwarded to B"
    );
    assert!(
        received(&a, Duration::from_millis(50)).is_empty(),
        "nothing sent back to A"
    );
    assert_eq!(stats.dropped(DropReason::RelayNoGrant), 1);
    assert_eq!(stats.dropped(DropReason::RelayExpired), 1);
    assert_eq!(stats.dropped(DropReason::RelayBadGrant), 2);
    assert_eq!(stats.dropped(DropReason::Auth), 1);
    assert_eq!(stats.relayed(), 0);

    // The control: a valid grant is forwarded to B, same size, as a request with r1 ≤ r2.
    let p = relay_forward(&k, 6, good);
    a.send_to(&p, relay).unwrap();
    let got = received(&b, Duration::from_millis(300));
    assert_eq!(got.len(), 1, "one packet forwarded");
    assert_eq!(got[0].len(), p.len(), "never larger");
    let h = wire::decode(&got[0], std::slice::from_ref(&k)).unwrap();
    assert_eq!(h.msg_type, MessageType::Request);
    assert!(h.r1 > 0 && h.r2 >= h.r1);
    assert_eq!(stats.relayed(), 1);

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
}
