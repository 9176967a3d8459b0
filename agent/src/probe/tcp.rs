//! TCP prober: connect (three-way handshake) time to a responder or any `host:port`.
//!
//! One sample = resolve with the system resolver, `connect` to the resolved addresses in order
//! until one accepts, read the kernel's handshake RTT (`TCP_INFO`), close. `tcp_ms` is that
//! kernel figure — SYN sent → SYN-ACK processed, free of the runtime's wake-up — whenever the
//! kernel has one for the whole connect phase; otherwise (non-Linux, a retransmitted SYN, a
//! first address that failed, which a user would feel too) it runs on the process clock from
//! the start of the first connect attempt to the established connection as the task sees it.
//! The record's `tcp_time_source` says which (`kernel` | `user`); `rtt_ms` is the same value
//! as `tcp_ms` (DESIGN §5). The whole sample is bounded by [`ProbeSpec::timeout`].
//!
//! # Layout
//!
//! - [`handshake`]: sans-IO — `TCP_INFO` bytes → handshake RTT, and the kernel/user choice;
//!   why `TCP_INFO` and what error remains.
//! - `sys`: the `getsockopt(TCP_INFO)` call (the only unsafe code).

pub mod handshake;
mod sys;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use meshlat_proto::record::{ErrorKind, Protocol};
use tokio::net::TcpStream;

use self::handshake::{TCP_INFO_LEN, connect_time};
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
                Ok(c) => {
                    let t1 = Clock::now_ns();
                    m.data.remote_addr = Some(c.addr);
                    let time = connect_time(t1.saturating_sub(t0), c.handshake_rtt_ns);
                    m.data.tcp_ms = Some(ns_to_ms(time.ns as i64));
                    m.data.tcp_time_source = Some(time.source);
                    drop(c.stream);
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

/// A connection made by [`connect_any`].
#[derive(Debug)]
pub(crate) struct Connected {
    /// The connection; nothing has been written to it.
    pub(crate) stream: TcpStream,
    /// The address that accepted.
    pub(crate) addr: SocketAddr,
    /// The kernel's handshake RTT ([`handshake::handshake_rtt_ns`]), when it covers the whole
    /// connect phase: `None` after a failed earlier address, or when the kernel has none.
    pub(crate) handshake_rtt_ns: Option<u64>,
}

/// Connects to `addrs` in order and returns the first connection with its address and the
/// kernel's handshake figure, or the last attempt's address and error. `addrs` must not be empty
/// ([`super::resolve`] never returns an empty list); an empty list yields an `AddrNotAvailable`
/// error on `0.0.0.0:0`.
pub(crate) async fn connect_any(
    addrs: &[SocketAddr],
) -> Result<Connected, (SocketAddr, std::io::Error)> {
    let mut last = (
        SocketAddr::from(([0, 0, 0, 0], 0)),
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no addresses"),
    );
    for (i, &addr) in addrs.iter().enumerate() {
        match TcpStream::connect(addr).await {
            Ok(stream) => {
                // Read before anything is written: a later ACK of our data would move the RTT.
                let handshake_rtt_ns = if i == 0 {
                    kernel_handshake_rtt(&stream, addr)
                } else {
                    None
                };
                return Ok(Connected {
                    stream,
                    addr,
                    handshake_rtt_ns,
                });
            }
            Err(e) => last = (addr, e),
        }
    }
    Err(last)
}

/// The kernel's handshake RTT of a connection just made, or `None` (logged at debug level:
/// expected off Linux and after retransmissions).
fn kernel_handshake_rtt(stream: &TcpStream, addr: SocketAddr) -> Option<u64> {
    let mut buf = [0u8; TCP_INFO_LEN];
    let parsed = match sys::read_tcp_info(stream, &mut buf) {
        Ok(len) => handshake::handshake_rtt_ns(&buf[..len]).map_err(|e| e.to_string()),
        Err(e) => Err(format!("getsockopt(TCP_INFO): {e}")),
    };
    match parsed {
        Ok(ns) => Some(ns),
        Err(reason) => {
            tracing::debug!(
                message = "No kernel handshake time; using the process clock.",
                remote = %addr,
                %reason
            );
            None
        }
    }
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
