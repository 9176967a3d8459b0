//! Relay grants: the 64-byte authorisation a relay needs before it forwards a packet (DESIGN §4).
//!
//! A relay forwards a `RelayForward` packet only to the destination named in the packet's grant
//! field, and only while the grant is unexpired and its tag verifies with a relay-grant key the
//! relay trusts. Standalone, that key is derived from a shared `--key`
//! ([`GrantKey::derive`]); under a controller, the controller signs grants with a key it gives
//! only to relay agents, so sources hold grants but cannot make them.
//!
//! Shared by the controller (which signs) and the agent (whose relay verifies), hence here.
//!
//! # Format (64 bytes, the wire's grant field; integers big-endian)
//!
//! ```text
//! offset  size  field
//! ------  ----  -----------------------------------------------------------------------------
//!      0     1  grant version = 1 (GRANT_VERSION)
//!      1     1  address family: 4 (IPv4) or 6 (IPv6)
//!      2     2  destination UDP port (u16, nonzero)
//!      4    16  destination IP: IPv4 in bytes 4..8 and zeros in 8..20, or the 16 IPv6 bytes
//!     20     8  expiry, unix seconds (u64): refused when now > expiry
//!     28     4  grant key id (u32): `GrantKey::id`, so relays can pick the key
//!     32    32  HMAC-SHA256 over bytes [0, 32) with the grant key
//! ```
//!
//! An all-zero field means "no grant". Verification checks the version, family, padding and
//! port, finds the key by id, checks the tag in constant time (ring), then the expiry.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use ring::hmac;

/// Size of the wire format's grant field (DESIGN §4).
pub const GRANT_BYTES: usize = 64;

/// The grant format version this module speaks.
pub const GRANT_VERSION: u8 = 1;
/// Bytes covered by the tag.
const SIGNED_BYTES: usize = 32;
/// Label mixed into the derivation of a standalone grant key from a shared `--key`.
const DERIVE_LABEL: &[u8] = b"meshlat relay grant key v1";

/// A relay-grant signing key and the id that names it.
#[derive(Clone)]
pub struct GrantKey {
    /// Id carried in grants (first 4 bytes of SHA-256 of the secret).
    pub id: u32,
    hmac: hmac::Key,
}

impl std::fmt::Debug for GrantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GrantKey {{ id: {:#010x} }}", self.id)
    }
}

impl GrantKey {
    /// A grant key from raw secret bytes (e.g. a controller secret).
    pub fn from_secret(secret: &[u8]) -> Self {
        let d = ring::digest::digest(&ring::digest::SHA256, secret);
        let b = d.as_ref();
        GrantKey {
            id: u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            hmac: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The standalone grant key of a shared wire key: HMAC-SHA256(secret, label), so a grant
    /// key is never the packet key itself.
    pub fn derive(key_secret: &[u8]) -> Self {
        let k = hmac::Key::new(hmac::HMAC_SHA256, key_secret);
        let tag = hmac::sign(&k, DERIVE_LABEL);
        Self::from_secret(tag.as_ref())
    }
}

/// The capability an agent whose UDP reflector relays (`--relay`) announces in its Hello; the
/// controller sends the relay-grant key only to agents announcing it.
pub const RELAY_CAPABILITY: &str = "relay-udp";

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
    /// Unknown version, family or key id, nonzero padding, port 0, or a tag mismatch.
    #[error("invalid grant")]
    Bad,
    /// Valid, but past its expiry.
    #[error("expired grant")]
    Expired,
}

impl Grant {
    /// Signs a grant for `dst` valid until `expires_unix`.
    pub fn sign(dst: SocketAddr, expires_unix: u64, key: &GrantKey) -> [u8; GRANT_BYTES] {
        let mut g = [0u8; GRANT_BYTES];
        g[0] = GRANT_VERSION;
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
        g[28..32].copy_from_slice(&key.id.to_be_bytes());
        let tag = hmac::sign(&key.hmac, &g[..SIGNED_BYTES]);
        g[SIGNED_BYTES..].copy_from_slice(tag.as_ref());
        g
    }

    /// Decodes and verifies `field` against `keys` at unix time `now_unix`.
    ///
    /// # Errors
    ///
    /// [`GrantError::Missing`] for an all-zero field, [`GrantError::Bad`] for anything
    /// malformed, unknown or forged, [`GrantError::Expired`] once `now_unix > expiry`.
    pub fn verify(field: &[u8], keys: &[GrantKey], now_unix: u64) -> Result<Self, GrantError> {
        let g: &[u8; GRANT_BYTES] = field.try_into().map_err(|_| GrantError::Bad)?;
        if g.iter().all(|b| *b == 0) {
            return Err(GrantError::Missing);
        }
        if g[0] != GRANT_VERSION {
            return Err(GrantError::Bad);
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
        let key = keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(GrantError::Bad)?;
        // Constant-time comparison of the full tag.
        hmac::verify(&key.hmac, &g[..SIGNED_BYTES], &g[SIGNED_BYTES..])
            .map_err(|_| GrantError::Bad)?;
        let mut e = [0u8; 8];
        e.copy_from_slice(&g[20..28]);
        let expires_unix = u64::from_be_bytes(e);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> GrantKey {
        GrantKey::derive(b"shared")
    }

    #[test]
    fn round_trip_v4_and_v6() {
        let k = key();
        for dst in [
            "10.1.2.3:7710".parse::<SocketAddr>().expect("addr"),
            "[2001:db8::1]:9".parse().expect("addr"),
        ] {
            let g = Grant::sign(dst, 1000, &k);
            assert_eq!(
                Grant::verify(&g, std::slice::from_ref(&k), 1000),
                Ok(Grant {
                    dst,
                    expires_unix: 1000,
                    key_id: k.id
                })
            );
        }
    }

    #[test]
    fn documented_bytes() {
        let k = key();
        let g = Grant::sign("1.2.3.4:258".parse().expect("addr"), 0x0102, &k);
        assert_eq!(&g[..8], &[1, 4, 1, 2, 1, 2, 3, 4]);
        assert_eq!(&g[8..20], &[0; 12]);
        assert_eq!(&g[20..28], &0x0102u64.to_be_bytes());
        assert_eq!(&g[28..32], &k.id.to_be_bytes());
    }

    #[test]
    fn expired_forged_missing_and_wrong_destination_are_refused() {
        let k = key();
        let keys = std::slice::from_ref(&k);
        let dst: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        let g = Grant::sign(dst, 100, &k);
        assert_eq!(Grant::verify(&g, keys, 101), Err(GrantError::Expired));
        assert_eq!(
            Grant::verify(&[0; GRANT_BYTES], keys, 0),
            Err(GrantError::Missing)
        );
        // Another destination swapped in: the tag no longer matches.
        let mut other = g;
        other[7] = 2;
        assert_eq!(Grant::verify(&other, keys, 0), Err(GrantError::Bad));
        let mut port = g;
        port[3] ^= 1;
        assert_eq!(Grant::verify(&port, keys, 0), Err(GrantError::Bad));
        // Extended expiry: forged.
        let mut later = g;
        later[27] = 0xFF;
        assert_eq!(Grant::verify(&later, keys, 0), Err(GrantError::Bad));
        // Signed by a key the relay does not trust (same id forged in).
        let evil = GrantKey::derive(b"evil");
        let mut forged = Grant::sign(dst, 100, &evil);
        forged[28..32].copy_from_slice(&k.id.to_be_bytes());
        assert_eq!(Grant::verify(&forged, keys, 0), Err(GrantError::Bad));
        assert_eq!(
            Grant::verify(&Grant::sign(dst, 100, &evil), keys, 0),
            Err(GrantError::Bad)
        );
        // The grant key is not the packet key.
        assert_ne!(
            GrantKey::from_secret(b"shared").id,
            GrantKey::derive(b"shared").id
        );
        assert_eq!(Grant::verify(&g[..10], keys, 0), Err(GrantError::Bad));
    }
}
