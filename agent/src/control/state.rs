//! What the agent keeps in `--state-dir` across restarts (directory mode 0700, files 0600):
//!
//! | file | content |
//! | --- | --- |
//! | `agent-id` | the id the controller assigned at the first join |
//! | `agent-key.pem` | the agent's private key (PKCS#8), made once: its identity ([`super::identity`]) |
//! | `agent-cert.pb` | the client certificate the controller issued for it (protobuf `meshlat.v1.AgentCertificate`) |
//! | `job-set.pb` | the last job set received (the state format header of [`meshlat_proto::state_file`], then protobuf `meshlat.v1.JobSet`): assignments, lease, the wire keys its reflector accepts and, on relays, the grant keys — secret material, hence 0600 |
//! | `spool/` | the Firehose spool, unless `--spool-dir` says otherwise |
//!
//! An agent restarted while its controller is away resumes the stored job set in the `static`
//! control mode (then `degraded` once the lease runs out, [`super::failstatic`]) instead of
//! measuring nothing until the controller is back.
//!
//! `job-set.pb` of 0.1.0 (no header, format 0) is read as it is and rewritten with the header
//! at the next job set. One of a newer format than this build's (a downgrade) is not read: the
//! agent logs an error naming the file and its format and waits for its controller's set.
//! `agent-id` is the id alone, one line of text, with no structure to misread.
//!
//! Files are replaced atomically: a new file is created (never through a symlink), synced,
//! renamed over the old one, and the directory is synced.

use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

use meshlat_proto::pb;
use prost::Message;

/// File in `--state-dir` holding the last job set.
pub const JOB_SET_FILE: &str = "job-set.pb";

/// Creates `dir` with mode 0700 if missing, and tightens it to 0700 if it is looser.
///
/// # Errors
///
/// The I/O error.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Replaces `dir/name` with `data` (mode 0600) atomically and durably.
///
/// # Errors
///
/// The I/O error; the previous file is then intact.
pub fn write_private(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    create_private_dir(dir)?;
    meshlat_proto::fsutil::write_atomic(&dir.join(name), data, 0o600)
}

/// Stores the last job set.
///
/// # Errors
///
/// The I/O error.
pub fn store_job_set(dir: &Path, set: &pb::JobSet) -> std::io::Result<()> {
    write_private(
        dir,
        JOB_SET_FILE,
        &meshlat_proto::state_file::encode(&set.encode_to_vec()),
    )
}

/// The stored job set, if there is a readable one (a corrupt file is logged and ignored: the
/// controller sends a new set at the next session).
pub fn load_job_set(dir: &Path) -> Option<pb::JobSet> {
    let path = dir.join(JOB_SET_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(error) => {
            tracing::warn!(message = "Cannot read the stored job set.", path = %path.display(), %error);
            return None;
        }
    };
    let message = match meshlat_proto::state_file::decode(&bytes) {
        Ok((_, m)) => m,
        Err(error) => {
            tracing::error!(message = "Stored job set not read: it is not in a format this build reads; waiting for the controller's job set.", path = %path.display(), %error);
            return None;
        }
    };
    match pb::JobSet::decode(message) {
        Ok(s) => Some(s),
        Err(error) => {
            tracing::warn!(message = "Stored job set is corrupt; ignored.", path = %path.display(), %error);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_set_round_trips_private_and_not_through_symlinks() {
        let root = std::env::temp_dir().join(format!("meshlat-state-{}", uuid::Uuid::now_v7()));
        let dir = root.join("state");
        assert_eq!(load_job_set(&dir), None);
        let set = pb::JobSet {
            generation: 7,
            lease_ms: 60_000,
            accept_keys: vec![b"wire-key".to_vec()],
            ..Default::default()
        };
        // A symlink planted where the temporary file goes is removed, not written through.
        create_private_dir(&dir).expect("dir");
        let victim = root.join("victim");
        std::fs::write(&victim, b"untouched").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join(format!(".{JOB_SET_FILE}.tmp")))
            .expect("symlink");
        store_job_set(&dir, &set).expect("store");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"untouched");
        assert_eq!(load_job_set(&dir), Some(set.clone()));
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(
            mode(&dir.join(JOB_SET_FILE)),
            0o600,
            "holds wire and grant keys"
        );
        assert_eq!(mode(&dir), 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        create_private_dir(&dir).expect("again");
        assert_eq!(mode(&dir), 0o700, "a loose state directory is tightened");
        assert_eq!(
            &std::fs::read(dir.join(JOB_SET_FILE)).expect("read")[..7],
            &meshlat_proto::state_file::encode(&[])[..],
            "written with the state format header"
        );
        // 0.1.0's file (the message alone) is read; a newer format is not.
        std::fs::write(dir.join(JOB_SET_FILE), set.encode_to_vec()).expect("0.1.0");
        assert_eq!(load_job_set(&dir), Some(set.clone()), "format 0 is read");
        let mut newer = meshlat_proto::state_file::encode(&set.encode_to_vec());
        newer[5..7].copy_from_slice(&(meshlat_proto::state_file::FORMAT + 1).to_be_bytes());
        std::fs::write(dir.join(JOB_SET_FILE), newer).expect("newer");
        assert_eq!(load_job_set(&dir), None, "a newer format is not misread");
        std::fs::write(dir.join(JOB_SET_FILE), b"\xff\xff\xff").expect("corrupt");
        assert_eq!(load_job_set(&dir), None, "a corrupt file is ignored");
        let _ = std::fs::remove_dir_all(&root);
    }
}
