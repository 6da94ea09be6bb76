//! The policy-file loader on JSON files: no panic and no stack overflow on any input; every
//! error names the file with a line.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obsgate::store::load::load_texts;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Err(e) = load_texts(&[(Path::new("policies.json"), s)], "local") {
        assert!(!e.0.is_empty());
        for fe in &e.0 {
            assert!(fe.to_string().starts_with("policies.json"), "{fe}");
        }
    }
});
