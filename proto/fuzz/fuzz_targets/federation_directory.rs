//! What a controller accepts from a federation peer: a Directory. Decodes or fails, never panics;
//! every peer job spec goes through the same validator as an operator's.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshlat_proto::{job, pb};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(d) = pb::Directory::decode(data) else {
        return;
    };
    for j in &d.jobs {
        if let Some(s) = &j.spec {
            let _ = job::validate(s);
        }
    }
});
