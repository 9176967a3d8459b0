//! The join token an agent presents to its controller (DESIGN §3, "Security").
//!
//! Format: `mlt1.<hex SHA-256 of the controller's CA certificate (DER)>.<hex secret>`.
//!
//! - The CA hash pins the control plane's TLS: the agent accepts a server certificate only if it
//!   chains to a CA certificate, presented by the server, whose SHA-256 is the pinned value.
//! - The secret authenticates the agent; the controller stores only its SHA-256 and compares in
//!   constant time.
//!
//! The token is parsed here because both binaries must agree on it.

/// Version prefix of the token format.
pub const PREFIX: &str = "mlt1";

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// SHA-256 of the controller CA certificate (DER).
    pub ca_sha256: [u8; 32],
    /// The shared secret (lower-case hex, as printed).
    pub secret: String,
}

/// Why a token did not parse.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not three dot-separated parts starting with the version prefix.
    #[error("join token: expected {PREFIX}.<ca-sha256>.<secret>")]
    Format,
    /// The CA hash is not 64 hex digits.
    #[error("join token: the CA hash must be 64 hex digits")]
    CaHash,
    /// The secret is too short or not hex.
    #[error("join token: the secret must be at least 32 hex digits")]
    Secret,
}

impl JoinToken {
    /// Parses `mlt1.<ca>.<secret>`.
    ///
    /// # Errors
    ///
    /// [`TokenError`] saying which part is wrong (the secret is never echoed).
    pub fn parse(s: &str) -> Result<Self, TokenError> {
        let mut parts = s.trim().split('.');
        let (Some(PREFIX), Some(ca), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Format);
        };
        let ca = hex::decode(ca).map_err(|_| TokenError::CaHash)?;
        let ca_sha256: [u8; 32] = ca.try_into().map_err(|_| TokenError::CaHash)?;
        if secret.len() < 32 || hex::decode(secret).is_err() {
            return Err(TokenError::Secret);
        }
        Ok(JoinToken {
            ca_sha256,
            secret: secret.to_ascii_lowercase(),
        })
    }
}

impl std::fmt::Display for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{PREFIX}.{}.{}",
            hex::encode(self.ca_sha256),
            self.secret
        )
    }
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_sha256", &hex::encode(self.ca_sha256))
            .field("secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let t = JoinToken {
            ca_sha256: [0xab; 32],
            secret: "0123456789abcdef0123456789abcdef".into(),
        };
        let s = t.to_string();
        assert!(s.starts_with("mlt1.abab"));
        assert_eq!(JoinToken::parse(&s), Ok(t));
        assert!(!format!("{:?}", JoinToken::parse(&s)).contains("0123456789"));
        for (bad, want) in [
            ("x", TokenError::Format),
            ("mlt2.aa.bb", TokenError::Format),
            (
                "mlt1.zz.0123456789abcdef0123456789abcdef",
                TokenError::CaHash,
            ),
            (
                "mlt1.abab.0123456789abcdef0123456789abcdef",
                TokenError::CaHash,
            ),
            (
                &format!("mlt1.{}.short", "ab".repeat(32)),
                TokenError::Secret,
            ),
        ] {
            assert_eq!(JoinToken::parse(bad), Err(want), "{bad}");
        }
    }
}
