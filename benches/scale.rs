//! Scale figures: grows the policy set (1k → 100k tokens, 100 → 10k policies, realms with label
//! policies) and reports load time, memory held by the snapshot, and the cached per-request cost.
//! Run: `cargo bench --bench scale`. Targets: 100k tokens / 10k policies load in ≤ 1 s and
//! hold ≤ 100 MiB; the per-request cost stays flat.

use obsgate::policy::{RequestFacts, Scope, decide};
use obsgate::store::{Store, load::load_texts};
use obsgate::telemetry::Metrics;
use obsgate::token::TokenHash;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn token(i: usize) -> String {
    format!("glc_scale-token-{i:08}")
}

fn policy_text(tokens: usize, policies: usize) -> String {
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

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need
    println!(
        "| tokens | policies | file MiB | load s | snapshot MiB (RSS growth) | cached decision ns |"
    );
    println!("|---|---|---|---|---|---|");
    for (tokens, policies) in [(1_000, 100), (10_000, 1_000), (100_000, 10_000)] {
        let text = policy_text(tokens, policies);
        let before = rss_bytes();
        let t0 = Instant::now();
        let snap = load_texts(&[(Path::new("scale.yaml"), &text)], "local")
            .expect("generated set is valid");
        let load = t0.elapsed();
        let held = rss_bytes().saturating_sub(before);
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
            "| {tokens} | {policies} | {:.1} | {:.3} | {:.1} | {per:.0} |",
            text.len() as f64 / (1 << 20) as f64,
            load.as_secs_f64(),
            held as f64 / (1 << 20) as f64
        );
        drop(store);
    }
}
