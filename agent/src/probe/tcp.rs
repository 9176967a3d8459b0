//! TCP prober: connect (three-way handshake) time to a responder or any `host:port`.
//!
//! One sample = resolve with the system resolver, `connect` to the resolved addresses in order
//! until one accepts, close. `tcp_ms` runs from the start of the first connect attempt to the
//! established connection (so a failed first address counts, as a user would feel it); the
//! record's `rtt_ms` is the same value (DESIGN §5). The whole sample is bounded by
//! [`ProbeSpec::timeout`].

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use meshlat_proto::record::{ErrorKind, Protocol};
use tokio::net::TcpStream;

use super::{Measurement, Outcome, ProbeSetupError, ProbeSpec, classify_io};
use crate::clock::{Clock, ns_to_ms};
use crate::target::Target;

/// The TCP connect-time prober.
#[derive(Debug)]
pub struct TcpProbe {
    /// Bounds each sample.
    timeout: Duration,
}

impl TcpProbe {
    /// Builds the prober.
    ///
    /// # Errors
    ///
    /// [`ProbeSetupError::Invalid`] for a zero timeout.
    pub fn new(spec: &ProbeSpec) -> Result<Self, ProbeSetupError> {
        if spec.timeout.is_zero() {
            return Err(ProbeSetupError::Invalid(
                "tcp probe timeout must be > 0".into(),
            ));
        }
        Ok(TcpProbe {
            timeout: spec.timeout,
        })
    }

    /// One sample: resolve, connect, close. Never fails; failures are in the outcome.
    pub async fn run_once(&self, target: &Target) -> Measurement {
        let mut m = Measurement::new(SystemTime::now(), Outcome::Ok);
        if target.protocol != Protocol::Tcp {
            m.outcome = Outcome::failed(
                ErrorKind::Local,
                format!("tcp prober cannot probe {} targets", target.protocol),
            );
            return m;
        }
        let mut phase = "dns";
        let sample = async {
            let addrs = super::resolve(&target.host, target.port)
                .await
                .map_err(|(kind, detail)| Outcome::failed(kind, detail))?;
            phase = "connect";
            let t0 = Clock::now_ns();
            match connect_any(&addrs).await {
                Ok((stream, addr)) => {
                    let t1 = Clock::now_ns();
                    m.data.remote_addr = Some(addr);
                    m.data.tcp_ms = Some(ns_to_ms(t1.saturating_sub(t0) as i64));
                    drop(stream);
                    Ok(())
                }
                Err((addr, e)) => {
                    m.data.remote_addr = Some(addr);
                    Err(Outcome::failed(
                        classify_io(&e),
                        format!("connect {addr}: {e}"),
                    ))
                }
            }
        };
        let result = tokio::time::timeout(self.timeout, sample).await;
        m.outcome = match result {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(outcome)) => outcome,
            Err(_) => Outcome::failed(
                ErrorKind::Timeout,
                format!(
                    "timed out after {} ms during {phase}",
                    self.timeout.as_millis()
                ),
            ),
        };
        m
    }
}

/// Connects to `addrs` in order and returns the first connection with its address, or the last
/// attempt's address and error. `addrs` must not be empty ([`super::resolve`] never returns an
/// empty list); an empty list yields an `AddrNotAvailable` error on `0.0.0.0:0`.
pub(crate) async fn connect_any(
    addrs: &[SocketAddr],
) -> Result<(TcpStream, SocketAddr), (SocketAddr, std::io::Error)> {
    let mut last = (
        SocketAddr::from(([0, 0, 0, 0], 0)),
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no addresses"),
    );
    for &addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok((s, addr)),
            Err(e) => last = (addr, e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_zero_timeout() {
        let spec = ProbeSpec {
            protocol: Protocol::Tcp,
            timeout: Duration::ZERO,
            ..ProbeSpec::default()
        };
        assert!(matches!(
            TcpProbe::new(&spec),
            Err(ProbeSetupError::Invalid(_))
        ));
    }

    #[tokio::test]
    async fn empty_address_list_is_an_error_not_a_panic() {
        let (addr, e) = connect_any(&[]).await.expect_err("nothing to connect to");
        assert_eq!(addr.port(), 0);
        assert_eq!(classify_io(&e), ErrorKind::Unreachable);
    }
}
