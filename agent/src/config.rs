//! Validated configuration ("parse, don't validate", STYLE §7).
//!
//! The raw command line ([`crate::cli`]) is turned into these types by `TryFrom`; nothing else
//! sees the raw values. Every error names the flag and the value.

use std::path::{Path, PathBuf};
use std::time::Duration;

use meshlat_proto::job::{MAX_PACKETS, MAX_PAYLOAD_BYTES};

use crate::cli::{self, Format, LogFormat};
use crate::probe::{Key, ProbeSpec};
use crate::respond::ResponderConfig;
use crate::target::{Target, TargetError};
use crate::tls::{Identity, TlsClientOptions};

/// Default per-sample timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// A configuration error; the message names the flag (and environment variable) and value.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No targets on the command line or in `PERFTEST_URL`.
    #[error(
        "no targets: give TARGET arguments or set PERFTEST_URL (e.g. agent probe https://example.com/)"
    )]
    NoTargets,
    /// A target did not parse.
    #[error(transparent)]
    Target(#[from] TargetError),
    /// A numeric flag out of range.
    #[error("{flag}: {value} is out of range ({range})")]
    OutOfRange {
        /// Flag name.
        flag: &'static str,
        /// Given value.
        value: String,
        /// Allowed range.
        range: &'static str,
    },
    /// --timeout above -d.
    #[error(
        "--timeout ({timeout:?}) must not exceed -d ({delay:?}): samples of one target would overlap"
    )]
    TimeoutAboveDelay {
        /// Timeout.
        timeout: Duration,
        /// Delay.
        delay: Duration,
    },
    /// Two flags that do not go together.
    #[error("{flags}: {reason}")]
    Conflict {
        /// The flags.
        flags: &'static str,
        /// Why, and what to do.
        reason: &'static str,
    },
    /// A file given by a flag is unusable.
    #[error("{flag} {path}: {reason}")]
    File {
        /// Flag name.
        flag: &'static str,
        /// Path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// A bad `--advertise-endpoint`.
    #[error("--advertise-endpoint {value:?}: {reason}")]
    AdvertiseEndpoint {
        /// Given value.
        value: String,
        /// What is wrong.
        reason: String,
    },
    /// A label contains characters that would break the record layout.
    #[error("{flag} {value:?}: {reason}")]
    Label {
        /// Flag name.
        flag: &'static str,
        /// Value.
        value: String,
        /// What is wrong.
        reason: &'static str,
    },
}

/// Logging, stats and listener settings.
#[derive(Clone, Debug)]
pub struct CommonConfig {
    /// `-s PORT`.
    pub stats_port: Option<u16>,
    /// `--stats-listen` (`None`: the command's `--listen`, else 0.0.0.0).
    pub stats_listen: Option<std::net::IpAddr>,
    /// Caps and deadlines of every listener (`--max-conns`, ...).
    pub limits: meshlat_guard::ConnLimits,
    /// Verbosity (0 info, 1 debug, 2+ trace).
    pub verbose: u8,
    /// Log format.
    pub log_format: LogFormat,
}

impl CommonConfig {
    /// Validates the common flags.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the flag.
    pub fn from_args(a: &cli::CommonArgs) -> Result<Self, ConfigError> {
        let timeout = |flag, v: f64| {
            if !v.is_finite() || !(0.1..=3600.0).contains(&v) {
                return Err(ConfigError::OutOfRange {
                    flag,
                    value: v.to_string(),
                    range: "0.1 to 3600 seconds",
                });
            }
            Ok(Duration::from_secs_f64(v))
        };
        let count = |flag, v: usize| {
            if v == 0 {
                return Err(ConfigError::OutOfRange {
                    flag,
                    value: "0".into(),
                    range: ">= 1",
                });
            }
            Ok(v)
        };
        Ok(CommonConfig {
            stats_port: a.stats_port,
            stats_listen: a.stats_listen,
            limits: meshlat_guard::ConnLimits {
                max_conns: count("--max-conns", a.max_conns)?,
                max_conns_per_ip: count("--max-conns-per-ip", a.max_conns_per_ip)?,
                handshake_timeout: timeout("--handshake-timeout", a.handshake_timeout)?,
                header_timeout: timeout("--header-timeout", a.header_timeout)?,
                idle_timeout: timeout("--idle-timeout", a.idle_timeout)?,
            },
            verbose: a.verbose,
            log_format: a.log_format,
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

/// Where the file sink writes and how it rotates.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSinkConfig {
    /// Root directory (records/ goes under it).
    pub dir: PathBuf,
    /// Rotate at this size.
    pub max_bytes: u64,
    /// Rotate at this age.
    pub max_age: Duration,
    /// Flush interval.
    pub flush_interval: Duration,
}

/// Default time the Firehose sink keeps delivering at shutdown before spooling the rest; below
/// the agent's shutdown grace ([`crate::app::SHUTDOWN_GRACE`]).
pub const FIREHOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(7);

/// The default spool directory, under the agent's state directory (`--state-dir`; `agent
/// probe` uses [`DEFAULT_STATE_DIR`]).
pub const SPOOL_SUBDIR: &str = "spool";
/// `--state-dir`'s default (also the base of `agent probe`'s default spool).
pub const DEFAULT_STATE_DIR: &str = "./meshlat-agent-state";

/// Validated Firehose sink settings (from `--firehose-*` and `--spool-*`).
#[derive(Clone, Debug, PartialEq)]
pub struct FirehoseSinkConfig {
    /// Delivery stream name.
    pub stream: String,
    /// Region; `None`: the standard AWS chain.
    pub region: Option<String>,
    /// Endpoint override (an `http(s)://` URL).
    pub endpoint: Option<String>,
    /// Spool directory of this stream (`<--spool-dir>/<stream>`), shared by every agent using
    /// that `--spool-dir`: the sink spools in a subdirectory it claims there
    /// ([`crate::sink::firehose::spool::claim`]).
    pub spool_dir: PathBuf,
    /// Spool bound in bytes.
    pub spool_max_bytes: u64,
    /// Memory bound in bytes for batches waiting to be sent.
    pub memory_max_bytes: u64,
    /// A request is sealed when its oldest line is this old.
    pub batch_age: Duration,
    /// Packing limits, within the Firehose maxima.
    pub limits: crate::sink::firehose::request::PackLimits,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// How long to keep delivering at shutdown before spooling the rest.
    pub drain_timeout: Duration,
    /// Write every batch to the spool before sending it (`--spool-always`).
    pub spool_always: bool,
}

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
    /// Identity labels.
    pub identity: AgentIdentity,
    /// Logging/stats.
    pub common: CommonConfig,
}

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
    /// Logging/stats.
    pub common: CommonConfig,
}

fn secs(flag: &'static str, v: f64, allow_zero: bool) -> Result<Duration, ConfigError> {
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) || v > 86_400.0 * 365.0 {
        return Err(ConfigError::OutOfRange {
            flag,
            value: v.to_string(),
            range: if allow_zero {
                "0 to 1 year, in seconds"
            } else {
                "above 0, up to 1 year, in seconds"
            },
        });
    }
    Ok(Duration::from_secs_f64(v))
}

fn label(flag: &'static str, v: Option<String>) -> Result<Option<String>, ConfigError> {
    match v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) {
        Some(s) if s.chars().any(|c| c.is_control()) => Err(ConfigError::Label {
            flag,
            value: s,
            reason: "must not contain control characters",
        }),
        other => Ok(other),
    }
}

fn region(v: Option<String>) -> Result<String, ConfigError> {
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

fn file_sink(a: &cli::SinkArgs) -> Result<Option<FileSinkConfig>, ConfigError> {
    let Some(dir) = &a.out else { return Ok(None) };
    if a.file_max_bytes < 1024 {
        return Err(ConfigError::OutOfRange {
            flag: "--file-max-bytes",
            value: a.file_max_bytes.to_string(),
            range: ">= 1024",
        });
    }
    Ok(Some(FileSinkConfig {
        dir: dir.clone(),
        max_bytes: a.file_max_bytes,
        max_age: secs("--file-max-age", a.file_max_age, false)?,
        flush_interval: secs("--flush-interval", a.flush_interval, false)?,
    }))
}

/// Validates the Firehose flags (shared by `probe` and `run`).
///
/// # Errors
///
/// [`ConfigError`] naming the flag: a bad stream name, endpoint URL, limits above the Firehose
/// maxima, or bounds too small to hold one request.
pub fn firehose_sink(
    a: &cli::FirehoseArgs,
    state_dir: &Path,
) -> Result<Option<FirehoseSinkConfig>, ConfigError> {
    use crate::sink::firehose::request::{
        MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_BYTES, PackLimits,
    };
    let Some(stream) = a.firehose_stream.as_deref().map(str::trim) else {
        return Ok(None);
    };
    // Firehose stream names: 1-64 of [a-zA-Z0-9_.-]. Also a path component of the spool.
    if stream.is_empty()
        || stream.len() > 64
        || !stream
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        || stream.starts_with('.')
    {
        return Err(ConfigError::Label {
            flag: "--firehose-stream",
            value: stream.into(),
            reason: "a Firehose stream name is 1-64 of letters, digits, '_', '.', '-'",
        });
    }
    let region = label("--firehose-region", a.firehose_region.clone())?;
    let endpoint = match a.firehose_endpoint.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(e) => {
            let ok = e
                .parse::<http::Uri>()
                .ok()
                .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some());
            if ok.is_none() {
                return Err(ConfigError::Label {
                    flag: "--firehose-endpoint",
                    value: e.into(),
                    reason: "must be an http:// or https:// URL with a host",
                });
            }
            Some(e.to_string())
        }
    };
    let range = |flag, v: usize, lo: usize, hi: usize, text| {
        if v < lo || v > hi {
            Err(ConfigError::OutOfRange {
                flag,
                value: v.to_string(),
                range: text,
            })
        } else {
            Ok(v)
        }
    };
    let limits = PackLimits {
        max_record_bytes: range(
            "--firehose-record-max-bytes",
            a.firehose_record_max_bytes,
            1024,
            MAX_RECORD_BYTES,
            "1024..=1024000 (the Firehose record limit)",
        )?,
        max_batch_records: range(
            "--firehose-batch-max-records",
            a.firehose_batch_max_records,
            1,
            MAX_BATCH_RECORDS,
            "1..=500 (the Firehose PutRecordBatch limit)",
        )?,
        max_batch_bytes: range(
            "--firehose-batch-max-bytes",
            a.firehose_batch_max_bytes,
            a.firehose_record_max_bytes.min(MAX_RECORD_BYTES),
            MAX_BATCH_BYTES,
            "--firehose-record-max-bytes..=4194304 (the Firehose PutRecordBatch limit)",
        )?,
    };
    let max_in_flight = range(
        "--firehose-max-in-flight",
        a.firehose_max_in_flight,
        1,
        64,
        "1..=64",
    )?;
    let one_request = MAX_BATCH_BYTES as u64;
    for (flag, v) in [
        ("--firehose-memory-max-bytes", a.firehose_memory_max_bytes),
        ("--spool-max-bytes", a.spool_max_bytes),
    ] {
        if v < one_request {
            return Err(ConfigError::OutOfRange {
                flag,
                value: v.to_string(),
                range: ">= 4194304 (one full request)",
            });
        }
    }
    let batch_age = secs("--firehose-batch-age", a.firehose_batch_age, false)?;
    if batch_age > Duration::from_secs(900) {
        return Err(ConfigError::OutOfRange {
            flag: "--firehose-batch-age",
            value: a.firehose_batch_age.to_string(),
            range: "above 0, up to 900 seconds",
        });
    }
    let base = a
        .spool_dir
        .clone()
        .unwrap_or_else(|| state_dir.join(SPOOL_SUBDIR));
    Ok(Some(FirehoseSinkConfig {
        stream: stream.into(),
        region,
        endpoint,
        spool_dir: base.join(stream),
        spool_max_bytes: a.spool_max_bytes,
        memory_max_bytes: a.firehose_memory_max_bytes,
        batch_age,
        limits,
        max_in_flight,
        drain_timeout: FIREHOSE_DRAIN_TIMEOUT,
        spool_always: a.spool_always,
    }))
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
                range: "1..=10000",
            });
        }
        if !a.interval_ms.is_finite() || a.interval_ms < 0.0 || a.interval_ms > 60_000.0 {
            return Err(ConfigError::OutOfRange {
                flag: "--interval-ms",
                value: a.interval_ms.to_string(),
                range: "0..=60000",
            });
        }
        if a.payload_bytes > MAX_PAYLOAD_BYTES {
            return Err(ConfigError::OutOfRange {
                flag: "--payload-bytes",
                value: a.payload_bytes.to_string(),
                range: "0..=1452",
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
        let location = match label("--location", a.identity.location.clone())? {
            Some(l) => Some(l),
            None => label("REP_LOCATION", env("REP_LOCATION"))?,
        };
        let spec = ProbeSpec {
            protocol: targets[0].protocol,
            timeout,
            packets: a.packets,
            packet_interval: Duration::from_secs_f64(a.interval_ms / 1000.0),
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
            file: file_sink(&a.sinks)?,
            firehose: firehose_sink(&a.sinks.firehose, Path::new(DEFAULT_STATE_DIR))?,
            identity: AgentIdentity {
                agent_id: None,
                region: region(a.identity.region.clone())?,
                az: label("--az", a.identity.az.clone())?,
                location,
            },
            common: CommonConfig::from_args(&a.common)?,
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
        let mut common = CommonConfig::from_args(&a.common)?;
        common.stats_listen.get_or_insert(a.responders.listen);
        Ok(ServeConfig {
            responders: responder_config(&a.responders, common.limits)?,
            identity: AgentIdentity {
                agent_id: None,
                region: region(a.identity.region.clone())?,
                az: label("--az", a.identity.az.clone())?,
                location: label("--location", a.identity.location.clone())?,
            },
            file: file_sink(&a.sinks)?,
            firehose: firehose_sink(&a.sinks.firehose, Path::new(DEFAULT_STATE_DIR))?,
            common,
        })
    }
}

/// Validated `agent run` configuration (the controller-driven agent).
#[derive(Clone, Debug)]
pub struct RunConfig {
    /// Controller host.
    pub controller_host: String,
    /// Controller port.
    pub controller_port: u16,
    /// TLS to the controller (false for `http://` controllers started with `--plaintext`).
    pub controller_tls: bool,
    /// The join token.
    pub token: meshlat_proto::token::JoinToken,
    /// Advertised host (`None`: detect).
    pub advertise: Option<String>,
    /// Per-protocol advertised addresses replacing the host's (`--advertise-endpoint`).
    pub advertise_endpoints: Vec<crate::control::advertise::AdvertiseEndpoint>,
    /// The state directory (`None`: `--no-state-dir`, nothing kept on disk).
    pub state_dir: Option<PathBuf>,
    /// Identity labels (the id comes from the controller); region/AZ may still be filled from ECS.
    pub identity: AgentIdentity,
    /// Responders.
    pub responders: ResponderConfig,
    /// File sink.
    pub file: Option<FileSinkConfig>,
    /// Firehose sink.
    pub firehose: Option<FirehoseSinkConfig>,
    /// ECS task metadata endpoint (`ECS_CONTAINER_METADATA_URI_V4`), if on ECS.
    pub ecs_metadata_uri: Option<String>,
    /// Logging/stats.
    pub common: CommonConfig,
}

impl RunConfig {
    /// Validates `agent run` arguments; `env` looks up `AWS_REGION` and
    /// `ECS_CONTAINER_METADATA_URI_V4`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the flag and value.
    pub fn from_args(
        a: &cli::RunArgs,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let url = a.controller.as_deref().map(str::trim).unwrap_or("");
        let bad_url = |reason| ConfigError::Label {
            flag: "--controller",
            value: url.to_string(),
            reason,
        };
        if url.is_empty() {
            return Err(bad_url(
                "required: the controller URL, e.g. https://ctl:7400",
            ));
        }
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad_url(
                "must start with https:// (or http:// for --plaintext controllers)",
            ));
        };
        let authority = rest.split('/').next().unwrap_or("");
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => match p.parse::<u16>() {
                Ok(p) => (h, p),
                Err(_) => return Err(bad_url("the port is not a number")),
            },
            _ => (authority, 7400),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() {
            return Err(bad_url("no host"));
        }
        let token = a.token.as_deref().ok_or(ConfigError::Label {
            flag: "--token",
            value: String::new(),
            reason: "required: the join token printed by the controller",
        })?;
        let token =
            meshlat_proto::token::JoinToken::parse(token).map_err(|e| ConfigError::Label {
                flag: "--token",
                value: "<redacted>".into(),
                reason: match e {
                    meshlat_proto::token::TokenError::CaHash => "the CA hash must be 64 hex digits",
                    meshlat_proto::token::TokenError::Secret => {
                        "the secret must be at least 32 hex digits"
                    }
                    _ => "expected mlt1.<ca-sha256>.<secret>",
                },
            })?;
        let region_flag = a.identity.region.clone().or_else(|| env("AWS_REGION"));
        // --state-dir, else MESHLAT_STATE_DIR, else the default; none with --no-state-dir.
        let state_dir = (!a.no_state_dir).then(|| {
            a.state_dir
                .clone()
                .or_else(|| {
                    env("MESHLAT_STATE_DIR")
                        .filter(|d| !d.is_empty())
                        .map(PathBuf::from)
                })
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR))
        });
        let mut common = CommonConfig::from_args(&a.common)?;
        common.stats_listen.get_or_insert(a.responders.listen);
        let responders = responder_config(&a.responders, common.limits)?;
        let advertise_endpoints = advertise_endpoints(&a.advertise_endpoints, &responders)?;
        Ok(RunConfig {
            controller_host: host.to_string(),
            controller_port: port,
            controller_tls: tls,
            token,
            advertise: label("--advertise", a.advertise.clone())?,
            advertise_endpoints,
            state_dir: state_dir.clone(),
            identity: AgentIdentity {
                agent_id: None,
                region: region(region_flag)?,
                az: label("--az", a.identity.az.clone())?,
                location: label("--location", a.identity.location.clone())?,
            },
            responders,
            file: file_sink(&a.sinks)?,
            firehose: if a.no_state_dir
                && a.sinks.firehose.firehose_stream.is_some()
                && a.sinks.firehose.spool_dir.is_none()
            {
                return Err(ConfigError::Conflict {
                    flags: "--no-state-dir with --firehose-stream",
                    reason: "the spool defaults to STATE_DIR/spool: give --spool-dir",
                });
            } else {
                firehose_sink(
                    &a.sinks.firehose,
                    state_dir
                        .as_deref()
                        .unwrap_or_else(|| Path::new(DEFAULT_STATE_DIR)),
                )?
            },
            ecs_metadata_uri: env("ECS_CONTAINER_METADATA_URI_V4").filter(|s| !s.is_empty()),
            common,
        })
    }
}

/// Parses and checks `--advertise-endpoint` values against the responders that will run.
fn advertise_endpoints(
    values: &[String],
    r: &ResponderConfig,
) -> Result<Vec<crate::control::advertise::AdvertiseEndpoint>, ConfigError> {
    use crate::control::advertise::{AdvertiseEndpoint, validate};
    use meshlat_proto::pb::Protocol;
    let list = values
        .iter()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            v.parse::<AdvertiseEndpoint>()
                .map_err(|reason| ConfigError::AdvertiseEndpoint {
                    value: v.trim().to_string(),
                    reason,
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    validate(&list, |p| match p {
        Protocol::Udp => r.udp_port.is_some(),
        Protocol::Tcp => r.tcp_port.is_some(),
        Protocol::Quic => r.quic_port.is_some(),
        Protocol::Http => r.http_port.is_some(),
        Protocol::Https => r.https_port.is_some(),
        Protocol::Unspecified => false,
    })
    .map_err(|(value, reason)| ConfigError::AdvertiseEndpoint { value, reason })?;
    Ok(list)
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
            range: "1..=65536",
        });
    }
    let serve_interval = secs("--serve-interval", r.serve_interval, false)?;
    if serve_interval < Duration::from_millis(100) {
        return Err(ConfigError::OutOfRange {
            flag: "--serve-interval",
            value: r.serve_interval.to_string(),
            range: "0.1 to 1 year, in seconds",
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
            (&["--packets", "0", "udp://h:1"][..], "--packets: 0"),
            (
                &["--payload-bytes", "9000", "udp://h:1"][..],
                "--payload-bytes: 9000",
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
    fn firehose_flags_validate_against_firehose_limits() {
        let c = probe(
            &[
                "--firehose-stream",
                "meshlat-eu",
                "--firehose-endpoint",
                "http://127.0.0.1:5000",
                "--spool-dir",
                "/var/spool/m",
                "udp://h:1",
            ],
            &[],
        )
        .expect("valid");
        let f = c.firehose.expect("enabled by --firehose-stream");
        assert_eq!(f.spool_dir, PathBuf::from("/var/spool/m/meshlat-eu"));
        assert_eq!(
            f.limits,
            crate::sink::firehose::request::PackLimits::default()
        );
        assert_eq!(f.batch_age, Duration::from_secs(2));
        assert!(
            probe(&["udp://h:1"], &[])
                .expect("valid")
                .firehose
                .is_none()
        );
        for (args, want) in [
            (
                &["--firehose-stream", "a/b"][..],
                "--firehose-stream \"a/b\"",
            ),
            (
                &["--firehose-stream", "s", "--firehose-endpoint", "ftp://x"][..],
                "--firehose-endpoint \"ftp://x\"",
            ),
            (
                &[
                    "--firehose-stream",
                    "s",
                    "--firehose-batch-max-records",
                    "501",
                ][..],
                "--firehose-batch-max-records: 501 is out of range",
            ),
            (
                &[
                    "--firehose-stream",
                    "s",
                    "--firehose-record-max-bytes",
                    "1024001",
                ][..],
                "--firehose-record-max-bytes: 1024001",
            ),
            (
                &[
                    "--firehose-stream",
                    "s",
                    "--firehose-batch-max-bytes",
                    "5000000",
                ][..],
                "--firehose-batch-max-bytes: 5000000",
            ),
            (
                &["--firehose-stream", "s", "--spool-max-bytes", "1000"][..],
                "--spool-max-bytes: 1000",
            ),
            (
                &["--firehose-stream", "s", "--firehose-batch-age", "0"][..],
                "--firehose-batch-age: 0",
            ),
        ] {
            let mut argv = args.to_vec();
            argv.push("udp://h:1");
            let err = probe(&argv, &[]).expect_err(want);
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

    const TOKEN: &str = "mlt1.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef";

    fn run(args: &[&str]) -> Result<RunConfig, String> {
        let mut argv = vec![
            "agent",
            "--controller",
            "https://127.0.0.1:7400",
            "--token",
            TOKEN,
        ];
        argv.extend_from_slice(args);
        let cli = cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        RunConfig::from_args(&cli.run, |_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn state_dir_from_flag_env_or_default_and_none_with_no_state_dir() {
        let parse = |args: &[&str], env_dir: Option<&str>| {
            let mut argv = vec![
                "agent",
                "--controller",
                "https://127.0.0.1:7400",
                "--token",
                TOKEN,
            ];
            argv.extend_from_slice(args);
            let cli = cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
            let env_dir = env_dir.map(String::from);
            RunConfig::from_args(&cli.run, |k| {
                (k == "MESHLAT_STATE_DIR")
                    .then(|| env_dir.clone())
                    .flatten()
            })
            .map(|c| c.state_dir)
            .map_err(|e| e.to_string())
        };
        let p = |s: &str| Some(PathBuf::from(s));
        assert_eq!(parse(&["--state-dir", "/s"], Some("/e")), Ok(p("/s")));
        assert_eq!(parse(&[], Some("/e")), Ok(p("/e")));
        assert_eq!(parse(&[], None), Ok(p(DEFAULT_STATE_DIR)));
        // The image sets MESHLAT_STATE_DIR; --no-state-dir wins over it.
        assert_eq!(parse(&["--no-state-dir"], Some("/e")), Ok(None));
        // The ECS task definitions' form: a spool directory, no state directory.
        assert_eq!(
            parse(
                &[
                    "--no-state-dir",
                    "--firehose-stream",
                    "s",
                    "--spool-dir",
                    "/var/lib/meshlat/spool",
                ],
                Some("/e")
            ),
            Ok(None)
        );
        // Both on the command line: a usage error naming them.
        let err = parse(&["--state-dir", "/s", "--no-state-dir"], None).expect_err("conflict");
        assert!(
            err.contains("--no-state-dir") && err.contains("--state-dir"),
            "{err}"
        );
    }

    #[test]
    fn advertise_endpoint_flags_are_parsed_and_validated() {
        let c = run(&[
            "--advertise-endpoint",
            "udp=127.9.0.1:27710",
            "--advertise-endpoint",
            "https=lb.example.com:443,tcp=[::1]:27711",
        ])
        .expect("valid");
        let got: Vec<(meshlat_proto::pb::Protocol, &str)> = c
            .advertise_endpoints
            .iter()
            .map(|e| (e.protocol, e.address.as_str()))
            .collect();
        use meshlat_proto::pb::Protocol;
        assert_eq!(
            got,
            vec![
                (Protocol::Udp, "127.9.0.1:27710"),
                (Protocol::Https, "lb.example.com:443"),
                (Protocol::Tcp, "[::1]:27711"),
            ]
        );
        assert!(run(&[]).expect("valid").advertise_endpoints.is_empty());
        for (args, want) in [
            (
                &["--advertise-endpoint", "udp:1.2.3.4:5"][..],
                "--advertise-endpoint \"udp:1.2.3.4:5\": expected PROTO=HOST:PORT",
            ),
            (
                &["--advertise-endpoint", "sctp=1.2.3.4:5"][..],
                "unknown protocol \"sctp\"",
            ),
            (
                &["--advertise-endpoint", "udp=1.2.3.4:5,udp=1.2.3.4:6"][..],
                "udp is given more than once",
            ),
            (
                &[
                    "--quic-port",
                    "off",
                    "--advertise-endpoint",
                    "quic=1.2.3.4:5",
                ][..],
                "the quic responder is off",
            ),
        ] {
            let e = run(args).expect_err(want);
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
