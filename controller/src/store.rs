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
//! syncs it, renames it over the old one and syncs the directory, so a crash (or a power cut) leaves
//! either the old or the new state.
//!
//! Each file starts with the state format header of [`meshlat_proto::state_file`]: files of
//! 0.1.0 (no header, format 0) are migrated when loaded — decoded, and rewritten at once in
//! the current format (logged) — and a file of a newer format than this build's is refused with
//! [`StoreError::Version`] naming the file and its format, so the controller does not start on
//! state it would misread (a downgrade); it never rewrites such a file.
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
    /// A stored file was written by a newer build (see [`meshlat_proto::state_file`]).
    #[error("state store {path}: {source}")]
    Version {
        /// File.
        path: PathBuf,
        /// Its format and what this build reads.
        #[source]
        source: meshlat_proto::state_file::StateFileError,
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
        Ok(self.read_versioned(name)?.1)
    }

    /// Reads `state/<name>`: its format ([`meshlat_proto::state_file::FORMAT`] for a missing
    /// file) and message.
    fn read_versioned<M: Message + Default>(&self, name: &str) -> Result<(u16, M), StoreError> {
        let path = self.dir.join(name);
        match std::fs::read(&path) {
            Ok(b) => decode_file(&path, &b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Ok((meshlat_proto::state_file::FORMAT, M::default()))
            }
            Err(source) => Err(StoreError::Io { path, source }),
        }
    }

    /// Replaces `state/<name>` atomically and durably ([`crate::fsutil::write_atomic`]: the
    /// directory is synced after the rename).
    pub(crate) fn write(&self, name: &str, data: &[u8]) -> Result<(), StoreError> {
        let path = self.dir.join(name);
        crate::fsutil::write_atomic(&path, data, 0o600)
            .map_err(|source| StoreError::Io { path, source })
    }
}

impl StateStore for FileStore {
    fn load(&self) -> Result<StoredState, StoreError> {
        let (jobs_format, jobs): (_, pb::StoredJobs) = self.read_versioned(JOBS_FILE)?;
        let (agents_format, agents): (_, pb::StoredAgents) = self.read_versioned(AGENTS_FILE)?;
        // Both read: migrate whichever is older than this build's format.
        let current = meshlat_proto::state_file::FORMAT;
        if jobs_format < current {
            self.write(JOBS_FILE, &encode_jobs(&jobs.jobs))?;
            tracing::info!(message = "State file migrated.", file = %self.dir.join(JOBS_FILE).display(), from_format = jobs_format, to_format = current);
        }
        if agents_format < current {
            self.write(AGENTS_FILE, &encode_agents(&agents.agents))?;
            tracing::info!(message = "State file migrated.", file = %self.dir.join(AGENTS_FILE).display(), from_format = agents_format, to_format = current);
        }
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

/// Decodes a state file's bytes (header and message) read from `path`.
///
/// # Errors
///
/// [`StoreError::Version`] for a newer format, [`StoreError::Decode`] for a bad message.
pub fn decode_file<M: Message + Default>(
    path: &Path,
    bytes: &[u8],
) -> Result<(u16, M), StoreError> {
    let (format, message) =
        meshlat_proto::state_file::decode(bytes).map_err(|source| StoreError::Version {
            path: path.to_path_buf(),
            source,
        })?;
    let m = M::decode(message).map_err(|source| StoreError::Decode {
        path: path.to_path_buf(),
        source,
    })?;
    Ok((format, m))
}

/// The content of `jobs.pb` (with the state format header).
pub fn encode_jobs(jobs: &[pb::Job]) -> Vec<u8> {
    meshlat_proto::state_file::encode(
        &pb::StoredJobs {
            jobs: jobs.to_vec(),
        }
        .encode_to_vec(),
    )
}

/// The content of `agents.pb` (with the state format header).
pub fn encode_agents(agents: &[pb::StoredAgent]) -> Vec<u8> {
    meshlat_proto::state_file::encode(
        &pb::StoredAgents {
            agents: agents.to_vec(),
        }
        .encode_to_vec(),
    )
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
        let qpath = dir.join("state").join(QUARANTINE_FILE);
        let (format, q): (_, pb::StoredJobs) =
            decode_file(&qpath, &std::fs::read(&qpath).expect("quarantined")).expect("decodes");
        assert_eq!(format, meshlat_proto::state_file::FORMAT);
        assert_eq!(q.jobs, vec![bad, job.clone()], "appended");
        assert_eq!(
            s.load().expect("load").jobs,
            vec![job.clone()],
            "not read back"
        );
        std::fs::write(dir.join("state/jobs.pb"), b"\xff\xff\xff").expect("corrupt");
        let err = s.load().expect_err("corrupt file is an error");
        assert!(err.to_string().contains("corrupt"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn header_less_files_are_migrated_and_newer_formats_refused() {
        let dir = std::env::temp_dir().join(format!("meshlat-store-{}", uuid::Uuid::now_v7()));
        let s = FileStore::open(&dir).expect("open");
        let job = pb::Job {
            id: "j1".into(),
            version: 3,
            ..Default::default()
        };
        let jobs_path = dir.join("state").join(JOBS_FILE);
        // As 0.1.0 wrote it: the message alone.
        let old = pb::StoredJobs {
            jobs: vec![job.clone()],
        }
        .encode_to_vec();
        std::fs::write(&jobs_path, &old).expect("0.1.0 file");
        assert_eq!(s.load().expect("load").jobs, vec![job.clone()]);
        let migrated = std::fs::read(&jobs_path).expect("read");
        assert_eq!(
            migrated,
            meshlat_proto::state_file::encode(&old),
            "rewritten with the header"
        );
        assert!(
            !dir.join("state").join(AGENTS_FILE).exists(),
            "a missing file is not created"
        );
        // Written by a newer build: refused naming the file and the format, and left as it is.
        let mut newer = migrated.clone();
        newer[5..7].copy_from_slice(&(meshlat_proto::state_file::FORMAT + 1).to_be_bytes());
        std::fs::write(&jobs_path, &newer).expect("newer");
        let e = s.load().expect_err("newer format");
        assert!(matches!(e, StoreError::Version { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains(&jobs_path.display().to_string())
                && text.contains(&format!(
                    "state format {}, written by a newer meshlat",
                    meshlat_proto::state_file::FORMAT + 1
                )),
            "{text}"
        );
        assert_eq!(std::fs::read(&jobs_path).expect("read"), newer, "untouched");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
