//! Relay responder against bad input: relay-forward packets without a grant, with a forged,
//! tampered, expired or old-format (HMAC) grant, or sealed with an unknown key get nothing
//! forwarded and are counted per reason; a valid grant is forwarded to exactly its
//! destination, same size. Under a controller the relay trusts only the public keys the
//! controller sends, not a key derived from its own `--key`.
//! (Timing accuracy of relay trains is in `accuracy.rs`, with separate processes.)

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use meshlat_agent::probe::Key;
use meshlat_agent::respond::udp::{ControllerKeys, DropReason, UdpReflector};
use meshlat_agent::udp::grant::{GrantPublicKey, GrantSigner, legacy_hmac_grant, unix_now};
use meshlat_agent::udp::wire::{self, GRANT_BYTES, Header, MessageType, WireKey};
use tokio_util::sync::CancellationToken;

fn relay_forward(key: &WireKey, seq: u32, grant: [u8; GRANT_BYTES]) -> Vec<u8> {
    relay_forward_sized(key, seq, grant, 256)
}

fn relay_forward_sized(key: &WireKey, seq: u32, grant: [u8; GRANT_BYTES], len: usize) -> Vec<u8> {
    let mut h = Header::request(key.id, 5, seq, 1, wire::ERROR_BOUND_UNKNOWN);
    h.msg_type = MessageType::RelayForward;
    h.grant = grant;
    let mut b = vec![0u8; len];
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

/// Sends `p` from `a` to the relay and returns the one datagram `to` then receives within
/// `wait` (`what` names the check), which must be the same size: never larger.
fn forwarded_once(
    a: &UdpSocket,
    relay: SocketAddr,
    p: &[u8],
    to: &UdpSocket,
    wait: Duration,
    what: &str,
) -> Vec<u8> {
    a.send_to(p, relay).unwrap();
    let mut got = received(to, wait);
    assert_eq!(got.len(), 1, "{what}");
    assert_eq!(got[0].len(), p.len(), "never larger");
    got.remove(0)
}

/// Stops a relay and waits (up to 5 s) for its task to end without an error.
async fn shut_down(stop: CancellationToken, task: tokio::task::JoinHandle<()>) {
    stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .unwrap()
        .unwrap();
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
    let gk = GrantSigner::derive_standalone(&secret.secret);
    let good = gk.sign(b_addr, unix_now() + 60);
    let expired = gk.sign(b_addr, unix_now() - 10);
    let forged = GrantSigner::derive_standalone(b"attacker-secret").sign(b_addr, unix_now() + 60);
    // The format earlier builds accepted: HMAC with a key derived from the shared secret.
    let old = legacy_hmac_grant(b_addr, unix_now() + 60, &secret.secret);
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
        relay_forward(&k, 7, old),
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
    assert_eq!(stats.dropped(DropReason::RelayBadGrant), 3);
    assert_eq!(stats.dropped(DropReason::Auth), 1);
    assert_eq!(stats.relayed(), 0);

    // The control: a valid grant is forwarded to B, same size, as a request with r1 ≤ r2.
    let p = relay_forward(&k, 6, good);
    let got = forwarded_once(
        &a,
        relay,
        &p,
        &b,
        Duration::from_millis(300),
        "one packet forwarded",
    );
    let h = wire::decode(&got, std::slice::from_ref(&k)).unwrap();
    assert_eq!(h.msg_type, MessageType::Request);
    assert!(h.r1 > 0 && h.r2 >= h.r1);
    assert_eq!(stats.relayed(), 1);

    shut_down(stop, task).await;
}

/// Under a controller (`agent run --relay --key K`), the relay trusts only the grant public keys
/// the controller sends: a grant signed with the key pair derived from `K` (which every holder
/// of `K` can make), a grant signed by an unknown controller key and an old HMAC grant forward
/// nothing — 20 full-size (1452-byte) packets each to an address no agent advertises: 0
/// forwarded, all counted `relay_bad_grant` — while the controller's own grant is forwarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_under_a_controller_trusts_only_the_controllers_public_keys() {
    let own = Key::from_secret("agent-own-key");
    let mut r = UdpReflector::bind("127.0.0.1:0".parse().unwrap(), vec![own.clone()])
        .await
        .unwrap()
        .with_relay(true);
    let keys_tx = r.accept_controller_keys();
    let mesh = Key::from_secret("mesh-wire-key");
    let controller = GrantSigner::from_pkcs8(&GrantSigner::generate_pkcs8().unwrap()).unwrap();
    keys_tx
        .send(ControllerKeys {
            wire: vec![mesh.clone()],
            grant: vec![GrantPublicKey::from_bytes(controller.public_key().as_bytes()).unwrap()],
        })
        .unwrap();
    let relay = r.local_addr();
    let stats = r.stats();
    let stop = CancellationToken::new();
    let task = tokio::spawn(r.run(stop.clone()));

    // The victim: an address no agent advertises.
    let victim = UdpSocket::bind("127.0.0.1:0").unwrap();
    let victim_addr = victim.local_addr().unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let k = WireKey::new(&mesh);
    let until = unix_now() + 600;
    let attempts = [
        GrantSigner::derive_standalone(&own.secret).sign(victim_addr, until),
        GrantSigner::derive_standalone(&mesh.secret).sign(victim_addr, until),
        GrantSigner::from_pkcs8(&GrantSigner::generate_pkcs8().unwrap())
            .unwrap()
            .sign(victim_addr, until),
        legacy_hmac_grant(victim_addr, until, &mesh.secret),
    ];
    // The serving thread applies the controller keys before its first receive, so these
    // packets (queued in the socket meanwhile) meet them.
    let mut sent = 0u64;
    for (i, g) in attempts.iter().enumerate() {
        for seq in 0..20 {
            let p = relay_forward_sized(&k, (i * 100 + seq) as u32, *g, wire::MAX_PACKET_BYTES);
            assert_eq!(p.len(), 1452);
            a.send_to(&p, relay).unwrap();
            sent += 1;
        }
    }
    let got = received(&victim, Duration::from_millis(500));
    println!(
        "untrusted grants: sent {sent} packets of 1452 bytes, victim received {}, relay_bad_grant {}",
        got.len(),
        stats.dropped(DropReason::RelayBadGrant)
    );
    assert_eq!(got.len(), 0, "nothing forwarded with an untrusted grant");
    assert_eq!(stats.dropped(DropReason::RelayBadGrant), sent);
    assert_eq!(stats.relayed(), 0);

    // The control: the controller's grant is forwarded, same size.
    let p = relay_forward_sized(&k, 999, controller.sign(victim_addr, until), 1452);
    let got = forwarded_once(
        &a,
        relay,
        &p,
        &victim,
        Duration::from_millis(500),
        "the controller's grant is honoured",
    );
    assert_eq!(got.len(), 1452, "never larger");
    assert_eq!(stats.relayed(), 1);

    shut_down(stop, task).await;
}
