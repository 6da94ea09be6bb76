//! No panic on any input; whatever the rewriter accepts comes out parsable and restricted.
#![no_main]

use libfuzzer_sys::fuzz_target;
use obsgate::lbac::promql;
use obsgate::selector::parse_selector;

fuzz_target!(|data: &[u8]| {
    let Ok(q) = std::str::from_utf8(data) else { return };
    let policy = parse_selector(r#"{env="prod", team=~"a|b"}"#).unwrap().matchers;
    let pm = vec![promql_parser::label::Matcher::new(promql_parser::label::MatchOp::Equal, "env", "prod")];
    if let Ok(out) = promql::rewrite(q, &policy) {
        let back = promql_parser::parser::parse(&out).expect("rewritten query parses");
        assert!(promql::is_restricted(&back, &pm), "unrestricted selector in {out}");
    }
    let _ = promql::rewrite_series_selector(q, &policy);
});
