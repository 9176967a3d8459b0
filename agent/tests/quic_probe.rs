//! QUIC prober against the QUIC responder on loopback: trust modes, the echo train, and failures.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use meshlat_agent::probe::quic::QuicProbe;
use meshlat_agent::probe::{Measurement, Outcome, ProbeSpec};
use meshlat_agent::respond::quic::QuicResponder;
use meshlat_agent::target::Target;
use meshlat_agent::tls::{Identity, TlsClientOptions};
use meshlat_proto::record::{ErrorKind, Protocol};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// A running responder; cancels it when dropped.
struct Responder {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn start(identity: &Identity) -> anyhow::Result<Responder> {
    let r = QuicResponder::bind("127.0.0.1:0".parse()?, identity).await?;
    let addr = r.local_addr();
    let stop = CancellationToken::new();
    tokio::spawn(r.run(stop.clone()));
    Ok(Responder { addr, stop })
}

fn spec(tls: TlsClientOptions) -> ProbeSpec {
    ProbeSpec {
        protocol: Protocol::Quic,
        timeout: Duration::from_secs(2),
        packets: 10,
        packet_interval: Duration::from_millis(2),
        payload_bytes: 0,
        tls,
        ..ProbeSpec::default()
    }
}

async fn probe(spec: &ProbeSpec, addr: SocketAddr) -> anyhow::Result<Measurement> {
    let p = QuicProbe::new(spec)?;
    let target = Target::parse(&format!("quic://{addr}"))?;
    Ok(p.run_once(&target).await)
}

fn assert_full_train(m: &Measurement, packets: u32) {
    assert_eq!(m.outcome, Outcome::Ok, "{m:?}");
    let hs = m.data.handshake_ms.unwrap_or(0.0);
    assert!(hs > 0.0 && hs < 2000.0, "handshake_ms {hs}");
    let t = m
        .data
        .train
        .as_ref()
        .expect("train stats present on success");
    assert_eq!(
        (t.sent, t.samples, t.duplicates, t.late),
        (packets, packets, 0, 0)
    );
    assert_eq!(t.rtts_ms.len(), packets as usize);
    assert!(t.rtts_ms.iter().all(|r| *r > 0.0 && *r < 2000.0), "{t:?}");
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("meshlat-quic-{}-{name}", std::process::id()))
}

#[tokio::test]
async fn quic_self_signed_with_skip_verify_measures_handshake_and_train() -> anyhow::Result<()> {
    let id = Identity::self_signed(&["localhost".into()])?;
    let r = start(&id).await?;
    let s = spec(TlsClientOptions {
        skip_verify: true,
        ca_file: None,
    });
    let m = probe(&s, r.addr).await?;
    assert_full_train(&m, 10);
    assert_eq!(m.data.remote_addr, Some(r.addr));

    // A padded payload is echoed at full size too, and the same probe can sample again.
    let padded = ProbeSpec {
        payload_bytes: 1000,
        packets: 5,
        ..s
    };
    let p = QuicProbe::new(&padded)?;
    let target = Target::parse(&format!("quic://{}", r.addr))?;
    for _ in 0..2 {
        assert_full_train(&p.run_once(&target).await, 5);
    }
    Ok(())
}

#[tokio::test]
async fn quic_private_ca_verifies_and_default_roots_refuse() -> anyhow::Result<()> {
    // A CA and a leaf for 127.0.0.1 signed by it.
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "meshlat test CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let leaf_key = rcgen::KeyPair::generate()?;
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?
        .signed_by(&leaf_key, &issuer)?;
    let id = Identity {
        chain: vec![CertificateDer::from(leaf.der().to_vec())],
        key: PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
    };
    let ca_path = temp_path("ca.pem");
    std::fs::write(&ca_path, ca_cert.pem())?;
    let r = start(&id).await?;

    let m = probe(
        &spec(TlsClientOptions {
            skip_verify: false,
            ca_file: Some(ca_path.clone()),
        }),
        r.addr,
    )
    .await;
    let _ = std::fs::remove_file(&ca_path);
    assert_full_train(&m?, 10);

    // The built-in web roots do not know our CA.
    let m = probe(&spec(TlsClientOptions::default()), r.addr).await?;
    match &m.outcome {
        Outcome::Failed { kind, detail } => {
            assert_eq!(*kind, ErrorKind::Tls, "{detail}");
            assert!(detail.to_lowercase().contains("certificate"), "{detail}");
        }
        Outcome::Ok => panic!("untrusted certificate accepted: {m:?}"),
    }
    assert!(m.data.handshake_ms.is_none());
    Ok(())
}

#[tokio::test]
async fn quic_self_signed_with_default_roots_is_a_tls_failure() -> anyhow::Result<()> {
    let r = start(&Identity::self_signed(&["localhost".into()])?).await?;
    let m = probe(&spec(TlsClientOptions::default()), r.addr).await?;
    assert!(
        matches!(
            &m.outcome,
            Outcome::Failed {
                kind: ErrorKind::Tls,
                ..
            }
        ),
        "{m:?}"
    );
    Ok(())
}

#[tokio::test]
async fn quic_nothing_listening_fails_within_the_timeout() -> anyhow::Result<()> {
    // Bind and release a port so nothing listens there.
    let addr = std::net::UdpSocket::bind("127.0.0.1:0")?.local_addr()?;
    let s = ProbeSpec {
        timeout: Duration::from_millis(500),
        ..spec(TlsClientOptions {
            skip_verify: true,
            ca_file: None,
        })
    };
    let t0 = Instant::now();
    let m = probe(&s, addr).await?;
    let took = t0.elapsed();
    match &m.outcome {
        Outcome::Failed { kind, .. } => assert!(
            matches!(kind, ErrorKind::Timeout | ErrorKind::Refused),
            "{m:?}"
        ),
        Outcome::Ok => panic!("probe of a closed port succeeded: {m:?}"),
    }
    eprintln!(
        "figures quic_nothing_listening took_ms={:.1}",
        took.as_secs_f64() * 1e3
    );
    // The 500 ms timeout, with a cap of three times that for a loaded machine.
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    Ok(())
}

#[tokio::test]
async fn quic_unresolvable_host_is_a_dns_failure() -> anyhow::Result<()> {
    let p = QuicProbe::new(&spec(TlsClientOptions::default()))?;
    let m = p
        .run_once(&Target::parse("quic://no-such-host.invalid:4433")?)
        .await;
    assert!(
        matches!(
            &m.outcome,
            Outcome::Failed {
                kind: ErrorKind::Dns,
                ..
            }
        ),
        "{m:?}"
    );
    Ok(())
}

#[tokio::test]
async fn quic_responder_survives_garbage_and_wrong_alpn() -> anyhow::Result<()> {
    let r = start(&Identity::self_signed(&["localhost".into()])?).await?;
    // Garbage UDP at the endpoint.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    for n in [1usize, 50, 1200, 1500] {
        sock.send_to(&vec![0xc3; n], r.addr).await?;
    }
    // A client offering another ALPN is refused with a TLS alert, not a crash.
    meshlat_agent::tls::install_crypto_provider();
    let mut tls = meshlat_agent::tls::client_config(
        &TlsClientOptions {
            skip_verify: true,
            ca_file: None,
        },
        &[b"h3"],
    )?;
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let cfg = quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    ));
    let ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let res = tokio::time::timeout(
        Duration::from_secs(2),
        ep.connect_with(cfg, r.addr, "localhost")?,
    )
    .await?;
    assert!(res.is_err(), "wrong ALPN accepted");
    // Still serving.
    let m = probe(
        &spec(TlsClientOptions {
            skip_verify: true,
            ca_file: None,
        }),
        r.addr,
    )
    .await?;
    assert_full_train(&m, 10);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_through_link_emulator_reads_the_added_delay() -> anyhow::Result<()> {
    use meshlat_linkemu::{LinkEmu, RouteSpec};
    let r = start(&Identity::self_signed(&["localhost".into()])?).await?;
    let route: RouteSpec = format!("udp:127.0.0.1:0={},fwd=5ms,ret=15ms", r.addr).parse()?;
    let emu = LinkEmu::start(vec![route])?;
    let via = emu
        .route_addr(0)
        .ok_or_else(|| anyhow::anyhow!("no route 0"))?;
    let m = probe(
        &spec(TlsClientOptions {
            skip_verify: true,
            ca_file: None,
        }),
        via,
    )
    .await?;
    assert_full_train(&m, 10);
    // The handshake takes at least one round trip (plus crypto work).
    let hs = m.data.handshake_ms.unwrap_or(0.0);
    assert!(hs >= 20.0, "handshake_ms {hs}");
    let t = m
        .data
        .train
        .as_ref()
        .expect("train stats present on success");
    let min = t.rtts_ms.iter().copied().fold(f64::MAX, f64::min);
    eprintln!("figures quic_through_link_emulator handshake_ms={hs:.3} min_echo_rtt_ms={min:.3}");
    // Never below the emulated 20 ms; the fastest of 10 echoes within 5 ms of it.
    assert!((19.9..=25.0).contains(&min), "min echo RTT {min} ms: {t:?}");
    drop(emu);
    Ok(())
}
