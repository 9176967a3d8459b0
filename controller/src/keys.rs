//! The mesh's UDP keys: the wire key every agent signs and accepts, and the relay-grant key only
//! relays hold (DESIGN §4).
//!
//! Both are derived from one root secret with HMAC-SHA256 and distinct labels:
//!
//! - federated controllers (`--federation-secret`) derive from the federation secret, so an agent
//!   in any region accepts probes from every other region and a relay anywhere accepts grants
//!   signed by any controller of the federation;
//! - a lone controller derives from its CA private key (a secret it already keeps, and that
//!   survives restarts with it).
//!
//! Sources get the wire key (in each `Assignment.key`) and grants, never the grant key, so a
//! source cannot authorise a relay to forward anywhere a controller did not name. Rotating the
//! root (a new federation secret or CA) rotates both keys; during a federation secret rotation
//! the keys of the other secret (`--federation-secret-next`, `--federation-secret-previous`) are
//! accepted too ([`MeshKeys::also_accepting`]) but never signed with, so no probe or relayed
//! packet fails while controllers move from one secret to the other.

use std::net::SocketAddr;

use meshlat_proto::grant::{GRANT_BYTES, Grant, GrantKey};
use meshlat_proto::token::hex_encode;
use ring::hmac;

const WIRE_LABEL: &[u8] = b"meshlat mesh wire key v1";
const GRANT_LABEL: &[u8] = b"meshlat mesh relay grant key v1";

/// The mesh's keys.
#[derive(Clone)]
pub struct MeshKeys {
    /// Wire key secret (hex, as agents' `--key` strings are text).
    wire: String,
    /// Grant key secret.
    grant_secret: Vec<u8>,
    grant: GrantKey,
    /// Keys of other roots still (or already) accepted during a rotation: wire and grant
    /// secrets. Never signed with.
    also: Vec<(String, Vec<u8>)>,
}

impl std::fmt::Debug for MeshKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "MeshKeys {{ grant: {:?}, secrets: <redacted> }}",
            self.grant
        )
    }
}

impl MeshKeys {
    /// Derives both keys from `root`.
    pub fn derive(root: &[u8]) -> Self {
        let k = hmac::Key::new(hmac::HMAC_SHA256, root);
        let wire = hex_encode(hmac::sign(&k, WIRE_LABEL).as_ref());
        let grant_secret = hmac::sign(&k, GRANT_LABEL).as_ref().to_vec();
        MeshKeys {
            wire,
            grant: GrantKey::from_secret(&grant_secret),
            grant_secret,
            also: Vec::new(),
        }
    }

    /// These keys, with the keys derived from each of `roots` also accepted (by reflectors and
    /// relays) but never used to sign: a federation secret rotation's overlap window.
    pub fn also_accepting<'a>(mut self, roots: impl IntoIterator<Item = &'a [u8]>) -> Self {
        for r in roots {
            let k = MeshKeys::derive(r);
            if k.wire != self.wire && !self.also.iter().any(|(w, _)| *w == k.wire) {
                self.also.push((k.wire, k.grant_secret));
            }
        }
        self
    }

    /// Every wire key secret reflectors accept (`JobSet.accept_keys`): the signing key first.
    pub fn accept_wire_secrets(&self) -> Vec<Vec<u8>> {
        std::iter::once(self.wire.as_bytes().to_vec())
            .chain(self.also.iter().map(|(w, _)| w.as_bytes().to_vec()))
            .collect()
    }

    /// Every grant key secret relays accept (`JobSet.grant_keys`): the signing key first.
    pub fn accept_grant_secrets(&self) -> Vec<Vec<u8>> {
        std::iter::once(self.grant_secret.clone())
            .chain(self.also.iter().map(|(_, g)| g.clone()))
            .collect()
    }

    /// The wire key secret, as sent in assignments and `accept_keys`.
    pub fn wire_secret(&self) -> Vec<u8> {
        self.wire.as_bytes().to_vec()
    }

    /// The relay-grant key secret, sent only to relays.
    pub fn grant_secret(&self) -> Vec<u8> {
        self.grant_secret.clone()
    }

    /// A grant for forwarding to `dst` until `expires_unix`.
    pub fn sign(&self, dst: SocketAddr, expires_unix: u64) -> [u8; GRANT_BYTES] {
        Grant::sign(dst, expires_unix, &self.grant)
    }
}

/// Expiry of grants issued at `now_unix`: aligned to `epoch_s`, valid between one and two
/// epochs, so grants computed within one epoch are identical (job sets do not churn) and a new
/// epoch's grants reach agents long before the old ones expire.
pub fn grant_expiry(now_unix: u64, epoch_s: u64) -> u64 {
    let epoch_s = epoch_s.max(1);
    (now_unix / epoch_s + 2) * epoch_s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_stable_and_grants_verify_only_with_the_grant_key() {
        let a = MeshKeys::derive(b"root");
        let b = MeshKeys::derive(b"root");
        assert_eq!(a.wire_secret(), b.wire_secret(), "same root, same keys");
        assert_ne!(a.wire_secret(), MeshKeys::derive(b"other").wire_secret());
        assert_ne!(a.wire_secret(), a.grant_secret());
        let dst: SocketAddr = "10.0.0.2:7710".parse().expect("addr");
        let g = a.sign(dst, 1_000);
        let relay_keys = [GrantKey::from_secret(&b.grant_secret())];
        assert_eq!(Grant::verify(&g, &relay_keys, 999).map(|g| g.dst), Ok(dst));
        // A source holding only the wire key cannot make a grant the relay accepts.
        let forged = Grant::sign(dst, 1_000, &GrantKey::from_secret(&a.wire_secret()));
        assert!(Grant::verify(&forged, &relay_keys, 999).is_err());
        assert!(!format!("{a:?}").contains(&a.wire), "Debug redacts secrets");
    }

    #[test]
    fn rotation_accepts_both_roots_and_signs_with_the_current_one() {
        let old = MeshKeys::derive(b"old-root");
        let new = MeshKeys::derive(b"new-root");
        let step1 = MeshKeys::derive(b"old-root").also_accepting([&b"new-root"[..]]);
        let step2 = MeshKeys::derive(b"new-root").also_accepting([&b"old-root"[..]]);
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
        for k in [&step1, &step2] {
            let w = k.accept_wire_secrets();
            assert!(w.contains(&old.wire_secret()) && w.contains(&new.wire_secret()));
            let g = k.accept_grant_secrets();
            assert!(g.contains(&old.grant_secret()) && g.contains(&new.grant_secret()));
        }
        assert_eq!(old.accept_wire_secrets(), vec![old.wire_secret()]);
        assert_eq!(
            MeshKeys::derive(b"r")
                .also_accepting([&b"r"[..]])
                .accept_wire_secrets()
                .len(),
            1,
            "the same root is not listed twice"
        );
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
