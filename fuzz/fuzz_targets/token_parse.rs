//! The token parser: no panic on any input; what it accepts is a glc_ or glsa_ token within
//! the length limit, and hashing it is stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obsgate::token::{self, TokenHash};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if token::parse(s).is_ok() {
        assert!(s.starts_with("glc_") || s.starts_with("glsa_"), "{s:?}");
        assert!(TokenHash::of(s) == TokenHash::of(s));
    }
});
