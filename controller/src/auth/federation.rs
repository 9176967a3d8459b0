//! The shared secrets controllers of a federation present to each other.

use super::{ct_eq, sha256};

/// The shared secrets controllers of a federation present to each other, held only hashed: the
/// current one and those accepted during a rotation (`--federation-secret-previous`,
/// `--federation-secret-next`).
#[derive(Clone)]
pub struct FederationSecret {
    sha256: Vec<[u8; 32]>,
}

impl std::fmt::Debug for FederationSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "FederationSecret(<{} hashed>)", self.sha256.len())
    }
}

impl FederationSecret {
    /// Hashes `secrets` (every one is accepted).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        FederationSecret {
            sha256: secrets
                .into_iter()
                .map(|s| sha256(s.trim().as_bytes()))
                .collect(),
        }
    }

    /// Whether `presented` is one of the secrets (constant time over the digests).
    pub fn check(&self, presented: &str) -> bool {
        let h = sha256(presented.trim().as_bytes());
        self.sha256.iter().fold(false, |ok, d| ct_eq(&h, d) | ok)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn federation_secret_accepts_every_listed_secret_only() {
        let f = FederationSecret::new(["current-secret", "previous-secret"]);
        assert!(f.check("current-secret") && f.check("previous-secret"));
        assert!(!f.check("other-secret"));
        assert!(!format!("{f:?}").contains("secret\""));
    }
}
