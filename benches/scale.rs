//! Scale figures: grows the policy set (1k → 100k tokens, 100 → 10k policies, realms with label
//! policies), writes it as YAML and as JSON, and reports for each the load time, the peak memory
//! during the load, the memory held by the snapshot, and the cached per-request cost.
//! Run: `cargo bench --bench scale`. Targets: 100k tokens / 10k policies load in ≤ 1 s and
//! hold ≤ 100 MiB; the per-request cost stays flat.
//!
//! Each (size, format) case runs in a fresh child process (this binary again, with
//! `SCALE_CASE=<tokens>:<yaml|json>`), so that one case's freed heap cannot hide the next one's
//! peak. A child loads its text three times and reports the fastest and slowest (wall time, and
//! the least CPU time); memory is taken from the first load (`/proc/self/statm` for RSS, `VmHWM`
//! after resetting it for the peak). It then loads the same text with one bad reference added at
//! the end: a set that fails is parsed and validated twice (the second time keeping positions
//! for the error messages), so that is the cost of a failing reload.

use obsgate::policy::{RequestFacts, Scope, decide};
use obsgate::store::{Store, load::load_texts};
use obsgate::telemetry::Metrics;
use obsgate::token::TokenHash;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const SIZES: [(usize, usize); 3] = [(1_000, 100), (10_000, 1_000), (100_000, 10_000)];

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .map(|pages| pages * 4096)
        .unwrap_or(0)
}

/// The process's peak RSS (`VmHWM`), in bytes.
fn peak_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// CPU time this thread has used (`/proc/thread-self/schedstat`), which a busy machine inflates
/// less than wall time.
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .map(Duration::from_nanos)
        .unwrap_or_default()
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0). False if the kernel refuses.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn token(i: usize) -> String {
    format!("glc_scale-token-{i:08}")
}

fn policy_yaml(tokens: usize, policies: usize) -> String {
    let tenants = policies.min(1000);
    let mut s = String::with_capacity(tokens * 130 + policies * 400);
    s += "tenants:\n";
    for t in 0..tenants {
        s += &format!("  - name: tenant-{t:05}\n");
    }
    s += "access_policies:\n";
    for p in 0..policies {
        s += &format!(
            "  - name: policy-{p:05}\n    scopes: [metrics:read, logs:read]\n    realms:\n      - tenant: tenant-{:05}\n        label_policies:\n          - selector: '{{env=\"prod\", team=~\"t{p}|shared\"}}'\n          - selector: [{{type: EQ, name: env, value: stage}}]\n    conditions:\n      allowed_subnets: [\"10.0.0.0/8\", \"127.0.0.0/8\"]\n",
            p % tenants
        );
    }
    s += "tokens:\n";
    for i in 0..tokens {
        s += &format!(
            "  - {{name: tok-{i}, access_policy: policy-{:05}, hash: \"{}\"}}\n",
            i % policies,
            TokenHash::of(&token(i)).stored()
        );
    }
    s
}

/// The same set as [`policy_yaml`], as JSON with one object per line.
fn policy_json(tokens: usize, policies: usize) -> String {
    let tenants = policies.min(1000);
    let mut s = String::with_capacity(tokens * 140 + policies * 400);
    s += "{\n\"tenants\": [\n";
    for t in 0..tenants {
        let sep = if t + 1 < tenants { "," } else { "" };
        s += &format!("  {{\"name\": \"tenant-{t:05}\"}}{sep}\n");
    }
    s += "],\n\"access_policies\": [\n";
    for p in 0..policies {
        let sep = if p + 1 < policies { "," } else { "" };
        s += &format!(
            "  {{\"name\": \"policy-{p:05}\", \"scopes\": [\"metrics:read\", \"logs:read\"], \"realms\": [{{\"tenant\": \"tenant-{:05}\", \"label_policies\": [{{\"selector\": \"{{env=\\\"prod\\\", team=~\\\"t{p}|shared\\\"}}\"}}, {{\"selector\": [{{\"type\": \"EQ\", \"name\": \"env\", \"value\": \"stage\"}}]}}]}}], \"conditions\": {{\"allowed_subnets\": [\"10.0.0.0/8\", \"127.0.0.0/8\"]}}}}{sep}\n",
            p % tenants
        );
    }
    s += "],\n\"tokens\": [\n";
    for i in 0..tokens {
        let sep = if i + 1 < tokens { "," } else { "" };
        s += &format!(
            "  {{\"name\": \"tok-{i}\", \"access_policy\": \"policy-{:05}\", \"hash\": \"{}\"}}{sep}\n",
            i % policies,
            TokenHash::of(&token(i)).stored()
        );
    }
    s += "]\n}\n";
    s
}

const MIB: f64 = (1 << 20) as f64;

/// One case, in this process: prints its table row.
fn run_case(tokens: usize, format: &str) {
    let policies = SIZES
        .iter()
        .find(|(t, _)| *t == tokens)
        .map(|(_, p)| *p)
        .expect("a known size");
    let (text, name) = match format {
        "yaml" => (policy_yaml(tokens, policies), "scale.yaml"),
        "json" => (policy_json(tokens, policies), "scale.json"),
        other => panic!("unknown format {other}"),
    };
    let before = rss_bytes();
    let peak_known = reset_peak();
    let (t0, c0) = (Instant::now(), cpu_time());
    let snap = load_texts(&[(Path::new(name), &text)], "local").expect("generated set is valid");
    let (first, first_cpu) = (t0.elapsed(), cpu_time() - c0);
    let held = rss_bytes().saturating_sub(before);
    let peak = if peak_known {
        format!("{:.1}", peak_bytes().saturating_sub(before) as f64 / MIB)
    } else {
        "n/a".to_string()
    };
    let c = snap.counts();
    assert_eq!(
        (c.tokens, c.access_policies, c.tenants),
        (tokens, policies, policies.min(1000))
    );
    // two more loads for the spread of the time
    let (mut times, mut cpu) = (vec![first], first_cpu);
    for _ in 0..2 {
        let (t, c) = (Instant::now(), cpu_time());
        let again = load_texts(&[(Path::new(name), &text)], "local").expect("valid");
        times.push(t.elapsed());
        cpu = cpu.min(cpu_time() - c);
        drop(black_box(again));
    }
    let min = times.iter().min().unwrap().as_secs_f64();
    let max = times.iter().max().unwrap().as_secs_f64();
    // the same set with one unknown reference at the end
    let bad = match format {
        "yaml" => {
            text.clone()
                + "  - {name: bad, access_policy: no-such-policy, hash: \"sha256:0000000000000000000000000000000000000000000000000000000000000000\"}\n"
        }
        _ => {
            let cut = text.rfind("\n]").expect("the token list's end");
            format!(
                "{},\n  {{\"name\": \"bad\", \"access_policy\": \"no-such-policy\", \"hash\": \"sha256:{}\"}}{}",
                &text[..cut],
                "0".repeat(64),
                &text[cut..]
            )
        }
    };
    let (t, c) = (Instant::now(), cpu_time());
    let errs = load_texts(&[(Path::new(name), &bad)], "local").expect_err("one bad reference");
    let (failing, failing_cpu) = (t.elapsed().as_secs_f64(), (cpu_time() - c).as_secs_f64());
    assert_eq!(errs.0.len(), 1, "{errs}");
    assert!(
        errs.0[0].line as usize == bad.lines().count() - usize::from(format == "json") * 2,
        "{errs}"
    );

    let store = Store::new(
        snap,
        100_000,
        Duration::from_secs(600),
        Arc::new(Metrics::new()),
    );
    // cached decisions over a spread of tokens
    let hashes: Vec<TokenHash> = (0..1000)
        .map(|i| TokenHash::of(&token(i * tokens / 1000)))
        .collect();
    let facts = RequestFacts {
        scope: Some(Scope::MetricsRead),
        label_policies_apply: true,
        client_ip: "10.1.2.3".parse().unwrap(),
        tenant_from_credentials: None,
        org_id_header: None,
        now_unix: 1_800_000_000,
    };
    let rounds = 200;
    let mut ok = 0usize;
    let t1 = Instant::now();
    for _ in 0..rounds {
        for h in &hashes {
            let s = store.snapshot();
            let id = store.identify(&s, black_box(h)).expect("known token");
            if decide(&id, &s.tenants, &s.cluster, black_box(&facts)).is_ok() {
                ok += 1;
            }
        }
    }
    let per = t1.elapsed().as_nanos() as f64 / (rounds * hashes.len()) as f64;
    assert_eq!(ok, rounds * hashes.len());
    println!(
        "| {tokens} | {policies} | {format} | {:.1} | {min:.3}–{max:.3} | {:.3} | {failing:.3} ({failing_cpu:.3}) | {peak} | {:.1} | {per:.0} |",
        text.len() as f64 / MIB,
        cpu.as_secs_f64(),
        held as f64 / MIB,
    );
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need
    if let Ok(case) = std::env::var("SCALE_CASE") {
        let (tokens, format) = case.split_once(':').expect("SCALE_CASE=<tokens>:<format>");
        run_case(tokens.parse().expect("a token count"), format);
        return;
    }
    println!(
        "| tokens | policies | format | file MiB | load s (3 runs) | load CPU s (best) | failing load s (CPU s) | peak RSS growth MiB (load) | RSS growth MiB (snapshot held) | cached decision ns |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    let exe = std::env::current_exe().expect("own path");
    for (tokens, _) in SIZES {
        for format in ["yaml", "json"] {
            let status = std::process::Command::new(&exe)
                .env("SCALE_CASE", format!("{tokens}:{format}"))
                .status()
                .expect("run a case");
            assert!(status.success(), "case {tokens}:{format} failed");
        }
    }
}
