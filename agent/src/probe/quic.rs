//! QUIC prober: handshake time, then a datagram echo train on the warm connection.
//!
//! Per sample: resolve, connect with meshlat's ALPN ([`ALPN`]), time connect start → connection
//! established with [`Clock::now_ns`] (`handshake_ms`), then run an [`train::EchoTrain`] of
//! `spec.packets` datagrams paced by `spec.packet_interval`, and close the connection cleanly.
//!
//! # Endpoint and handshake choice
//!
//! One client [`quinn::Endpoint`] per probe and address family, created on first use and shared
//! by its samples. Every sample still opens a **new connection with a full handshake**: TLS
//! session resumption is disabled in the client config, so `handshake_ms` never silently turns
//! into a resumed (cheaper) handshake. Sharing the endpoint means no socket churn per sample and,
//! more importantly, that a closed connection's closing period (3 × PTO, during which quinn
//! retransmits CONNECTION_CLOSE) is served by the endpoint's driver in the background, so
//! [`QuicProbe::run_once`] returns as soon as the train ends instead of waiting for it.
//!
//! # Errors
//!
//! DNS → `dns`; handshake not done within `spec.timeout` (or quinn's idle timeout) → `timeout`
//! (a closed UDP port gives no signal to QUIC, so "nothing listening" is a timeout too);
//! certificate or TLS alert → `tls`; socket errors as [`classify_io`]; a peer without datagram
//! support or an oversized payload → `protocol`/`local`.

pub mod train;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use meshlat_proto::record::ErrorKind;
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, Endpoint};
use tokio::sync::OnceCell;

use super::{Measurement, Outcome, ProbeSetupError, ProbeSpec, classify_io, resolve};
use crate::clock::Clock;
use crate::target::Target;
use train::{EchoTrain, MIN_PAYLOAD, TrainConfig};

/// meshlat's QUIC ALPN protocol id; the responder accepts only this.
pub const ALPN: &[u8] = b"meshlat/1";

/// Largest `payload_bytes` a QUIC probe accepts: QUIC guarantees a 1200-byte UDP payload, of
/// which headers and the DATAGRAM frame take some; the connection's real limit is checked too.
pub const MAX_PAYLOAD: usize = 1100;

/// Datagram buffers (both directions) sized for a long train in flight.
const DATAGRAM_BUFFER: usize = 1 << 20;

/// Transport settings shared by the prober and the responder: datagrams on, bounded idle time.
pub(crate) fn transport_config(idle: Duration) -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.datagram_receive_buffer_size(Some(DATAGRAM_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_BUFFER);
    // An idle timeout of a few seconds is representable: the conversion only fails past 2^62 ms.
    t.max_idle_timeout(quinn::IdleTimeout::try_from(idle).ok());
    t
}

/// The QUIC prober.
#[derive(Debug)]
pub struct QuicProbe {
    spec: ProbeSpec,
    /// Boxed so [`super::ProbeRunner`]'s variants stay similar in size.
    state: Box<ClientState>,
}

/// What a probe keeps between samples.
#[derive(Debug)]
struct ClientState {
    /// Client crypto + transport config, built once (CA file read at setup).
    client: quinn::ClientConfig,
    /// Lazily bound endpoints (see the module doc): IPv4 and IPv6.
    v4: OnceCell<Endpoint>,
    v6: OnceCell<Endpoint>,
}

impl QuicProbe {
    /// Builds the prober, loading the TLS trust configuration.
    ///
    /// # Errors
    ///
    /// [`ProbeSetupError::Tls`] for an unusable CA file; [`ProbeSetupError::Invalid`] for a
    /// payload size out of range.
    pub fn new(spec: &ProbeSpec) -> Result<Self, ProbeSetupError> {
        if spec.payload_bytes != 0 && !(MIN_PAYLOAD..=MAX_PAYLOAD).contains(&spec.payload_bytes) {
            return Err(ProbeSetupError::Invalid(format!(
                "quic payload_bytes {} must be 0 (minimum) or in {MIN_PAYLOAD}..={MAX_PAYLOAD}",
                spec.payload_bytes
            )));
        }
        crate::tls::install_crypto_provider();
        let mut tls = crate::tls::client_config(&spec.tls, &[ALPN])
            .map_err(|e| ProbeSetupError::Tls(e.to_string()))?;
        // Every sample measures a full handshake (module doc).
        tls.resumption = rustls::client::Resumption::disabled();
        let crypto =
            QuicClientConfig::try_from(tls).map_err(|e| ProbeSetupError::Tls(e.to_string()))?;
        let mut client = quinn::ClientConfig::new(Arc::new(crypto));
        let idle = spec.timeout.max(Duration::from_secs(1)) * 2;
        client.transport_config(Arc::new(transport_config(idle)));
        Ok(QuicProbe {
            spec: spec.clone(),
            state: Box::new(ClientState {
                client,
                v4: OnceCell::new(),
                v6: OnceCell::new(),
            }),
        })
    }

    /// One sample: handshake plus an echo train. Never fails: failures are in the outcome.
    pub async fn run_once(&self, target: &Target) -> Measurement {
        let mut m = Measurement::new(SystemTime::now(), Outcome::Ok);
        if let Err((kind, detail)) = self.sample(target, &mut m).await {
            m.outcome = Outcome::failed(kind, detail);
        }
        m
    }

    async fn endpoint(&self, remote: SocketAddr) -> std::io::Result<&Endpoint> {
        let (cell, local): (_, SocketAddr) = if remote.is_ipv4() {
            (&self.state.v4, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&self.state.v6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        };
        cell.get_or_try_init(|| async move { Endpoint::client(local) })
            .await
    }

    async fn sample(
        &self,
        target: &Target,
        m: &mut Measurement,
    ) -> Result<(), (ErrorKind, String)> {
        let addrs = resolve(&target.host, target.port).await?;
        let remote = addrs[0];
        m.data.remote_addr = Some(remote);
        let endpoint = self
            .endpoint(remote)
            .await
            .map_err(|e| (classify_io(&e), format!("binding a QUIC endpoint: {e}")))?;

        let start = Clock::now_ns();
        let connecting = endpoint
            .connect_with(self.state.client.clone(), remote, &target.host)
            .map_err(|e| (ErrorKind::Local, format!("connect to {remote}: {e}")))?;
        let conn = match tokio::time::timeout(self.spec.timeout, connecting).await {
            Err(_) => {
                return Err((
                    ErrorKind::Timeout,
                    format!(
                        "QUIC handshake with {remote} not done within {:?}",
                        self.spec.timeout
                    ),
                ));
            }
            Ok(Err(e)) => return Err(classify_connection(&e, remote)),
            Ok(Ok(c)) => c,
        };
        m.data.handshake_ms = Some(crate::clock::ns_to_ms(
            Clock::now_ns().saturating_sub(start) as i64,
        ));

        let result = self.echo_train(&conn, m).await;
        conn.close(0u32.into(), b"done");
        result
    }

    async fn echo_train(
        &self,
        conn: &quinn::Connection,
        m: &mut Measurement,
    ) -> Result<(), (ErrorKind, String)> {
        let cfg = TrainConfig {
            packets: self.spec.packets,
            interval: self.spec.packet_interval,
            timeout: self.spec.timeout,
            payload_bytes: self.spec.payload_bytes,
        };
        let mut train = EchoTrain::new(cfg, Clock::now_ns());
        if cfg.packets > 0 {
            match conn.max_datagram_size() {
                None => {
                    m.data.train = Some(train.into_stats());
                    return Err((
                        ErrorKind::Protocol,
                        "peer does not accept QUIC datagrams".into(),
                    ));
                }
                Some(max) if max < train.payload_len() => {
                    let len = train.payload_len();
                    m.data.train = Some(train.into_stats());
                    return Err((
                        ErrorKind::Local,
                        format!(
                            "payload of {len} bytes exceeds this path's datagram limit of {max}"
                        ),
                    ));
                }
                Some(_) => {}
            }
        }
        let mut buf = Vec::with_capacity(train.payload_len());
        let mut failure = None;
        loop {
            let now = Clock::now_ns();
            while train.poll_transmit(now, &mut buf).is_some() {
                if let Err(e) = conn.send_datagram(Bytes::copy_from_slice(&buf)) {
                    failure.get_or_insert_with(|| (ErrorKind::Local, format!("send: {e}")));
                }
            }
            let Some(deadline) = train.poll_timeout() else {
                break;
            };
            let wait = Duration::from_nanos(deadline.saturating_sub(Clock::now_ns()));
            tokio::select! {
                biased;
                r = conn.read_datagram() => match r {
                    // Replies that are not ours are counted in the train and ignored.
                    Ok(d) => { let _ = train.handle_datagram(Clock::now_ns(), &d); }
                    Err(e) => {
                        failure = Some(classify_connection(&e, conn.remote_address()));
                        break;
                    }
                },
                () = tokio::time::sleep(wait) => {}
            }
        }
        let stats = train.into_stats();
        let lost_all = stats.sent > 0 && stats.samples == 0;
        m.data.train = Some(stats);
        match failure {
            Some(f) => Err(f),
            None if lost_all => Err((
                ErrorKind::Timeout,
                format!(
                    "no datagram echoed within {:?} (connection was up)",
                    self.spec.timeout
                ),
            )),
            None => Ok(()),
        }
    }
}

/// Whether a QUIC transport error code is a TLS alert (0x100..=0x1ff, RFC 9001 §4.8).
fn is_crypto(code: quinn::TransportErrorCode) -> bool {
    (0x100..=0x1ff).contains(&u64::from(code))
}

/// Maps a quinn connection error to a record error kind and detail.
fn classify_connection(e: &ConnectionError, remote: SocketAddr) -> (ErrorKind, String) {
    let kind = match e {
        ConnectionError::TimedOut => ErrorKind::Timeout,
        ConnectionError::TransportError(t) if is_crypto(t.code) => ErrorKind::Tls,
        ConnectionError::ConnectionClosed(c) if is_crypto(c.error_code) => ErrorKind::Tls,
        ConnectionError::VersionMismatch
        | ConnectionError::TransportError(_)
        | ConnectionError::ConnectionClosed(_) => ErrorKind::Protocol,
        ConnectionError::ApplicationClosed(_) | ConnectionError::Reset => ErrorKind::Reset,
        ConnectionError::LocallyClosed | ConnectionError::CidsExhausted => ErrorKind::Local,
    };
    let what = if kind == ErrorKind::Tls {
        "QUIC TLS handshake"
    } else {
        "QUIC connection"
    };
    (kind, format!("{what} with {remote} failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crypto_codes_are_tls() {
        assert!(is_crypto(quinn::TransportErrorCode::crypto(42)));
        assert!(!is_crypto(quinn::TransportErrorCode::PROTOCOL_VIOLATION));
    }

    #[test]
    fn payload_out_of_range_is_refused_at_setup() {
        for bad in [1, MIN_PAYLOAD - 1, MAX_PAYLOAD + 1] {
            let spec = ProbeSpec {
                payload_bytes: bad,
                ..ProbeSpec::default()
            };
            assert!(
                matches!(QuicProbe::new(&spec), Err(ProbeSetupError::Invalid(_))),
                "{bad}"
            );
        }
        let ok = ProbeSpec {
            payload_bytes: MIN_PAYLOAD,
            ..ProbeSpec::default()
        };
        assert!(QuicProbe::new(&ok).is_ok());
    }
}
