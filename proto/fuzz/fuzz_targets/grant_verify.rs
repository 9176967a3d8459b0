//! Relay grant verification: a relay reads the grant field straight off the wire from anyone.
//! Arbitrary bytes must be refused (never panic); only a grant made by `sign` with a trusted key
//! verifies, for the address it names.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshlat_proto::grant::{GRANT_BYTES, Grant, GrantKey};

fuzz_target!(|data: &[u8]| {
    let key = GrantKey::from_secret(b"fuzz grant key of thirty-two byt");
    let now = 1_700_000_000;
    if let Ok(g) = Grant::verify(data, std::slice::from_ref(&key), now) {
        // Whatever verified must be exactly what `sign` makes for that grant.
        assert!(data.len() >= GRANT_BYTES, "a short field verified");
        let again = Grant::sign(g.dst, g.expires_unix, &key);
        assert_eq!(&again[..], &data[..GRANT_BYTES]);
    }
    let _ = meshlat_proto::grant::claimed_expiry(&{
        let mut f = [0u8; GRANT_BYTES];
        let n = data.len().min(GRANT_BYTES);
        f[..n].copy_from_slice(&data[..n]);
        f
    });
});
