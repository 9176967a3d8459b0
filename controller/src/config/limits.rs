//! Connection caps, rate limits and registry limits.

use std::time::Duration;

use meshlat_guard::{ConnLimits, Quota};

use crate::cli::{ConnArgs, LimitsArgs};
use crate::limits::{Limits, MAX_MAX_JOBS};

use super::{ConfigError, FD_RESERVE, count, long_secs};

/// Default total caps `(grpc, rest)` for a process allowed `nofile` open files: the budget
/// is `nofile` minus [`FD_RESERVE`]; REST gets an eighth of it (4 to 1024), gRPC the rest
/// (at most 1,000,000). Unknown limits count as 65,536.
pub fn default_max_conns(nofile: Option<u64>) -> (usize, usize) {
    let budget = nofile
        .unwrap_or(65_536)
        .saturating_sub(FD_RESERVE)
        .clamp(8, 2_000_000) as usize;
    let rest = (budget / 8).clamp(4, 1024);
    let grpc = budget.saturating_sub(rest).clamp(4, 1_000_000);
    (grpc, rest)
}

fn at_least_one(flag: &'static str, v: usize) -> Result<usize, ConfigError> {
    if v == 0 {
        return Err(ConfigError::Invalid {
            flag,
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    Ok(v)
}

pub(super) fn quota(
    flag: &'static str,
    per_second: f64,
    burst: u32,
) -> Result<Option<Quota>, ConfigError> {
    if !per_second.is_finite() || !(0.0..=1_000_000.0).contains(&per_second) {
        return Err(ConfigError::Invalid {
            flag,
            value: per_second.to_string(),
            reason: "must be 0 (no limit) to 1000000 requests per second",
        });
    }
    Ok((per_second > 0.0).then_some(Quota { per_second, burst }))
}

pub(super) fn conn_limits(a: &ConnArgs) -> Result<(ConnLimits, ConnLimits), ConfigError> {
    let (grpc_default, rest_default) = default_max_conns(meshlat_guard::open_files_limit());
    let d = a.deadlines.deadlines().map_err(|e| ConfigError::Invalid {
        flag: e.flag,
        value: e.value.to_string(),
        reason: "must be 0.1 to 3600 seconds",
    })?;
    let grpc = ConnLimits {
        max_conns: at_least_one("--grpc-max-conns", a.grpc_max_conns.unwrap_or(grpc_default))?,
        max_conns_per_ip: at_least_one("--grpc-max-conns-per-ip", a.grpc_max_conns_per_ip)?,
        handshake_timeout: d.handshake,
        header_timeout: d.header,
        idle_timeout: d.idle,
    };
    let rest = ConnLimits {
        max_conns: at_least_one("--rest-max-conns", a.rest_max_conns.unwrap_or(rest_default))?,
        max_conns_per_ip: at_least_one("--rest-max-conns-per-ip", a.rest_max_conns_per_ip)?,
        ..grpc
    };
    Ok((grpc, rest))
}

pub(super) fn limits(a: &LimitsArgs, agent_ttl: Duration) -> Result<Limits, ConfigError> {
    let agent_expiry = long_secs("--agent-expiry", a.agent_expiry)?;
    if agent_expiry < agent_ttl {
        return Err(ConfigError::Invalid {
            flag: "--agent-expiry",
            value: a.agent_expiry.to_string(),
            reason: "must be at least --agent-ttl",
        });
    }
    Ok(Limits {
        max_jobs: count("--max-jobs", a.max_jobs, MAX_MAX_JOBS)?,
        stopped_job_ttl: long_secs("--stopped-job-ttl", a.stopped_job_ttl)?,
        max_agents: count("--max-agents", a.max_agents, usize::MAX)?,
        max_agents_per_token: count("--max-agents-per-token", a.max_agents_per_token, usize::MAX)?,
        agent_expiry,
        max_summary_bytes: count("--max-summary-bytes", a.max_summary_bytes, 64 << 20)?,
        max_live_pairs: count("--max-live-pairs", a.max_live_pairs, usize::MAX)?,
        max_live_bytes: count("--max-live-bytes", a.max_live_bytes, usize::MAX)?,
        max_peer_agents: count("--max-peer-agents", a.max_peer_agents, usize::MAX)?,
        max_peer_jobs: count("--max-peer-jobs", a.max_peer_jobs, usize::MAX)?,
        max_peer_summary_pairs: count(
            "--max-peer-summary-pairs",
            a.max_peer_summary_pairs,
            usize::MAX,
        )?,
    })
}
