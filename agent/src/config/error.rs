//! [`ConfigError`] and the field checks every command's and component's config shares.
//!
//! A leaf: component configs (`sink::file`, `sink::firehose::config`) import it, and the command
//! configs in [`crate::config`] import those, so nothing imports in a cycle.

use std::borrow::Cow;
use std::time::Duration;

use crate::target::TargetError;

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
        /// Allowed range (built from the limit constants where there are some).
        range: Cow<'static, str>,
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
    /// A flag's value that does not parse.
    #[error("{flag} {value:?}: {reason}")]
    Invalid {
        /// Flag name.
        flag: &'static str,
        /// Given value.
        value: String,
        /// What is wrong, and what is expected.
        reason: String,
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

/// `v` seconds as a [`Duration`], above 0 (or from 0 with `allow_zero`) and up to a year.
pub(crate) fn secs(flag: &'static str, v: f64, allow_zero: bool) -> Result<Duration, ConfigError> {
    if !v.is_finite() || v < 0.0 || (!allow_zero && v == 0.0) || v > 86_400.0 * 365.0 {
        return Err(ConfigError::OutOfRange {
            flag,
            value: v.to_string(),
            range: if allow_zero {
                "0 to 1 year, in seconds"
            } else {
                "above 0, up to 1 year, in seconds"
            }
            .into(),
        });
    }
    Ok(Duration::from_secs_f64(v))
}

/// A trimmed label (`None` when empty) free of control characters.
pub(crate) fn label(flag: &'static str, v: Option<String>) -> Result<Option<String>, ConfigError> {
    match v.map(|s| s.trim().to_string()).filter(|s| !s.is_empty()) {
        Some(s) if s.chars().any(|c| c.is_control()) => Err(ConfigError::Label {
            flag,
            value: s,
            reason: "must not contain control characters",
        }),
        other => Ok(other),
    }
}

/// `v` if within `lo..=hi`, else [`ConfigError::OutOfRange`] naming `flag` and `range`.
pub(crate) fn in_range(
    flag: &'static str,
    v: usize,
    lo: usize,
    hi: usize,
    range: impl Into<Cow<'static, str>>,
) -> Result<usize, ConfigError> {
    if v < lo || v > hi {
        Err(ConfigError::OutOfRange {
            flag,
            value: v.to_string(),
            range: range.into(),
        })
    } else {
        Ok(v)
    }
}
