//! A job spec as the controller receives it over gRPC (StartJob/UpdateJob) and from its saved
//! state: decode, then the one validator. Never panics; a spec that validates re-validates after
//! an encode/decode round trip.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshlat_proto::{job, pb};
use prost::Message;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = pb::JobSpec::decode(data) else {
        return;
    };
    if job::validate(&spec).is_ok() {
        let again = pb::JobSpec::decode(spec.encode_to_vec().as_slice()).expect("re-decodes");
        assert!(job::validate(&again).is_ok());
    }
    if let Ok(jobs) = pb::StoredJobs::decode(data) {
        for j in &jobs.jobs {
            if let Some(s) = &j.spec {
                let _ = job::validate(s);
            }
        }
    }
});
