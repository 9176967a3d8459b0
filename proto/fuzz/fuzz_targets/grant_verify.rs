//! Relay grant verification: a relay reads the grant field straight off the wire from anyone.
//! Arbitrary bytes must be refused (never panic); only a grant made by `sign` with a trusted key
//! verifies, for the address it names. Public keys from peers are parsed from bytes too.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshlat_proto::grant::{GRANT_BYTES, Grant, GrantPublicKey, GrantSigner, PUBLIC_KEY_BYTES};

fuzz_target!(|data: &[u8]| {
    let signer = GrantSigner::derive_standalone(b"fuzz grant key of thirty-two byt");
    let keys = [signer.public_key()];
    let now = 1_700_000_000;
    if let Ok(g) = Grant::verify(data, &keys, now) {
        assert!(data.len() >= GRANT_BYTES, "a short field verified");
        // Ed25519 signatures are deterministic: what verified is exactly what `sign` makes.
        let again = signer.sign(g.dst, g.expires_unix);
        assert_eq!(&again[..], &data[..GRANT_BYTES]);
    }
    // A peer's public key as it arrives in a federation Directory.
    if let Ok(k) = GrantPublicKey::from_bytes(&data[..data.len().min(PUBLIC_KEY_BYTES)]) {
        let _ = Grant::verify(data, &[k], now);
    }
    let _ = meshlat_proto::grant::claimed_expiry(&{
        let mut f = [0u8; GRANT_BYTES];
        let n = data.len().min(GRANT_BYTES);
        f[..n].copy_from_slice(&data[..n]);
        f
    });
});
