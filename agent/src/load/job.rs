//! Load jobs from the controller (`JobKind::Load`, issue 15) into engine runs: one
//! [`LoadTask`] per (job, target URL) of this agent's assignments, within the agent's own
//! caps ([`LoadLimits`]).
//!
//! Pure but for reading a credentials file: [`load_set`] runs in the session task when a job
//! set arrives, so a job this agent cannot run (a bad URL, an unreadable credentials file, a
//! credentials source it does not support) is refused in the job set's ack with the reason.
//! [`super::runner`] starts, updates and stops the engines.
//!
//! # Levels and restarts
//!
//! [`LoadTask::same_run`] tells a new version of a job that only changes its *level* —
//! `start`, `step`, `steps`, `max_connections`, `max_rate`, or the number of agents sharing a
//! `rate_per_job` rate — from any other change. The runner gives the former to the running
//! engine ([`super::LoadHandle::reschedule`]: the new schedule's step and level for the time
//! elapsed take effect at once, the run and its record sequence go on) and restarts for the
//! latter.
//!
//! # Caps
//!
//! A job's `max_connections` and `max_rate` of 0 mean the agent's caps; any other value is
//! lowered to them. `rate_per_job` divides the job's rate by
//! `Assignment.load_share_agents` (0 read as 1) before capping. The agent's caps hold for all
//! its runs together: with `n` runs each is capped at `1/n` of them (`share_caps`).
//!
//! # Credentials
//!
//! `file` is read here ([`Credentials::from_file`]: errors name the file and line, never the
//! content); `secrets_manager_arn` is read by the session beforehand ([`super::secrets`]) and
//! handed in; `header` sends each secret in that header instead of basic auth. Secrets live
//! only in [`Credentials`], whose `Debug` is redacted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use meshlat_proto::pb;
use meshlat_proto::record::Protocol;
use prost::Message;

use super::credentials::Credentials;
use super::engine::LoadSpec;
use super::mix::RequestMix;
use super::plan::{Caps, Model, Schedule, Steps};
use super::secrets::ResolvedSecrets;
use crate::scheduler::PeerInfo;
use crate::target::Target;
use crate::tls::TlsClientOptions;

/// `agent run --load-max-connections` default.
pub const DEFAULT_LOAD_MAX_CONNECTIONS: u32 = 1_000;
/// `agent run --load-max-rate` default, req/s.
pub const DEFAULT_LOAD_MAX_RATE: f64 = 10_000.0;
/// A request's timeout when the job's `timeout_ms` is 0.
pub const DEFAULT_LOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// The agent's own caps on load jobs, whatever a job asks (validated by
/// [`crate::control::config::RunConfig`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LoadLimits {
    /// Most connections one load run opens (`--load-max-connections`).
    pub max_connections: u32,
    /// Highest rate of one load run, req/s (`--load-max-rate`).
    pub max_rate: f64,
}

/// One engine's worth of a load job: a job and one of its target URLs.
#[derive(Clone, Debug)]
pub struct LoadTask {
    /// The controller's job id (records carry it).
    pub job_id: String,
    /// The job's version this task was built from.
    pub version: u64,
    /// Who is at the target, when it is an agent.
    pub dst: PeerInfo,
    /// What the engine runs (target, schedule within the caps, credentials).
    pub spec: LoadSpec,
    /// Everything but the level, encoded: two tasks with the same key differ at most in level.
    restart_key: Vec<u8>,
}

/// The load tasks of one job set.
#[derive(Clone, Debug, Default)]
pub struct LoadSet {
    /// The job set's generation.
    pub generation: u64,
    /// Tasks, one per (job, target).
    pub tasks: Vec<Arc<LoadTask>>,
}

impl Default for LoadLimits {
    fn default() -> Self {
        LoadLimits {
            max_connections: DEFAULT_LOAD_MAX_CONNECTIONS,
            max_rate: DEFAULT_LOAD_MAX_RATE,
        }
    }
}

// === impl LoadTask ===

impl LoadTask {
    /// The runner's key: job id and target URL.
    pub fn key(&self) -> (String, String) {
        (self.job_id.clone(), self.spec.target.raw.clone())
    }

    /// Whether `other` is the same run at most at another level (module docs): an update the
    /// running engine takes without a restart.
    pub fn same_run(&self, other: &LoadTask) -> bool {
        self.restart_key == other.restart_key && self.spec.credentials == other.spec.credentials
    }
}

/// The load tasks of `set`'s load jobs, and the load jobs refused (job id → reason) for the
/// ack. Other kinds are left to [`crate::control::convert::job_set`]; stopped jobs run nothing.
/// `secrets` holds the credentials read for jobs naming a Secrets Manager ARN
/// ([`super::secrets::LoadSecrets::resolve`]).
pub fn load_set(
    set: &pb::JobSet,
    limits: &LoadLimits,
    secrets: &ResolvedSecrets,
) -> (LoadSet, BTreeMap<String, String>) {
    let mut tasks: Vec<LoadTask> = Vec::new();
    let mut rejected = BTreeMap::new();
    for a in &set.assignments {
        let Some(job) = &a.job else { continue };
        let Some(spec) = &job.spec else { continue };
        if spec.kind != pb::JobKind::Load as i32 || job.stopped {
            continue;
        }
        if let Err(e) = meshlat_proto::job::validate(spec) {
            rejected.insert(job.id.clone(), e.to_string());
            continue;
        }
        match assignment_tasks(a, limits, secrets.get(&job.id)) {
            Ok(t) => tasks.extend(t),
            Err(reason) => {
                tracing::warn!(message = "Load job refused.", job = %job.id, %reason);
                rejected.insert(job.id.clone(), reason);
            }
        }
    }
    share_caps(&mut tasks, limits);
    (
        LoadSet {
            generation: set.generation,
            tasks: tasks.into_iter().map(Arc::new).collect(),
        },
        rejected,
    )
}

/// The agent's caps hold for all its load at once: with `n` runs (jobs × targets) each gets at
/// most `1/n` of `--load-max-connections` (at least one connection) and of `--load-max-rate`,
/// below what its job asks. A run that starts or ends changes the others' caps in place (no
/// restart: caps are part of the level).
fn share_caps(tasks: &mut [LoadTask], limits: &LoadLimits) {
    let n = tasks.len();
    if n < 2 {
        return;
    }
    let connections = (limits.max_connections / u32::try_from(n).unwrap_or(u32::MAX)).max(1);
    let rate = limits.max_rate / n as f64;
    for t in tasks {
        let c = t.spec.schedule.caps();
        t.spec.schedule.set_caps(Caps {
            max_connections: c.max_connections.min(connections),
            max_rate: c.max_rate.min(rate),
        });
    }
}

/// The tasks of one load assignment (its spec assumed valid by
/// [`meshlat_proto::job::validate`]; what the agent itself needs is checked again). `secret`:
/// what was read for its Secrets Manager ARN, if it names one.
///
/// # Errors
///
/// Why this agent cannot run the job, naming the field (never a credential).
pub fn assignment_tasks(
    a: &pb::Assignment,
    limits: &LoadLimits,
    secret: Option<&Result<Credentials, String>>,
) -> Result<Vec<LoadTask>, String> {
    let job = a.job.as_ref().ok_or("no job")?;
    let spec = job.spec.as_ref().ok_or("no spec")?;
    let load = spec.load.as_ref().ok_or("load: required for load jobs")?;
    let model = match pb::LoadModel::try_from(load.model) {
        Ok(pb::LoadModel::Closed) => Model::Closed,
        Ok(pb::LoadModel::Open) => Model::Open,
        _ => return Err("load.model: must be closed or open".into()),
    };
    // The request mix: `load.requests` (filled from a scenario by the controller, or inline)
    // with `load.knobs` rendered into their templates; none: a GET of each target URL.
    let mix = RequestMix::new(&load.requests, &load.knobs).map_err(|e| format!("load.{e}"))?;
    let share = if load.rate_per_job && model == Model::Open {
        f64::from(a.load_share_agents.max(1))
    } else {
        1.0
    };
    let steps = Steps {
        start: load.start / share,
        step: load.step / share,
        steps: load.steps.max(1),
        step_duration: Duration::from_millis(load.step_duration_ms.into()),
    };
    let caps = Caps {
        max_connections: match load.max_connections {
            0 => limits.max_connections,
            n => n.min(limits.max_connections),
        },
        max_rate: if load.max_rate > 0.0 && load.max_rate.is_finite() {
            load.max_rate.min(limits.max_rate)
        } else {
            limits.max_rate
        },
    };
    let (credentials, credentials_header) = credentials(load.credentials.as_ref(), secret)?;
    let timeout = match spec.timeout_ms {
        0 => DEFAULT_LOAD_TIMEOUT,
        ms => Duration::from_millis(ms.into()),
    };
    // Everything but the level: the spec without start/step/steps/max_*, plus the target.
    let mut shape = spec.clone();
    if let Some(l) = shape.load.as_mut() {
        l.start = 0.0;
        l.step = 0.0;
        l.steps = 0;
        l.max_connections = 0;
        l.max_rate = 0.0;
    }
    let shape = shape.encode_to_vec();
    let mut tasks = Vec::with_capacity(a.targets.len());
    for t in &a.targets {
        let target = Target::parse(&t.target).map_err(|e| format!("{}: {e}", t.target))?;
        if !matches!(target.protocol, Protocol::Http | Protocol::Https) {
            return Err(format!(
                "{}: load targets are http:// or https:// URLs",
                t.target
            ));
        }
        let dst = PeerInfo {
            agent: opt(&t.dst_agent),
            region: opt(&t.dst_region),
            az: opt(&t.dst_az),
            location: opt(&t.dst_location),
        };
        let mut restart_key = shape.clone();
        for s in [
            &t.target,
            &t.dst_agent,
            &t.dst_region,
            &t.dst_az,
            &t.dst_location,
        ] {
            restart_key.extend_from_slice(&(s.len() as u64).to_le_bytes());
            restart_key.extend_from_slice(s.as_bytes());
        }
        tasks.push(LoadTask {
            job_id: job.id.clone(),
            version: job.version,
            spec: LoadSpec {
                target,
                schedule: Schedule::new(model, steps, caps),
                duration: Duration::from_millis(spec.duration_ms),
                think_time: Duration::from_millis(load.think_time_ms.into()),
                timeout,
                headers: http::HeaderMap::new(),
                mix: mix.clone(),
                credentials: credentials.clone(),
                credentials_header: credentials_header.clone(),
                // Agents' responders use self-signed certificates by default (as probes).
                tls: TlsClientOptions {
                    skip_verify: dst.agent.is_some(),
                    ca_file: None,
                },
            },
            dst,
            restart_key,
        });
    }
    if tasks.is_empty() {
        return Err("targets: none assigned".into());
    }
    Ok(tasks)
}

/// The job's credentials and the header their secrets go in (`None`: basic auth).
fn credentials(
    c: Option<&pb::LoadCredentials>,
    secret: Option<&Result<Credentials, String>>,
) -> Result<(Credentials, Option<HeaderName>), String> {
    let Some(c) = c else {
        return Ok((Credentials::default(), None));
    };
    let header =
        match c.header.as_str() {
            "" => None,
            h => Some(HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                format!("load.credentials.header: {h:?} is not a valid header name")
            })?),
        };
    if !c.secrets_manager_arn.is_empty() {
        return match secret {
            Some(Ok(creds)) => Ok((creds.clone(), header)),
            Some(Err(reason)) => Err(format!(
                "load.credentials.secrets_manager_arn: {}: {reason}",
                c.secrets_manager_arn
            )),
            None => Err("load.credentials.secrets_manager_arn: not read".into()),
        };
    }
    if c.file.is_empty() {
        return Err("load.credentials: give file or secrets_manager_arn".into());
    }
    let path = std::path::Path::new(&c.file);
    if !path.is_absolute() {
        return Err(format!(
            "load.credentials.file: {} is not an absolute path",
            c.file
        ));
    }
    let creds = Credentials::from_file(path).map_err(|e| format!("load.credentials.file: {e}"))?;
    Ok((creds, header))
}

fn opt(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(load: pb::LoadSpec, targets: &[&str]) -> pb::Assignment {
        pb::Assignment {
            job: Some(pb::Job {
                id: "lj".into(),
                version: 1,
                spec: Some(pb::JobSpec {
                    kind: pb::JobKind::Load as i32,
                    protocols: vec![pb::Protocol::Http as i32],
                    duration_ms: 30_000,
                    timeout_ms: 2_000,
                    load: Some(load),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            targets: targets
                .iter()
                .map(|t| pb::AssignedTarget {
                    target: (*t).into(),
                    ..Default::default()
                })
                .collect(),
            key: Vec::new(),
            load_share_agents: 0,
        }
    }

    fn closed(start: f64) -> pb::LoadSpec {
        pb::LoadSpec {
            model: pb::LoadModel::Closed as i32,
            start,
            ..Default::default()
        }
    }

    const LIMITS: LoadLimits = LoadLimits {
        max_connections: 100,
        max_rate: 500.0,
    };

    #[test]
    fn one_task_per_target_within_the_agents_caps() {
        let mut load = closed(10.0);
        load.step = 10.0;
        load.steps = 3;
        load.step_duration_ms = 5_000;
        load.max_connections = 5_000;
        let tasks = assignment_tasks(
            &assignment(load, &["http://10.0.0.1:8080/a", "https://api.example/b"]),
            &LIMITS,
            None,
        )
        .unwrap();
        assert_eq!(tasks.len(), 2);
        let s = &tasks[0].spec.schedule;
        assert_eq!(s.caps().max_connections, 100, "the agent's cap wins");
        assert_eq!(s.at(Duration::from_secs(6)).level, 20.0);
        assert_eq!(tasks[0].spec.duration, Duration::from_secs(30));
        assert_eq!(tasks[0].spec.timeout, Duration::from_secs(2));
        assert_eq!(
            tasks[1].key(),
            ("lj".into(), "https://api.example/b".into())
        );
        assert!(!tasks[1].spec.tls.skip_verify, "external URLs are verified");
    }

    #[test]
    fn rate_per_job_is_shared_and_zero_means_the_agents_cap() {
        let mut a = assignment(
            pb::LoadSpec {
                model: pb::LoadModel::Open as i32,
                start: 900.0,
                rate_per_job: true,
                ..Default::default()
            },
            &["http://10.0.0.1:8080/"],
        );
        a.load_share_agents = 3;
        let t = assignment_tasks(&a, &LIMITS, None).unwrap();
        let s = &t[0].spec.schedule;
        assert_eq!(s.at(Duration::ZERO).level, 300.0);
        assert_eq!(s.caps().max_rate, 500.0);
        a.load_share_agents = 0;
        let t = assignment_tasks(&a, &LIMITS, None).unwrap();
        assert_eq!(
            t[0].spec.schedule.at(Duration::ZERO).level,
            500.0,
            "one agent: 900 capped at the agent's 500"
        );
    }

    #[test]
    fn level_changes_are_the_same_run_other_changes_are_not() {
        let base = assignment(closed(2.0), &["http://10.0.0.1:8080/"]);
        let t = |a: &pb::Assignment| assignment_tasks(a, &LIMITS, None).unwrap().remove(0);
        let mut more = base.clone();
        if let Some(l) = more
            .job
            .as_mut()
            .and_then(|j| j.spec.as_mut())
            .and_then(|s| s.load.as_mut())
        {
            l.start = 4.0;
            l.max_connections = 50;
        }
        more.job.as_mut().unwrap().version = 2;
        assert!(t(&base).same_run(&t(&more)));
        let mut think = base.clone();
        if let Some(l) = think
            .job
            .as_mut()
            .and_then(|j| j.spec.as_mut())
            .and_then(|s| s.load.as_mut())
        {
            l.think_time_ms = 100;
        }
        assert!(!t(&base).same_run(&t(&think)));
        let mut longer = base.clone();
        longer
            .job
            .as_mut()
            .and_then(|j| j.spec.as_mut())
            .unwrap()
            .duration_ms = 60_000;
        assert!(!t(&base).same_run(&t(&longer)));
    }

    #[test]
    fn jobs_the_agent_cannot_run_are_refused_with_the_reason() {
        let dir = std::env::temp_dir().join(format!("meshlat-loadjob-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        let bad = dir.join("bad");
        std::fs::write(&bad, "alice:s3cret\nnocolon-s3cret\n").unwrap();
        let good = dir.join("good");
        std::fs::write(&good, "alice:s3cret\nbob:hunter2\n").unwrap();
        let with = |c: pb::LoadCredentials| {
            let mut l = closed(2.0);
            l.credentials = Some(c);
            assignment(l, &["http://10.0.0.1:8080/"])
        };
        let cases = [
            (
                assignment(closed(1.0), &["tcp://10.0.0.1:7711"]),
                "http:// or https://",
            ),
            (assignment(closed(1.0), &["http://"]), "http://"),
            (
                assignment(
                    pb::LoadSpec {
                        requests: vec![pb::LoadRequest {
                            path: "/{{NOPE}}".into(),
                            ..Default::default()
                        }],
                        ..closed(1.0)
                    },
                    &["http://10.0.0.1/"],
                ),
                "load.requests[0].path: no knob NOPE",
            ),
            (
                with(pb::LoadCredentials {
                    file: dir.join("missing").display().to_string(),
                    ..Default::default()
                }),
                "load.credentials.file",
            ),
            (
                with(pb::LoadCredentials {
                    file: bad.display().to_string(),
                    ..Default::default()
                }),
                "line 2",
            ),
            (
                with(pb::LoadCredentials {
                    file: "relative/creds".into(),
                    ..Default::default()
                }),
                "not an absolute path",
            ),
            (
                with(pb::LoadCredentials {
                    secrets_manager_arn: "arn:aws:secretsmanager:eu-west-1:1:secret:x".into(),
                    ..Default::default()
                }),
                "secrets_manager_arn: not read",
            ),
            (
                with(pb::LoadCredentials {
                    file: good.display().to_string(),
                    header: "bad header".into(),
                    ..Default::default()
                }),
                "not a valid header name",
            ),
        ];
        for (a, want) in cases {
            let e = assignment_tasks(&a, &LIMITS, None).unwrap_err();
            assert!(e.contains(want), "{e:?} lacks {want:?}");
            assert!(!e.contains("s3cret"), "{e}");
        }
        let t = assignment_tasks(
            &with(pb::LoadCredentials {
                file: good.display().to_string(),
                header: "X-Api-Key".into(),
                ..Default::default()
            }),
            &LIMITS,
            None,
        )
        .unwrap();
        assert_eq!(t[0].spec.credentials.len(), 2);
        assert_eq!(
            t[0].spec
                .credentials_header
                .as_ref()
                .map(HeaderName::as_str),
            Some("x-api-key")
        );
        let shown = format!("{:?}", t[0]);
        assert!(
            !shown.contains("s3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn secrets_manager_credentials_are_used_as_read_or_refuse_the_job() {
        let arn = "arn:aws:secretsmanager:eu-west-1:1:secret:keys";
        let mut l = closed(2.0);
        l.credentials = Some(pb::LoadCredentials {
            secrets_manager_arn: arn.into(),
            header: "X-Api-Key".into(),
            ..Default::default()
        });
        let a = assignment(l, &["http://10.0.0.1/"]);
        let read = Ok(Credentials::parse(arn, "k:hunter2\nk2:swordfish").unwrap());
        let t = assignment_tasks(&a, &LIMITS, Some(&read)).unwrap();
        assert_eq!(t[0].spec.credentials.len(), 2);
        assert!(t[0].spec.credentials_header.is_some());
        let failed = Err("GetSecretValue: AccessDeniedException: no".to_string());
        let e = assignment_tasks(&a, &LIMITS, Some(&failed)).unwrap_err();
        assert_eq!(
            e,
            format!(
                "load.credentials.secrets_manager_arn: {arn}: GetSecretValue: AccessDeniedException: no"
            )
        );
    }

    #[test]
    fn load_set_validates_specs_and_refuses_with_the_field() {
        let mut a = assignment(closed(2.0), &["http://10.0.0.1:8080/"]);
        if let Some(s) = a.job.as_mut().and_then(|j| j.spec.as_mut()) {
            s.sources = vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Selector("region=a".into())),
            }];
            s.targets = vec![pb::Endpoint {
                endpoint: Some(pb::endpoint::Endpoint::Url("http://10.0.0.1:8080/".into())),
            }];
        }
        let set = |a: pb::Assignment| pb::JobSet {
            generation: 1,
            assignments: vec![a],
            ..Default::default()
        };
        let (ok, rejected) = load_set(&set(a.clone()), &LIMITS, &ResolvedSecrets::new());
        assert!(rejected.is_empty(), "{rejected:?}");
        assert_eq!(ok.tasks.len(), 1);
        a.job
            .as_mut()
            .and_then(|j| j.spec.as_mut())
            .unwrap()
            .interval_ms = 1000;
        let (none, rejected) = load_set(&set(a), &LIMITS, &ResolvedSecrets::new());
        assert!(none.tasks.is_empty());
        assert!(rejected["lj"].contains("interval_ms"), "{rejected:?}");
    }

    #[test]
    fn other_kinds_and_stopped_jobs_are_not_load_tasks() {
        let mut probe = assignment(closed(1.0), &["http://10.0.0.1/"]);
        probe
            .job
            .as_mut()
            .and_then(|j| j.spec.as_mut())
            .unwrap()
            .kind = pb::JobKind::Probe as i32;
        let mut stopped = assignment(closed(1.0), &["http://10.0.0.1/"]);
        stopped.job.as_mut().unwrap().stopped = true;
        let (set, rejected) = load_set(
            &pb::JobSet {
                generation: 4,
                assignments: vec![probe, stopped],
                ..Default::default()
            },
            &LIMITS,
            &ResolvedSecrets::new(),
        );
        assert!(set.tasks.is_empty() && rejected.is_empty(), "{rejected:?}");
        assert_eq!(set.generation, 4);
    }

    #[test]
    fn the_agents_caps_hold_for_all_its_load_together() {
        let job = |id: &str, load: pb::LoadSpec, targets: &[&str]| {
            let mut a = assignment(load, targets);
            if let Some(j) = a.job.as_mut() {
                j.id = id.into();
                if let Some(s) = j.spec.as_mut() {
                    s.sources = vec![pb::Endpoint {
                        endpoint: Some(pb::endpoint::Endpoint::Selector("region=a".into())),
                    }];
                    s.targets = targets
                        .iter()
                        .map(|t| pb::Endpoint {
                            endpoint: Some(pb::endpoint::Endpoint::Url((*t).into())),
                        })
                        .collect();
                }
            }
            a
        };
        let mut small = closed(5.0);
        small.max_connections = 10;
        let set = pb::JobSet {
            generation: 1,
            assignments: vec![
                job("a", closed(80.0), &["http://10.0.0.1/", "http://10.0.0.2/"]),
                job("b", small, &["http://10.0.0.3/"]),
            ],
            ..Default::default()
        };
        let (s, rejected) = load_set(&set, &LIMITS, &ResolvedSecrets::new());
        assert!(rejected.is_empty(), "{rejected:?}");
        let caps: Vec<(u32, f64)> = s
            .tasks
            .iter()
            .map(|t| {
                let c = t.spec.schedule.caps();
                (c.max_connections, c.max_rate)
            })
            .collect();
        // 100 connections and 500 req/s over three runs; b asked for 10 at most.
        assert_eq!(
            caps,
            vec![(33, 500.0 / 3.0), (33, 500.0 / 3.0), (10, 500.0 / 3.0)]
        );
        let total: f64 = s
            .tasks
            .iter()
            .map(|t| t.spec.schedule.at(Duration::ZERO).level)
            .sum();
        assert!(total <= 100.0, "{total} workers over the agent's 100");
        // One run alone has the agent's whole caps.
        let one = pb::JobSet {
            generation: 2,
            assignments: vec![job("a", closed(80.0), &["http://10.0.0.1/"])],
            ..Default::default()
        };
        let (s, _) = load_set(&one, &LIMITS, &ResolvedSecrets::new());
        assert_eq!(s.tasks[0].spec.schedule.caps().max_connections, 100);
    }
}
