//! The sink front: encodes each record as one NDJSON line and hands lines to the
//! [dispatcher](super::dispatcher) task through a bounded channel (as Vector's
//! `aws_kinesis/firehose/sink.rs` feeds its service).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::NAME;
use super::client::{AwsFirehose, ClientSetupError, FirehoseApi};
use super::config::FirehoseSinkConfig;
use super::dispatcher::Dispatcher;
use super::spool::{self, Spool, SpoolError};
use crate::metrics;
use crate::sink::batch::BatchConfig;
use crate::sink::{SharedRecord, Sink, SinkError};

/// Messages of lines queued between the sink and its dispatcher.
const LINE_CHANNEL_DEPTH: usize = 16;

/// The sink could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FirehoseStartError {
    /// The AWS client could not be configured.
    #[error(transparent)]
    Client(#[from] ClientSetupError),
    /// The spool directory is unusable.
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

/// Counters of one sink, for tests and benchmarks (the same facts go to Prometheus).
#[derive(Debug, Default)]
pub struct FirehoseStats {
    /// Lines Firehose accepted.
    pub delivered_lines: AtomicU64,
    /// `PutRecordBatch` calls made.
    pub requests: AtomicU64,
    /// Firehose records sent (including resends).
    pub records_sent: AtomicU64,
    /// Bytes of record data sent (including resends).
    pub bytes_sent: AtomicU64,
    /// Bytes billed for what was sent (each record rounded up to 5 KB).
    pub bytes_billed: AtomicU64,
    /// Firehose records resent after a partial failure.
    pub records_retried: AtomicU64,
    /// Requests that failed as a whole and will be retried.
    pub requests_failed: AtomicU64,
    /// Lines written to the dead-letter file.
    pub dead_lettered_lines: AtomicU64,
    /// Lines a bound forced out.
    pub dropped_lines: AtomicU64,
    /// Batches written to the spool.
    pub spooled_batches: AtomicU64,
}

/// The Firehose sink (see the module docs).
#[derive(Debug)]
pub struct FirehoseSink {
    tx: Option<mpsc::Sender<Vec<Bytes>>>,
    task: Option<JoinHandle<()>>,
    stats: Arc<FirehoseStats>,
}

impl FirehoseSink {
    /// Starts the sink on the AWS SDK: resolves region and credentials, opens the spool and
    /// queues what it holds for replay.
    ///
    /// # Errors
    ///
    /// [`FirehoseStartError`] if no region is known or the spool directory is unusable.
    pub async fn start(cfg: FirehoseSinkConfig) -> Result<Self, FirehoseStartError> {
        let api =
            AwsFirehose::new(&cfg.stream, cfg.region.as_deref(), cfg.endpoint.as_deref()).await?;
        Ok(Self::claiming(cfg, api)?)
    }

    /// Starts the sink on any transport with `cfg.spool_dir` as the stream's directory, shared
    /// with other processes: spools in a subdirectory of it that this process claims
    /// ([`spool::claim`]; orphans' batches are replayed) and holds until the sink is dropped.
    ///
    /// # Errors
    ///
    /// [`SpoolError`] if the spool directory cannot be created, read or locked.
    pub fn claiming<A: FirehoseApi>(
        mut cfg: FirehoseSinkConfig,
        api: A,
    ) -> Result<Self, SpoolError> {
        let lock = spool::claim(&cfg.spool_dir)?;
        tracing::info!(
            message = "Spool directory claimed.",
            dir = %lock.dir().display(),
            adopted_batches = lock.adopted_batches()
        );
        cfg.spool_dir = lock.dir().to_path_buf();
        Self::open(cfg, api, Some(lock))
    }

    /// Starts the sink on any transport (a fake in tests, a null endpoint in benchmarks),
    /// spooling in `cfg.spool_dir` itself (no claim: the caller owns the directory).
    ///
    /// # Errors
    ///
    /// [`SpoolError`] if the spool directory cannot be created or read.
    pub fn with_api<A: FirehoseApi>(cfg: FirehoseSinkConfig, api: A) -> Result<Self, SpoolError> {
        Self::open(cfg, api, None)
    }

    fn open<A: FirehoseApi>(
        cfg: FirehoseSinkConfig,
        api: A,
        lock: Option<spool::SpoolLock>,
    ) -> Result<Self, SpoolError> {
        let (spool, found, problems) = Spool::open(&cfg.spool_dir)?;
        for e in problems {
            metrics::sink_error(NAME, "spool_corrupt", 0, &e);
        }
        let stats = Arc::new(FirehoseStats::default());
        let d = Dispatcher::new(cfg, api, spool, found, stats.clone(), lock);
        let (tx, rx) = mpsc::channel(LINE_CHANNEL_DEPTH);
        let task = tokio::spawn(d.run(rx));
        Ok(FirehoseSink {
            tx: Some(tx),
            task: Some(task),
            stats,
        })
    }

    /// This sink's counters.
    pub fn stats(&self) -> Arc<FirehoseStats> {
        self.stats.clone()
    }

    /// Closes the sink and waits until every batch is delivered or spooled.
    pub async fn shutdown(&mut self) {
        self.tx = None;
        if let Some(t) = self.task.take()
            && let Err(error) = t.await
        {
            metrics::sink_error(NAME, "dispatcher_panic", 0, &error);
        }
    }
}

impl Sink for FirehoseSink {
    fn name(&self) -> &'static str {
        NAME
    }

    fn batch_config(&self) -> BatchConfig {
        // Small hand-offs: packing and the batch age live in the dispatcher.
        BatchConfig {
            max_items: 1024,
            max_age: std::time::Duration::from_millis(100),
        }
    }

    async fn write(&mut self, batch: &[SharedRecord]) -> Result<(), SinkError> {
        let lines: Vec<Bytes> = batch
            .iter()
            .map(|r| {
                let mut s = r.to_json_line();
                s.push('\n');
                Bytes::from(s)
            })
            .collect();
        match &self.tx {
            Some(tx) => tx.send(lines).await.map_err(|_| SinkError::Stopped(NAME)),
            None => Err(SinkError::Stopped(NAME)),
        }
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        // The dispatcher seals batches by size and age on its own.
        Ok(())
    }

    async fn close(&mut self) {
        self.shutdown().await;
    }
}
