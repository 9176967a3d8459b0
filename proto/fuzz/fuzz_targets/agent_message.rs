//! What a controller accepts from an agent session: any bytes decode to an AgentMessage or an
//! error, never a panic, and decoding what was encoded gives the same message (compared as
//! bytes: a lying agent's NaN latencies are not equal to themselves).
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshlat_proto::pb;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = pb::AgentMessage::decode(data) else {
        return;
    };
    let bytes = m.encode_to_vec();
    let again = pb::AgentMessage::decode(bytes.as_slice()).expect("re-decodes");
    assert_eq!(bytes, again.encode_to_vec());
});
