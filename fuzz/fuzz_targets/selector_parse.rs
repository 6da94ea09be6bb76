//! The label-selector parser: no panic on any input; what it accepts prints in a canonical form
//! that parses back to the same form, and path-escaping it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obsgate::selector::parse_selector;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    if let Ok(sel) = parse_selector(s) {
        let printed = sel.to_string();
        let again = parse_selector(&printed).expect("the canonical form parses");
        assert_eq!(again.to_string(), printed);
        let _ = sel.path_escaped();
    }
});
