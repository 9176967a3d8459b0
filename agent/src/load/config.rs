//! `agent load`'s validated configuration (STYLE §7): [`LoadConfig::from_args`] turns the raw
//! [`LoadArgs`] into a [`LoadSpec`] whose invariants hold, naming the flag in every error.
//!
//! Levels above the per-agent caps are not errors: the caps are what the agent enforces
//! whatever it is asked (a job from a controller will be treated the same), so such a level is
//! capped and the config carries a warning saying so ([`LoadConfig::warnings`]).

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::credentials::Credentials;
use super::engine::LoadSpec;
use super::mix::RequestMix;
use super::plan::{Caps, Model, Schedule, Steps};
use crate::cli::{LoadArgs, LogFormat};
use crate::config::ConfigError;
use crate::config::error::secs;
use crate::target::Target;
use crate::tls::TlsClientOptions;

/// `--max-connections` default.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// `--max-rate` default, req/s.
pub const DEFAULT_MAX_RATE: f64 = 100_000.0;
/// `--timeout` default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Workers when neither `--workers` nor `--rate` is given (wrk's default connections).
pub const DEFAULT_WORKERS: u32 = 10;
/// Run length when neither `--duration` nor steps give one (wrk's default).
pub const DEFAULT_DURATION: Duration = Duration::from_secs(10);
/// Highest `--max-connections` (file descriptors are the real limit).
pub const MAX_CONNECTIONS_LIMIT: u32 = 100_000;
/// Highest `--max-rate`, req/s.
pub const MAX_RATE_LIMIT: f64 = 10_000_000.0;
/// Most steps.
pub const MAX_STEPS: u32 = 10_000;

/// Validated `agent load` configuration.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// What the engine runs.
    pub spec: LoadSpec,
    /// Levels that were capped, as warnings (logged once logging is set up).
    pub warnings: Vec<String>,
    /// Verbosity.
    pub verbose: u8,
    /// Log format.
    pub log_format: LogFormat,
}

impl LoadConfig {
    /// Validates `agent load` arguments; reads the credentials file.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the flag and value (never a credential).
    pub fn from_args(a: &LoadArgs) -> Result<Self, ConfigError> {
        let target = Target::parse(&a.url)?;
        if !matches!(
            target.protocol,
            meshlat_proto::record::Protocol::Http | meshlat_proto::record::Protocol::Https
        ) {
            return Err(ConfigError::Label {
                flag: "URL",
                value: target.raw,
                reason: "load targets are http:// or https:// URLs",
            });
        }
        let out_of_range = |flag, value: String, range: &'static str| ConfigError::OutOfRange {
            flag,
            value,
            range: range.into(),
        };
        if a.max_connections == 0 || a.max_connections > MAX_CONNECTIONS_LIMIT {
            return Err(out_of_range(
                "--max-connections",
                a.max_connections.to_string(),
                "1 to 100000",
            ));
        }
        if !(a.max_rate.is_finite() && a.max_rate > 0.0 && a.max_rate <= MAX_RATE_LIMIT) {
            return Err(out_of_range(
                "--max-rate",
                a.max_rate.to_string(),
                "above 0, up to 10000000 req/s",
            ));
        }
        let caps = Caps {
            max_connections: a.max_connections,
            max_rate: a.max_rate,
        };
        if a.steps == 0 || a.steps > MAX_STEPS {
            return Err(out_of_range("--steps", a.steps.to_string(), "1 to 10000"));
        }
        let step_duration = match a.step_duration {
            Some(v) => secs("--step-duration", v, false)?,
            None if a.steps > 1 => {
                return Err(ConfigError::Conflict {
                    flags: "--steps, --step-duration",
                    reason: "more than one step needs --step-duration SECONDS",
                });
            }
            None => Duration::ZERO,
        };
        let (model, steps) = match a.rate {
            Some(rate) => {
                if !(rate.is_finite() && rate >= 0.0) {
                    return Err(out_of_range("--rate", rate.to_string(), "0 or more req/s"));
                }
                let step = a.step_rate.unwrap_or(0.0);
                if !step.is_finite() {
                    return Err(out_of_range(
                        "--step-rate",
                        step.to_string(),
                        "a finite number of req/s",
                    ));
                }
                (
                    Model::Open,
                    Steps {
                        start: rate,
                        step,
                        steps: a.steps,
                        step_duration,
                    },
                )
            }
            None => {
                let workers = a.workers.unwrap_or(DEFAULT_WORKERS);
                (
                    Model::Closed,
                    Steps {
                        start: f64::from(workers),
                        step: a.step_workers.unwrap_or(0) as f64,
                        steps: a.steps,
                        step_duration,
                    },
                )
            }
        };
        let (start_flag, step_flag) = match model {
            Model::Closed => ("--workers", "--step-workers"),
            Model::Open => ("--rate", "--step-rate"),
        };
        let last = steps.level_of(steps.steps - 1);
        if last < 0.0 {
            return Err(ConfigError::OutOfRange {
                flag: step_flag,
                value: steps.step.to_string(),
                range: format!(
                    "the last step's level ({last}) must not be below 0: {start_flag} {} + {} steps of {}",
                    steps.start,
                    steps.steps - 1,
                    steps.step
                )
                .into(),
            });
        }
        let highest = steps.start.max(last);
        if highest <= 0.0 {
            return Err(ConfigError::OutOfRange {
                flag: start_flag,
                value: steps.start.to_string(),
                range: format!(
                    "above 0 at some step: with {start_flag} {} and {step_flag} {} nothing would \
                     be sent",
                    steps.start, steps.step
                )
                .into(),
            });
        }
        let schedule = Schedule::new(model, steps, caps);
        let mut warnings = Vec::new();
        if schedule.exceeds_caps(highest) {
            let cap_flag = match model {
                Model::Closed => "--max-connections",
                Model::Open => "--max-rate",
            };
            warnings.push(format!(
                "{start_flag}/{step_flag} reach {highest}, above {cap_flag} {}: capped",
                schedule.cap(highest)
            ));
        }
        let duration = match a.duration {
            Some(v) => secs("--duration", v, false)?,
            None if steps.steps > 1 => step_duration.saturating_mul(steps.steps),
            None => DEFAULT_DURATION,
        };
        let think_time = secs("--think-time", a.think_time, true)?;
        let timeout = secs("--timeout", a.timeout, false)?;
        let headers = parse_headers(&a.headers)?;
        let mix = match &a.scenario {
            Some(path) => scenario_mix(path, &a.knobs)?,
            None => RequestMix::target_get(),
        };
        let credentials = match &a.credentials {
            Some(path) => Credentials::from_file(path).map_err(|e| ConfigError::File {
                flag: "--credentials",
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
            None => Credentials::default(),
        };
        if let Some(ca) = &a.ca {
            crate::tls::load_certs(ca).map_err(|e| ConfigError::File {
                flag: "--ca",
                path: ca.display().to_string(),
                reason: e.to_string(),
            })?;
        }
        Ok(LoadConfig {
            spec: LoadSpec {
                target,
                schedule,
                duration,
                think_time,
                timeout,
                headers,
                mix,
                credentials,
                credentials_header: None,
                tls: TlsClientOptions {
                    skip_verify: a.tls_skip_verify,
                    ca_file: a.ca.clone(),
                },
            },
            warnings,
            verbose: a.verbose,
            log_format: a.log_format,
        })
    }
}

/// The mix of the scenario file at `path` with `--knob NAME=VALUE` overrides, resolved as the
/// controller resolves a load job's scenario ([`meshlat_proto::scenario::Scenario::fill`]).
fn scenario_mix(path: &std::path::Path, knobs: &[String]) -> Result<RequestMix, ConfigError> {
    let file_err = |reason: String| ConfigError::File {
        flag: "--scenario",
        path: path.display().to_string(),
        reason,
    };
    let scenario =
        meshlat_proto::scenario::parse_file(path).map_err(|e| file_err(e.to_string()))?;
    let mut load = meshlat_proto::pb::LoadSpec::default();
    for k in knobs {
        let (name, value) = k.split_once('=').ok_or_else(|| ConfigError::Invalid {
            flag: "--knob",
            value: k.clone(),
            reason: "expected NAME=VALUE".into(),
        })?;
        load.knobs.insert(name.to_string(), value.to_string());
    }
    scenario.fill(&mut load).map_err(|e| {
        let name = e.field.strip_prefix("load.knobs.").unwrap_or("");
        ConfigError::Invalid {
            flag: "--knob",
            value: name.to_string(),
            reason: e.message,
        }
    })?;
    RequestMix::new(&load.requests, &load.knobs).map_err(|e| file_err(e.to_string()))
}

/// `--header 'Name: value'` flags as a header map (values marked sensitive: they may be
/// tokens). Errors name the header, never its value.
fn parse_headers(raw: &[String]) -> Result<HeaderMap, ConfigError> {
    let mut map = HeaderMap::new();
    for h in raw {
        let bad = |value: &str, reason| ConfigError::Label {
            flag: "--header",
            value: value.to_string(),
            reason,
        };
        let (name, value) = h
            .split_once(':')
            .ok_or_else(|| bad("", "expected 'Name: value'"))?;
        let name = name.trim();
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| bad(name, "not a valid header name"))?;
        let mut value = HeaderValue::from_str(value.trim())
            .map_err(|_| bad(name.as_str(), "the value holds characters a header cannot"))?;
        value.set_sensitive(true);
        map.append(name, value);
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    fn parse(args: &[&str]) -> Result<LoadConfig, String> {
        let cli = Cli::try_parse_from(
            std::iter::once("agent")
                .chain(["load"])
                .chain(args.iter().copied()),
        )
        .map_err(|e| e.to_string())?;
        let Some(Command::Load(a)) = cli.command else {
            return Err("not load".into());
        };
        LoadConfig::from_args(&a).map_err(|e| e.to_string())
    }

    #[test]
    fn closed_staircase_and_defaults() {
        let c = parse(&[
            "--workers",
            "10",
            "--step-workers",
            "10",
            "--steps",
            "5",
            "--step-duration",
            "10",
            "http://127.0.0.1:9/x",
        ])
        .unwrap();
        assert_eq!(c.spec.schedule.model(), Model::Closed);
        assert_eq!(c.spec.duration, Duration::from_secs(50));
        assert_eq!(c.spec.schedule.at(Duration::from_secs(45)).level, 50.0);
        assert!(c.warnings.is_empty());
        let d = parse(&["http://127.0.0.1:9/"]).unwrap();
        assert_eq!(d.spec.schedule.at(Duration::ZERO).level, 10.0);
        assert_eq!(d.spec.duration, DEFAULT_DURATION);
    }

    #[test]
    fn open_model_and_caps_become_warnings() {
        let c = parse(&[
            "--rate",
            "500",
            "--step-rate",
            "500",
            "--steps",
            "3",
            "--step-duration",
            "2",
            "--max-rate",
            "1200",
            "--duration",
            "20",
            "http://127.0.0.1:9/",
        ])
        .unwrap();
        assert_eq!(c.spec.schedule.model(), Model::Open);
        assert_eq!(c.spec.duration, Duration::from_secs(20));
        assert_eq!(c.spec.schedule.at(Duration::from_secs(5)).level, 1200.0);
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0].contains("--max-rate 1200"),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn bad_flags_name_themselves() {
        for (args, want) in [
            (&["udp://127.0.0.1:9"][..], "http:// or https://"),
            (&["--steps", "3", "http://h/"][..], "--step-duration"),
            (&["--steps", "0", "http://h/"][..], "--steps"),
            (
                &["--max-connections", "0", "http://h/"][..],
                "--max-connections",
            ),
            (&["--rate=-1", "http://h/"][..], "--rate"),
            (
                &["--rate", "10", "--workers", "3", "http://h/"][..],
                "cannot be used with",
            ),
            (
                &["--rate", "10", "--think-time", "1", "http://h/"][..],
                "cannot be used with",
            ),
            (
                &[
                    "--workers",
                    "2",
                    "--step-workers",
                    "-1",
                    "--steps",
                    "4",
                    "--step-duration",
                    "1",
                    "http://h/",
                ][..],
                "--step-workers",
            ),
            (&["--timeout", "0", "http://h/"][..], "--timeout"),
            (&["--header", "novalue", "http://h/"][..], "--header"),
            (
                &["--header", "Bad Name: x", "http://h/"][..],
                "not a valid header name",
            ),
            (
                &["--credentials", "/nonexistent/keys", "http://h/"][..],
                "--credentials /nonexistent/keys",
            ),
            (&["--duration", "nan", "http://h/"][..], "--duration"),
            (
                &["--workers", "0", "http://h/"][..],
                "nothing would be sent",
            ),
            (&["--rate", "0", "http://h/"][..], "nothing would be sent"),
        ] {
            let e = parse(args).expect_err(&format!("{args:?} should fail"));
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }

    #[test]
    fn header_errors_do_not_echo_values() {
        let e = parse(&["--header", "Authorization: Bearer s3cret\u{1}", "http://h/"]).unwrap_err();
        assert!(e.contains("authorization") && !e.contains("s3cret"), "{e}");
        let c = parse(&["-H", "X-A: 1", "-H", "x-a: 2", "http://h/"]).unwrap();
        assert_eq!(c.spec.headers.get_all("x-a").iter().count(), 2);
    }
}
