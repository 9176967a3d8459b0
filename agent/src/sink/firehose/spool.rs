//! The disk spool: batches waiting for Firehose, kept across outages and restarts.
//!
//! # On-disk format
//!
//! ```text
//! <spool-dir>/
//!   batch-<seq:020>.fhb        one undelivered PutRecordBatch, seq = send order
//!   batch-<seq:020>.fhb.tmp    being written; ignored and removed at startup
//!   dead-letter.ndjson         lines Firehose rejected permanently (appended)
//! ```
//!
//! A batch file is:
//!
//! ```text
//! magic    8 bytes  "MLFHSP01"
//! lines    u64 LE   NDJSON lines in the batch (for drop accounting without reading the data)
//! records  u32 LE   number of Firehose records
//! then per record:
//!   len    u32 LE   record length
//!   data   len bytes  whole NDJSON lines, each ending in '\n'
//! ```
//!
//! Files are written to `.tmp` (created anew, mode 0600, never through a symlink), fsynced and
//! renamed, and the directory is fsynced after the rename, so a crash or power cut leaves either
//! the whole file or none. A file is deleted only after Firehose accepted every record in it
//! (acknowledgement after delivery); after a partial failure it is rewritten with the records
//! still to send. At startup every batch file is queued again in `seq` order, so a restarted
//! agent replays what it had not delivered. Files that fail to parse — at startup (bad header) or
//! when read for sending (a valid header with a truncated or garbled body) — are renamed
//! `*.corrupt` and counted, never deleted.
//!
//! The directory is created with mode 0700 (it holds measurement data); the default is under the
//! agent's `--state-dir`, not a shared temporary directory.
//!
//! # One directory per process ([`claim`])
//!
//! The agent's sink does not spool into the stream's directory (`<--spool-dir>/<stream>`)
//! itself but into a subdirectory of it that it owns while it runs, so several agents may share
//! one `--spool-dir` (say, ECS tasks mounting one EFS directory) without ever touching each
//! other's files:
//!
//! ```text
//! <--spool-dir>/<stream>/
//!   agent-<16 hex>/            one per process that ever spooled here
//!     lock                     held with flock(LOCK_EX) while its owner runs
//!     batch-<seq:020>.fhb ...  as above
//! ```
//!
//! At start, [`claim`]:
//!
//! 1. adopts the first `agent-*` directory whose `lock` it can take without waiting (an
//!    orphan: its owner is gone, so the kernel, or for NFS the server once the dead client's
//!    lease expired, released the lock), else creates `agent-<random>` and locks it; a
//!    directory another process holds is never opened;
//! 2. moves the batches of every other orphan it can lock into its own directory (renamed to
//!    sequence numbers after its own, each rename atomic), and those a pre-subdirectory agent
//!    left directly in `<stream>/`, so they are replayed now and none waits for a restart that
//!    may never come;
//! 3. keeps the lock until the sink is dropped (process exit releases it too).
//!
//! An orphan's `dead-letter.ndjson` stays in its directory. Directories are never deleted, so
//! a lock file is never unlinked under a process that is about to take it; there are at most as
//! many as processes ever ran at once (plus dead ones whose NFS lease has not yet expired).

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use meshlat_proto::fsutil::{create_fresh, sync_dir};

const MAGIC: &[u8; 8] = b"MLFHSP01";
const HEADER_LEN: usize = 8 + 8 + 4;
const DEAD_LETTER: &str = "dead-letter.ndjson";

/// A spool I/O failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SpoolError {
    /// An I/O operation on a spool file failed.
    #[error("spool {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A batch file is not in the format above.
    #[error("spool {path}: corrupt batch file ({reason})")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// A batch found in the spool at startup.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpooledBatch {
    /// Send order.
    pub seq: u64,
    /// File size.
    pub bytes: u64,
    /// NDJSON lines in it.
    pub lines: u64,
}

/// The spool directory and the size of what is in it.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    files: BTreeMap<u64, u64>,
    bytes: u64,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Opens (creating) the spool directory and lists the batches in it, oldest first.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`] if the directory cannot be created or read. Corrupt files are renamed
    /// and reported through the second element, not as an error.
    pub fn open(dir: &Path) -> Result<(Self, Vec<SpooledBatch>, Vec<SpoolError>), SpoolError> {
        create_private_dir(dir).map_err(io(dir))?;
        let mut found = Vec::new();
        let mut problems = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io(dir))? {
            let entry = entry.map_err(io(dir))?;
            let path = entry.path();
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                continue;
            };
            if name.starts_with("batch-") && name.ends_with(".fhb.tmp") {
                // An interrupted write: the batch it was writing is still in its older form or
                // was never acknowledged by the sink's caller.
                let _ = std::fs::remove_file(&path);
                continue;
            }
            let Some(seq) = name
                .strip_prefix("batch-")
                .and_then(|s| s.strip_suffix(".fhb"))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            match read_header(&path) {
                Ok((lines, bytes)) => found.push(SpooledBatch { seq, bytes, lines }),
                Err(e) => {
                    let _ = std::fs::rename(&path, path.with_extension("fhb.corrupt"));
                    problems.push(e);
                }
            }
        }
        let _ = sync_dir(dir);
        found.sort_by_key(|b| b.seq);
        let files: BTreeMap<u64, u64> = found.iter().map(|b| (b.seq, b.bytes)).collect();
        let bytes = files.values().sum();
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                files,
                bytes,
            },
            found,
            problems,
        ))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes on disk in batch files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether batch `seq` is on disk.
    pub fn contains(&self, seq: u64) -> bool {
        self.files.contains_key(&seq)
    }

    /// Oldest batch on disk.
    pub fn oldest(&self) -> Option<u64> {
        self.files.keys().next().copied()
    }

    fn path(&self, seq: u64) -> PathBuf {
        self.dir.join(format!("batch-{seq:020}.fhb"))
    }

    /// Writes (or replaces) batch `seq` durably.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`]; the previous version of the file, if any, is left intact.
    pub fn write(&mut self, seq: u64, records: &[Bytes], lines: u64) -> Result<u64, SpoolError> {
        let path = self.path(seq);
        let tmp = path.with_extension("fhb.tmp");
        let size = HEADER_LEN + records.iter().map(|r| 4 + r.len()).sum::<usize>();
        let mut buf = Vec::with_capacity(size);
        buf.extend_from_slice(MAGIC);
        buf.extend_from_slice(&lines.to_le_bytes());
        buf.extend_from_slice(&(records.len() as u32).to_le_bytes());
        for r in records {
            buf.extend_from_slice(&(r.len() as u32).to_le_bytes());
            buf.extend_from_slice(r);
        }
        let mut f = create_private(&tmp).map_err(io(&tmp))?;
        f.write_all(&buf).map_err(io(&tmp))?;
        f.sync_data().map_err(io(&tmp))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(&path))?;
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        let size = size as u64;
        if let Some(old) = self.files.insert(seq, size) {
            self.bytes -= old;
        }
        self.bytes += size;
        Ok(size)
    }

    /// Reads batch `seq`'s records.
    ///
    /// # Errors
    ///
    /// [`SpoolError`] if the file is unreadable or corrupt.
    pub fn read(&self, seq: u64) -> Result<Vec<Bytes>, SpoolError> {
        let path = self.path(seq);
        let data = std::fs::read(&path).map_err(io(&path))?;
        parse(&path, Bytes::from(data))
    }

    /// Renames batch `seq` to `*.fhb.corrupt` (kept for inspection, never deleted) and stops
    /// counting it; returns the new path.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`] if the rename fails (the batch is then no longer counted either).
    pub fn quarantine(&mut self, seq: u64) -> Result<PathBuf, SpoolError> {
        if let Some(size) = self.files.remove(&seq) {
            self.bytes -= size;
        }
        let path = self.path(seq);
        let to = path.with_extension("fhb.corrupt");
        std::fs::rename(&path, &to).map_err(io(&path))?;
        sync_dir(&self.dir).map_err(io(&self.dir))?;
        Ok(to)
    }

    /// Deletes batch `seq` (after delivery, or when a bound forces it out).
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`] if the file exists but cannot be removed.
    pub fn remove(&mut self, seq: u64) -> Result<(), SpoolError> {
        if let Some(size) = self.files.remove(&seq) {
            self.bytes -= size;
            let path = self.path(seq);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(())
    }

    /// Appends permanently rejected records to the dead-letter file.
    ///
    /// # Errors
    ///
    /// [`SpoolError::Io`].
    pub fn dead_letter(&self, records: &[Bytes]) -> Result<PathBuf, SpoolError> {
        let path = self.dir.join(DEAD_LETTER);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(io(&path))?;
        for r in records {
            f.write_all(r).map_err(io(&path))?;
        }
        f.sync_data().map_err(io(&path))?;
        Ok(path)
    }
}

/// Prefix of a process's spool directory under the stream's ([`claim`]).
pub const INSTANCE_PREFIX: &str = "agent-";
/// The lock file in a process's spool directory.
const LOCK_FILE: &str = "lock";

/// A spool directory this process owns (see the module doc, "One directory per process"):
/// the flock on its `lock` file is held until this is dropped.
#[derive(Debug)]
pub struct SpoolLock {
    dir: PathBuf,
    adopted: usize,
    _lock: std::fs::File,
}

impl SpoolLock {
    /// The directory owned.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Batches [`claim`] moved in from orphans and the stream directory (for the caller's log:
    /// this module stays free of logging and randomness crates, so the fuzz build compiles it
    /// alone).
    pub fn adopted_batches(&self) -> usize {
        self.adopted
    }
}

/// A fresh instance name's 64 random bits: std's per-process random hash keys over the pid, the
/// time and the attempt (unique enough: a name taken by another process is retried).
fn instance_bits(attempt: u32) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u32(attempt);
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Takes `dir/lock` with `flock(LOCK_EX | LOCK_NB)`: `Ok(None)` when another process holds it.
/// (std's `File::try_lock` is the same call, but newer than the workspace's MSRV.)
#[allow(unsafe_code)]
fn try_lock(dir: &Path) -> std::io::Result<Option<SpoolLock>> {
    use std::os::fd::AsRawFd;
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)?;
    // SAFETY: flock(2) on a descriptor owned by `file`, alive for the call; no memory is passed.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(Some(SpoolLock {
            dir: dir.to_path_buf(),
            adopted: 0,
            _lock: file,
        }));
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// `agent-*` directories under `base`, sorted.
fn instances(base: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(base).map_err(io(base))? {
        let entry = entry.map_err(io(base))?;
        let name = entry.file_name();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir && name.to_string_lossy().starts_with(INSTANCE_PREFIX) {
            v.push(entry.path());
        }
    }
    v.sort();
    Ok(v)
}

/// `(seq, path)` of the complete batch files directly in `dir`.
fn batch_files(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let seq = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("batch-"))
            .and_then(|n| n.strip_suffix(".fhb"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(seq) = seq {
            v.push((seq, path));
        }
    }
    v.sort();
    Ok(v)
}

/// Moves the batch files of `from` into `to` after `to`'s last sequence number, in order.
/// Returns how many moved; a file another process moved first is skipped.
fn adopt_batches(from: &Path, to: &Path) -> Result<usize, SpoolError> {
    let mut next = batch_files(to)?.last().map_or(0, |(s, _)| s + 1);
    let mut moved = 0;
    for (_, path) in batch_files(from)? {
        let dest = to.join(format!("batch-{next:020}.fhb"));
        match std::fs::rename(&path, &dest) {
            Ok(()) => {
                next += 1;
                moved += 1;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    if moved > 0 {
        sync_dir(to).map_err(io(to))?;
        sync_dir(from).map_err(io(from))?;
    }
    Ok(moved)
}

/// Claims this process's spool directory under the stream directory `base` (see the module
/// doc, "One directory per process"): adopts an orphan or makes a new one, and moves every
/// other orphan's batches (and a pre-subdirectory agent's, left in `base`) into it.
///
/// # Errors
///
/// [`SpoolError::Io`] if `base` cannot be created or read, or a lock cannot be taken for a
/// reason other than another process holding it.
pub fn claim(base: &Path) -> Result<SpoolLock, SpoolError> {
    create_private_dir(base).map_err(io(base))?;
    let mut mine = None;
    for dir in instances(base)? {
        if let Some(l) = try_lock(&dir).map_err(io(&dir))? {
            mine = Some(l);
            break;
        }
    }
    let mut tries = 0;
    let mine = loop {
        if let Some(l) = mine.take() {
            break l;
        }
        tries += 1;
        let dir = base.join(format!("{INSTANCE_PREFIX}{:016x}", instance_bits(tries)));
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            // Another process's name (or a racing adopter took our new one): pick again.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 16 => continue,
            Err(e) => return Err(io(&dir)(e)),
        }
        mine = try_lock(&dir).map_err(io(&dir))?;
        if tries >= 16 && mine.is_none() {
            return Err(io(&dir)(std::io::Error::other(
                "no spool directory could be locked",
            )));
        }
    };
    let _ = sync_dir(base);
    // Orphans' batches, then a pre-subdirectory agent's, join this process's spool.
    let mut adopted = 0;
    for dir in instances(base)? {
        if dir == mine.dir {
            continue;
        }
        if let Some(other) = try_lock(&dir).map_err(io(&dir))? {
            adopted += adopt_batches(other.dir(), mine.dir())?;
        }
    }
    adopted += adopt_batches(base, mine.dir())?;
    let mut mine = mine;
    mine.adopted = adopted;
    Ok(mine)
}

/// Creates `dir` (and parents) with mode 0700 if missing; tightens an existing spool directory
/// to 0700.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Err(std::io::Error::other(
            "not a directory (a symlink is not followed)",
        ));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Creates `path` anew with mode 0600, never following a symlink: a stale file (an interrupted
/// write) or a planted symlink there is removed first.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    create_fresh(path, 0o600)
}

fn read_header(path: &Path) -> Result<(u64, u64), SpoolError> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let len = f.metadata().map_err(io(path))?.len();
    let mut h = [0u8; HEADER_LEN];
    f.read_exact(&mut h).map_err(|_| SpoolError::Corrupt {
        path: path.into(),
        reason: "short header",
    })?;
    if &h[..8] != MAGIC {
        return Err(SpoolError::Corrupt {
            path: path.into(),
            reason: "bad magic",
        });
    }
    let mut lines = [0u8; 8];
    lines.copy_from_slice(&h[8..16]);
    Ok((u64::from_le_bytes(lines), len))
}

fn parse(path: &Path, data: Bytes) -> Result<Vec<Bytes>, SpoolError> {
    let corrupt = |reason| SpoolError::Corrupt {
        path: path.into(),
        reason,
    };
    if data.len() < HEADER_LEN || &data[..8] != MAGIC {
        return Err(corrupt("bad header"));
    }
    let u32_at = |i: usize| -> Option<usize> {
        let b = data.get(i..i + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let n = u32_at(16).ok_or_else(|| corrupt("bad header"))?;
    let mut at = HEADER_LEN;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let len = u32_at(at).ok_or_else(|| corrupt("truncated length"))?;
        at += 4;
        if at + len > data.len() {
            return Err(corrupt("truncated record"));
        }
        out.push(data.slice(at..at + len));
        at += len;
    }
    if at != data.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(name: &str) -> PathBuf {
        crate::sink::test_dir("spool", name)
    }

    #[test]
    fn write_read_remove_and_reopen_in_order() {
        let dir = tmpdir("rt");
        let (mut s, found, bad) = Spool::open(&dir).expect("open");
        assert!(found.is_empty() && bad.is_empty());
        let recs = vec![Bytes::from_static(b"a\nb\n"), Bytes::from_static(b"c\n")];
        s.write(7, &recs, 3).expect("write");
        s.write(3, &recs[1..], 1).expect("write");
        assert_eq!(s.read(7).expect("read"), recs);
        let total = s.bytes();
        drop(s);
        std::fs::write(dir.join("batch-00000000000000000009.fhb.tmp"), b"partial").expect("w");
        std::fs::write(dir.join("batch-00000000000000000010.fhb"), b"garbage!").expect("w");
        let (mut s, found, bad) = Spool::open(&dir).expect("reopen");
        assert_eq!(
            found.iter().map(|b| (b.seq, b.lines)).collect::<Vec<_>>(),
            vec![(3, 1), (7, 3)]
        );
        assert_eq!(s.bytes(), total);
        assert_eq!(bad.len(), 1, "the corrupt file is reported");
        assert!(dir.join("batch-00000000000000000010.fhb.corrupt").exists());
        assert!(!dir.join("batch-00000000000000000009.fhb.tmp").exists());
        s.remove(3).expect("remove");
        s.remove(7).expect("remove");
        assert_eq!(s.bytes(), 0);
        let p = s.dead_letter(&recs).expect("dead letter");
        assert_eq!(std::fs::read(p).expect("read"), b"a\nb\nc\n");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_truncated_body_is_quarantined_not_deleted() {
        let dir = tmpdir("trunc");
        let (mut s, _, _) = Spool::open(&dir).expect("open");
        let recs = vec![
            Bytes::from_static(b"line one\n"),
            Bytes::from_static(b"two\n"),
        ];
        s.write(5, &recs, 2).expect("write");
        let path = dir.join("batch-00000000000000000005.fhb");
        let full = std::fs::read(&path).expect("read");
        // A valid header, then the body cut short (a torn copy, a full disk).
        std::fs::write(&path, &full[..full.len() - 3]).expect("truncate");
        let (mut s, found, bad) = Spool::open(&dir).expect("reopen");
        assert_eq!(found.len(), 1, "the header is valid: queued at startup");
        assert!(bad.is_empty());
        let err = s.read(5).expect_err("the body is truncated");
        assert!(matches!(err, SpoolError::Corrupt { .. }), "{err}");
        let to = s.quarantine(5).expect("quarantine");
        assert_eq!(to, dir.join("batch-00000000000000000005.fhb.corrupt"));
        assert_eq!(
            std::fs::read(&to).expect("kept"),
            &full[..full.len() - 3],
            "the bytes are kept for inspection"
        );
        assert!(!path.exists());
        assert!(!s.contains(5));
        assert_eq!(s.bytes(), 0);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn spool_files_are_private_and_symlinks_are_not_followed() {
        use std::os::unix::fs::PermissionsExt;
        let root = tmpdir("modes");
        let dir = root.join("spool/stream");
        let (mut s, _, _) = Spool::open(&dir).expect("open");
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&dir), 0o700, "spool directory");
        // A symlink planted where the next temporary file goes must not be written through.
        let victim = root.join("victim");
        std::fs::write(&victim, b"untouched").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join("batch-00000000000000000001.fhb.tmp"))
            .expect("symlink");
        s.write(1, &[Bytes::from_static(b"a\n")], 1).expect("write");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"untouched");
        assert_eq!(mode(&dir.join("batch-00000000000000000001.fhb")), 0o600);
        // Nor the dead-letter file.
        std::os::unix::fs::symlink(&victim, dir.join(DEAD_LETTER)).expect("symlink");
        assert!(s.dead_letter(&[Bytes::from_static(b"x\n")]).is_err());
        assert_eq!(std::fs::read(&victim).expect("victim"), b"untouched");
        // A loose existing directory is tightened.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        drop(Spool::open(&dir).expect("reopen"));
        assert_eq!(mode(&dir), 0o700);
        // A symlinked spool directory is refused.
        let link = root.join("link");
        std::os::unix::fs::symlink(&dir, &link).expect("symlink dir");
        assert!(
            Spool::open(&link).is_err(),
            "a symlinked spool directory is refused"
        );
        std::fs::remove_dir_all(&root).ok();
    }
}
