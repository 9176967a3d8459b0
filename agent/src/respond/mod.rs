//! Responders (`agent serve`): what other agents and `agent probe` measure against.
//!
//! Each responder binds first (so tests can use port 0 and read the address) and then serves
//! until the shutdown token fires.
//!
//! # Layout
//!
//! - [`udp`]: the UDP reflector (TWAMP-light style; authenticated; never answers larger).
//! - [`tcp`]: accepts and closes connections (connect-time target; it holds none, so it needs
//!   no caps or deadlines).
//! - [`quic`]: quinn endpoint with meshlat's ALPN; echoes datagrams.
//! - [`http`]: HTTP and HTTPS: `/ping`, `/bytes/N`.
//! - [`tally`]: every responder's per-source counts, written as server records (`kind=serve`
//!   for the reflector and the TCP, QUIC, HTTP and HTTPS responders; `kind=relay_serve` for the
//!   relay).

pub mod http;
pub mod quic;
pub mod tally;
pub mod tcp;
pub mod udp;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::tls::Identity;
use crate::udp::Key;

/// The listeners' caps and deadlines unless flags say otherwise (the defaults of
/// `--max-conns`, `--max-conns-per-ip`, `--handshake-timeout`, `--header-timeout` and
/// `--idle-timeout`).
pub const DEFAULT_LIMITS: meshlat_guard::ConnLimits = meshlat_guard::ConnLimits {
    max_conns: 1024,
    max_conns_per_ip: 256,
    handshake_timeout: Duration::from_secs(10),
    header_timeout: Duration::from_secs(10),
    idle_timeout: Duration::from_secs(10),
};

/// Counts a listener's refusals and early closes in
/// `meshlat_responder_requests_total{protocol=<listener>,result=<event>}`.
pub fn count_conn_event(listener: &'static str, event: &'static str) {
    crate::metrics::responder_event(listener, event);
}

/// Which responders to run and where.
#[derive(Clone, Debug)]
pub struct ResponderConfig {
    /// Address to bind every responder on.
    pub listen: IpAddr,
    /// UDP reflector port (`None`: off; `Some(0)`: any).
    pub udp_port: Option<u16>,
    /// TCP responder port.
    pub tcp_port: Option<u16>,
    /// QUIC responder port.
    pub quic_port: Option<u16>,
    /// HTTP responder port.
    pub http_port: Option<u16>,
    /// HTTPS responder port.
    pub https_port: Option<u16>,
    /// Keys the UDP reflector accepts.
    pub keys: Vec<Key>,
    /// Whether the UDP reflector also relays (`--relay`).
    pub relay: bool,
    /// Certificate for HTTPS and QUIC.
    pub identity: Identity,
    /// Caps and deadlines of the HTTP, HTTPS and QUIC responders.
    pub limits: meshlat_guard::ConnLimits,
    /// Server records' interval and source bound (`--serve-interval`, `--serve-max-sources`).
    pub records: tally::RecordsConfig,
}

/// The addresses responders actually bound.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponderAddrs {
    /// UDP reflector.
    pub udp: Option<SocketAddr>,
    /// TCP responder.
    pub tcp: Option<SocketAddr>,
    /// QUIC responder.
    pub quic: Option<SocketAddr>,
    /// HTTP responder.
    pub http: Option<SocketAddr>,
    /// HTTPS responder.
    pub https: Option<SocketAddr>,
}

/// A responder that could not start.
#[derive(Debug, thiserror::Error)]
#[error("{protocol} responder on {addr}: {source}")]
pub struct BindError {
    /// Which responder.
    pub protocol: &'static str,
    /// Where it tried to bind.
    pub addr: SocketAddr,
    /// Why it failed.
    #[source]
    pub source: std::io::Error,
}

/// Every bound responder, ready to serve.
#[derive(Debug)]
pub struct Responders {
    udp: Option<udp::UdpReflector>,
    tcp: Option<tcp::TcpResponder>,
    quic: Option<quic::QuicResponder>,
    http: Option<http::HttpResponder>,
    https: Option<http::HttpResponder>,
    /// The TCP, QUIC, HTTP and HTTPS responders' server records, when on.
    conn_records: Option<tally::ConnRecords>,
}

impl Responders {
    /// Binds every configured responder.
    ///
    /// # Errors
    ///
    /// [`BindError`] for the first responder that cannot bind.
    pub async fn bind(cfg: &ResponderConfig) -> Result<Self, BindError> {
        let at = |port: u16| SocketAddr::new(cfg.listen, port);
        let err = |protocol, addr| {
            move |source| BindError {
                protocol,
                addr,
                source,
            }
        };
        let udp = match cfg.udp_port {
            Some(p) => Some(
                udp::UdpReflector::bind(at(p), cfg.keys.clone())
                    .await
                    .map_err(err("udp", at(p)))?
                    .with_relay(cfg.relay),
            ),
            None => None,
        };
        let tcp = match cfg.tcp_port {
            Some(p) => Some(
                tcp::TcpResponder::bind(at(p))
                    .await
                    .map_err(err("tcp", at(p)))?,
            ),
            None => None,
        };
        let quic = match cfg.quic_port {
            Some(p) => Some(
                quic::QuicResponder::bind_with(at(p), &cfg.identity, cfg.limits)
                    .await
                    .map_err(err("quic", at(p)))?,
            ),
            None => None,
        };
        let http = match cfg.http_port {
            Some(p) => Some(
                http::HttpResponder::bind_with(at(p), None, cfg.limits)
                    .await
                    .map_err(err("http", at(p)))?,
            ),
            None => None,
        };
        let https = match cfg.https_port {
            Some(p) => Some(
                http::HttpResponder::bind_with(at(p), Some(&cfg.identity), cfg.limits)
                    .await
                    .map_err(err("https", at(p)))?,
            ),
            None => None,
        };
        Ok(Responders {
            udp,
            tcp,
            quic,
            http,
            https,
            conn_records: None,
        })
    }

    /// Makes the UDP reflector (if any) also accept the keys a controller sends through the
    /// returned sender ([`udp::ControllerKeys`]).
    pub fn accept_controller_keys(
        &mut self,
    ) -> Option<tokio::sync::watch::Sender<udp::ControllerKeys>> {
        self.udp
            .as_mut()
            .map(udp::UdpReflector::accept_controller_keys)
    }

    /// Makes every responder count per source and write server records to `out`'s sinks
    /// ([`tally`]): the UDP reflector (and relay) on its thread, the TCP, QUIC, HTTP and HTTPS
    /// responders in one shared table written by one task.
    pub fn write_records(&mut self, out: tally::RecordsOutput) {
        use meshlat_proto::record::Protocol;
        let addrs = self.addrs();
        let locals: Vec<(Protocol, SocketAddr)> = [
            (Protocol::Tcp, addrs.tcp),
            (Protocol::Quic, addrs.quic),
            (Protocol::Http, addrs.http),
            (Protocol::Https, addrs.https),
        ]
        .into_iter()
        .filter_map(|(p, a)| a.map(|a| (p, a)))
        .collect();
        if !locals.is_empty() {
            let t = tally::ConnTally::new(out.cfg.max_sources);
            self.tcp = self.tcp.take().map(|r| r.with_records(t.clone()));
            self.quic = self.quic.take().map(|r| r.with_records(t.clone()));
            self.http = self.http.take().map(|r| r.with_records(t.clone()));
            self.https = self.https.take().map(|r| r.with_records(t.clone()));
            self.conn_records = Some(tally::ConnRecords::new(out.clone(), t, locals));
        }
        self.udp = self.udp.take().map(|u| u.with_records(out));
    }

    /// Bound addresses.
    pub fn addrs(&self) -> ResponderAddrs {
        ResponderAddrs {
            udp: self.udp.as_ref().map(udp::UdpReflector::local_addr),
            tcp: self.tcp.as_ref().map(tcp::TcpResponder::local_addr),
            quic: self.quic.as_ref().map(quic::QuicResponder::local_addr),
            http: self.http.as_ref().map(http::HttpResponder::local_addr),
            https: self.https.as_ref().map(http::HttpResponder::local_addr),
        }
    }

    /// Serves until `shutdown` is cancelled. With server records on, returns once the last
    /// interval's records went to the sinks.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut set = tokio::task::JoinSet::new();
        if let Some(r) = self.udp {
            set.spawn(r.run(shutdown.clone()));
        }
        // The connection responders' records: the last interval is written once every
        // responder has stopped (HTTP(S) after its drain), so nothing they counted is lost.
        let stop_records = CancellationToken::new();
        let records = self
            .conn_records
            .map(|r| tokio::spawn(r.run(stop_records.clone())));
        if let Some(r) = self.tcp {
            set.spawn(r.run(shutdown.clone()));
        }
        if let Some(r) = self.quic {
            set.spawn(r.run(shutdown.clone()));
        }
        if let Some(r) = self.http {
            set.spawn(r.run(shutdown.clone()));
        }
        if let Some(r) = self.https {
            set.spawn(r.run(shutdown.clone()));
        }
        while set.join_next().await.is_some() {}
        stop_records.cancel();
        if let Some(r) = records {
            let _ = r.await;
        }
    }
}
