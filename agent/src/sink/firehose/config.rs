//! Validated Firehose sink settings and the validation of the `--firehose-*` and `--spool-*`
//! flags (as Vector's `aws_kinesis/firehose/config.rs` sits next to its sink). The limits are
//! [`request`](super::request)'s constants, and the error messages' ranges are built from them.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::request::{MAX_BATCH_BYTES, MAX_BATCH_RECORDS, MAX_RECORD_BYTES, PackLimits};
use crate::cli;
use crate::config::error::{ConfigError, in_range, label, secs};

/// Default time the Firehose sink keeps delivering at shutdown before spooling the rest; below
/// the agent's shutdown grace ([`crate::app::SHUTDOWN_GRACE`]).
pub const FIREHOSE_DRAIN_TIMEOUT: Duration = Duration::from_secs(7);

/// The default spool directory, under the agent's state directory (`--state-dir`; `agent
/// probe` uses [`crate::config::DEFAULT_STATE_DIR`]).
pub const SPOOL_SUBDIR: &str = "spool";

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
    pub limits: PackLimits,
    /// Requests in flight at most.
    pub max_in_flight: usize,
    /// How long to keep delivering at shutdown before spooling the rest.
    pub drain_timeout: Duration,
    /// Write every batch to the spool before sending it (`--spool-always`).
    pub spool_always: bool,
}

/// The smallest `--firehose-record-max-bytes`.
pub const MIN_RECORD_BYTES: usize = 1024;
/// The largest `--firehose-max-in-flight`.
pub const MAX_IN_FLIGHT: usize = 64;
/// The largest `--firehose-batch-age`, in seconds.
pub const MAX_BATCH_AGE_SECS: u64 = 900;
/// The longest Firehose delivery stream name.
const MAX_STREAM_NAME: usize = 64;

impl FirehoseSinkConfig {
    /// Validates the Firehose flags (shared by `probe`, `serve` and `run`); `None` without
    /// `--firehose-stream`. The spool goes under `state_dir` unless `--spool-dir` is given.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the flag: a bad stream name, endpoint URL, limits above the
    /// Firehose maxima, or bounds too small to hold one request.
    pub fn from_args(a: &cli::FirehoseArgs, state_dir: &Path) -> Result<Option<Self>, ConfigError> {
        let Some(stream) = a.firehose_stream.as_deref().map(str::trim) else {
            return Ok(None);
        };
        let stream = stream_name(stream)?;
        let region = label("--firehose-region", a.firehose_region.clone())?;
        let endpoint = endpoint(a.firehose_endpoint.as_deref())?;
        let limits = pack_limits(a)?;
        let max_in_flight = in_range(
            "--firehose-max-in-flight",
            a.firehose_max_in_flight,
            1,
            MAX_IN_FLIGHT,
            format!("1..={MAX_IN_FLIGHT}"),
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
                    range: format!(">= {MAX_BATCH_BYTES} (one full request)").into(),
                });
            }
        }
        let batch_age = secs("--firehose-batch-age", a.firehose_batch_age, false)?;
        if batch_age > Duration::from_secs(MAX_BATCH_AGE_SECS) {
            return Err(ConfigError::OutOfRange {
                flag: "--firehose-batch-age",
                value: a.firehose_batch_age.to_string(),
                range: format!("above 0, up to {MAX_BATCH_AGE_SECS} seconds").into(),
            });
        }
        let base = a
            .spool_dir
            .clone()
            .unwrap_or_else(|| state_dir.join(SPOOL_SUBDIR));
        Ok(Some(FirehoseSinkConfig {
            spool_dir: base.join(stream),
            stream: stream.into(),
            region,
            endpoint,
            spool_max_bytes: a.spool_max_bytes,
            memory_max_bytes: a.firehose_memory_max_bytes,
            batch_age,
            limits,
            max_in_flight,
            drain_timeout: FIREHOSE_DRAIN_TIMEOUT,
            spool_always: a.spool_always,
        }))
    }
}

/// A Firehose stream name: 1-64 of `[a-zA-Z0-9_.-]`, not starting with `.` (it is also a path
/// component of the spool).
fn stream_name(stream: &str) -> Result<&str, ConfigError> {
    if stream.is_empty()
        || stream.len() > MAX_STREAM_NAME
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
    Ok(stream)
}

/// `--firehose-endpoint`: an `http://` or `https://` URL with a host; `None` when unset or empty.
fn endpoint(e: Option<&str>) -> Result<Option<String>, ConfigError> {
    match e.map(str::trim) {
        None | Some("") => Ok(None),
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
            Ok(Some(e.to_string()))
        }
    }
}

/// The packing limits, each within its Firehose maximum.
fn pack_limits(a: &cli::FirehoseArgs) -> Result<PackLimits, ConfigError> {
    Ok(PackLimits {
        max_record_bytes: in_range(
            "--firehose-record-max-bytes",
            a.firehose_record_max_bytes,
            MIN_RECORD_BYTES,
            MAX_RECORD_BYTES,
            format!("{MIN_RECORD_BYTES}..={MAX_RECORD_BYTES} (the Firehose record limit)"),
        )?,
        max_batch_records: in_range(
            "--firehose-batch-max-records",
            a.firehose_batch_max_records,
            1,
            MAX_BATCH_RECORDS,
            format!("1..={MAX_BATCH_RECORDS} (the Firehose PutRecordBatch limit)"),
        )?,
        max_batch_bytes: in_range(
            "--firehose-batch-max-bytes",
            a.firehose_batch_max_bytes,
            a.firehose_record_max_bytes.min(MAX_RECORD_BYTES),
            MAX_BATCH_BYTES,
            format!(
                "--firehose-record-max-bytes..={MAX_BATCH_BYTES} (the Firehose PutRecordBatch limit)"
            ),
        )?,
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `agent probe ARGS udp://h:1`'s Firehose settings, or the error message.
    fn firehose(args: &[&str]) -> Result<Option<FirehoseSinkConfig>, String> {
        let mut argv = vec!["agent", "probe"];
        argv.extend_from_slice(args);
        argv.push("udp://h:1");
        let cli = cli::Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        let Some(cli::Command::Probe(p)) = cli.command else {
            return Err("not probe".into());
        };
        FirehoseSinkConfig::from_args(&p.records.sinks.firehose, Path::new("/state"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn firehose_flags_validate_against_firehose_limits() {
        let f = firehose(&[
            "--firehose-stream",
            "meshlat-eu",
            "--firehose-endpoint",
            "http://127.0.0.1:5000",
            "--spool-dir",
            "/var/spool/m",
        ])
        .expect("valid")
        .expect("enabled by --firehose-stream");
        assert_eq!(f.spool_dir, PathBuf::from("/var/spool/m/meshlat-eu"));
        assert_eq!(f.limits, PackLimits::default());
        assert_eq!(f.batch_age, Duration::from_secs(2));
        assert_eq!(f.endpoint.as_deref(), Some("http://127.0.0.1:5000"));
        assert_eq!(f.drain_timeout, FIREHOSE_DRAIN_TIMEOUT);
        let f = firehose(&["--firehose-stream", "s"]).expect("valid");
        assert_eq!(
            f.expect("enabled").spool_dir,
            PathBuf::from("/state/spool/s"),
            "default spool: <state dir>/spool/<stream>"
        );
        assert!(firehose(&[]).expect("valid").is_none());
        // Whole messages: the ranges are built from request.rs's limits and read as before.
        for (args, want) in [
            (
                &["--firehose-stream", "a/b"][..],
                "--firehose-stream \"a/b\": a Firehose stream name is 1-64 of letters, digits, \
                 '_', '.', '-'",
            ),
            (
                &["--firehose-stream", "s", "--firehose-endpoint", "ftp://x"][..],
                "--firehose-endpoint \"ftp://x\": must be an http:// or https:// URL with a host",
            ),
            (
                &["--firehose-batch-max-records", "501"][..],
                "--firehose-batch-max-records: 501 is out of range (1..=500 (the Firehose \
                 PutRecordBatch limit))",
            ),
            (
                &["--firehose-record-max-bytes", "1024001"][..],
                "--firehose-record-max-bytes: 1024001 is out of range (1024..=1024000 (the \
                 Firehose record limit))",
            ),
            (
                &["--firehose-batch-max-bytes", "5000000"][..],
                "--firehose-batch-max-bytes: 5000000 is out of range \
                 (--firehose-record-max-bytes..=4194304 (the Firehose PutRecordBatch limit))",
            ),
            (
                &["--firehose-max-in-flight", "65"][..],
                "--firehose-max-in-flight: 65 is out of range (1..=64)",
            ),
            (
                &["--spool-max-bytes", "1000"][..],
                "--spool-max-bytes: 1000 is out of range (>= 4194304 (one full request))",
            ),
            (
                &["--firehose-memory-max-bytes", "1000"][..],
                "--firehose-memory-max-bytes: 1000 is out of range (>= 4194304 (one full \
                 request))",
            ),
            (
                &["--firehose-batch-age", "0"][..],
                "--firehose-batch-age: 0 is out of range (above 0, up to 1 year, in seconds)",
            ),
            (
                &["--firehose-batch-age", "901"][..],
                "--firehose-batch-age: 901 is out of range (above 0, up to 900 seconds)",
            ),
        ] {
            let mut argv = args.to_vec();
            if !argv.contains(&"--firehose-stream") {
                argv.extend(["--firehose-stream", "s"]);
            }
            let err = firehose(&argv).expect_err(want);
            assert_eq!(err, want, "{args:?}");
        }
    }
}
