//! Prometheus-style durations: `500ms`, `30s`, `5m`, `1h30m`, `2d`, `1w`, `1y`.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A duration parsed from Prometheus syntax; deserializes from a YAML string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromDuration(pub Duration);

pub fn parse(s: &str) -> Result<Duration, String> {
    let bad =
        || format!("invalid duration {s:?}: use Prometheus style such as 500ms, 30s, 5m, 1h30m");
    if s.is_empty() {
        return Err(bad());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let b = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u128 = 0;
    // units must appear in decreasing order, each at most once
    let mut last_rank = usize::MAX;
    while i < b.len() {
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(bad());
        }
        let n: u128 = s[start..i].parse().map_err(|_| bad())?;
        let ustart = i;
        while i < b.len() && b[i].is_ascii_alphabetic() {
            i += 1;
        }
        let (rank, ms) = match &s[ustart..i] {
            "y" => (7, 365 * 24 * 3_600_000),
            "w" => (6, 7 * 24 * 3_600_000),
            "d" => (5, 24 * 3_600_000),
            "h" => (4, 3_600_000),
            "m" => (3, 60_000),
            "s" => (2, 1_000),
            "ms" => (1, 1),
            _ => return Err(bad()),
        };
        if rank >= last_rank {
            return Err(bad());
        }
        last_rank = rank;
        total_ms = total_ms
            .checked_add(n.checked_mul(ms).ok_or_else(bad)?)
            .ok_or_else(bad)?;
    }
    let ms = u64::try_from(total_ms).map_err(|_| bad())?;
    Ok(Duration::from_millis(ms))
}

impl<'de> Deserialize<'de> for PromDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s)
            .map(PromDuration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_durations() {
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("1d"), Ok(Duration::from_secs(86400)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_durations() {
        for s in [
            "",
            "5",
            "s",
            "5x",
            "1.5s",
            "30m1h",
            "1s1s",
            "-1s",
            "99999999999999999999999y",
        ] {
            assert!(parse(s).is_err(), "{s} should be rejected");
        }
    }
}
