//! What a controller accepts from an agent session: any bytes decode to an AgentMessage or an
//! error, never a panic, and decoding what was encoded gives the same message.
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
    // Not compared as bytes: map fields (JobAck.rejected) encode in hash order.
    assert_eq!(again.encoded_len(), bytes.len());
    // Equal as values, unless a lying agent's latency is NaN (never equal to itself).
    if !format!("{m:?}").contains("NaN") {
        assert_eq!(m, again);
    }
});
