//! Sinks: where records go (DESIGN §5). Several run at once; each gets every record.
//!
//! A sink is split as in Vector: [`batch`] (generic batching by count and age), the sink type
//! (encoding + transport), and later retry logic. [`SinkSet`] fans records out: one task per
//! sink, fed through a bounded channel. A full channel applies backpressure to the scheduler
//! rather than dropping: a record already taken is never lost silently.
//!
//! Delivery is acknowledged by `write` returning `Ok`; a sink that fails a batch reports it through
//! [`crate::metrics::sink_error`] with the number of records affected.
//!
//! # Layout
//!
//! - [`batch`]: the batcher.
//! - [`stdout`]: table (perftest format) or JSON lines on standard output.
//! - [`file`](mod@file): Hive-layout NDJSON files with size/age rotation.
//! - [`firehose`]: Amazon Data Firehose: packed records, retry of failed records, disk spool.

pub mod batch;
pub mod emf;
pub mod file;
pub mod firehose;
pub mod stdout;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use meshlat_proto::record::Record;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use self::batch::{BatchConfig, Batcher};

/// A fresh, created directory under the system temp dir for a sink's unit test
/// (`meshlat-{prefix}-{name}-{pid}-{ns}`).
#[cfg(test)]
pub(crate) fn test_dir(prefix: &str, name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!(
        "meshlat-{prefix}-{name}-{}-{}",
        std::process::id(),
        crate::clock::realtime_ns()
    ));
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// A record shared by every sink.
pub type SharedRecord = Arc<Record>;

/// A sink failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// Local I/O failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The sink's background task has stopped.
    #[error("{0} sink stopped")]
    Stopped(&'static str),
}

/// What flows into a sink besides records.
#[derive(Clone, Debug)]
pub enum SinkEvent {
    /// A measurement record.
    Record(SharedRecord),
    /// A (job, target) schedule finished: sinks that summarise (the table) may print now.
    TargetDone {
        /// Job id.
        job_id: String,
        /// Target as in records.
        target: String,
    },
}

/// A destination for records.
pub trait Sink: Send + 'static {
    /// Name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Batching limits for this sink.
    fn batch_config(&self) -> BatchConfig {
        BatchConfig::default()
    }

    /// Writes a batch. `Ok` acknowledges every record in it.
    fn write(
        &mut self,
        batch: &[SharedRecord],
    ) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// A schedule finished (see [`SinkEvent::TargetDone`]). Default: nothing.
    fn target_done(
        &mut self,
        _job_id: &str,
        _target: &str,
    ) -> impl Future<Output = Result<(), SinkError>> + Send {
        async { Ok(()) }
    }

    /// Makes everything written so far durable/visible. Called after each batch's age limit and
    /// at shutdown.
    fn flush(&mut self) -> impl Future<Output = Result<(), SinkError>> + Send;

    /// The last call: the sink finishes its background work (delivers or persists what it
    /// holds) before the set's shutdown grace ends. Default: nothing.
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Channel depth per sink: enough for bursts, small enough to bound memory.
pub const SINK_CHANNEL_DEPTH: usize = 4096;

/// Fans records out to every configured sink.
pub struct SinkSet {
    senders: Vec<mpsc::Sender<SinkEvent>>,
    tasks: JoinSet<()>,
}

impl std::fmt::Debug for SinkSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SinkSet")
            .field("sinks", &self.senders.len())
            .finish()
    }
}

/// Cloneable handle for submitting records.
#[derive(Clone, Debug)]
pub struct SinkHandle {
    senders: Arc<Vec<mpsc::Sender<SinkEvent>>>,
}

impl SinkSet {
    /// An empty set (records are discarded; for tests and benches).
    pub fn new() -> Self {
        SinkSet {
            senders: Vec::new(),
            tasks: JoinSet::new(),
        }
    }

    /// Adds a sink and starts its task.
    pub fn add<S: Sink>(&mut self, sink: S) {
        let (tx, rx) = mpsc::channel(SINK_CHANNEL_DEPTH);
        self.senders.push(tx);
        self.tasks.spawn(run_sink(sink, rx));
    }

    /// A handle for producers. Handles must be dropped before [`SinkSet::close`] completes.
    pub fn handle(&self) -> SinkHandle {
        SinkHandle {
            senders: Arc::new(self.senders.clone()),
        }
    }

    /// Closes the set: every sink drains what it has, flushes and stops. Waits at most `grace`.
    pub async fn close(mut self, grace: Duration) {
        self.senders.clear();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, drain).await.is_err() {
            tracing::warn!(
                message = "Sinks did not drain within the shutdown grace.",
                ?grace
            );
        }
    }
}

impl Default for SinkSet {
    fn default() -> Self {
        Self::new()
    }
}

impl SinkHandle {
    /// Submits a record to every sink, waiting if a sink is backed up.
    pub async fn send(&self, record: Record) {
        let r = Arc::new(record);
        for tx in self.senders.iter() {
            // A closed channel means the sink task ended (only at shutdown); nothing to do.
            let _ = tx.send(SinkEvent::Record(r.clone())).await;
        }
    }

    /// Tells sinks a schedule finished.
    pub async fn target_done(&self, job_id: &str, target: &str) {
        for tx in self.senders.iter() {
            let _ = tx
                .send(SinkEvent::TargetDone {
                    job_id: job_id.into(),
                    target: target.into(),
                })
                .await;
        }
    }
}

async fn run_sink<S: Sink>(mut sink: S, mut rx: mpsc::Receiver<SinkEvent>) {
    let name = sink.name();
    let mut batcher = Batcher::new(sink.batch_config());
    loop {
        let deadline = batcher.deadline();
        let ev = tokio::select! {
            ev = rx.recv() => ev,
            () = sleep_until_opt(deadline) => {
                flush_batch(&mut sink, &mut batcher, name).await;
                continue;
            }
        };
        match ev {
            Some(SinkEvent::Record(r)) => {
                if batcher.push(r) {
                    flush_batch(&mut sink, &mut batcher, name).await;
                }
            }
            Some(SinkEvent::TargetDone { job_id, target }) => {
                flush_batch(&mut sink, &mut batcher, name).await;
                if let Err(e) = sink.target_done(&job_id, &target).await {
                    crate::metrics::sink_error(name, "target_done", 0, &e);
                }
            }
            None => break,
        }
    }
    flush_batch(&mut sink, &mut batcher, name).await;
    sink.close().await;
}

async fn flush_batch<S: Sink>(
    sink: &mut S,
    batcher: &mut Batcher<SharedRecord>,
    name: &'static str,
) {
    let batch = batcher.take();
    if !batch.is_empty() {
        match sink.write(&batch).await {
            Ok(()) => {
                crate::metrics::get()
                    .sink_records
                    .get_or_create(&crate::metrics::SinkLabels { sink: name.into() })
                    .inc_by(batch.len() as u64);
            }
            Err(e) => crate::metrics::sink_error(name, "write", batch.len() as u64, &e),
        }
    }
    if let Err(e) = sink.flush().await {
        crate::metrics::sink_error(name, "flush", 0, &e);
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
