//! Runs the load jobs the controller assigns: one [`LoadEngine`] per (job id, target URL) of
//! the current [`LoadSet`], its per-second reports written to the agent's sinks as
//! `kind = load` records ([`super::record`]).
//!
//! When the set changes ([`LoadRunner::run`] watches it, as the scheduler watches its job set):
//!
//! - a task that is new starts an engine;
//! - a task whose new version is the same run at another level ([`LoadTask::same_run`]) gets
//!   the new schedule at once ([`super::LoadHandle::reschedule`]): no restart, the records'
//!   sequence goes on;
//! - a task changed otherwise is stopped and started again;
//! - a task that is gone (the job stopped, deleted or no longer assigned here) is stopped:
//!   every request in flight is dropped with its connection at once.
//!
//! Each engine has one owner task (`forward`) holding its [`super::LoadHandle`]: it writes
//! the reports, takes updates and the stop from the runner over a channel, and after a stop
//! writes the last (partial) second. Dropping the runner's end of the channel stops the
//! engine.

use std::collections::BTreeMap;
use std::sync::Arc;

use meshlat_proto::record::ControlMode;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::engine::LoadEngine;
use super::job::{LoadSet, LoadTask};
use super::plan::Schedule;
use super::record::{LoadRecordContext, second_record};
use crate::config::AgentIdentity;
use crate::sink::SinkHandle;

/// Runs load sets, writing records with this agent's identity to its sinks.
#[derive(Debug)]
pub struct LoadRunner {
    identity: AgentIdentity,
    sinks: SinkHandle,
    control_mode: watch::Receiver<ControlMode>,
    /// Where each second also goes for the controller's live view (and the agent's load
    /// metrics); `None`: records only.
    reporter: Option<super::LoadReporter>,
}

/// What the runner tells an engine's owner task.
#[derive(Debug)]
enum Control {
    /// A new schedule (same run, another level).
    Reschedule(Schedule),
}

/// A running engine, as the runner keeps it.
struct Running {
    task: Arc<LoadTask>,
    /// Dropping it stops the engine.
    control: mpsc::UnboundedSender<Control>,
}

impl LoadRunner {
    /// A runner writing records with `identity` (its agent id set) to `sinks`.
    pub fn new(
        identity: AgentIdentity,
        sinks: SinkHandle,
        control_mode: watch::Receiver<ControlMode>,
    ) -> Self {
        LoadRunner {
            identity,
            sinks,
            control_mode,
            reporter: None,
        }
    }

    /// Also hands each second to `reporter`: the controller's live view and the agent's load
    /// metrics ([`super::LoadReporter::report`]).
    #[must_use]
    pub fn with_reporter(mut self, reporter: super::LoadReporter) -> Self {
        self.reporter = Some(reporter);
        self
    }

    /// Follows `sets` until `shutdown` (or the sender is dropped); then stops every engine
    /// and waits for their last records.
    pub async fn run(self, mut sets: watch::Receiver<LoadSet>, shutdown: CancellationToken) {
        let mut running: BTreeMap<(String, String), Running> = BTreeMap::new();
        let mut owners = JoinSet::new();
        loop {
            let set = sets.borrow_and_update().clone();
            self.apply(&set, &mut running, &mut owners);
            tokio::select! {
                () = shutdown.cancelled() => break,
                changed = sets.changed() => if changed.is_err() { break },
                // Reap finished owners so the set does not grow.
                Some(_) = owners.join_next(), if !owners.is_empty() => {}
            }
        }
        running.clear();
        while owners.join_next().await.is_some() {}
    }

    fn apply(
        &self,
        set: &LoadSet,
        running: &mut BTreeMap<(String, String), Running>,
        owners: &mut JoinSet<()>,
    ) {
        let mut wanted = BTreeMap::new();
        for t in &set.tasks {
            wanted.insert(t.key(), Arc::clone(t));
        }
        running.retain(|key, r| {
            let keep = wanted.get(key).is_some_and(|t| t.same_run(&r.task));
            if !keep {
                tracing::info!(message = "Load job stopped.", job = %key.0, target = %key.1);
            }
            keep
        });
        for (key, task) in wanted {
            if let Some(r) = running.get_mut(&key) {
                if r.task.spec.schedule != task.spec.schedule {
                    tracing::info!(message = "Load job updated in place.", job = %key.0, target = %key.1, version = task.version);
                    let _ = r
                        .control
                        .send(Control::Reschedule(task.spec.schedule.clone()));
                }
                r.task = task;
                continue;
            }
            let engine = match LoadEngine::new(task.spec.clone()) {
                Ok(e) => e,
                Err(error) => {
                    // Checked when the job set was converted; a failure here is logged, not
                    // retried until the job changes.
                    tracing::error!(message = "Load job cannot start.", job = %key.0, target = %key.1, %error);
                    continue;
                }
            };
            tracing::info!(message = "Load job started.", job = %key.0, target = %key.1, version = task.version);
            let handle = engine.start();
            let ctx = LoadRecordContext {
                job_id: task.job_id.clone(),
                target: task.spec.target.clone(),
                dst: task.dst.clone(),
                identity: self.identity.clone(),
                started: handle.started(),
            };
            let (tx, rx) = mpsc::unbounded_channel();
            owners.spawn(forward(
                handle,
                rx,
                ctx,
                self.sinks.clone(),
                self.control_mode.clone(),
                self.reporter.clone(),
            ));
            running.insert(key, Running { task, control: tx });
        }
    }
}

/// Owns one engine: writes its reports as records, applies updates, stops it when the runner
/// lets go.
async fn forward(
    mut handle: super::LoadHandle,
    mut control: mpsc::UnboundedReceiver<Control>,
    ctx: LoadRecordContext,
    sinks: SinkHandle,
    mode: watch::Receiver<ControlMode>,
    reporter: Option<super::LoadReporter>,
) {
    let mut stopping = false;
    loop {
        tokio::select! {
            biased;
            c = control.recv(), if !stopping => match c {
                Some(Control::Reschedule(s)) => handle.reschedule(s),
                None => {
                    stopping = true;
                    handle.stop();
                }
            },
            r = handle.next_report() => match r {
                Some(r) => {
                    let rec = second_record(&r, &ctx, *mode.borrow());
                    if let Some(rep) = &reporter {
                        rep.report(&ctx.job_id, &ctx.target.raw, &r);
                    }
                    sinks.send(rec).await;
                }
                None => break,
            },
        }
    }
    if let Err(error) = handle.join().await {
        tracing::error!(message = "Load run failed.", job = %ctx.job_id, %error);
    }
    sinks.target_done(&ctx.job_id, &ctx.target.raw).await;
}
