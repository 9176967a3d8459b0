//! Load credentials: `key:secret` pairs from a file, one per line (seed 001's format), sent as
//! HTTP basic auth and spread round-robin over workers.
//!
//! # File format
//!
//! One `key:secret` per line, split at the first `:` (a secret may contain `:`); the key must
//! not be empty. Blank lines and lines starting with `#` are skipped; surrounding whitespace and
//! a trailing `\r` are trimmed.
//!
//! # Secrecy
//!
//! A credential never reaches a log, an error message or the output: [`Credential`]'s `Debug`
//! prints the key's length only, errors name the file and line number but not the line, and the
//! `Authorization` values built here are marked sensitive (hyper and `http` print them as
//! `Sensitive`).

use std::path::Path;

use http::HeaderValue;

/// One key and secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    key: String,
    secret: String,
}

/// The credentials of a run, in file order.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    list: Vec<Credential>,
}

/// Why a credentials file was refused. The messages never contain the file's content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CredentialsError {
    /// The file could not be read.
    #[error("{path}: {reason}")]
    Read {
        /// Path.
        path: String,
        /// The I/O error.
        reason: String,
    },
    /// A line is not `key:secret` with a non-empty key.
    #[error("{path} line {line}: expected key:secret (non-empty key)")]
    Malformed {
        /// Path.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// A key or secret holds a control character, which cannot go in a header.
    #[error("{path} line {line}: control characters are not allowed")]
    Control {
        /// Path.
        path: String,
        /// 1-based line number.
        line: usize,
    },
    /// No credentials in the file.
    #[error("{path}: no key:secret lines")]
    Empty {
        /// Path.
        path: String,
    },
}

// === impl Credential ===

impl Credential {
    /// The `Authorization: Basic …` value, marked sensitive.
    pub fn basic_auth(&self) -> HeaderValue {
        let token = base64(format!("{}:{}", self.key, self.secret).as_bytes());
        // Base64 is visible ASCII, which a header value always accepts.
        let mut v = HeaderValue::from_str(&format!("Basic {token}"))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }
}

impl Credential {
    /// The secret alone as a header value (a job's `LoadCredentials.header` mode), marked
    /// sensitive.
    pub fn secret_value(&self) -> HeaderValue {
        // Control characters are refused when parsing; anything else a header accepts.
        let mut v =
            HeaderValue::from_str(&self.secret).unwrap_or_else(|_| HeaderValue::from_static(""));
        v.set_sensitive(true);
        v
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credential")
            .field("key", &format_args!("<{} bytes>", self.key.len()))
            .field("secret", &format_args!("<redacted>"))
            .finish()
    }
}

// === impl Credentials ===

impl Credentials {
    /// Reads a credentials file (module docs).
    ///
    /// # Errors
    ///
    /// [`CredentialsError`] naming the file and line, never the content.
    pub fn from_file(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path).map_err(|e| CredentialsError::Read {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::parse(&path.display().to_string(), &text)
    }

    /// Parses the file's `text`; `path` only names it in errors.
    ///
    /// # Errors
    ///
    /// As [`Credentials::from_file`].
    pub fn parse(path: &str, text: &str) -> Result<Self, CredentialsError> {
        let mut list = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (key, secret) = line
                .split_once(':')
                .filter(|(k, _)| !k.trim().is_empty())
                .ok_or(CredentialsError::Malformed {
                    path: path.to_string(),
                    line: i + 1,
                })?;
            if line.chars().any(char::is_control) {
                return Err(CredentialsError::Control {
                    path: path.to_string(),
                    line: i + 1,
                });
            }
            list.push(Credential {
                key: key.trim().to_string(),
                secret: secret.trim().to_string(),
            });
        }
        if list.is_empty() {
            return Err(CredentialsError::Empty {
                path: path.to_string(),
            });
        }
        Ok(Credentials { list })
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.list.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The credential of worker `worker` (round-robin), if there are any.
    pub fn for_worker(&self, worker: usize) -> Option<&Credential> {
        match self.list.len() {
            0 => None,
            n => self.list.get(worker % n),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials(<{} redacted>)", self.list.len())
    }
}

/// Standard base64 with padding (RFC 4648 §4) — a dozen lines rather than a dependency.
fn base64(input: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o, "{i:?}");
        }
    }

    #[test]
    fn parses_pairs_and_rotates() {
        let c = Credentials::parse(
            "f",
            "# keys\nalice:s3cret\r\n\n  bob : pa:ss \nAladdin:open sesame\n",
        )
        .unwrap();
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.for_worker(2).unwrap().basic_auth(),
            "Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
        assert_eq!(c.for_worker(0), c.for_worker(3));
        assert_eq!(c.for_worker(1).unwrap().secret, "pa:ss");
        assert!(c.for_worker(0).unwrap().basic_auth().is_sensitive());
    }

    #[test]
    fn errors_and_debug_never_show_secrets() {
        let e = Credentials::parse("creds.txt", "alice:s3cret\nnocolon-s3cret\n").unwrap_err();
        assert_eq!(
            e,
            CredentialsError::Malformed {
                path: "creds.txt".into(),
                line: 2
            }
        );
        assert!(!e.to_string().contains("s3cret"), "{e}");
        assert!(matches!(
            Credentials::parse("f", ":s3cret"),
            Err(CredentialsError::Malformed { line: 1, .. })
        ));
        assert!(matches!(
            Credentials::parse("f", "a:b\u{7}"),
            Err(CredentialsError::Control { line: 1, .. })
        ));
        assert!(matches!(
            Credentials::parse("f", "# nothing\n\n"),
            Err(CredentialsError::Empty { .. })
        ));
        let c = Credentials::parse("f", "alice:s3cret").unwrap();
        for shown in [
            format!("{c:?}"),
            format!("{:?}", c.for_worker(0)),
            format!("{:?}", c.for_worker(0).unwrap().basic_auth()),
        ] {
            assert!(
                !shown.contains("s3cret") && !shown.contains("alice"),
                "{shown}"
            );
        }
    }
}
