//! The JSON job spec, as `POST /api/v1/jobs`, `PUT /api/v1/jobs/{id}` and `controller job start`
//! take it from an operator (or an attacker with a credential): parse, then the one validator.
//! Never panics; a spec that parses prints back to JSON that parses to the same spec.
#![no_main]
use libfuzzer_sys::fuzz_target;
use meshlat_controller_fuzz::json;
use meshlat_proto::job;

fuzz_target!(|data: &[u8]| {
    let Ok(spec) = json::parse_spec(data) else {
        return;
    };
    let _ = job::validate(&spec);
    let back = json::spec_to_value(&spec);
    let again = json::spec_from_value(&back).expect("a printed spec parses");
    assert_eq!(spec, again);
});
