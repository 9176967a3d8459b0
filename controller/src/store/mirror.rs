//! Keeping the data directory in an object store (S3), so a controller started on an empty disk
//! (a replaced Fargate task) comes back with the same CA, credentials, jobs and agent ids.
//!
//! # What is kept
//!
//! | object under the prefix | file in the data directory |
//! | --- | --- |
//! | `ca.pem`, `ca.key` | the controller's CA (the key is secret: the bucket must be private and encrypted) |
//! | `credentials.json` | hashes of the join secret and operator secrets |
//! | `grant.key` | the relay-grant Ed25519 signing key ([`crate::keys`]; secret, like `ca.key`) |
//! | `jobs.pb`, `agents.pb` | `state/jobs.pb`, `state/agents.pb` ([`super::FileStore`]'s format) |
//!
//! # Calling protocol
//!
//! 1. [`Mirror::restore`] before anything reads the data directory: every object present is
//!    written over its file (the bucket wins). Any failure fails the start.
//! 2. The controller loads or creates its CA and credentials as without a bucket.
//! 3. [`Mirror::publish_missing`]: every file the bucket lacks (a first start, or a data
//!    directory moving to S3) is uploaded, awaited, before the join token is written to
//!    `first-start-secrets`.
//! 4. [`MirroredStore`] is the registry's [`StateStore`]: each save writes the local file
//!    synchronously (its error is the caller's) and queues the bytes; [`Mirror::run`] uploads
//!    the newest bytes of each object in the background. A failed upload keeps the bytes queued
//!    (a newer save replaces them), is logged and counted ([`Mirror::stats`]) and is retried with
//!    jittered exponential backoff; the object in the bucket stays the previous whole version
//!    meanwhile (a PUT replaces an object atomically). Stopping drains the queue within a grace
//!    period.
//!
//! The registry's lock is therefore never held across network I/O, and an S3 outage neither
//! blocks nor fails operator calls. The cost: a change acknowledged in the last moment before a
//! hard kill (not a SIGTERM, which drains) may not have reached the bucket yet.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use meshlat_proto::backoff::Backoff;
use meshlat_proto::pb;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{AGENTS_FILE, FileStore, JOBS_FILE, StateStore, StoreError, StoredState};
use crate::auth::{CA_CERT_FILE, CA_KEY_FILE, CREDENTIALS_FILE};
use crate::keys::GRANT_KEY_FILE;

/// First retry delay after a failed upload.
pub const BACKOFF_MIN: Duration = Duration::from_millis(500);
/// Longest retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Retry delays of failed uploads: [`BACKOFF_MIN`] doubling up to [`BACKOFF_MAX`], jittered.
pub const BACKOFF: Backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);

/// One mirrored file.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MirroredFile {
    /// Object name under the prefix.
    pub name: &'static str,
    /// Path relative to the data directory.
    pub local: &'static str,
    /// Written with mode 0600 (secret material).
    pub private: bool,
}

/// Every mirrored file (see the module doc).
pub const FILES: [MirroredFile; 6] = [
    MirroredFile {
        name: CA_CERT_FILE,
        local: CA_CERT_FILE,
        private: false,
    },
    MirroredFile {
        name: CA_KEY_FILE,
        local: CA_KEY_FILE,
        private: true,
    },
    MirroredFile {
        name: CREDENTIALS_FILE,
        local: CREDENTIALS_FILE,
        private: true,
    },
    MirroredFile {
        name: GRANT_KEY_FILE,
        local: GRANT_KEY_FILE,
        private: true,
    },
    MirroredFile {
        name: JOBS_FILE,
        local: "state/jobs.pb",
        private: false,
    },
    MirroredFile {
        name: AGENTS_FILE,
        local: "state/agents.pb",
        private: false,
    },
];

/// An object store call failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {location}: {message}")]
pub struct ObjectError {
    /// `list`, `get` or `put`.
    pub op: &'static str,
    /// The object or prefix, e.g. `s3://bucket/prefix/jobs.pb`.
    pub location: String,
    /// What happened (service error code and message, connect error, timeout...).
    pub message: String,
}

/// The object store under one prefix; object names are relative to it. Implemented on the AWS
/// SDK by [`super::s3::S3Objects`], and by fakes in tests.
pub trait ObjectApi: Send + Sync + std::fmt::Debug + 'static {
    /// Names of the objects directly under the prefix.
    fn list(&self) -> impl Future<Output = Result<Vec<String>, ObjectError>> + Send;
    /// One object's content.
    fn get(&self, name: &str) -> impl Future<Output = Result<Vec<u8>, ObjectError>> + Send;
    /// Replaces one object.
    fn put(
        &self,
        name: &str,
        data: Vec<u8>,
    ) -> impl Future<Output = Result<(), ObjectError>> + Send;
    /// Where the prefix is, for messages (`s3://bucket/prefix/`).
    fn location(&self) -> String;
}

/// Upload counters.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct MirrorStats {
    /// Objects uploaded since start.
    pub uploads_total: u64,
    /// Failed upload attempts since start.
    pub errors_total: u64,
    /// Objects waiting to be uploaded.
    pub pending: usize,
}

/// The data directory's mirror in an object store (see the module doc).
#[derive(Debug)]
pub struct Mirror<O> {
    api: O,
    data_dir: PathBuf,
    /// Newest unsent content per object name; a save replaces what an earlier one queued.
    pending: Mutex<BTreeMap<&'static str, Vec<u8>>>,
    /// Wakes the uploader when something is queued.
    wake: Notify,
    uploads: AtomicU64,
    errors: AtomicU64,
}

impl<O: ObjectApi> Mirror<O> {
    /// A mirror of `data_dir` in `api`.
    pub fn new(api: O, data_dir: &Path) -> Self {
        Mirror {
            api,
            data_dir: data_dir.to_path_buf(),
            pending: Mutex::new(BTreeMap::new()),
            wake: Notify::new(),
            uploads: AtomicU64::new(0),
            errors: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<&'static str, Vec<u8>>> {
        // Plain data: a panic elsewhere leaves it usable.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes every object the store has over its file in the data directory; returns the
    /// names restored.
    ///
    /// # Errors
    ///
    /// [`StoreError::Remote`] if the store cannot be listed or read, [`StoreError::Io`] if a
    /// file cannot be written.
    pub async fn restore(&self) -> Result<Vec<&'static str>, StoreError> {
        let present: BTreeSet<String> = self.api.list().await?.into_iter().collect();
        let mut restored = Vec::new();
        for f in FILES.iter().filter(|f| present.contains(f.name)) {
            let data = self.api.get(f.name).await?;
            write_file(&self.data_dir.join(f.local), &data, f.private)?;
            restored.push(f.name);
        }
        tracing::info!(message = "State restored from the object store.", location = %self.api.location(), objects = ?restored);
        Ok(restored)
    }

    /// Uploads every mirrored file that exists locally but not in the store; returns their
    /// names.
    ///
    /// # Errors
    ///
    /// [`StoreError::Remote`] or [`StoreError::Io`]: the start must fail, or the CA just made
    /// would not survive a restart.
    pub async fn publish_missing(&self) -> Result<Vec<&'static str>, StoreError> {
        let present: BTreeSet<String> = self.api.list().await?.into_iter().collect();
        let mut published = Vec::new();
        for f in FILES.iter().filter(|f| !present.contains(f.name)) {
            let path = self.data_dir.join(f.local);
            let data = match std::fs::read(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StoreError::Io { path, source }),
            };
            self.api.put(f.name, data).await?;
            self.uploads.fetch_add(1, Ordering::Relaxed);
            published.push(f.name);
        }
        if !published.is_empty() {
            tracing::info!(message = "Published to the object store.", location = %self.api.location(), objects = ?published);
        }
        Ok(published)
    }

    /// Queues `data` as the new content of `name` and wakes the uploader.
    pub fn enqueue(&self, name: &'static str, data: Vec<u8>) {
        self.lock().insert(name, data);
        self.wake.notify_one();
    }

    /// Upload counters.
    pub fn stats(&self) -> MirrorStats {
        MirrorStats {
            uploads_total: self.uploads.load(Ordering::Relaxed),
            errors_total: self.errors.load(Ordering::Relaxed),
            pending: self.lock().len(),
        }
    }

    /// Uploads everything queued once. On a failure the failed object and those not tried yet
    /// go back into the queue unless a newer save replaced them; the failure is logged and
    /// counted.
    ///
    /// # Errors
    ///
    /// The first [`ObjectError`].
    pub async fn upload_pending(&self) -> Result<(), ObjectError> {
        let batch = std::mem::take(&mut *self.lock());
        let mut items = batch.into_iter();
        while let Some((name, data)) = items.next() {
            if let Err(error) = self.api.put(name, data.clone()).await {
                let errors = self.errors.fetch_add(1, Ordering::Relaxed) + 1;
                let mut q = self.lock();
                for (n, d) in std::iter::once((name, data)).chain(items) {
                    q.entry(n).or_insert(d);
                }
                tracing::warn!(message = "State upload failed; keeping it queued to retry.", %error, object = name, errors_total = errors, pending = q.len());
                return Err(error);
            }
            self.uploads.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(message = "State uploaded.", object = name);
        }
        Ok(())
    }

    /// The uploader: uploads what is queued until `stop`, retrying failures with jittered
    /// exponential backoff ([`BACKOFF_MIN`] to [`BACKOFF_MAX`]); after `stop`, keeps trying for
    /// `grace` to leave nothing behind.
    pub async fn run(&self, stop: CancellationToken, grace: Duration) {
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            if self.lock().is_empty() {
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = self.wake.notified() => continue,
                }
            }
            if self.upload_pending().await.is_ok() {
                failures = 0;
                continue;
            }
            failures = failures.saturating_add(1);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(BACKOFF.delay(failures - 1, rand::random::<f64>())) => {}
            }
        }
        let deadline = Instant::now() + grace;
        while !self.lock().is_empty() && Instant::now() < deadline {
            match tokio::time::timeout_at(deadline, self.upload_pending()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    let pause = deadline
                        .saturating_duration_since(Instant::now())
                        .min(BACKOFF_MIN);
                    tokio::time::sleep(pause).await;
                }
                Err(_) => break,
            }
        }
        let left = self.lock().len();
        if left > 0 {
            tracing::error!(message = "Stopping with state not uploaded; the object store keeps the previous version.", location = %self.api.location(), pending = left);
        } else {
            tracing::info!(message = "State uploaded; uploader stopped.");
        }
    }
}

/// Writes `data` to `path` atomically and durably ([`crate::fsutil::write_atomic`]), creating
/// the parent.
fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), StoreError> {
    let io = |source| StoreError::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    crate::fsutil::write_atomic(path, data, if private { 0o600 } else { 0o644 }).map_err(io)
}

/// A [`StateStore`] writing through the data directory ([`FileStore`]) and mirroring each save
/// to the object store in the background.
#[derive(Debug)]
pub struct MirroredStore<O> {
    file: FileStore,
    mirror: std::sync::Arc<Mirror<O>>,
}

impl<O: ObjectApi> MirroredStore<O> {
    /// A store over `file`, mirrored by `mirror` (whose [`Mirror::run`] the owner drives).
    pub fn new(file: FileStore, mirror: std::sync::Arc<Mirror<O>>) -> Self {
        MirroredStore { file, mirror }
    }
}

impl<O: ObjectApi> StateStore for MirroredStore<O> {
    fn load(&self) -> Result<StoredState, StoreError> {
        self.file.load()
    }

    fn save_jobs(&self, jobs: &[pb::Job]) -> Result<(), StoreError> {
        let data = super::encode_jobs(jobs);
        self.file.write(JOBS_FILE, &data)?;
        self.mirror.enqueue(JOBS_FILE, data);
        Ok(())
    }

    fn save_agents(&self, agents: &[pb::StoredAgent]) -> Result<(), StoreError> {
        let data = super::encode_agents(agents);
        self.file.write(AGENTS_FILE, &data)?;
        self.mirror.enqueue(AGENTS_FILE, data);
        Ok(())
    }

    fn quarantine_jobs(&self, jobs: &[pb::Job]) -> Result<(), StoreError> {
        // Local only (see the store's module docs); the caller's save of the remaining jobs
        // is mirrored.
        self.file.quarantine_jobs(jobs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// An in-memory object store that fails every call while `down` is set.
    #[derive(Debug, Default)]
    struct FakeObjects {
        objects: Mutex<BTreeMap<String, Vec<u8>>>,
        down: AtomicBool,
        puts: AtomicU64,
    }

    impl FakeObjects {
        fn check(&self, op: &'static str, name: &str) -> Result<(), ObjectError> {
            if self.down.load(Ordering::SeqCst) {
                return Err(ObjectError {
                    op,
                    location: format!("fake://p/{name}"),
                    message: "connection refused".into(),
                });
            }
            Ok(())
        }

        fn object(&self, name: &str) -> Option<Vec<u8>> {
            self.objects.lock().expect("lock").get(name).cloned()
        }
    }

    impl ObjectApi for Arc<FakeObjects> {
        async fn list(&self) -> Result<Vec<String>, ObjectError> {
            self.check("list", "")?;
            Ok(self.objects.lock().expect("lock").keys().cloned().collect())
        }
        async fn get(&self, name: &str) -> Result<Vec<u8>, ObjectError> {
            self.check("get", name)?;
            self.object(name).ok_or_else(|| ObjectError {
                op: "get",
                location: name.into(),
                message: "NoSuchKey".into(),
            })
        }
        async fn put(&self, name: &str, data: Vec<u8>) -> Result<(), ObjectError> {
            self.check("put", name)?;
            self.puts.fetch_add(1, Ordering::SeqCst);
            self.objects
                .lock()
                .expect("lock")
                .insert(name.to_string(), data);
            Ok(())
        }
        fn location(&self) -> String {
            "fake://p/".into()
        }
    }

    fn tmp() -> PathBuf {
        std::env::temp_dir().join(format!("meshlat-mirror-{}", uuid::Uuid::now_v7()))
    }

    fn job(id: &str, version: u64) -> pb::Job {
        pb::Job {
            id: id.into(),
            version,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn first_start_publishes_then_an_empty_dir_restores_everything() {
        let fake = Arc::new(FakeObjects::default());
        let dir = tmp();
        let m = Mirror::new(fake.clone(), &dir);
        assert!(m.restore().await.expect("restore").is_empty());
        // What the controller makes on first start.
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(CA_CERT_FILE), b"cert").expect("ca");
        std::fs::write(dir.join(CA_KEY_FILE), b"key").expect("key");
        std::fs::write(dir.join(CREDENTIALS_FILE), b"{}").expect("creds");
        std::fs::write(dir.join(GRANT_KEY_FILE), b"grant").expect("grant key");
        let published = m.publish_missing().await.expect("publish");
        assert_eq!(
            published,
            vec![CA_CERT_FILE, CA_KEY_FILE, CREDENTIALS_FILE, GRANT_KEY_FILE]
        );
        let m = Arc::new(m);
        let store = MirroredStore::new(FileStore::open(&dir).expect("open"), m.clone());
        store.save_jobs(&[job("j1", 2)]).expect("save");
        m.upload_pending().await.expect("upload");
        assert_eq!(
            fake.object(JOBS_FILE),
            Some(super::super::encode_jobs(&[job("j1", 2)]))
        );
        // A replaced task: an empty data directory, the same prefix.
        let dir2 = tmp();
        let m2 = Mirror::new(fake.clone(), &dir2);
        let restored = m2.restore().await.expect("restore");
        assert_eq!(restored.len(), 5, "{restored:?}");
        assert_eq!(std::fs::read(dir2.join(CA_KEY_FILE)).expect("key"), b"key");
        assert_eq!(
            std::fs::read(dir2.join(GRANT_KEY_FILE)).expect("grant key"),
            b"grant"
        );
        use std::os::unix::fs::PermissionsExt;
        for f in [CA_KEY_FILE, GRANT_KEY_FILE] {
            let mode = std::fs::metadata(dir2.join(f))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let state = FileStore::open(&dir2).expect("open").load().expect("load");
        assert_eq!(state.jobs, vec![job("j1", 2)]);
        assert!(m2.publish_missing().await.expect("publish").is_empty());
        for d in [dir, dir2] {
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[tokio::test]
    async fn an_unreachable_store_fails_restore() {
        let fake = Arc::new(FakeObjects::default());
        fake.down.store(true, Ordering::SeqCst);
        let err = Mirror::new(fake, &tmp()).restore().await.expect_err("down");
        assert!(err.to_string().contains("connection refused"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn failed_uploads_keep_the_newest_state_count_and_retry() {
        let fake = Arc::new(FakeObjects::default());
        let dir = tmp();
        let m = Arc::new(Mirror::new(fake.clone(), &dir));
        let store = MirroredStore::new(FileStore::open(&dir).expect("open"), m.clone());
        fake.down.store(true, Ordering::SeqCst);
        let stop = CancellationToken::new();
        let uploader = tokio::spawn({
            let (m, stop) = (m.clone(), stop.clone());
            async move { m.run(stop, Duration::from_secs(5)).await }
        });
        store
            .save_jobs(&[job("j1", 1)])
            .expect("local save succeeds");
        tokio::time::sleep(Duration::from_secs(3)).await;
        let s = m.stats();
        assert!(s.errors_total >= 2, "retried with backoff: {s:?}");
        assert_eq!((s.pending, s.uploads_total), (1, 0));
        // The local file has the change: the controller keeps serving it.
        let local = FileStore::open(&dir).expect("open").load().expect("load");
        assert_eq!(local.jobs, vec![job("j1", 1)]);
        // A newer save while down replaces the queued one; nothing older is uploaded later.
        store.save_jobs(&[job("j1", 2)]).expect("save");
        fake.down.store(false, Ordering::SeqCst);
        tokio::time::sleep(BACKOFF_MAX + Duration::from_secs(1)).await;
        assert_eq!(m.stats().pending, 0);
        assert_eq!(
            fake.object(JOBS_FILE),
            Some(super::super::encode_jobs(&[job("j1", 2)]))
        );
        assert_eq!(
            fake.puts.load(Ordering::SeqCst),
            1,
            "only the newest version"
        );
        // Stopping drains what is queued at that moment.
        store.save_agents(&[]).expect("save");
        stop.cancel();
        uploader.await.expect("uploader");
        assert!(fake.object(AGENTS_FILE).is_some());
        let _ = std::fs::remove_dir_all(dir);
    }
}
