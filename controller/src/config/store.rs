//! `--state-*`: the controller's S3 state store.

use crate::cli::StateStoreArgs;

use super::{ConfigError, endpoint_url, nonempty};

/// Validated `--state-*` flags.
#[derive(Clone, Debug, PartialEq)]
pub struct StateStoreConfig {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix, without leading or trailing `/`.
    pub prefix: String,
    /// Region (`None`: the SDK's chain, e.g. `AWS_REGION`).
    pub region: Option<String>,
    /// Endpoint URL override.
    pub endpoint: Option<String>,
}

pub(super) fn state_store(
    a: &StateStoreArgs,
    region: &str,
) -> Result<Option<StateStoreConfig>, ConfigError> {
    let Some(bucket) = nonempty(&a.state_bucket) else {
        for (flag, v) in [
            ("--state-prefix", &a.state_prefix),
            ("--state-region", &a.state_region),
            ("--state-endpoint", &a.state_endpoint),
        ] {
            if nonempty(v).is_some() {
                return Err(ConfigError::Invalid {
                    flag,
                    value: v.clone().unwrap_or_default(),
                    reason: "needs --state-bucket",
                });
            }
        }
        return Ok(None);
    };
    let b = bucket.as_bytes();
    let edge_ok = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !(3..=63).contains(&b.len())
        || !b.iter().all(|c| edge_ok(c) || matches!(c, b'.' | b'-'))
        || !b.first().is_some_and(edge_ok)
        || !b.last().is_some_and(edge_ok)
    {
        return Err(ConfigError::Invalid {
            flag: "--state-bucket",
            value: bucket.into(),
            reason: "not an S3 bucket name (3-63 of a-z, 0-9, '.', '-'; starting and ending with a letter or digit)",
        });
    }
    let prefix = match nonempty(&a.state_prefix) {
        None => format!("controller-state/{region}"),
        Some(p) => p.trim_matches('/').to_string(),
    };
    if prefix.is_empty()
        || prefix.len() > 512
        || prefix
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..")
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/!-_.*'()".contains(c))
    {
        return Err(ConfigError::Invalid {
            flag: "--state-prefix",
            value: a.state_prefix.clone().unwrap_or_default(),
            reason: "use path segments of letters, digits and !-_.*'() separated by single '/'",
        });
    }
    let state_region = nonempty(&a.state_region).map(str::to_string);
    if let Some(r) = &state_region
        && !r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    {
        return Err(ConfigError::Invalid {
            flag: "--state-region",
            value: r.clone(),
            reason: "not an AWS region name",
        });
    }
    let endpoint = endpoint_url("--state-endpoint", &a.state_endpoint)?;
    Ok(Some(StateStoreConfig {
        bucket: bucket.into(),
        prefix,
        region: state_region,
        endpoint,
    }))
}
