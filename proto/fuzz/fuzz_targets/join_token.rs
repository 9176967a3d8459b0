//! The join token parser (`mlt1.<ca-sha256>.<secret>`): any string an operator or attacker passes
//! as `--token` must parse or be refused, never panic; a parsed token round-trips its parts.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshlat_proto::token::JoinToken;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(t) = JoinToken::parse(s) {
        assert!(t.secret.len() >= 32);
        let again = format!("mlt1.{}.{}", hex::encode(t.ca_sha256), t.secret);
        assert!(JoinToken::parse(&again) == Ok(t));
    }
    if let Ok(b) = hex::decode(s) {
        assert_eq!(hex::decode(hex::encode(&b)), Ok(b));
    }
});
