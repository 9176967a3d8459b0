//! Validated `agent run` configuration: the controller-driven agent's command line, next to
//! what runs it ([`super::run`]). It builds on the shared pieces in [`crate::config`] (common
//! flags, identity labels, responders) and the sinks' own configs.

use std::path::{Path, PathBuf};

use crate::cli;
use crate::config::error::{ConfigError, label};
use crate::config::{AgentIdentity, CommonConfig, DEFAULT_STATE_DIR, region, responder_config};
use crate::respond::ResponderConfig;
use crate::sink::file::FileSinkConfig;
use crate::sink::firehose::FirehoseSinkConfig;

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
    /// CloudWatch EMF lines (`--emf`).
    pub emf: Option<crate::sink::emf::EmfConfig>,
    /// ECS task metadata endpoint (`ECS_CONTAINER_METADATA_URI_V4`), if on ECS.
    pub ecs_metadata_uri: Option<String>,
    /// The caps on load jobs (`--load-max-connections`, `--load-max-rate`).
    pub load: crate::load::job::LoadLimits,
    /// Secrets Manager endpoint for load jobs' credentials (`--load-secrets-endpoint`).
    pub load_secrets_endpoint: Option<String>,
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
        let load = load_limits(a.load_max_connections, a.load_max_rate)?;
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
            file: FileSinkConfig::from_args(&a.sinks)?,
            emf: crate::sink::emf::EmfConfig::from_args(&a.sinks)?,
            firehose: if a.no_state_dir
                && a.sinks.firehose.firehose_stream.is_some()
                && a.sinks.firehose.spool_dir.is_none()
            {
                return Err(ConfigError::Conflict {
                    flags: "--no-state-dir with --firehose-stream",
                    reason: "the spool defaults to STATE_DIR/spool: give --spool-dir",
                });
            } else {
                FirehoseSinkConfig::from_args(
                    &a.sinks.firehose,
                    state_dir
                        .as_deref()
                        .unwrap_or_else(|| Path::new(DEFAULT_STATE_DIR)),
                )?
            },
            ecs_metadata_uri: env("ECS_CONTAINER_METADATA_URI_V4").filter(|s| !s.is_empty()),
            load,
            load_secrets_endpoint: match a.load_secrets_endpoint.as_deref().map(str::trim) {
                None | Some("") => None,
                Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                    Some(u.to_string())
                }
                Some(u) => {
                    return Err(ConfigError::Label {
                        flag: "--load-secrets-endpoint",
                        value: u.to_string(),
                        reason: "must be an http:// or https:// URL",
                    });
                }
            },
            common,
        })
    }
}

/// Checks `--load-max-connections` and `--load-max-rate` (the bounds of `agent load`'s
/// `--max-connections` and `--max-rate`).
fn load_limits(
    max_connections: u32,
    max_rate: f64,
) -> Result<crate::load::job::LoadLimits, ConfigError> {
    use crate::load::config::{MAX_CONNECTIONS_LIMIT, MAX_RATE_LIMIT};
    if max_connections == 0 || max_connections > MAX_CONNECTIONS_LIMIT {
        return Err(ConfigError::OutOfRange {
            flag: "--load-max-connections",
            value: max_connections.to_string(),
            range: format!("1 to {MAX_CONNECTIONS_LIMIT}").into(),
        });
    }
    if !(max_rate.is_finite() && max_rate > 0.0 && max_rate <= MAX_RATE_LIMIT) {
        return Err(ConfigError::OutOfRange {
            flag: "--load-max-rate",
            value: max_rate.to_string(),
            range: format!("above 0, up to {MAX_RATE_LIMIT} req/s").into(),
        });
    }
    Ok(crate::load::job::LoadLimits {
        max_connections,
        max_rate,
    })
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

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    const TOKEN: &str = "mlt1.0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.0123456789abcdef0123456789abcdef";

    /// `agent --controller ... --token ... ARGS`, parsed.
    fn cli_with(args: &[&str]) -> Result<cli::Cli, String> {
        let mut argv = vec![
            "agent",
            "--controller",
            "https://127.0.0.1:7400",
            "--token",
            TOKEN,
        ];
        argv.extend_from_slice(args);
        cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())
    }

    fn run(args: &[&str]) -> Result<RunConfig, String> {
        RunConfig::from_args(&cli_with(args)?.run, |_| None).map_err(|e| e.to_string())
    }

    #[test]
    fn state_dir_from_flag_env_or_default_and_none_with_no_state_dir() {
        let parse = |args: &[&str], env_dir: Option<&str>| {
            let cli = cli_with(args)?;
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
    fn load_caps_default_and_are_validated_naming_the_flag() {
        let c = run(&[]).expect("valid");
        assert_eq!(c.load, crate::load::job::LoadLimits::default());
        assert_eq!(c.load.max_connections, 1_000);
        let c = run(&["--load-max-connections", "64", "--load-max-rate", "250.5"]).expect("valid");
        assert_eq!((c.load.max_connections, c.load.max_rate), (64, 250.5));
        for (args, want) in [
            (
                &["--load-max-connections", "0"][..],
                "--load-max-connections",
            ),
            (&["--load-max-connections", "100001"][..], "1 to 100000"),
            (&["--load-max-rate", "0"][..], "--load-max-rate"),
            (&["--load-max-rate", "NaN"][..], "--load-max-rate"),
            (&["--load-max-rate", "2e7"][..], "up to 10000000"),
            (
                &["--load-secrets-endpoint", "moto:5000"][..],
                "--load-secrets-endpoint",
            ),
        ] {
            let e = run(args).expect_err("refused");
            assert!(e.contains(want), "{args:?}: {e}");
        }
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
