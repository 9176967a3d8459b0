//! The version header of meshlat's binary state files (controller `state/*.pb`, the agent's
//! `job-set.pb`), so a build never misreads a file a newer build wrote.
//!
//! # Format
//!
//! ```text
//! offset size
//!      0    5  magic: 0x00 'M' 'L' 'S' 'F'
//!      5    2  format version (u16, big-endian): FORMAT (1) for files written by this build
//!      7    …  the protobuf message
//! ```
//!
//! A protobuf message never starts with a 0x00 byte (field number 0 is invalid), so a file
//! without the header is told apart for sure: it is **format 0**, the header-less files of
//! 0.1.0 (the same protobuf message), which readers migrate (read, then rewrite with the
//! header). A file of a format above [`FORMAT`] is refused ([`StateFileError::TooNew`]) instead
//! of being decoded: protobuf would silently drop what it does not know. A build that predates
//! the header (0.1.0) fails to decode a headed file (field number 0) instead of misreading it.
//!
//! Bump [`FORMAT`] when the meaning of a stored message changes in a way an older build must
//! not guess at, and teach the readers to migrate the old format.

/// First bytes of a headed state file.
pub const MAGIC: [u8; 5] = *b"\0MLSF";
/// The state file format this build writes; it reads this and every older one.
pub const FORMAT: u16 = 1;
/// Header length.
pub const HEADER_BYTES: usize = MAGIC.len() + 2;

/// A state file this build cannot read.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StateFileError {
    /// Written by a newer build (a downgrade, or a file copied from a newer deployment).
    #[error(
        "state format {found}, written by a newer meshlat; this build ({build}) reads formats 0 to {supported}: refusing to misread it (run the newer release, or move the file aside to start without it)"
    )]
    TooNew {
        /// The file's format.
        found: u16,
        /// The newest format this build reads ([`FORMAT`]).
        supported: u16,
        /// This build's version.
        build: &'static str,
    },
    /// Starts with the magic but is cut short inside the header.
    #[error("truncated state file header ({len} bytes)")]
    Truncated {
        /// The file's length.
        len: usize,
    },
}

/// `message` with the current header.
pub fn encode(message: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(HEADER_BYTES + message.len());
    v.extend_from_slice(&MAGIC);
    v.extend_from_slice(&FORMAT.to_be_bytes());
    v.extend_from_slice(message);
    v
}

/// The format of `file` and its protobuf message (format 0: the whole file).
///
/// # Errors
///
/// [`StateFileError`] for a format above [`FORMAT`] or a cut header.
pub fn decode(file: &[u8]) -> Result<(u16, &[u8]), StateFileError> {
    if file.first() != Some(&0) {
        return Ok((0, file));
    }
    if file.len() < HEADER_BYTES || file[..MAGIC.len()] != MAGIC {
        return Err(StateFileError::Truncated { len: file.len() });
    }
    let found = u16::from_be_bytes([file[5], file[6]]);
    if found > FORMAT {
        return Err(StateFileError::TooNew {
            found,
            supported: FORMAT,
            build: env!("CARGO_PKG_VERSION"),
        });
    }
    Ok((found, &file[HEADER_BYTES..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headed_and_header_less_files_decode_and_newer_ones_are_refused() {
        let body = [0x08, 0x96, 0x01];
        let file = encode(&body);
        assert_eq!(&file[..5], b"\0MLSF");
        assert_eq!(decode(&file), Ok((FORMAT, &body[..])));
        // 0.1.0's files: the message alone.
        assert_eq!(decode(&body), Ok((0, &body[..])));
        assert_eq!(decode(&[]), Ok((0, &[][..])));
        let mut newer = file.clone();
        newer[5..7].copy_from_slice(&(FORMAT + 1).to_be_bytes());
        let e = decode(&newer).expect_err("newer");
        assert!(
            matches!(e, StateFileError::TooNew { found, supported: FORMAT, .. } if found == FORMAT + 1)
        );
        assert!(
            e.to_string().starts_with(&format!(
                "state format {}, written by a newer meshlat",
                FORMAT + 1
            )),
            "{e}"
        );
        assert_eq!(
            decode(&file[..6]),
            Err(StateFileError::Truncated { len: 6 })
        );
        assert!(matches!(
            decode(b"\0xxxxxxx"),
            Err(StateFileError::Truncated { .. })
        ));
    }
}
