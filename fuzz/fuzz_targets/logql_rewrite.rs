//! No panic on any input; whatever the rewriter accepts has the policy in every stream selector
//! and is otherwise the input, byte for byte.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obsgate::lbac::logql;
use obsgate::selector::parse_selector;

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else { return };
    let policy = parse_selector(r#"{env="prod"}"#).unwrap().matchers;
    if let Ok(out) = logql::rewrite(q, &policy) {
        // every selector ends with the policy, and removing it gives back the input exactly
        let restored = logql::strip_policy(&out, &policy).expect("every selector carries the policy");
        assert_eq!(restored, q);
    }
});
