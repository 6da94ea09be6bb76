//! The per-tenant controls file (`store.controls_file`), read as YAML and as JSON: no panic on
//! any input; every error names the file with a line and column from 1.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obsgate::controls::parse;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    for name in ["controls.yaml", "controls.json"] {
        match parse(Path::new(name), s) {
            Ok(set) => {
                // a valid set describes itself (obsgate check, the reload log line)
                let _ = set.to_string();
                assert!(set.blocks_active() <= set.blocked().len());
            }
            Err(e) => {
                assert!(!e.0.is_empty());
                for fe in &e.0 {
                    assert!(fe.line >= 1 && fe.column >= 1, "{fe}");
                    assert!(fe.to_string().starts_with(name), "{fe}");
                }
            }
        }
    }
});
