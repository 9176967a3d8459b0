//! A load run's [`SecondReport`] as a `kind = load` [`Record`]: one per agent, job, target and
//! second (pure; [`super::runner`] hands the records to the agent's sinks).
//!
//! `seq` is the second since the run started and `ts` the wall-clock start of that second, so
//! an update that changes only the level (no restart) keeps one sequence. Rates are over the
//! report's length (1 s; less for the last second of a stopped run). The histogram columns are
//! the corrected latency's non-empty buckets. `ok` says whether any request was answered (any
//! status); when none was and some failed, `error_kind` names the commonest failure.

use std::time::{Duration, SystemTime};

use meshlat_proto::record::{ControlMode, ErrorKind, Kind, Record};

use super::stats::SecondReport;
use crate::config::AgentIdentity;
use crate::probe::round_us;
use crate::scheduler::PeerInfo;
use crate::target::Target;

/// What a load run's records say about where they come from.
#[derive(Clone, Debug)]
pub struct LoadRecordContext {
    /// The job id.
    pub job_id: String,
    /// The target URL loaded.
    pub target: Target,
    /// Who is at the target, when it is an agent.
    pub dst: PeerInfo,
    /// This agent.
    pub identity: AgentIdentity,
    /// Wall-clock start of the run ([`super::LoadHandle::started`]).
    pub started: SystemTime,
}

/// The record of one second of a run.
pub fn second_record(r: &SecondReport, ctx: &LoadRecordContext, mode: ControlMode) -> Record {
    let ts = ctx.started + Duration::from_secs(r.second);
    let mut rec = Record::new(ts, &ctx.job_id, &ctx.target.raw, crate::VERSION);
    rec.kind = Some(Kind::Load);
    rec.protocol = Some(ctx.target.protocol);
    rec.src_agent = ctx.identity.agent_id.clone();
    rec.src_region = Some(ctx.identity.region.clone());
    rec.src_az = ctx.identity.az.clone();
    rec.src_location = ctx.identity.location.clone();
    rec.dst_agent = ctx.dst.agent.clone();
    rec.dst_region = ctx.dst.region.clone();
    rec.dst_az = ctx.dst.az.clone();
    rec.dst_location = ctx.dst.location.clone();
    rec.seq = r.second;
    rec.control_mode = Some(mode);
    let t = &r.tally;
    rec.ok = t.responses() > 0;
    if !rec.ok && t.errors.total() > 0 {
        let e = &t.errors;
        rec.error_kind = [
            (e.connect, ErrorKind::Refused),
            (e.timeout, ErrorKind::Timeout),
            (e.tls, ErrorKind::Tls),
            (e.io, ErrorKind::Reset),
        ]
        .into_iter()
        .max_by_key(|(n, _)| *n)
        .map(|(_, k)| k);
    }
    rec.load_step = Some(r.step);
    rec.load_workers = Some(r.workers);
    rec.load_level = Some(r.level);
    rec.intended_rps = Some(round_us(r.intended_rps()));
    rec.achieved_rps = Some(round_us(r.achieved_rps()));
    rec.requests = Some(t.sent);
    rec.status_2xx = Some(t.status.s2xx);
    rec.status_3xx = Some(t.status.s3xx);
    rec.status_4xx = Some(t.status.s4xx);
    rec.status_429 = Some(t.status.rate_limited);
    rec.status_5xx = Some(t.status.s5xx);
    rec.status_other = Some(t.status.other);
    rec.errors_connect = Some(t.errors.connect);
    rec.errors_timeout = Some(t.errors.timeout);
    rec.errors_tls = Some(t.errors.tls);
    rec.errors_io = Some(t.errors.io);
    let c = t.corrected.summary();
    let u = t.uncorrected.summary();
    let ms = |v: Option<f64>| v.map(round_us);
    rec.lat_p50_ms = ms(c.p50);
    rec.lat_p90_ms = ms(c.p90);
    rec.lat_p99_ms = ms(c.p99);
    rec.lat_p999_ms = ms(c.p999);
    rec.lat_max_ms = ms(c.max);
    rec.uncorrected_p50_ms = ms(u.p50);
    rec.uncorrected_p99_ms = ms(u.p99);
    rec.uncorrected_max_ms = ms(u.max);
    let (values, counts): (Vec<f64>, Vec<f64>) = t
        .corrected
        .histogram
        .nonempty_buckets()
        .map(|(v, n)| (round_us(v), n as f64))
        .unzip();
    if !values.is_empty() {
        rec.lat_hist_ms = Some(values);
        rec.lat_hist_counts = Some(counts);
    }
    rec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::stats::{Recorder, RequestResult, Sample};
    use meshlat_proto::record::Protocol;
    use tokio::time::Instant;

    fn ctx() -> LoadRecordContext {
        LoadRecordContext {
            job_id: "lj".into(),
            target: Target::parse("https://api.example:8443/ping").unwrap(),
            dst: PeerInfo::default(),
            identity: AgentIdentity {
                agent_id: Some("a1".into()),
                region: "eu-west-1".into(),
                az: Some("eu-west-1a".into()),
                location: None,
            },
            started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
        }
    }

    #[test]
    fn a_second_becomes_one_load_record_with_every_field() {
        let t0 = Instant::now();
        let mut rec = Recorder::new(t0);
        let ms = Duration::from_millis;
        for (i, (status, lat)) in [(200, 5), (200, 7), (429, 2), (503, 40)]
            .into_iter()
            .enumerate()
        {
            let at = t0 + ms(100 * i as u64);
            rec.record_closed(&Sample {
                intended: at,
                sent: at,
                done: at + ms(lat),
                result: RequestResult::Status(status),
            });
        }
        rec.record_closed(&Sample {
            intended: t0,
            sent: t0,
            done: t0 + ms(900),
            result: RequestResult::Error(crate::load::stats::ErrorClass::Timeout),
        });
        let report = SecondReport {
            second: 3,
            length: Duration::from_secs(1),
            step: 1,
            workers: 4,
            level: 4.0,
            tally: rec.take_until(1),
        };
        let r = second_record(&report, &ctx(), ControlMode::Connected);
        assert_eq!(r.kind, Some(Kind::Load));
        assert_eq!(r.protocol, Some(Protocol::Https));
        assert_eq!((r.job_id.as_str(), r.seq), ("lj", 3));
        assert_eq!(r.ts, "2027-01-15T08:00:03.000000Z", "start of second 3");
        assert_eq!(r.target, "https://api.example:8443/ping");
        assert_eq!(r.src_agent.as_deref(), Some("a1"));
        assert_eq!(r.src_az.as_deref(), Some("eu-west-1a"));
        assert_eq!(r.control_mode, Some(ControlMode::Connected));
        assert!(r.ok);
        assert_eq!(
            (r.load_step, r.load_workers, r.load_level),
            (Some(1), Some(4), Some(4.0))
        );
        assert_eq!(
            (r.requests, r.intended_rps, r.achieved_rps),
            (Some(5), Some(5.0), Some(4.0))
        );
        assert_eq!(
            (r.status_2xx, r.status_429, r.status_5xx),
            (Some(2), Some(1), Some(1))
        );
        assert_eq!(
            (r.status_3xx, r.status_4xx, r.status_other),
            (Some(0), Some(0), Some(0))
        );
        assert_eq!((r.errors_timeout, r.errors_connect), (Some(1), Some(0)));
        assert_eq!(r.lat_max_ms, Some(40.0));
        assert_eq!(r.uncorrected_max_ms, Some(40.0));
        let p50 = r.lat_p50_ms.unwrap();
        assert!((p50 - 5.0).abs() < 0.05, "{p50}");
        assert!(r.lat_p90_ms.is_some() && r.lat_p99_ms.is_some() && r.lat_p999_ms.is_some());
        assert!(r.uncorrected_p50_ms.is_some() && r.uncorrected_p99_ms.is_some());
        let (v, n) = (
            r.lat_hist_ms.clone().unwrap(),
            r.lat_hist_counts.clone().unwrap(),
        );
        assert_eq!(v.len(), 4);
        assert!(v.windows(2).all(|w| w[0] < w[1]), "ascending {v:?}");
        assert_eq!(n.iter().sum::<f64>(), 4.0, "one count per answered request");
        // The JSON line holds the fields under their schema names.
        let line = r.to_json_line();
        assert!(
            line.contains("\"kind\":\"load\"") && line.contains("\"status_429\":1"),
            "{line}"
        );
    }

    #[test]
    fn a_second_with_only_failures_names_the_commonest() {
        let t0 = Instant::now();
        let mut rec = Recorder::new(t0);
        for e in [
            crate::load::stats::ErrorClass::Connect,
            crate::load::stats::ErrorClass::Connect,
            crate::load::stats::ErrorClass::Io,
        ] {
            rec.record_closed(&Sample {
                intended: t0,
                sent: t0,
                done: t0,
                result: RequestResult::Error(e),
            });
        }
        let report = SecondReport {
            second: 0,
            length: Duration::from_millis(500),
            step: 0,
            workers: 1,
            level: 1.0,
            tally: rec.take_all(),
        };
        let r = second_record(&report, &ctx(), ControlMode::Static);
        assert!(!r.ok);
        assert_eq!(r.error_kind, Some(ErrorKind::Refused));
        assert_eq!(r.intended_rps, Some(6.0), "over the half second reported");
        assert_eq!((r.lat_p50_ms, r.lat_hist_ms), (None, None));
    }
}
