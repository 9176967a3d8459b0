//! Validated configuration ("parse, don't validate", STYLE §7).
//!
//! The raw command line ([`crate::cli`]) is turned into these types; nothing else sees the raw
//! values. Every error names the flag and the value.
//!
//! This module holds the standalone commands' configs (`agent probe`, `agent serve`) and what
//! every command shares (common flags, identity labels, responders). Each component's config
//! sits next to it: [`FileSinkConfig`] in [`crate::sink::file`], [`FirehoseSinkConfig`] in
//! [`crate::sink::firehose::config`], `agent run`'s [`crate::control::config::RunConfig`].
//! [`ConfigError`] and the shared field checks are a leaf module, [`error`], that they all import.

use std::path::Path;
use std::time::Duration;

use meshlat_proto::job::{MAX_PACKETS, MAX_PAYLOAD_BYTES};

pub mod error;

pub use self::error::ConfigError;
use self::error::{label, secs};
use crate::cli::{self, Format, LogFormat};
use crate::probe::{Key, ProbeSpec};
use crate::respond::ResponderConfig;
use crate::sink::emf::EmfConfig;
use crate::sink::file::FileSinkConfig;
use crate::sink::firehose::FirehoseSinkConfig;
use crate::target::Target;
use crate::tls::{Identity, TlsClientOptions};

/// Default per-sample timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Logging, stats and listener settings.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    /// `-s PORT`.
    pub stats_port: Option<u16>,
    /// `--stats-listen` (`None`: the command's `--listen`, else 0.0.0.0).
    pub stats_listen: Option<std::net::IpAddr>,
    /// `--metrics-max-pairs`: the most pairs (destination and protocol) with series on /metrics.
    pub metrics_max_pairs: usize,
    /// Caps and deadlines of every listener (`--max-conns`, ...).
    pub limits: meshlat_guard::ConnLimits,
    /// Verbosity (0 info, 1 debug, 2+ trace).
    pub verbose: u8,
    /// Log format.
    pub log_format: LogFormat,
    /// `--clock-source`.
    pub clock_source: crate::clock::ClockSource,
}

impl CommonConfig {
    /// Validates the common flags.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the flag.
    pub fn from_args(a: &cli::CommonArgs) -> Result<Self, ConfigError> {
        let count = |flag, v: usize| {
            if v == 0 {
                return Err(ConfigError::OutOfRange {
                    flag,
                    value: "0".into(),
                    range: ">= 1".into(),
                });
            }
            Ok(v)
        };
        let max_conns = count("--max-conns", a.max_conns)?;
        let max_conns_per_ip = count("--max-conns-per-ip", a.max_conns_per_ip)?;
        let d = a
            .deadlines
            .deadlines()
            .map_err(|e| ConfigError::OutOfRange {
                flag: e.flag,
                value: e.value.to_string(),
                range: "0.1 to 3600 seconds".into(),
            })?;
        Ok(CommonConfig {
            stats_port: a.stats_port,
            stats_listen: a.stats_listen,
            metrics_max_pairs: a.metrics_max_pairs,
            limits: meshlat_guard::ConnLimits {
                max_conns,
                max_conns_per_ip,
                handshake_timeout: d.handshake,
                header_timeout: d.header,
                idle_timeout: d.idle,
            },
            verbose: a.verbose,
            log_format: a.log_format,
            clock_source: crate::clock::ClockSource::parse(&a.clock_source, |k| {
                std::env::var(k).ok()
            })
            .map_err(|reason| ConfigError::Invalid {
                flag: "--clock-source",
                value: a.clock_source.clone(),
                reason,
            })?,
        })
    }
}

/// Who this agent is, as written in records.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AgentIdentity {
    /// Agent id (None standalone).
    pub agent_id: Option<String>,
    /// Region (`local` when not given: the file layout needs one).
    pub region: String,
    /// Availability zone.
    pub az: Option<String>,
    /// Location label.
    pub location: Option<String>,
}

/// `--state-dir`'s default (also the base of `agent probe`'s default spool).
pub const DEFAULT_STATE_DIR: &str = "./meshlat-agent-state";

/// Validated `agent probe` configuration.
#[derive(Clone, Debug)]
pub struct ProbeConfig {
    /// Targets, in command-line order, without duplicates.
    pub targets: Vec<Target>,
    /// Samples per target; `None` runs until interrupted.
    pub count: Option<u64>,
    /// Time between sample starts.
    pub interval: Duration,
    /// Probe parameters (protocol is set per target).
    pub spec: ProbeSpec,
    /// Stdout format.
    pub format: Format,
    /// File sink.
    pub file: Option<FileSinkConfig>,
    /// Firehose sink.
    pub firehose: Option<FirehoseSinkConfig>,
    /// CloudWatch EMF lines (`--emf`).
    pub emf: Option<EmfConfig>,
    /// Identity labels.
    pub identity: AgentIdentity,
    /// Logging/stats.
    pub common: CommonConfig,
    /// Deprecated flags that were used, as warnings naming their replacement (logged by
    /// [`crate::app::ProbeApp::bind`], once logging is set up).
    pub deprecations: Vec<&'static str>,
}

/// The warning for `--interval-ms` (`MESHLAT_INTERVAL_MS`), the old name of
/// `--packet-interval-ms`: it never meant the time between samples.
pub const DEPRECATED_INTERVAL_MS: &str = "--interval-ms (MESHLAT_INTERVAL_MS) is deprecated: use --packet-interval-ms (MESHLAT_PACKET_INTERVAL_MS)";

/// `agent probe --packet-interval-ms` when not given.
pub const DEFAULT_PACKET_INTERVAL_MS: f64 = 10.0;

/// Largest `agent probe --packet-interval-ms` (a minute). Jobs from a controller have the lower
/// [`meshlat_proto::job::MAX_PACKET_INTERVAL_MS`]; this limit of the standalone command is kept
/// as it was.
pub const CLI_MAX_PACKET_INTERVAL_MS: f64 = 60_000.0;

/// Validated `agent serve` configuration.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// Responders.
    pub responders: ResponderConfig,
    /// Identity labels of server records.
    pub identity: AgentIdentity,
    /// File sink of server records.
    pub file: Option<FileSinkConfig>,
    /// Firehose sink of server records.
    pub firehose: Option<FirehoseSinkConfig>,
    /// CloudWatch EMF lines (`--emf`: the heartbeat; serve measures nothing).
    pub emf: Option<EmfConfig>,
    /// Logging/stats.
    pub common: CommonConfig,
}

/// The `--region` label (`local` when not given), usable as a path component.
pub(crate) fn region(v: Option<String>) -> Result<String, ConfigError> {
    let r = label("--region", v)?.unwrap_or_else(|| "local".into());
    // The region is a path component of the Hive layout (region=<r>).
    if !r
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
        || r.starts_with('.')
    {
        return Err(ConfigError::Label {
            flag: "--region",
            value: r,
            reason: "use letters, digits, '-', '_' and '.' only",
        });
    }
    Ok(r)
}

/// Reads `PERFTEST_URL` the way perftest users set it (one or more URLs).
fn targets_from_env(value: Option<String>) -> Vec<String> {
    value
        .map(|v| {
            v.split(|c: char| c.is_whitespace() || c == ',')
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

impl ProbeConfig {
    /// Validates `agent probe` arguments. `env` looks up perftest's environment variables
    /// (`PERFTEST_URL`, `REP_LOCATION`); it is a parameter so tests need not touch the process env.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the flag and value.
    pub fn from_args(
        a: &cli::ProbeArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let raw = if a.targets.is_empty() {
            targets_from_env(env("PERFTEST_URL"))
        } else {
            a.targets.clone()
        };
        if raw.is_empty() {
            return Err(ConfigError::NoTargets);
        }
        let mut targets: Vec<Target> = Vec::new();
        for t in &raw {
            let t = Target::parse(t)?;
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        let interval = secs("-d/--delay", a.delay, true)?;
        let timeout = match a.timeout {
            Some(t) => secs("--timeout", t, false)?,
            None if interval.is_zero() => DEFAULT_TIMEOUT,
            None => DEFAULT_TIMEOUT.min(interval),
        };
        if !interval.is_zero() && timeout > interval {
            return Err(ConfigError::TimeoutAboveDelay {
                timeout,
                delay: interval,
            });
        }
        if a.packets == 0 || a.packets > MAX_PACKETS {
            return Err(ConfigError::OutOfRange {
                flag: "--packets",
                value: a.packets.to_string(),
                range: format!("1..={MAX_PACKETS}").into(),
            });
        }
        let mut deprecations = Vec::new();
        let (flag, packet_interval_ms) = match (a.packet_interval_ms, a.interval_ms) {
            (Some(ms), _) => ("--packet-interval-ms", ms),
            (None, Some(ms)) => {
                deprecations.push(DEPRECATED_INTERVAL_MS);
                ("--interval-ms", ms)
            }
            (None, None) => ("--packet-interval-ms", DEFAULT_PACKET_INTERVAL_MS),
        };
        // NaN and infinities are outside the range too.
        if !(0.0..=CLI_MAX_PACKET_INTERVAL_MS).contains(&packet_interval_ms) {
            return Err(ConfigError::OutOfRange {
                flag,
                value: packet_interval_ms.to_string(),
                range: format!("0..={CLI_MAX_PACKET_INTERVAL_MS}").into(),
            });
        }
        if a.payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(ConfigError::OutOfRange {
                flag: "--payload-bytes",
                value: a.payload_bytes.to_string(),
                range: format!("0..={MAX_PAYLOAD_BYTES}").into(),
            });
        }
        if let Some(ca) = &a.ca
            && let Err(e) = crate::tls::load_certs(ca)
        {
            return Err(ConfigError::File {
                flag: "--ca",
                path: ca.display().to_string(),
                reason: e.to_string(),
            });
        }
        let location = match label("--location", a.records.identity.location.clone())? {
            Some(l) => Some(l),
            None => label("REP_LOCATION", env("REP_LOCATION"))?,
        };
        let spec = ProbeSpec {
            protocol: targets[0].protocol,
            timeout,
            packets: a.packets,
            packet_interval: Duration::from_secs_f64(packet_interval_ms / 1000.0),
            payload_bytes: a.payload_bytes as usize,
            key: a
                .key
                .as_deref()
                .map_or_else(Key::default_key, Key::from_secret),
            tls: TlsClientOptions {
                skip_verify: a.tls_skip_verify,
                ca_file: a.ca.clone(),
            },
        };
        Ok(ProbeConfig {
            targets,
            count: (a.count > 0).then_some(a.count),
            interval,
            spec,
            format: a.format,
            file: FileSinkConfig::from_args(&a.records.sinks)?,
            emf: EmfConfig::from_args(&a.records.sinks)?,
            firehose: FirehoseSinkConfig::from_args(
                &a.records.sinks.firehose,
                Path::new(DEFAULT_STATE_DIR),
            )?,
            identity: AgentIdentity {
                agent_id: None,
                region: region(a.records.identity.region.clone())?,
                az: label("--az", a.records.identity.az.clone())?,
                location,
            },
            common: CommonConfig::from_args(&a.records.common)?,
            deprecations,
        })
    }
}

impl ServeConfig {
    /// Validates `agent serve` arguments.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the flag and value (e.g. an unreadable `--tls-cert`).
    pub fn from_args(a: &cli::ServeArgs) -> Result<Self, ConfigError> {
        if a.responders.relay && a.responders.keys.is_empty() {
            // Grants would be verified with a key derived from the public default key: anyone
            // could make one, and the relay would forward for them.
            return Err(ConfigError::Label {
                flag: "--relay",
                value: "without --key".into(),
                reason: "a standalone relay needs a shared --key (with the public default key it \
                         would be an open relay); under a controller, relays get the grant public \
                         keys of the federation's controllers",
            });
        }
        let mut common = CommonConfig::from_args(&a.records.common)?;
        common.stats_listen.get_or_insert(a.responders.listen);
        Ok(ServeConfig {
            responders: responder_config(&a.responders, common.limits)?,
            identity: AgentIdentity {
                agent_id: None,
                region: region(a.records.identity.region.clone())?,
                az: label("--az", a.records.identity.az.clone())?,
                location: label("--location", a.records.identity.location.clone())?,
            },
            file: FileSinkConfig::from_args(&a.records.sinks)?,
            emf: EmfConfig::from_args(&a.records.sinks)?,
            firehose: FirehoseSinkConfig::from_args(
                &a.records.sinks.firehose,
                Path::new(DEFAULT_STATE_DIR),
            )?,
            common,
        })
    }
}

/// Validates responder flags (shared by `serve` and `run`); `limits` are the listeners' caps
/// and deadlines ([`CommonConfig::limits`]).
///
/// # Errors
///
/// [`ConfigError`] for unusable certificate files or keys.
pub fn responder_config(
    r: &cli::ResponderArgs,
    limits: meshlat_guard::ConnLimits,
) -> Result<ResponderConfig, ConfigError> {
    let identity = match (&r.tls_cert, &r.tls_key) {
        (Some(c), Some(k)) => Identity::from_files(c, k).map_err(|e| ConfigError::File {
            flag: "--tls-cert/--tls-key",
            path: c.display().to_string(),
            reason: e.to_string(),
        })?,
        _ => Identity::self_signed(&["localhost".to_string(), r.listen.to_string()]).map_err(
            |e| ConfigError::File {
                flag: "--tls-cert",
                path: "(self-signed)".into(),
                reason: e.to_string(),
            },
        )?,
    };
    let mut keys = Vec::new();
    for k in &r.keys {
        if k.len() < 8 {
            return Err(ConfigError::Label {
                flag: "--key",
                value: "<redacted>".into(),
                reason: "must be at least 8 characters",
            });
        }
        keys.push(Key::from_secret(k));
    }
    if keys.is_empty() {
        keys.push(Key::default_key());
    }
    if r.serve_max_sources == 0 || r.serve_max_sources > crate::respond::tally::MAX_MAX_SOURCES {
        return Err(ConfigError::OutOfRange {
            flag: "--serve-max-sources",
            value: r.serve_max_sources.to_string(),
            range: "1..=65536".into(),
        });
    }
    let serve_interval = secs("--serve-interval", r.serve_interval, false)?;
    if serve_interval < Duration::from_millis(100) {
        return Err(ConfigError::OutOfRange {
            flag: "--serve-interval",
            value: r.serve_interval.to_string(),
            range: "0.1 to 1 year, in seconds".into(),
        });
    }
    Ok(ResponderConfig {
        listen: r.listen,
        udp_port: r.udp_port.0,
        tcp_port: r.tcp_port.0,
        quic_port: r.quic_port.0,
        http_port: r.http_port.0,
        https_port: r.https_port.0,
        keys,
        relay: r.relay,
        identity,
        limits,
        records: crate::respond::tally::RecordsConfig {
            interval: serve_interval,
            max_sources: r.serve_max_sources,
        },
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use clap::Parser;

    fn probe(args: &[&str], env: &[(&str, &str)]) -> Result<ProbeConfig, String> {
        let mut argv = vec!["agent", "probe"];
        argv.extend_from_slice(args);
        let cli = cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Some(cli::Command::Probe(p)) = cli.command else {
            return Err("not probe".into());
        };
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        ProbeConfig::from_args(&p, |k| {
            env.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
        })
        .map_err(|e| e.to_string())
    }

    /// `--packet-interval-ms` is the gap within a train; `--interval-ms`, its old name, still
    /// works and leaves a deprecation warning naming the new one; both at once are refused.
    #[test]
    fn packet_interval_flag_and_its_deprecated_alias() {
        let t = "udp://127.0.0.1:9";
        let gap = |c: &ProbeConfig| c.spec.packet_interval;
        let c = probe(&[t], &[]).unwrap();
        assert_eq!(gap(&c), Duration::from_millis(10));
        assert!(c.deprecations.is_empty());
        let c = probe(&["--packet-interval-ms", "2.5", t], &[]).unwrap();
        assert_eq!(gap(&c), Duration::from_micros(2500));
        assert!(c.deprecations.is_empty());
        let c = probe(&["--interval-ms", "3", t], &[]).unwrap();
        assert_eq!(gap(&c), Duration::from_millis(3));
        assert_eq!(c.deprecations, [DEPRECATED_INTERVAL_MS]);
        assert!(DEPRECATED_INTERVAL_MS.contains("use --packet-interval-ms"));
        let e = probe(&["--interval-ms", "3", "--packet-interval-ms", "2", t], &[]).unwrap_err();
        assert!(e.contains("cannot be used with"), "{e}");
        let e = probe(&["--interval-ms", "70000", t], &[]).unwrap_err();
        assert!(
            e.contains("--interval-ms") && e.contains("0..=60000"),
            "{e}"
        );
        let e = probe(&["--packet-interval-ms", "70000", t], &[]).unwrap_err();
        assert!(
            e.contains("--packet-interval-ms") && e.contains("0..=60000"),
            "{e}"
        );
    }

    #[test]
    fn good_probe_flags() {
        let c = probe(
            &[
                "-n",
                "3",
                "-d",
                "2",
                "--timeout",
                "1",
                "udp://h:1",
                "udp://h:1",
                "tcp://h:2",
            ],
            &[],
        )
        .expect("valid");
        assert_eq!(c.targets.len(), 2, "duplicates removed");
        assert_eq!(
            (c.count, c.interval, c.spec.timeout),
            (Some(3), Duration::from_secs(2), Duration::from_secs(1))
        );
        let c = probe(&["-n", "0", "-d", "0.5", "http://h/"], &[]).expect("valid");
        assert_eq!(
            (c.count, c.spec.timeout),
            (None, Duration::from_millis(500))
        );
        assert_eq!(c.identity.region, "local");
    }

    #[test]
    fn perftest_environment_is_honoured_and_positional_targets_win() {
        let c = probe(
            &[],
            &[
                ("PERFTEST_URL", "https://a.example/ https://b.example/"),
                ("REP_LOCATION", "Paris,FR"),
            ],
        )
        .expect("valid");
        assert_eq!(c.targets.len(), 2);
        assert_eq!(c.identity.location.as_deref(), Some("Paris,FR"));
        let c = probe(
            &["--location", "x", "tcp://h:1"],
            &[
                ("PERFTEST_URL", "https://a.example/"),
                ("REP_LOCATION", "y"),
            ],
        )
        .expect("valid");
        assert_eq!(
            (c.targets[0].raw.as_str(), c.identity.location.as_deref()),
            ("tcp://h:1", Some("x"))
        );
    }

    #[test]
    fn bad_probe_flags_name_the_flag() {
        for (args, want) in [
            (&["ftp://x"][..], "unknown scheme"),
            (&[][..], "no targets"),
            (
                &["-d", "1", "--timeout", "2", "udp://h:1"][..],
                "--timeout (2s) must not exceed -d (1s)",
            ),
            (
                &["-d=-1", "udp://h:1"][..],
                "-d/--delay: -1 is out of range",
            ),
            // Whole messages: the ranges are built from the proto's limits.
            (
                &["--packets", "0", "udp://h:1"][..],
                "--packets: 0 is out of range (1..=10000)",
            ),
            (
                &["--payload-bytes", "9000", "udp://h:1"][..],
                "--payload-bytes: 9000 is out of range (0..=1452)",
            ),
            (
                &["--out", "/tmp/x", "--file-max-bytes", "1000", "udp://h:1"][..],
                "--file-max-bytes: 1000 is out of range (>= 1024)",
            ),
            (
                &["--ca", "/nonexistent/ca.pem", "https://h/"][..],
                "--ca /nonexistent/ca.pem",
            ),
            (
                &["--region", "eu/west", "udp://h:1"][..],
                "--region \"eu/west\"",
            ),
            (&["--format", "xml", "udp://h:1"][..], "invalid value 'xml'"),
            (&["-n", "x", "udp://h:1"][..], "invalid value 'x'"),
        ] {
            let err = probe(args, &[]).expect_err(want);
            assert!(err.contains(want), "{args:?}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn serve_ports_accept_numbers_zero_and_off() {
        let cli = cli::Cli::try_parse_from([
            "agent",
            "serve",
            "--udp-port",
            "0",
            "--http-port",
            "off",
            "--key",
            "0123456789",
        ])
        .expect("valid");
        let Some(cli::Command::Serve(s)) = cli.command else {
            panic!("serve expected")
        };
        let c = ServeConfig::from_args(&s).expect("valid");
        assert_eq!(
            (c.responders.udp_port, c.responders.http_port),
            (Some(0), None)
        );
        assert_eq!(c.responders.keys, vec![Key::from_secret("0123456789")]);
        let err = cli::Cli::try_parse_from(["agent", "serve", "--udp-port", "70000"])
            .expect_err("bad port")
            .to_string();
        assert!(err.contains("not a port"), "{err}");
        let cli = cli::Cli::try_parse_from(["agent", "serve", "--key", "short"]).expect("parses");
        let Some(cli::Command::Serve(s)) = cli.command else {
            panic!("serve expected")
        };
        assert!(
            ServeConfig::from_args(&s)
                .expect_err("short key")
                .to_string()
                .contains("at least 8")
        );
    }

    fn serve(args: &[&str]) -> Result<ServeConfig, String> {
        let mut argv = vec!["agent", "serve"];
        argv.extend_from_slice(args);
        let cli = cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Some(cli::Command::Serve(s)) = cli.command else {
            panic!("serve expected")
        };
        ServeConfig::from_args(&s).map_err(|e| e.to_string())
    }

    #[test]
    fn serve_record_flags_are_validated_naming_the_flag() {
        let c = serve(&[]).expect("defaults");
        assert_eq!(
            c.responders.records.interval,
            crate::respond::tally::DEFAULT_INTERVAL
        );
        assert_eq!(c.responders.records.max_sources, 1024);
        assert_eq!((c.file.is_none(), c.firehose.is_none()), (true, true));
        assert_eq!(c.identity.region, "local");
        let c = serve(&[
            "--serve-interval",
            "2.5",
            "--serve-max-sources",
            "10",
            "--out",
            "/tmp/x",
            "--region",
            "eu-west-1",
        ])
        .expect("valid");
        assert_eq!(c.responders.records.interval, Duration::from_millis(2500));
        assert_eq!(c.responders.records.max_sources, 10);
        assert_eq!(c.file.expect("file sink").dir, PathBuf::from("/tmp/x"));
        assert_eq!(c.identity.region, "eu-west-1");
        for (args, want) in [
            (&["--serve-interval", "0"][..], "--serve-interval"),
            (&["--serve-interval", "0.05"][..], "0.1 to 1 year"),
            (&["--serve-interval", "nan"][..], "--serve-interval"),
            (&["--serve-max-sources", "0"][..], "--serve-max-sources"),
            (&["--serve-max-sources", "65537"][..], "1..=65536"),
            (&["--region", "a/b"][..], "--region"),
        ] {
            let e = serve(args).expect_err(want);
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
