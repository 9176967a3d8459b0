//! Servers write records (`kind=serve` / `kind=relay_serve`), end to end with real processes on
//! loopback: `agent serve --out DIR` counts what it answered, relayed and dropped, per source
//! and reason, and writes it in the file sink's Hive layout — periodically, and the last
//! interval at SIGTERM. The counts are checked against what the prober (a separate `agent
//! probe`) received and against the garbage this test sends itself.

#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test with its message

mod support;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::time::Duration;

use meshlat_agent::probe::Key;
use meshlat_agent::udp::grant::{GrantSigner, unix_now};
use meshlat_agent::udp::wire::{self, GRANT_BYTES, Header, MessageType, WireKey};
use meshlat_proto::record::{Kind, Record};
use support::{Server, eventually, private_pki, probe_json, probe_ok, serve, tmpdir};

const KEY: &str = "serve-records-test-key";

/// Every record under `dir/records/`, with the file it came from.
fn read_records(dir: &Path) -> Vec<(PathBuf, Record)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.join("records")];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ndjson") {
                for line in std::fs::read_to_string(&p).unwrap().lines() {
                    let r: Record = serde_json::from_str(line)
                        .unwrap_or_else(|e| panic!("{}: not a record: {e}: {line}", p.display()));
                    out.push((p.clone(), r));
                }
            }
        }
    }
    out
}

/// `agent serve --key KEY --out DIR` with `extra` flags.
fn serve_to(dir: &Path, extra: &[&str]) -> Server {
    serve(&[&["--key", KEY, "--out", dir.to_str().unwrap()], extra].concat())
}

/// Stops `srv` with SIGTERM (it must exit 0).
fn stop(srv: &mut Server) {
    srv.proc.terminate();
    let status = srv.proc.child.wait().unwrap();
    assert!(status.success(), "agent serve exit: {status}");
}

/// [`stop`], then the records it wrote under `dir`.
fn stop_and_read(srv: &mut Server, dir: &Path) -> Vec<Record> {
    stop(srv);
    read_records(dir).into_iter().map(|(_, r)| r).collect()
}

/// The replies a prober received (samples, late and duplicates) over its records.
fn received(recs: &[Record]) -> u64 {
    recs.iter()
        .map(|r| u64::from(r.samples.unwrap() + r.late.unwrap() + r.duplicates.unwrap()))
        .sum()
}

fn request(key: &WireKey, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    wire::encode(
        &Header::request(key.id, 99, 0, 1, wire::ERROR_BOUND_UNKNOWN),
        key,
        &mut b,
    )
    .unwrap();
    b
}

/// Sends one valid request to `server` and waits for its reply: the server reads its socket in
/// order, so every datagram sent to it before has been counted. Adds one answered request,
/// from a new source socket on 127.0.0.1.
fn sync_with(server: SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.send_to(&request(&WireKey::new(&Key::from_secret(KEY)), 200), server)
        .unwrap();
    s.recv_from(&mut [0u8; 2048])
        .expect("the server answers a valid request");
}

fn relay_forward(key: &WireKey, seq: u32, grant: [u8; GRANT_BYTES], len: usize) -> Vec<u8> {
    let mut h = Header::request(key.id, 7, seq, 1, wire::ERROR_BOUND_UNKNOWN);
    h.msg_type = MessageType::RelayForward;
    h.grant = grant;
    let mut b = vec![0u8; len];
    wire::encode(&h, key, &mut b).unwrap();
    b
}

/// Sum of (packets, bytes) over rows of `kind` with this drop reason (`None`: answered/relayed).
fn sum(recs: &[Record], kind: Kind, reason: Option<&str>) -> (u64, u64) {
    recs.iter()
        .filter(|r| r.kind == Some(kind) && r.drop_reason.as_deref() == reason)
        .fold((0, 0), |(p, b), r| {
            (p + r.packets.unwrap(), b + r.bytes.unwrap())
        })
}

fn key_hex(k: &Key) -> String {
    format!("{:#010x}", k.id)
}

/// A prober probing `agent serve --out DIR` (interval one hour, so only the shutdown flush can
/// write): after SIGTERM the serve records' answered count equals the replies the prober got,
/// and the forged and garbage datagrams sent here are counted by reason, unauthenticated,
/// under the source address.
#[test]
fn serve_records_match_the_prober_and_count_drops_by_reason_flushed_at_sigterm() {
    let dir = tmpdir("serve-records");
    let key = Key::from_secret(KEY);
    let mut srv = serve_to(
        &dir,
        &[
            "--region",
            "srv-region",
            "--location",
            "rack 7",
            "--serve-interval",
            "3600",
        ],
    );
    let udp = srv.udp.unwrap();
    let target = format!("udp://{udp}");
    let recs = probe_ok(&[
        "-n",
        "4",
        "-d",
        "0.2",
        "--packets",
        "25",
        "--packet-interval-ms",
        "1",
        "--timeout",
        "0.2",
        "--payload-bytes",
        "300",
        "--key",
        KEY,
        &target,
    ]);
    assert_eq!(recs.len(), 4);
    let got: u64 = received(&recs);
    let sent: u64 = recs.iter().map(|r| u64::from(r.sent.unwrap())).sum();

    // Garbage and forgeries from another socket.
    let g = UdpSocket::bind("127.0.0.1:0").unwrap();
    let k = WireKey::new(&key);
    let other = WireKey::new(&Key::from_secret("not-the-server-key"));
    let mut version = request(&k, 250);
    version[4] = 9;
    let mut reply = request(&k, 260);
    reply[5] = MessageType::Reply as u8;
    let mut tampered = request(&k, 270);
    tampered[40] ^= 1;
    let mut sends = 0;
    let mut send = |p: &[u8], n: usize| {
        for _ in 0..n {
            g.send_to(p, udp).unwrap();
            sends += 1;
        }
    };
    send(&[0u8; 10], 5); // malformed
    send(&request(&other, 240), 3); // auth: unknown key
    send(&tampered, 2); // auth: HMAC mismatch
    send(&version, 4); // version
    send(&reply, 6); // type: never reflect a reply
    assert_eq!(sends, 20);
    // Nothing comes back to the garbage socket.
    g.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        g.recv_from(&mut [0u8; 2048]).is_err(),
        "garbage was answered"
    );

    sync_with(udp);
    // Nothing is written before the interval ends or the server stops...
    assert!(read_records(&dir).is_empty(), "no records before SIGTERM");
    // ...and SIGTERM writes the interval.
    stop(&mut srv);
    let files = read_records(&dir);
    let rows: Vec<Record> = files.iter().map(|(_, r)| r.clone()).collect();
    for (path, r) in &files {
        let p = path.to_string_lossy();
        assert!(p.contains("/records/region=srv-region/dt="), "{p}");
        assert_eq!(r.kind, Some(Kind::Serve), "{r:?}");
        assert_eq!(r.dst_region.as_deref(), Some("srv-region"));
        assert_eq!(r.dst_location.as_deref(), Some("rack 7"));
        assert_eq!(r.target, target);
        assert_eq!(r.job_id, "serve");
        assert_eq!(r.src_addr.as_deref(), Some("127.0.0.1"));
        assert!(r.interval_ms.unwrap() > 0.0);
        assert_eq!(r.src_agent, None, "standalone: nobody is named");
    }
    // The sync request came from its own socket on 127.0.0.1, authenticated: the same row.
    let answered = sum(&rows, Kind::Serve, None);
    let answered = (answered.0 - 1, answered.1 - 200);
    eprintln!(
        "figures serve_records prober_sent={sent} prober_received={got} server_answered={} \
         rows={}",
        answered.0,
        rows.len()
    );
    assert_eq!(
        answered.0, got,
        "answered = replies the prober received: {rows:#?}"
    );
    assert_eq!(answered.0, sent, "loopback: every request answered");
    // Every answered packet was 300 payload bytes + the header; bytes are what was answered.
    assert_eq!(answered.1 % answered.0, 0);
    let ok_row = rows.iter().find(|r| r.ok).unwrap();
    assert_eq!(ok_row.key_id.as_deref(), Some(key_hex(&key).as_str()));
    let want: BTreeMap<&str, (u64, u64)> = [
        ("malformed", (5, 50)),
        ("auth", (5, 3 * 240 + 2 * 270)),
        ("version", (4, 4 * 250)),
        ("type", (6, 6 * 260)),
    ]
    .into();
    for (reason, w) in &want {
        assert_eq!(
            sum(&rows, Kind::Serve, Some(reason)),
            *w,
            "{reason}: {rows:#?}"
        );
    }
    for r in rows.iter().filter(|r| !r.ok) {
        assert_eq!(r.key_id, None, "dropped before authentication: {r:?}");
        assert!(
            want.contains_key(r.drop_reason.as_deref().unwrap()),
            "{r:?}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// With a short interval, records appear while the server runs, numbered by interval; what
/// was counted after the last periodic flush is written at SIGTERM; nothing is counted twice
/// or lost.
#[test]
fn serve_records_are_flushed_every_interval() {
    let dir = tmpdir("serve-records-interval");
    let mut srv = serve_to(
        &dir,
        &["--flush-interval", "0.2", "--serve-interval", "0.5"],
    );
    let udp = srv.udp.unwrap();
    let k = WireKey::new(&Key::from_secret(KEY));
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut answered = 0u64;
    let mut ask = |n: usize| {
        for _ in 0..n {
            s.send_to(&request(&k, 200), udp).unwrap();
            s.recv_from(&mut [0u8; 2048]).unwrap();
            answered += 1;
        }
    };
    ask(10);
    // A record arrives while the server runs (interval 0.5 s, file flush 0.2 s).
    let early = eventually("a periodic serve record", Duration::from_secs(10), || {
        let r = read_records(&dir);
        (!r.is_empty()).then_some(r)
    });
    let early: Vec<Record> = early.into_iter().map(|(_, r)| r).collect();
    assert_eq!(sum(&early, Kind::Serve, None).0, 10, "{early:#?}");
    ask(7);
    let rows = stop_and_read(&mut srv, &dir);
    assert_eq!(sum(&rows, Kind::Serve, None).0, answered, "{rows:#?}");
    assert_eq!(answered, 17);
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq).collect();
    assert!(
        seqs.len() >= 2 && seqs.windows(2).all(|w| w[0] != w[1]),
        "{seqs:?}"
    );
    // Intervals do not overlap: each starts at or after the previous one's end.
    let mut spans: Vec<(String, f64)> = rows
        .iter()
        .map(|r| (r.ts.clone(), r.interval_ms.unwrap()))
        .collect();
    spans.sort_by(|a, b| a.0.cmp(&b.0));
    for w in spans.windows(2) {
        let start = |ts: &str| humantime::parse_rfc3339(ts).unwrap();
        let end0 = start(&w[0].0) + Duration::from_secs_f64(w[0].1 / 1000.0);
        assert!(
            start(&w[1].0) + Duration::from_micros(1) >= end0,
            "{spans:?}"
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

/// A relay (`agent serve --relay`) writes relay_serve records: packets forwarded to the grant's
/// destination and replies returned, matching the relayed prober's counts, and drops by reason
/// (an expired and a forged grant: authenticated, so `key_id` is set; the destination of a
/// refused grant is unknown, so the row's target is the relay itself).
#[test]
fn relay_serve_records_match_the_relayed_prober() {
    let dir = tmpdir("relay-serve-records");
    let key = Key::from_secret(KEY);
    let mut relay = serve_to(&dir, &["--relay", "--region", "relay-region"]);
    let b = serve(&["--key", KEY]);
    let (r_udp, b_udp) = (relay.udp.unwrap(), b.udp.unwrap());
    let target = format!("relay://{r_udp}/{b_udp}");
    let recs = probe_ok(&[
        "-n",
        "3",
        "-d",
        "0.3",
        "--packets",
        "20",
        "--packet-interval-ms",
        "2",
        "--timeout",
        "0.3",
        "--key",
        KEY,
        &target,
    ]);
    assert_eq!(recs.len(), 3);
    let sent: u64 = recs.iter().map(|r| u64::from(r.sent.unwrap())).sum();
    let got: u64 = received(&recs);

    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let k = WireKey::new(&key);
    let gk = GrantSigner::derive_standalone(&key.secret);
    let expired = gk.sign(b_udp, unix_now() - 10);
    let forged = GrantSigner::derive_standalone(b"attacker").sign(b_udp, unix_now() + 60);
    for seq in 0..3 {
        a.send_to(&relay_forward(&k, 1000 + seq, expired, 300), r_udp)
            .unwrap();
    }
    for seq in 0..2 {
        a.send_to(&relay_forward(&k, 2000 + seq, forged, 310), r_udp)
            .unwrap();
    }
    sync_with(r_udp);
    let rows = stop_and_read(&mut relay, &dir);
    let fwd: Vec<&Record> = rows
        .iter()
        .filter(|r| r.kind == Some(Kind::RelayServe) && r.ok)
        .collect();
    let forwarded: u64 = fwd.iter().map(|r| r.packets.unwrap()).sum();
    let returned: u64 = fwd.iter().map(|r| r.returned.unwrap()).sum();
    eprintln!(
        "figures relay_serve_records prober_sent={sent} prober_received={got} \
         relay_forwarded={forwarded} relay_returned={returned}"
    );
    assert_eq!(forwarded, sent, "{rows:#?}");
    assert_eq!(returned, got, "{rows:#?}");
    for r in &fwd {
        assert_eq!(r.target, format!("udp://{b_udp}"), "grant destination");
        assert_eq!(r.relay_region.as_deref(), Some("relay-region"));
        assert_eq!(r.key_id.as_deref(), Some(key_hex(&key).as_str()));
    }
    assert_eq!(
        sum(&rows, Kind::RelayServe, Some("relay_expired")),
        (3, 900)
    );
    assert_eq!(
        sum(&rows, Kind::RelayServe, Some("relay_bad_grant")),
        (2, 620)
    );
    for r in rows.iter().filter(|r| !r.ok) {
        assert_eq!(r.key_id.as_deref(), Some(key_hex(&key).as_str()), "{r:?}");
        assert_eq!(r.target, format!("udp://{r_udp}"), "{r:?}");
    }
    // The relay answered nothing itself (B did) but the sync request: one serve row.
    let served: Vec<&Record> = rows
        .iter()
        .filter(|r| r.kind == Some(Kind::Serve))
        .collect();
    assert_eq!(served.len(), 1, "{rows:#?}");
    assert_eq!(served[0].packets, Some(1));

    std::fs::remove_dir_all(&dir).ok();
}

/// A spray of source addresses (20 loopback addresses) against `--serve-max-sources 3`: three
/// sources get rows of their own, the rest share one overflow row (`src_addr` null), and no
/// datagram goes uncounted.
#[test]
fn a_spray_of_sources_fills_the_overflow_row() {
    let dir = tmpdir("serve-records-spray");
    let mut srv = serve_to(&dir, &["--serve-max-sources", "3"]);
    let udp = srv.udp.unwrap();
    for i in 1..=20u8 {
        let s = UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, i), 0)).unwrap();
        for _ in 0..2 {
            s.send_to(&[0u8; 12], udp).unwrap();
        }
    }
    // The sync request is a fourth source (authenticated): it lands in the overflow row too.
    sync_with(udp);
    let rows = stop_and_read(&mut srv, &dir);
    assert_eq!(
        sum(&rows, Kind::Serve, Some("malformed")),
        (40, 480),
        "{rows:#?}"
    );
    let named: Vec<&Record> = rows.iter().filter(|r| r.src_addr.is_some()).collect();
    let overflow: Vec<&Record> = rows.iter().filter(|r| r.src_addr.is_none()).collect();
    assert_eq!(named.len(), 3, "{rows:#?}");
    assert!(
        named
            .iter()
            .all(|r| r.drop_reason.as_deref() == Some("malformed"))
    );
    assert_eq!(named.iter().map(|r| r.packets.unwrap()).sum::<u64>(), 6);
    assert_eq!(overflow.len(), 2, "malformed and answered: {rows:#?}");
    assert_eq!(
        sum(&rows, Kind::Serve, None),
        (1, 200),
        "the sync request, in overflow"
    );
    assert!(
        overflow.iter().all(|r| r.key_id.is_none()),
        "overflow keeps no key id"
    );
    std::fs::remove_dir_all(&dir).ok();
}

/// Every connection responder writes `kind=serve` rows: `agent probe` probes TCP, QUIC, HTTP
/// and HTTPS on `agent serve --out DIR`, and after SIGTERM each protocol's answered row counts
/// exactly the probes sent (connections, handshakes, requests), QUIC's echoed datagrams equal
/// the replies the prober got, and the failures this test causes are counted by reason: TLS
/// handshakes a prober without the CA aborts, and a request that is not HTTP.
#[test]
fn connection_responders_write_serve_records_matching_the_probes() {
    use meshlat_proto::record::Protocol;
    use std::io::{Read, Write};
    let dir = tmpdir("serve-records-conn");
    let pki = tmpdir("serve-records-conn-pki");
    let (ca, cert, key) = private_pki(&pki);
    let mut srv = serve_to(
        &dir,
        &[
            "--region",
            "srv-region",
            "--serve-interval",
            "3600",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let ca = ca.to_str().unwrap();
    let run = |args: &[&str]| {
        let (out, recs) = probe_json(args);
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        recs
    };
    let (n_tcp, n_quic, n_http, n_https) = (5u64, 3u64, 4u64, 6u64);
    let tcp = run(&[
        "-n",
        "5",
        "-d",
        "0.05",
        &format!("tcp://{}", srv.tcp.unwrap()),
    ]);
    let quic = run(&[
        "-n",
        "3",
        "-d",
        "0.05",
        "--ca",
        ca,
        &format!("quic://localhost:{}", srv.quic.unwrap().port()),
    ]);
    let http = run(&[
        "-n",
        "4",
        "-d",
        "0.05",
        &format!("http://{}/bytes/1000", srv.http.unwrap()),
    ]);
    let https_url = format!("https://localhost:{}/ping", srv.https.unwrap().port());
    let https = run(&["-n", "6", "-d", "0.05", "--ca", ca, &https_url]);
    // Without the CA the prober aborts the handshake: two handshake failures.
    let refused = run(&["-n", "2", "-d", "0.05", &https_url]);
    for (what, recs, n) in [
        ("tcp", &tcp, n_tcp),
        ("quic", &quic, n_quic),
        ("http", &http, n_http),
        ("https", &https, n_https),
    ] {
        assert_eq!(recs.len() as u64, n, "{what}: {recs:#?}");
        assert!(recs.iter().all(|r| r.ok), "{what}: {recs:#?}");
    }
    assert!(refused.iter().all(|r| !r.ok), "{refused:#?}");
    // Not HTTP, on the HTTP port: one bad request.
    let mut s = std::net::TcpStream::connect(srv.http.unwrap()).unwrap();
    s.write_all(b"NOT HTTP AT ALL\r\n\r\n").unwrap();
    let _ = s.read_to_end(&mut Vec::new());

    let rows = stop_and_read(&mut srv, &dir);
    let of = |p: Protocol, reason: Option<&str>| -> Vec<&Record> {
        rows.iter()
            .filter(|r| r.protocol == Some(p) && r.drop_reason.as_deref() == reason)
            .collect()
    };
    let total = |rs: &[&Record]| -> (u64, u64) {
        rs.iter().fold((0, 0), |(p, b), r| {
            (p + r.packets.unwrap(), b + r.bytes.unwrap())
        })
    };
    for r in &rows {
        assert_eq!(r.kind, Some(Kind::Serve), "{r:?}");
        assert_eq!(r.job_id, "serve");
        assert_eq!(r.dst_region.as_deref(), Some("srv-region"));
        assert_eq!(r.src_addr.as_deref(), Some("127.0.0.1"), "{r:?}");
        assert!(r.interval_ms.unwrap() > 0.0);
    }
    let tcp_ok = of(Protocol::Tcp, None);
    assert_eq!(tcp_ok.len(), 1, "one source, one row: {rows:#?}");
    assert_eq!(tcp_ok[0].target, format!("tcp://{}", srv.tcp.unwrap()));
    assert_eq!(total(&tcp_ok), (n_tcp, 0), "tcp: connections accepted");
    let quic_ok = of(Protocol::Quic, None);
    let echoed: u64 = quic
        .iter()
        .map(|r| u64::from(r.samples.unwrap() + r.late.unwrap_or(0) + r.duplicates.unwrap_or(0)))
        .sum();
    assert_eq!(total(&quic_ok).0, n_quic, "quic: handshakes completed");
    assert_eq!(
        quic_ok.iter().map(|r| r.returned.unwrap()).sum::<u64>(),
        echoed,
        "quic: datagrams echoed = replies the prober got"
    );
    assert!(echoed > 0);
    assert_eq!(
        total(&of(Protocol::Http, None)),
        (n_http, n_http * 1000),
        "http: requests answered, body bytes"
    );
    assert_eq!(
        total(&of(Protocol::Https, None)),
        (n_https, n_https * 5),
        "https: requests answered (pong\\n)"
    );
    assert_eq!(
        total(&of(Protocol::Https, Some("handshake_failed"))).0,
        2,
        "{rows:#?}"
    );
    assert_eq!(
        total(&of(Protocol::Http, Some("bad_request"))).0,
        1,
        "{rows:#?}"
    );
    eprintln!(
        "figures serve_records_conn tcp={n_tcp} quic_handshakes={n_quic} quic_echoed={echoed} \
         http={n_http} https={n_https} https_handshake_failed=2 rows={}",
        rows.len()
    );
    // Nothing else: no other drop, and no UDP rows (nothing probed it).
    assert!(
        rows.iter().all(|r| r.ok
            || matches!(
                r.drop_reason.as_deref(),
                Some("handshake_failed" | "bad_request")
            )),
        "{rows:#?}"
    );
    assert!(rows.iter().all(|r| r.protocol != Some(Protocol::Udp)));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::remove_dir_all(&pki).ok();
}
