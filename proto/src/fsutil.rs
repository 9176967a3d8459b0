//! Durable file replacement: write a temporary file, sync it, rename it over the target, then
//! sync the directory, so a crash or power loss leaves either the old or the new file — and the
//! rename itself survives (without the directory sync a rename can be lost after a power cut).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Syncs directory `dir`, making renames and creations in it durable.
///
/// # Errors
///
/// The I/O error.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Creates `path` anew with `mode` for writing, never following a symlink: a file or a planted
/// symlink already there is removed first.
///
/// # Errors
///
/// The I/O error.
pub fn create_fresh(path: &Path, mode: u32) -> std::io::Result<std::fs::File> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

/// Replaces `path` with `data` atomically and durably; the new file gets `mode`. The temporary
/// file (`.NAME.tmp` next to it) is created without following a symlink.
///
/// # Errors
///
/// The I/O error; the previous content of `path` is then intact.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp"));
    // A stale temporary file (a crash mid-write) is replaced; a symlink there is removed, not
    // followed.
    let mut f = create_fresh(&tmp, mode)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_with_mode_and_never_writes_through_a_symlink() {
        let dir = std::env::temp_dir().join(format!("meshlat-fsutil-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("dir");
        let target = dir.join("f");
        write_atomic(&target, b"one", 0o600).expect("write");
        write_atomic(&target, b"two", 0o600).expect("rewrite");
        assert_eq!(std::fs::read(&target).expect("read"), b"two");
        let mode = std::fs::metadata(&target)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // A symlink planted where the temporary file goes is not followed.
        let victim = dir.join("victim");
        std::fs::write(&victim, b"untouched").expect("victim");
        std::os::unix::fs::symlink(&victim, dir.join(".f.tmp")).expect("symlink");
        write_atomic(&target, b"three", 0o600).expect("write past the symlink");
        assert_eq!(std::fs::read(&victim).expect("victim"), b"untouched");
        assert_eq!(std::fs::read(&target).expect("read"), b"three");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
