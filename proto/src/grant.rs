//! Relay grants: the 96-byte authorisation a relay needs before it forwards a packet (DESIGN §4).
//!
//! A relay forwards a `RelayForward` packet only to the destination named in the packet's grant
//! field, and only while the grant is unexpired and its **Ed25519 signature** verifies with a
//! grant public key the relay trusts. Verifying needs only public keys, so no relay (and no
//! source, which merely carries grants) can make a grant; only the holder of a private key can.
//!
//! Who holds which key:
//!
//! - **Under a controller**, each controller generates its own key pair once
//!   ([`GrantSigner::generate_pkcs8`]) and keeps the private key in its data directory; it
//!   signs grants only for UDP addresses its agents advertise. Relays are sent the public keys
//!   of every controller of the federation ([`GrantPublicKey`]) and trust nothing else.
//! - **Standalone** (`agent serve --relay --key K` and `agent probe relay://...`, no
//!   controller), both ends derive the same key pair from the shared `--key`
//!   ([`GrantSigner::derive_standalone`]). Anyone holding `K` can then sign grants, but anyone
//!   holding `K` can already send authenticated packets to that relay: the standalone relay
//!   trusts exactly the parties its operator gave `K` to, as before. An agent under a
//!   controller never trusts a key derived from a `--key` (every agent holds the mesh wire
//!   key, so such a key would let any agent mint grants).
//!
//! Shared by the controller (which signs) and the agent (whose relay verifies), hence here.
//!
//! # Format (96 bytes, the wire's grant field; integers big-endian)
//!
//! ```text
//! offset  size  field
//! ------  ----  -----------------------------------------------------------------------------
//!      0     1  grant version = 2 (GRANT_VERSION); version 1 was the HMAC grant, now refused
//!      1     1  address family: 4 (IPv4) or 6 (IPv6)
//!      2     2  destination UDP port (u16, nonzero)
//!      4    16  destination IP: IPv4 in bytes 4..8 and zeros in 8..20, or the 16 IPv6 bytes
//!     20     8  expiry, unix seconds (u64): refused when now > expiry
//!     28     4  key id (u32): first 4 bytes of SHA-256 of the signer's public key
//!     32    64  Ed25519 signature over SIGN_LABEL ‖ bytes [0, 32)
//! ```
//!
//! An all-zero field means "no grant". Verification checks the version, family, padding and
//! port, then the signature with every trusted key whose id matches (ids are only a hint), then
//! the expiry. `SIGN_LABEL` (`"meshlat relay grant v2\0"`) keeps a grant signature from being
//! valid for any other message signed with the same key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ring::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Size of the wire format's grant field (DESIGN §4).
pub const GRANT_BYTES: usize = 96;

/// The grant format version this module speaks (1 was the HMAC grant, no longer accepted).
pub const GRANT_VERSION: u8 = 2;
/// Bytes covered by the signature (after the label).
const SIGNED_BYTES: usize = 32;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Domain separation: prefixed to the signed bytes.
const SIGN_LABEL: &[u8] = b"meshlat relay grant v2\0";
/// Label of the standalone key pair's seed, derived from a shared `--key`.
const DERIVE_LABEL: &[u8] = b"meshlat standalone relay grant ed25519 seed v2";

/// The capability an agent whose UDP reflector relays (`--relay`) announces in its Hello. It is
/// only a claim: the controller makes an agent a relay when its operator policy allows it
/// (`controller --relay-agent`), never because of the claim alone.
pub const RELAY_CAPABILITY: &str = "relay-udp";

/// A grant key that cannot be used.
#[derive(Clone, Debug, Eq, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantKeyError {
    /// The private key is not an Ed25519 PKCS#8 document.
    #[error("not an Ed25519 PKCS#8 private key: {0}")]
    Pkcs8(String),
    /// A public key of the wrong length.
    #[error("grant public key is {got} bytes, not {PUBLIC_KEY_BYTES}")]
    PublicKeyLength {
        /// Length received.
        got: usize,
    },
    /// The system random number generator failed.
    #[error("random number generator failed")]
    Rng,
}

/// An Ed25519 public key relays verify grants with, and its id.
#[derive(Clone, Copy, Eq, Hash, Ord, PartialEq, PartialOrd)]
pub struct GrantPublicKey {
    /// Id carried in grants (first 4 bytes of SHA-256 of the key).
    pub id: u32,
    bytes: [u8; PUBLIC_KEY_BYTES],
}

impl std::fmt::Debug for GrantPublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrantPublicKey {{ id: {:#010x} }}", self.id)
    }
}

impl GrantPublicKey {
    /// A public key from its 32 raw bytes.
    ///
    /// # Errors
    ///
    /// [`GrantKeyError::PublicKeyLength`] for any other length.
    pub fn from_bytes(b: &[u8]) -> Result<Self, GrantKeyError> {
        let bytes: [u8; PUBLIC_KEY_BYTES] = b
            .try_into()
            .map_err(|_| GrantKeyError::PublicKeyLength { got: b.len() })?;
        let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
        let h = d.as_ref();
        Ok(GrantPublicKey {
            id: u32::from_be_bytes([h[0], h[1], h[2], h[3]]),
            bytes,
        })
    }

    /// The 32 raw bytes (as sent to relays and peers).
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        &self.bytes
    }
}

/// An Ed25519 private key that signs grants: a controller's (never sent anywhere), or the
/// standalone one derived from a shared `--key`.
#[derive(Clone)]
pub struct GrantSigner {
    pair: Arc<Ed25519KeyPair>,
    public: GrantPublicKey,
}

impl std::fmt::Debug for GrantSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrantSigner {{ id: {:#010x} }}", self.public.id)
    }
}

impl GrantSigner {
    /// A new random key pair as a PKCS#8 v2 document (what a controller stores).
    ///
    /// # Errors
    ///
    /// [`GrantKeyError::Rng`] if the system RNG fails.
    pub fn generate_pkcs8() -> Result<Vec<u8>, GrantKeyError> {
        let rng = ring::rand::SystemRandom::new();
        Ed25519KeyPair::generate_pkcs8(&rng)
            .map(|d| d.as_ref().to_vec())
            .map_err(|_| GrantKeyError::Rng)
    }

    /// The signer of a stored PKCS#8 document.
    ///
    /// # Errors
    ///
    /// [`GrantKeyError::Pkcs8`] if it is not an Ed25519 key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, GrantKeyError> {
        let pair =
            Ed25519KeyPair::from_pkcs8(pkcs8).map_err(|e| GrantKeyError::Pkcs8(e.to_string()))?;
        Ok(Self::of(pair))
    }

    /// The standalone key pair of a shared wire key (see the module doc for when it is
    /// trusted): seed = HMAC-SHA256(secret, label).
    pub fn derive_standalone(key_secret: &[u8]) -> Self {
        let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key_secret);
        let seed = ring::hmac::sign(&k, DERIVE_LABEL);
        // A 32-byte seed is always accepted (the length is the only check).
        match Ed25519KeyPair::from_seed_unchecked(seed.as_ref()) {
            Ok(pair) => Self::of(pair),
            Err(_) => unreachable!("HMAC-SHA256 output is a 32-byte Ed25519 seed"),
        }
    }

    fn of(pair: Ed25519KeyPair) -> Self {
        let public = match GrantPublicKey::from_bytes(pair.public_key().as_ref()) {
            Ok(p) => p,
            Err(_) => unreachable!("ring's Ed25519 public keys are 32 bytes"),
        };
        GrantSigner {
            pair: Arc::new(pair),
            public,
        }
    }

    /// The public key relays verify this signer's grants with.
    pub fn public_key(&self) -> GrantPublicKey {
        self.public
    }

    /// Signs a grant for `dst` valid until `expires_unix`.
    pub fn sign(&self, dst: SocketAddr, expires_unix: u64) -> [u8; GRANT_BYTES] {
        let mut g = grant_head(GRANT_VERSION, dst, expires_unix);
        g[28..32].copy_from_slice(&self.public.id.to_be_bytes());
        let sig = self.pair.sign(&signed_message(&g));
        g[SIGNED_BYTES..].copy_from_slice(sig.as_ref());
        g
    }
}

/// `SIGN_LABEL ‖ g[0..32]`.
fn signed_message(g: &[u8; GRANT_BYTES]) -> [u8; SIGN_LABEL.len() + SIGNED_BYTES] {
    let mut m = [0u8; SIGN_LABEL.len() + SIGNED_BYTES];
    m[..SIGN_LABEL.len()].copy_from_slice(SIGN_LABEL);
    m[SIGN_LABEL.len()..].copy_from_slice(&g[..SIGNED_BYTES]);
    m
}

/// The expiry (unix seconds) a grant field claims, without verifying it: for the holder of a
/// grant (a source), which cannot verify it, to tell one grant epoch from the next.
pub fn claimed_expiry(g: &[u8; GRANT_BYTES]) -> u64 {
    let mut e = [0u8; 8];
    e.copy_from_slice(&g[20..28]);
    u64::from_be_bytes(e)
}

/// A decoded, verified grant.
#[derive(Clone, Copy, Debug, Eq, PartialEq)]
pub struct Grant {
    /// Where the relay may forward.
    pub dst: SocketAddr,
    /// Unix seconds after which the grant is refused.
    pub expires_unix: u64,
    /// Id of the signing key.
    pub key_id: u32,
}

/// Why a grant was refused.
#[derive(Clone, Copy, Debug, Eq, PartialEq, thiserror::Error)]
pub enum GrantError {
    /// The field is all zeros.
    #[error("no grant")]
    Missing,
    /// Another grant version, e.g. 1: the forgeable HMAC grant of earlier builds.
    #[error("grant version {0} is not accepted (this build speaks {GRANT_VERSION})")]
    Version(u8),
    /// Malformed (family, padding, port), or signed by no key the relay trusts.
    #[error("invalid grant")]
    Bad,
    /// Valid, but past its expiry.
    #[error("expired grant")]
    Expired,
}

impl Grant {
    /// Decodes and verifies `field` against the trusted `keys` at unix time `now_unix`.
    ///
    /// # Errors
    ///
    /// [`GrantError::Missing`] for an all-zero field, [`GrantError::Version`] for another
    /// format version, [`GrantError::Bad`] for anything malformed, unknown or forged,
    /// [`GrantError::Expired`] once `now_unix > expiry`.
    pub fn verify(
        field: &[u8],
        keys: &[GrantPublicKey],
        now_unix: u64,
    ) -> Result<Self, GrantError> {
        let g: &[u8; GRANT_BYTES] = field.try_into().map_err(|_| GrantError::Bad)?;
        if g.iter().all(|b| *b == 0) {
            return Err(GrantError::Missing);
        }
        if g[0] != GRANT_VERSION {
            return Err(GrantError::Version(g[0]));
        }
        let port = u16::from_be_bytes([g[2], g[3]]);
        let ip = match g[1] {
            4 if g[8..20].iter().all(|b| *b == 0) => {
                IpAddr::V4(Ipv4Addr::new(g[4], g[5], g[6], g[7]))
            }
            6 => {
                let mut o = [0u8; 16];
                o.copy_from_slice(&g[4..20]);
                IpAddr::V6(Ipv6Addr::from(o))
            }
            _ => return Err(GrantError::Bad),
        };
        if port == 0 {
            return Err(GrantError::Bad);
        }
        let key_id = u32::from_be_bytes([g[28], g[29], g[30], g[31]]);
        let msg = signed_message(g);
        let sig = &g[SIGNED_BYTES..];
        let signed = keys.iter().filter(|k| k.id == key_id).any(|k| {
            UnparsedPublicKey::new(&signature::ED25519, k.as_bytes())
                .verify(&msg, sig)
                .is_ok()
        });
        if !signed {
            return Err(GrantError::Bad);
        }
        let expires_unix = claimed_expiry(g);
        if now_unix > expires_unix {
            return Err(GrantError::Expired);
        }
        Ok(Grant {
            dst: SocketAddr::new(ip, port),
            expires_unix,
            key_id,
        })
    }
}

/// Current unix time in seconds (0 before 1970).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A grant's fields before the key id and signature: version, address family, port, address
/// and expiry (module docs, "Format").
fn grant_head(version: u8, dst: SocketAddr, expires_unix: u64) -> [u8; GRANT_BYTES] {
    let mut g = [0u8; GRANT_BYTES];
    g[0] = version;
    match dst.ip() {
        IpAddr::V4(ip) => {
            g[1] = 4;
            g[4..8].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            g[1] = 6;
            g[4..20].copy_from_slice(&ip.octets());
        }
    }
    g[2..4].copy_from_slice(&dst.port().to_be_bytes());
    g[20..28].copy_from_slice(&expires_unix.to_be_bytes());
    g
}

/// A version-1 grant as earlier builds made it (HMAC-SHA256 with a shared secret, 64 bytes),
/// placed in a current-size field: for tests showing that relays refuse the old format.
#[doc(hidden)]
pub fn legacy_hmac_grant(dst: SocketAddr, expires_unix: u64, secret: &[u8]) -> [u8; GRANT_BYTES] {
    let mut g = grant_head(1, dst, expires_unix);
    let d = ring::digest::digest(&ring::digest::SHA256, secret);
    g[28..32].copy_from_slice(&d.as_ref()[..4]);
    let k = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&k, &g[..32]);
    g[32..64].copy_from_slice(tag.as_ref());
    g
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> GrantSigner {
        GrantSigner::derive_standalone(b"shared")
    }

    #[test]
    fn round_trip_v4_and_v6() {
        let s = signer();
        let keys = [s.public_key()];
        for dst in [
            "10.1.2.3:7710".parse::<SocketAddr>().expect("addr"),
            "[2001:db8::1]:9".parse().expect("addr"),
        ] {
            let g = s.sign(dst, 1000);
            assert_eq!(
                Grant::verify(&g, &keys, 1000),
                Ok(Grant {
                    dst,
                    expires_unix: 1000,
                    key_id: s.public_key().id
                })
            );
        }
    }

    #[test]
    fn documented_bytes() {
        let s = signer();
        let g = s.sign("1.2.3.4:258".parse().expect("addr"), 0x0102);
        assert_eq!(&g[..8], &[2, 4, 1, 2, 1, 2, 3, 4]);
        assert_eq!(&g[8..20], &[0; 12]);
        assert_eq!(&g[20..28], &0x0102u64.to_be_bytes());
        let d = ring::digest::digest(&ring::digest::SHA256, s.public_key().as_bytes());
        assert_eq!(&g[28..32], &d.as_ref()[..4]);
        // The signature is Ed25519 over the label and the first 32 bytes.
        let mut msg = SIGN_LABEL.to_vec();
        msg.extend_from_slice(&g[..32]);
        UnparsedPublicKey::new(&signature::ED25519, s.public_key().as_bytes())
            .verify(&msg, &g[32..])
            .expect("documented signature");
    }

    #[test]
    fn generated_keys_round_trip_through_pkcs8_and_differ() {
        let a = GrantSigner::generate_pkcs8().expect("rng");
        let b = GrantSigner::generate_pkcs8().expect("rng");
        let sa = GrantSigner::from_pkcs8(&a).expect("pkcs8");
        assert_eq!(
            sa.public_key(),
            GrantSigner::from_pkcs8(&a).expect("pkcs8").public_key()
        );
        assert_ne!(
            sa.public_key(),
            GrantSigner::from_pkcs8(&b).expect("pkcs8").public_key()
        );
        assert!(matches!(
            GrantSigner::from_pkcs8(b"not a key"),
            Err(GrantKeyError::Pkcs8(_))
        ));
        assert_eq!(
            GrantPublicKey::from_bytes(&[1; 31]),
            Err(GrantKeyError::PublicKeyLength { got: 31 })
        );
        let pk = GrantPublicKey::from_bytes(sa.public_key().as_bytes()).expect("32 bytes");
        assert_eq!(pk, sa.public_key());
    }

    #[test]
    fn expired_forged_missing_old_and_wrong_destination_are_refused() {
        let s = signer();
        let keys = [s.public_key()];
        let dst: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let g = s.sign(dst, 100);
        assert_eq!(Grant::verify(&g, &keys, 101), Err(GrantError::Expired));
        assert_eq!(
            Grant::verify(&[0; GRANT_BYTES], &keys, 0),
            Err(GrantError::Missing)
        );
        // Another destination swapped in: the signature no longer matches.
        let mut other = g;
        other[7] = 2;
        assert_eq!(Grant::verify(&other, &keys, 0), Err(GrantError::Bad));
        let mut port = g;
        port[3] ^= 1;
        assert_eq!(Grant::verify(&port, &keys, 0), Err(GrantError::Bad));
        // Extended expiry: forged.
        let mut later = g;
        later[27] = 0xFF;
        assert_eq!(Grant::verify(&later, &keys, 0), Err(GrantError::Bad));
        // Signed by a key the relay does not trust, with or without the trusted key's id.
        let evil = GrantSigner::derive_standalone(b"evil");
        let mut forged = evil.sign(dst, 100);
        forged[28..32].copy_from_slice(&s.public_key().id.to_be_bytes());
        assert_eq!(Grant::verify(&forged, &keys, 0), Err(GrantError::Bad));
        assert_eq!(
            Grant::verify(&evil.sign(dst, 100), &keys, 0),
            Err(GrantError::Bad)
        );
        // No trusted keys at all: nothing verifies.
        assert_eq!(Grant::verify(&g, &[], 0), Err(GrantError::Bad));
        // The old HMAC format, even made with the secret the relay's key is derived from.
        assert_eq!(
            Grant::verify(&legacy_hmac_grant(dst, 100, b"shared"), &keys, 0),
            Err(GrantError::Version(1))
        );
        assert_eq!(Grant::verify(&g[..10], &keys, 0), Err(GrantError::Bad));
        // Several trusted keys: each verifies its own grants.
        let both = [evil.public_key(), s.public_key()];
        assert!(Grant::verify(&g, &both, 0).is_ok());
        assert!(Grant::verify(&evil.sign(dst, 100), &both, 0).is_ok());
    }

    #[test]
    fn debug_does_not_print_key_material() {
        let s = signer();
        let shown = format!("{s:?} {:?}", s.public_key());
        assert!(!shown.contains(&format!("{:?}", s.public_key().as_bytes())));
    }
}
