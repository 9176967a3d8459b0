//! The UDP wire decoder, as the reflector and relay meet it: any datagram from anyone.
//!
//! - `peek`, `decode`, `grant_field` and `session_seq` never panic on any bytes;
//! - a datagram sealed with a trusted key decodes to exactly what `Header::parse` reads, and the
//!   reflector's in-place reply keeps the length (no amplification) and decodes as a reply;
//! - the same bytes without the seal are refused unless they happen to carry a valid MAC.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshlat_agent_fuzz::wire::{self, Header, Key, MessageType, WireKey};

fuzz_target!(|data: &[u8]| {
    let key = WireKey::new(&Key::from_secret("fuzz wire key"));
    let keys = std::slice::from_ref(&key);
    let _ = wire::peek(data);
    let _ = wire::grant_field(data);
    let _ = wire::session_seq(data);
    let unsealed = wire::decode(data, keys);

    let mut buf = data.to_vec();
    let Ok(parsed) = Header::parse(&buf) else {
        assert!(unsealed.is_err(), "decode accepted what parse refuses");
        return;
    };
    // Seal with the trusted key (writing its id, as a real sender does), then decode.
    let mut h = parsed;
    h.key_id = key.id;
    if h.write(&mut buf).is_err() || wire::seal(&mut buf, &key).is_err() {
        return;
    }
    let decoded = wire::decode(&buf, keys).expect("a sealed packet decodes");
    assert_eq!(decoded, Header::parse(&buf).expect("parses"));
    if decoded.msg_type == MessageType::Request {
        let len = buf.len();
        wire::stamp_reply(&mut buf, &key, 1, 2, || 3).expect("stamps");
        assert_eq!(
            buf.len(),
            len,
            "a reply must never be larger than its request"
        );
        let r = wire::decode(&buf, keys).expect("a stamped reply decodes");
        assert_eq!(r.msg_type, MessageType::Reply);
        assert_eq!((r.session_id, r.seq), (decoded.session_id, decoded.seq));
    }
});
