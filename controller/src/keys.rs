//! The mesh's UDP keys (DESIGN §4): the wire key every agent signs and accepts, and this
//! controller's relay-grant signing key, which never leaves it.
//!
//! - **Wire key** (HMAC): derived with HMAC-SHA256 from one root secret — the federation secret
//!   for federated controllers (`--federation-secret`), so an agent in any region accepts probes
//!   from every other region; for a lone controller, a secret derived from its CA private key
//!   (which it already keeps, and which survives restarts with it). Every agent holds it.
//! - **Grant key** (Ed25519): generated once per controller and kept in its data directory as
//!   [`GRANT_KEY_FILE`] (PKCS#8, mode 0600; with `--state-bucket` also in the bucket, like
//!   `ca.key`, see [`crate::store::mirror`]). The controller signs relay grants with it, only
//!   for the UDP addresses its agents (or its federation peers' agents) advertise. Relays are
//!   sent public keys only: this controller's and its live federation peers' (each peer's
//!   travels in the federation exchange), so neither a relay nor a source — nor an agent that
//!   merely holds the join token — can make a grant a relay accepts.
//!
//! Rotating the root (a new federation secret or CA) rotates the wire key. During a federation
//! secret rotation the wire keys of the other secret (`--federation-secret-next`,
//! `--federation-secret-previous`) are accepted too ([`MeshKeys::also_accepting`]) but never
//! signed with, so no probe fails while controllers move from one secret to the other; grants do
//! not depend on the secret, so they need no overlap. Deleting
//! [`GRANT_KEY_FILE`] (and its copy in the bucket) and restarting rotates the grant key, and
//! relays follow with the next job set (grants signed by the old key stop verifying at once, so
//! rotate in a quiet moment; the next push carries fresh grants).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use meshlat_proto::grant::{GRANT_BYTES, GrantPublicKey, GrantSigner};
use ring::hmac;

use crate::auth::AuthError;

const WIRE_LABEL: &[u8] = b"meshlat mesh wire key v1";

/// The grant signing key's file in the data directory.
pub const GRANT_KEY_FILE: &str = "grant.key";

/// Most grants kept in the signing cache (one per destination address per epoch).
const GRANT_CACHE_MAX: usize = 1 << 16;

/// Grants signed for one expiry (a new expiry starts afresh).
#[derive(Debug, Default)]
struct GrantCache {
    expires_unix: u64,
    grants: HashMap<SocketAddr, [u8; GRANT_BYTES]>,
}

/// The mesh's keys.
#[derive(Clone)]
pub struct MeshKeys {
    /// Wire key secret (hex, as agents' `--key` strings are text).
    wire: String,
    /// Wire key secrets of other roots accepted during a rotation (never signed with).
    also: Vec<String>,
    /// This controller's grant signer (private; never sent).
    grant: GrantSigner,
    /// Grants already signed for one expiry, by destination: Ed25519 signing costs tens of
    /// microseconds and a round asks for the same destination once per source.
    cache: Arc<Mutex<GrantCache>>,
}

impl std::fmt::Debug for MeshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MeshKeys {{ grant: {:?}, secrets: <redacted> }}",
            self.grant.public_key()
        )
    }
}

/// The wire key secret derived from `root` (see the module doc).
pub fn wire_secret(root: &[u8]) -> Vec<u8> {
    let k = hmac::Key::new(hmac::HMAC_SHA256, root);
    hex::encode(hmac::sign(&k, WIRE_LABEL).as_ref()).into_bytes()
}

impl MeshKeys {
    /// The wire key derived from `root`, and `grant` as the grant signer.
    pub fn new(root: &[u8], grant: GrantSigner) -> Self {
        MeshKeys {
            wire: String::from_utf8_lossy(&wire_secret(root)).into_owned(),
            also: Vec::new(),
            grant,
            cache: Arc::default(),
        }
    }

    /// Also accepts the wire keys derived from `roots` (a federation secret rotation), without
    /// signing with them. A root equal to the signing one is not listed twice.
    #[must_use]
    pub fn also_accepting<'a>(mut self, roots: impl IntoIterator<Item = &'a [u8]>) -> Self {
        for r in roots {
            let w = String::from_utf8_lossy(&wire_secret(r)).into_owned();
            if w != self.wire && !self.also.contains(&w) {
                self.also.push(w);
            }
        }
        self
    }

    /// Every wire key secret agents' reflectors must accept: the signing one first.
    pub fn accept_wire_secrets(&self) -> Vec<Vec<u8>> {
        std::iter::once(&self.wire)
            .chain(&self.also)
            .map(|w| w.as_bytes().to_vec())
            .collect()
    }

    /// The wire key secret, as sent in assignments and `accept_keys`.
    pub fn wire_secret(&self) -> Vec<u8> {
        self.wire.as_bytes().to_vec()
    }

    /// This controller's grant public key (sent to relays and federation peers).
    pub fn grant_public_key(&self) -> GrantPublicKey {
        self.grant.public_key()
    }

    /// A grant for forwarding to `dst` until `expires_unix`. Callers name only addresses
    /// agents advertise ([`crate::pinglist`]).
    pub fn sign(&self, dst: SocketAddr, expires_unix: u64) -> [u8; GRANT_BYTES] {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.expires_unix != expires_unix || cache.grants.len() >= GRANT_CACHE_MAX {
            cache.grants.clear();
            cache.expires_unix = expires_unix;
        }
        if let Some(g) = cache.grants.get(&dst) {
            return *g;
        }
        let g = self.grant.sign(dst, expires_unix);
        cache.grants.insert(dst, g);
        g
    }
}

/// Loads this controller's grant signer from `dir`, generating it (mode 0600) on first start.
///
/// # Errors
///
/// [`AuthError::Io`] if the file cannot be read or written, [`AuthError::Corrupt`] if it is
/// not an Ed25519 PKCS#8 key.
pub fn load_or_create_grant_signer(dir: &Path) -> Result<GrantSigner, AuthError> {
    let path = dir.join(GRANT_KEY_FILE);
    let corrupt = |reason: String| AuthError::Corrupt {
        path: path.clone(),
        reason,
    };
    if !path.exists() {
        let pkcs8 = GrantSigner::generate_pkcs8().map_err(|e| corrupt(e.to_string()))?;
        crate::auth::write_private(&path, &pkcs8)?;
        tracing::info!(message = "Relay grant signing key created.", path = %path.display());
    }
    let pkcs8 = std::fs::read(&path).map_err(|source| AuthError::Io {
        path: path.clone(),
        source,
    })?;
    let signer = GrantSigner::from_pkcs8(&pkcs8).map_err(|e| corrupt(e.to_string()))?;
    tracing::info!(
        message = "Relay grant signing key loaded.",
        key_id = %format!("{:#010x}", signer.public_key().id)
    );
    Ok(signer)
}

/// Expiry of grants issued at `now_unix`: aligned to `epoch_s`, valid between one and two
/// epochs, so grants computed within one epoch are identical (job sets do not churn) and a new
/// epoch's grants reach agents long before the old ones expire.
pub fn grant_expiry(now_unix: u64, epoch_s: u64) -> u64 {
    let epoch_s = epoch_s.max(1);
    (now_unix / epoch_s + 2) * epoch_s
}

#[cfg(test)]
pub(crate) fn test_signer(seed: &[u8]) -> GrantSigner {
    GrantSigner::derive_standalone(seed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshlat_proto::grant::{Grant, GrantError};

    #[test]
    fn wire_key_is_derived_and_grants_verify_only_with_the_controllers_public_key() {
        let a = MeshKeys::new(b"root", test_signer(b"a"));
        let b = MeshKeys::new(b"root", test_signer(b"b"));
        assert_eq!(a.wire_secret(), b.wire_secret(), "same root, same wire key");
        assert_ne!(
            a.wire_secret(),
            MeshKeys::new(b"other", test_signer(b"a")).wire_secret()
        );
        let dst: SocketAddr = "10.0.0.2:7710".parse().expect("addr");
        let g = a.sign(dst, 1_000);
        assert_eq!(g, a.sign(dst, 1_000), "cached and deterministic");
        let relay_keys = [a.grant_public_key()];
        assert_eq!(Grant::verify(&g, &relay_keys, 999).map(|g| g.dst), Ok(dst));
        // Another controller's grant is refused unless its public key is trusted too.
        assert_eq!(
            Grant::verify(&b.sign(dst, 1_000), &relay_keys, 999),
            Err(GrantError::Bad)
        );
        // A source holding only the wire key cannot make a grant the relay accepts.
        let forged = GrantSigner::derive_standalone(&a.wire_secret()).sign(dst, 1_000);
        assert_eq!(
            Grant::verify(&forged, &relay_keys, 999),
            Err(GrantError::Bad)
        );
        assert!(!format!("{a:?}").contains(&a.wire), "Debug redacts secrets");
    }

    #[test]
    fn rotation_accepts_both_roots_and_signs_with_the_current_one() {
        let k = |root: &[u8]| MeshKeys::new(root, test_signer(b"g"));
        let (old, new) = (k(b"old-root"), k(b"new-root"));
        let step1 = k(b"old-root").also_accepting([&b"new-root"[..]]);
        let step2 = k(b"new-root").also_accepting([&b"old-root"[..]]);
        assert_eq!(
            step1.wire_secret(),
            old.wire_secret(),
            "step 1 signs with the old key"
        );
        assert_eq!(
            step2.wire_secret(),
            new.wire_secret(),
            "step 2 signs with the new key"
        );
        for s in [&step1, &step2] {
            let w = s.accept_wire_secrets();
            assert!(w.contains(&old.wire_secret()) && w.contains(&new.wire_secret()));
        }
        assert_eq!(old.accept_wire_secrets(), vec![old.wire_secret()]);
        assert_eq!(
            k(b"r")
                .also_accepting([&b"r"[..]])
                .accept_wire_secrets()
                .len(),
            1,
            "the same root is not listed twice"
        );
    }

    #[test]
    fn grant_key_is_created_once_private_and_reloaded() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("meshlat-grant-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).expect("dir");
        let first = load_or_create_grant_signer(&dir).expect("created");
        let mode = std::fs::metadata(dir.join(GRANT_KEY_FILE))
            .expect("file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "private key file is 0600");
        let again = load_or_create_grant_signer(&dir).expect("loaded");
        assert_eq!(
            first.public_key(),
            again.public_key(),
            "same key after restart"
        );
        std::fs::write(dir.join(GRANT_KEY_FILE), b"garbage").expect("write");
        assert!(matches!(
            load_or_create_grant_signer(&dir),
            Err(AuthError::Corrupt { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn grant_expiry_is_epoch_aligned_and_one_to_two_epochs_away() {
        for now in [0u64, 1, 3_599, 3_600, 7_199, 1_700_000_123] {
            let e = grant_expiry(now, 3_600);
            assert_eq!(e % 3_600, 0);
            assert!(e > now + 3_600 - 1 && e <= now + 7_200, "{now} -> {e}");
            assert_eq!(
                e,
                grant_expiry(now - now % 3_600, 3_600),
                "stable in the epoch"
            );
        }
    }
}
