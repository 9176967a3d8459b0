//! File sink: NDJSON files in the same Hive layout Firehose writes to S3 (DESIGN §5).
//!
//! ```text
//! <dir>/records/region=<region>/dt=YYYY-MM-DD/hour=HH/meshlat-<region>-<YYYYmmddTHHMMSS>-<n>-<pid>.ndjson
//! ```
//!
//! Partitioned by write time (UTC), as Firehose partitions by arrival time. A file is rotated when
//! it reaches the size limit, when it is older than the age limit, or when the hour changes. Each
//! batch is written with whole lines and flushed to the OS after every batch (the batch age is the
//! flush interval), so a crash of the process loses at most one flush interval of records; files
//! are fsynced when rotated and at shutdown, bounding what a machine crash can lose.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::batch::BatchConfig;
use super::{SharedRecord, Sink, SinkError};
use crate::cli;
use crate::config::error::{ConfigError, secs};

/// Where the file sink writes and how it rotates.
#[derive(Clone, Debug, PartialEq)]
pub struct FileSinkConfig {
    /// Root directory (records/ goes under it).
    pub dir: PathBuf,
    /// Rotate at this size.
    pub max_bytes: u64,
    /// Rotate at this age.
    pub max_age: Duration,
    /// Flush interval.
    pub flush_interval: Duration,
}

/// The smallest `--file-max-bytes`.
pub const MIN_ROTATE_BYTES: u64 = 1024;

impl FileSinkConfig {
    /// Validates the file sink flags (`--out`, `--file-max-*`, `--flush-interval`); `None`
    /// without `--out`.
    ///
    /// # Errors
    ///
    /// [`ConfigError`] naming the flag.
    pub fn from_args(a: &cli::SinkArgs) -> Result<Option<Self>, ConfigError> {
        let Some(dir) = &a.out else { return Ok(None) };
        if a.file_max_bytes < MIN_ROTATE_BYTES {
            return Err(ConfigError::OutOfRange {
                flag: "--file-max-bytes",
                value: a.file_max_bytes.to_string(),
                range: format!(">= {MIN_ROTATE_BYTES}").into(),
            });
        }
        Ok(Some(FileSinkConfig {
            dir: dir.clone(),
            max_bytes: a.file_max_bytes,
            max_age: secs("--file-max-age", a.file_max_age, false)?,
            flush_interval: secs("--flush-interval", a.flush_interval, false)?,
        }))
    }
}

/// The file sink.
#[derive(Debug)]
pub struct FileSink {
    cfg: FileSinkConfig,
    region: String,
    current: Option<OpenFile>,
    files_opened: u64,
}

#[derive(Debug)]
struct OpenFile {
    path: PathBuf,
    file: std::fs::File,
    bytes: u64,
    opened: SystemTime,
    hour_key: String,
}

/// `(dt=YYYY-MM-DD, hour=HH, compact timestamp)` for a wall-clock time.
pub fn partition(t: SystemTime) -> (String, String, String) {
    // humantime gives "YYYY-MM-DDTHH:MM:SSZ".
    let s = humantime::format_rfc3339_seconds(t).to_string();
    let dt = s.get(0..10).unwrap_or("1970-01-01").to_string();
    let hour = s.get(11..13).unwrap_or("00").to_string();
    let compact: String = s
        .chars()
        .filter(|c| c.is_ascii_digit() || *c == 'T')
        .collect();
    (dt, hour, compact)
}

impl FileSink {
    /// A file sink for records of `region` (the partition key).
    pub fn new(cfg: FileSinkConfig, region: &str) -> Self {
        FileSink {
            cfg,
            region: region.to_string(),
            current: None,
            files_opened: 0,
        }
    }

    fn io(context: String) -> impl FnOnce(std::io::Error) -> SinkError {
        move |source| SinkError::Io { context, source }
    }

    fn open(&mut self, now: SystemTime) -> Result<&mut OpenFile, SinkError> {
        let (dt, hour, compact) = partition(now);
        let dir = self
            .cfg
            .dir
            .join("records")
            .join(format!("region={}", self.region))
            .join(format!("dt={dt}"))
            .join(format!("hour={hour}"));
        std::fs::create_dir_all(&dir).map_err(Self::io(format!("creating {}", dir.display())))?;
        self.files_opened += 1;
        let path = dir.join(format!(
            "meshlat-{}-{compact}-{}-{}.ndjson",
            self.region,
            self.files_opened,
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(Self::io(format!("opening {}", path.display())))?;
        tracing::debug!(message = "File sink opened a file.", path = %path.display());
        Ok(self.current.insert(OpenFile {
            path,
            file,
            bytes: 0,
            opened: now,
            hour_key: format!("{dt}/{hour}"),
        }))
    }

    fn close_current(&mut self) -> Result<(), SinkError> {
        if let Some(f) = self.current.take() {
            f.file
                .sync_all()
                .map_err(Self::io(format!("syncing {}", f.path.display())))?;
        }
        Ok(())
    }

    fn needs_rotation(&self, now: SystemTime) -> bool {
        let Some(f) = &self.current else { return true };
        let (dt, hour, _) = partition(now);
        f.bytes >= self.cfg.max_bytes
            || now.duration_since(f.opened).unwrap_or(Duration::ZERO) >= self.cfg.max_age
            || f.hour_key != format!("{dt}/{hour}")
    }

    /// Path of the file currently written, if any.
    pub fn current_path(&self) -> Option<&Path> {
        self.current.as_ref().map(|f| f.path.as_path())
    }
}

impl Sink for FileSink {
    fn name(&self) -> &'static str {
        "file"
    }

    fn batch_config(&self) -> BatchConfig {
        BatchConfig {
            max_items: 1024,
            max_age: self.cfg.flush_interval,
        }
    }

    async fn write(&mut self, batch: &[SharedRecord]) -> Result<(), SinkError> {
        // Lines are grouped per file: a batch may straddle a rotation point.
        let mut buf = Vec::with_capacity(batch.len() * 768);
        for r in batch {
            let now = SystemTime::now();
            if self.needs_rotation(now) {
                self.flush_buf(&mut buf)?;
                self.close_current()?;
                self.open(now)?;
            }
            let line = r.to_json_line();
            buf.extend_from_slice(line.as_bytes());
            buf.push(b'\n');
            if let Some(f) = &mut self.current {
                f.bytes += line.len() as u64 + 1;
            }
        }
        self.flush_buf(&mut buf)
    }

    async fn flush(&mut self) -> Result<(), SinkError> {
        if let Some(f) = &mut self.current {
            f.file
                .flush()
                .map_err(Self::io(format!("flushing {}", f.path.display())))?;
        }
        Ok(())
    }
}

impl FileSink {
    fn flush_buf(&mut self, buf: &mut Vec<u8>) -> Result<(), SinkError> {
        if buf.is_empty() {
            return Ok(());
        }
        let Some(f) = &mut self.current else {
            return Ok(());
        };
        let r = f
            .file
            .write_all(buf)
            .map_err(Self::io(format!("writing {}", f.path.display())));
        buf.clear();
        r
    }
}

impl Drop for FileSink {
    fn drop(&mut self) {
        if let Err(error) = self.close_current() {
            crate::metrics::sink_error("file", "close", 0, &error);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlat_proto::record::Record;
    use std::sync::Arc;

    fn tmpdir(name: &str) -> PathBuf {
        crate::sink::test_dir("filesink", name)
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).expect("readable").flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p)
                } else {
                    out.push(p)
                }
            }
        }
        out.sort();
        out
    }

    fn rec(i: u64) -> SharedRecord {
        let mut r = Record::new(SystemTime::now(), "j", "udp://h:1", "0.1.0");
        r.seq = i;
        Arc::new(r)
    }

    #[test]
    fn partition_keys_are_utc_date_and_hour() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            partition(t),
            ("2023-11-14".into(), "22".into(), "20231114T221320".into())
        );
    }

    #[tokio::test]
    async fn writes_hive_layout_and_rotates_by_size() {
        let dir = tmpdir("layout");
        let cfg = FileSinkConfig {
            dir: dir.clone(),
            max_bytes: 2048,
            max_age: Duration::from_secs(3600),
            flush_interval: Duration::from_secs(1),
        };
        let mut sink = FileSink::new(cfg, "eu-west-1");
        let recs: Vec<_> = (0..20).map(rec).collect();
        sink.write(&recs).await.expect("write");
        sink.flush().await.expect("flush");
        drop(sink);
        let fs = files(&dir);
        assert!(fs.len() > 1, "2 KiB limit must rotate: {fs:?}");
        let (dt, hour, _) = partition(SystemTime::now());
        let mut seqs = Vec::new();
        for f in &fs {
            let rel = f
                .strip_prefix(&dir)
                .expect("under dir")
                .to_string_lossy()
                .into_owned();
            assert!(
                rel.starts_with(&format!("records/region=eu-west-1/dt={dt}/hour={hour}/"))
                    || rel.contains("hour="),
                "{rel}"
            );
            assert!(rel.ends_with(".ndjson"));
            for line in std::fs::read_to_string(f).expect("read").lines() {
                let r: Record = serde_json::from_str(line).expect("every line is a whole record");
                seqs.push(r.seq);
            }
        }
        seqs.sort_unstable();
        assert_eq!(
            seqs,
            (0..20).collect::<Vec<_>>(),
            "no record lost or duplicated across rotation"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn rotates_by_age() {
        let dir = tmpdir("age");
        let cfg = FileSinkConfig {
            dir: dir.clone(),
            max_bytes: 1 << 30,
            max_age: Duration::from_millis(1),
            flush_interval: Duration::from_secs(1),
        };
        let mut sink = FileSink::new(cfg, "r");
        sink.write(&[rec(0)]).await.expect("write");
        std::thread::sleep(Duration::from_millis(5));
        sink.write(&[rec(1)]).await.expect("write");
        drop(sink);
        assert_eq!(files(&dir).len(), 2);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[tokio::test]
    async fn unwritable_directory_is_an_error_not_a_panic() {
        let dir = tmpdir("ro");
        let blocker = dir.join("records");
        std::fs::write(&blocker, b"a file where a directory should be").expect("write");
        let cfg = FileSinkConfig {
            dir: dir.clone(),
            max_bytes: 1 << 20,
            max_age: Duration::from_secs(60),
            flush_interval: Duration::from_secs(1),
        };
        let mut sink = FileSink::new(cfg, "r");
        let err = sink.write(&[rec(0)]).await.expect_err("cannot create dir");
        assert!(err.to_string().contains("creating"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
