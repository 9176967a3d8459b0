//! The state store: jobs and agent identities that must survive a controller restart
//! (DESIGN §3). A trait, so AWS deployments can use an S3 prefix (Fargate storage does not
//! outlive a task); [`FileStore`] keeps them in the data directory, and
//! [`mirror::MirroredStore`] also keeps the data directory (state, CA, credentials) in an S3
//! prefix ([`s3::S3Objects`]) so a controller on an empty disk comes back as it was.
//!
//! # Format
//!
//! `state/jobs.pb` holds a protobuf `meshlat.v1.StoredJobs`, `state/agents.pb` a
//! `meshlat.v1.StoredAgents` (`proto/meshlat/v1/state.proto`). Each save writes a temporary file,
//! syncs it and renames it over the old one, so a crash leaves either the old or the new state.
//!
//! Jobs a controller can no longer schedule (they fail today's validation) are moved from
//! `jobs.pb` to `state/jobs.quarantined.pb` (also a `StoredJobs`; appended to, never read
//! back), so they can be inspected and fixed by hand. The quarantine file stays in the data
//! directory; with `--state-bucket` it is not uploaded (the log line names each job).

use std::path::{Path, PathBuf};

use meshlat_proto::pb;
use prost::Message;

pub mod mirror;
pub mod s3;

/// Jobs file name (under `state/`, and the object name under an S3 prefix).
pub const JOBS_FILE: &str = "jobs.pb";
/// Agent identities file name.
pub const AGENTS_FILE: &str = "agents.pb";
/// Quarantined jobs file name (under `state/`).
pub const QUARANTINE_FILE: &str = "jobs.quarantined.pb";

/// A state store failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Reading or writing failed.
    #[error("state store {path}: {source}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// A stored file does not decode.
    #[error("state store {path}: corrupt: {source}")]
    Decode {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: prost::DecodeError,
    },
    /// The S3 state store (`--state-bucket`) failed.
    #[error("S3 state store (--state-bucket): {0}")]
    Remote(#[from] mirror::ObjectError),
}

/// Everything a store holds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoredState {
    /// Jobs, stopped ones included.
    pub jobs: Vec<pb::Job>,
    /// Agent identities.
    pub agents: Vec<pb::StoredAgent>,
}

/// Where jobs and agent identities live. Calls are synchronous and small; they run on the
/// caller's thread.
pub trait StateStore: Send + Sync + std::fmt::Debug + 'static {
    /// Loads everything (empty on first start).
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the store is unreadable or corrupt.
    fn load(&self) -> Result<StoredState, StoreError>;
    /// Replaces the stored jobs.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails; the previous state is kept.
    fn save_jobs(&self, jobs: &[pb::Job]) -> Result<(), StoreError>;
    /// Replaces the stored agent identities.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails; the previous state is kept.
    fn save_agents(&self, agents: &[pb::StoredAgent]) -> Result<(), StoreError>;
    /// Adds jobs to the quarantine (jobs this version cannot schedule; see the module docs).
    /// The caller then saves the jobs without them.
    ///
    /// # Errors
    ///
    /// [`StoreError`] when the write fails.
    fn quarantine_jobs(&self, jobs: &[pb::Job]) -> Result<(), StoreError>;
}

/// The file implementation: `<data-dir>/state/{jobs,agents}.pb`.
#[derive(Debug)]
pub struct FileStore {
    dir: PathBuf,
}

impl FileStore {
    /// A store under `data_dir/state`, created if missing.
    ///
    /// # Errors
    ///
    /// [`StoreError::Io`] when the directory cannot be created.
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let dir = data_dir.join("state");
        std::fs::create_dir_all(&dir).map_err(|source| StoreError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(FileStore { dir })
    }

    fn read<M: Message + Default>(&self, name: &str) -> Result<M, StoreError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => M::decode(&b[..]).map_err(|source| StoreError::Decode { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(M::default()),
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Replaces `state/<name>` atomically.
    pub(crate) fn write(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        use std::io::Write;
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        let res = (|| {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(data)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        })();
        res.map_err(|source| StoreError::Io { path, source })
    }
}

impl StateStore for FileStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        let jobs: pb::StoredJobs = self.read(JOBS_FILE)?;
        let agents: pb::StoredAgents = self.read(AGENTS_FILE)?;
        Ok(StoredState {
            jobs: jobs.jobs,
            agents: agents.agents,
        })
    }

    fn save_jobs(&self, jobs: &[pb::Job]) -> Result<(), StoreError> {
        self.write(JOBS_FILE, &encode_jobs(jobs))
    }

    fn save_agents(&self, agents: &[pb::StoredAgent]) -> Result<(), StoreError> {
        self.write(AGENTS_FILE, &encode_agents(agents))
    }

    fn quarantine_jobs(&self, jobs: &[pb::Job]) -> Result<(), StoreError> {
        // An unreadable old quarantine is kept aside rather than lost.
        let mut all = match self.read::<pb::StoredJobs>(QUARANTINE_FILE) {
            Ok(q) => q.jobs,
            Err(_) => {
                let from = self.dir.join(QUARANTINE_FILE);
                let to = self.dir.join(format!("{QUARANTINE_FILE}.unreadable"));
                std::fs::rename(&from, &to)
                    .map_err(|source| StoreError::Io { path: from, source })?;
                Vec::new()
            }
        };
        all.extend_from_slice(jobs);
        self.write(QUARANTINE_FILE, &encode_jobs(&all))
    }
}

/// The content of `jobs.pb`.
pub fn encode_jobs(jobs: &[pb::Job]) -> Vec<u8> {
    pb::StoredJobs {
        jobs: jobs.to_vec(),
    }
    .encode_to_vec()
}

/// The content of `agents.pb`.
pub fn encode_agents(agents: &[pb::StoredAgent]) -> Vec<u8> {
    pb::StoredAgents {
        agents: agents.to_vec(),
    }
    .encode_to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_store_round_trips_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("meshlat-store-{}", uuid::Uuid::now_v7()));
        let s = FileStore::open(&dir).expect("open");
        assert_eq!(s.load().expect("empty"), StoredState::default());
        let job = pb::Job {
            id: "j1".into(),
            version: 3,
            ..Default::default()
        };
        let agent = pb::StoredAgent {
            info: Some(pb::AgentInfo {
                id: "a1".into(),
                region: "r".into(),
                ..Default::default()
            }),
            ..Default::default()
        };
        s.save_jobs(std::slice::from_ref(&job)).expect("save");
        s.save_agents(std::slice::from_ref(&agent)).expect("save");
        let again = FileStore::open(&dir).expect("reopen").load().expect("load");
        assert_eq!(again.jobs, vec![job.clone()]);
        assert_eq!(again.agents, vec![agent]);
        let bad = pb::Job {
            id: "j2".into(),
            ..Default::default()
        };
        s.quarantine_jobs(std::slice::from_ref(&bad))
            .expect("quarantine");
        s.quarantine_jobs(std::slice::from_ref(&job))
            .expect("quarantine");
        let q = pb::StoredJobs::decode(
            &std::fs::read(dir.join("state").join(QUARANTINE_FILE)).expect("quarantined")[..],
        )
        .expect("decodes");
        assert_eq!(q.jobs, vec![bad, job.clone()], "appended");
        assert_eq!(s.load().expect("load").jobs, vec![job], "not read back");
        std::fs::write(dir.join("state/jobs.pb"), b"\xff\xff\xff").expect("corrupt");
        let err = s.load().expect_err("corrupt file is an error");
        assert!(err.to_string().contains("corrupt"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
