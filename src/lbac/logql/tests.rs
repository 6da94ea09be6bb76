use super::*;
use crate::selector::parse_selector;

fn pol() -> Vec<Matcher> {
    parse_selector(r#"{env="prod"}"#).unwrap().matchers
}

/// Differential check against another implementation, for development: reads JSON strings
/// (one per line) from `$LOGQL_DIFF_IN`, writes `ok open:close …` or `err` per line to
/// `$LOGQL_DIFF_OUT`. `$LOGQL_DIFF_MODE=series` parses as a series selector.
#[test]
#[ignore]
fn differential_dump() {
    let (Ok(input), Ok(output)) = (
        std::env::var("LOGQL_DIFF_IN"),
        std::env::var("LOGQL_DIFF_OUT"),
    ) else {
        return;
    };
    let mode = if std::env::var("LOGQL_DIFF_MODE").as_deref() == Ok("series") {
        Mode::Series
    } else {
        Mode::Query
    };
    let mut out = String::new();
    for line in std::fs::read_to_string(input).unwrap().lines() {
        let q: String = serde_json::from_str(line).unwrap();
        match parse::parse(&q, mode, 100_000) {
            Ok(p) => {
                out.push_str("ok");
                for (o, c) in p.selectors {
                    out.push_str(&format!(" {o}:{c}"));
                }
                out.push('\n');
            }
            Err(parse::Error::Syntax(m)) => {
                out.push_str(&format!("err {}\n", serde_json::to_string(&m).unwrap()))
            }
            Err(parse::Error::TooDeep) => out.push_str("err \"too deep\"\n"),
        }
    }
    std::fs::write(output, out).unwrap();
}

#[test]
fn smoke() {
    let l = QueryLimits::default();
    assert_eq!(
        rewrite(r#"{app="x"}"#, &pol(), &l).unwrap(),
        r#"{app="x", env="prod"}"#
    );
}
