//! Criterion benches for the request hot path: token parse + hash, the cached decision
//! (cache lookup + `decide`), the uncached lookup, credentials and route matching.
//!
//! Run: `cargo bench --bench hot_path`.

use base64::Engine as _;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method};
use obsgate::config::{BackendKind, BackendSlot};
use obsgate::policy::{RequestFacts, Scope, decide};
use obsgate::store::{Store, load::load_texts};
use obsgate::telemetry::Metrics;
use obsgate::token::{self, TokenHash};
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The gateway binary's allocator, so allocation costs are the ones it pays.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn glc(name: &str) -> String {
    let p = format!(
        r#"{{"o":"1","n":"bench-{name}","k":"k-{name}-0123456789abcdefghijklmnop","m":{{"r":"eu"}}}}"#
    );
    format!(
        "glc_{}",
        base64::engine::general_purpose::STANDARD.encode(p)
    )
}

/// A policy set with `n` tokens spread over 100 policies, each with a subnet list and a realm
/// with label policies, like a real multi-team deployment.
fn policy_text(n: usize) -> String {
    let mut s = String::from("tenants:\n");
    for t in 0..100 {
        s += &format!("  - name: tenant-{t:03}\n");
    }
    s += "access_policies:\n";
    for p in 0..100 {
        s += &format!(
            "  - name: policy-{p:03}\n    scopes: [metrics:read, metrics:write, logs:read]\n    realms:\n      - tenant: tenant-{p:03}\n        label_policies:\n          - selector: '{{env=\"prod\", team=~\"a|b\"}}'\n      - tenant: tenant-{:03}\n    conditions:\n      allowed_subnets: [\"10.0.0.0/8\", \"192.168.0.0/16\", \"127.0.0.0/8\"]\n",
            (p + 1) % 100
        );
    }
    s += "tokens:\n";
    for i in 0..n {
        s += &format!(
            "  - {{name: tok-{i}, access_policy: policy-{:03}, hash: \"{}\"}}\n",
            i % 100,
            TokenHash::of(&glc(&i.to_string())).stored()
        );
    }
    s
}

fn benches(c: &mut Criterion) {
    let glc_tok = glc("7");
    let glsa_tok = token::mint_glsa().unwrap();

    c.bench_function("token/parse_glc", |b| {
        b.iter(|| token::parse(black_box(&glc_tok)))
    });
    c.bench_function("token/parse_glsa", |b| {
        b.iter(|| token::parse(black_box(&glsa_tok)))
    });
    c.bench_function("token/parse_and_hash_glc", |b| {
        b.iter(|| {
            token::parse(black_box(&glc_tok)).unwrap();
            TokenHash::of(black_box(&glc_tok))
        })
    });

    let text = policy_text(10_000);
    let snap = load_texts(&[(Path::new("bench.yaml"), &text)], "local").unwrap();
    let store = Store::new(
        snap,
        100_000,
        Duration::from_secs(600),
        Arc::new(Metrics::new()),
    );
    let h = TokenHash::of(&glc_tok);
    let facts = RequestFacts {
        scope: Some(Scope::MetricsRead),
        label_policies_apply: true,
        client_ip: "10.1.2.3".parse().unwrap(),
        tenant_from_credentials: Some("tenant-007"),
        org_id_header: None,
        now_unix: 1_800_000_000,
    };
    {
        let s = store.snapshot();
        let id = store.identify(&s, &h).unwrap();
        decide(&id, &s.tenants, &s.cluster, &facts).unwrap();
    }

    c.bench_function(
        "decision/cached (snapshot + cache hit + decide), 10k tokens",
        |b| {
            b.iter(|| {
                let s = store.snapshot();
                let id = store.identify(&s, black_box(&h)).unwrap();
                let a = decide(&id, &s.tenants, &s.cluster, black_box(&facts)).unwrap();
                black_box(&a);
                a.label_policies.len()
            })
        },
    );
    let write_facts = RequestFacts {
        scope: Some(Scope::MetricsWrite),
        label_policies_apply: false,
        ..facts
    };
    c.bench_function(
        "decision/cached write (no label policies), 10k tokens",
        |b| {
            b.iter(|| {
                let s = store.snapshot();
                let id = store.identify(&s, black_box(&h)).unwrap();
                let a = decide(&id, &s.tenants, &s.cluster, black_box(&write_facts)).unwrap();
                black_box(&a);
                a.tenants.len()
            })
        },
    );
    // One forward-auth decision, the whole answer: read the nginx-form question, match the
    // route, authorize (cached token, subnet, tenant, realm, scope, label policies), build the
    // 200 with X-Scope-OrgID and X-Prom-Label-Policy, count it.
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _enter = rt.enter();
        let cfg = obsgate::config::parse(
            Path::new("/bench/gateway.yaml"),
            "backends:\n  metrics: { kind: mimir, url: \"http://127.0.0.1:9\" }\nforward_auth:\n  listen: \"127.0.0.1:0\"\nclient_ip:\n  trusted_proxies: [\"127.0.0.1/32\"]\n",
        )
        .unwrap();
        let metrics = Arc::new(Metrics::new());
        let snap = load_texts(&[(Path::new("bench.yaml"), &text)], "local").unwrap();
        let fa_store = Arc::new(Store::new(
            snap,
            100_000,
            Duration::from_secs(600),
            metrics.clone(),
        ));
        let gw = obsgate::proxy::Gateway::new(Arc::new(cfg), fa_store, metrics).unwrap();
        let peer: std::net::SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let uri: http::Uri = "/auth".parse().unwrap();
        for (name, tenant, want_lp) in [
            ("restricted read (one label policy)", "tenant-007", true),
            ("unrestricted read", "tenant-008", false),
        ] {
            let basic =
                base64::engine::general_purpose::STANDARD.encode(format!("{tenant}:{glc_tok}"));
            let mut q = HeaderMap::new();
            for (k, v) in [
                ("host", "127.0.0.1:8090".to_string()),
                ("x-original-method", "GET".to_string()),
                (
                    "x-original-uri",
                    "/prometheus/api/v1/query_range?query=sum%28rate%28http_requests_total%5B5m%5D%29%29&start=1700000000&end=1700003600&step=15".to_string(),
                ),
                ("x-forwarded-for", "10.1.2.3".to_string()),
                ("authorization", format!("Basic {basic}")),
                ("user-agent", "Grafana/11.3.0".to_string()),
                ("accept", "application/json".to_string()),
            ] {
                q.insert(
                    http::header::HeaderName::from_static(k),
                    HeaderValue::from_str(&v).unwrap(),
                );
            }
            let r = obsgate::proxy::forward_auth::answer(&gw, peer, &Method::GET, &uri, &q);
            assert_eq!(r.status(), 200, "{name}");
            assert_eq!(
                r.headers().contains_key("x-prom-label-policy"),
                want_lp,
                "{name}"
            );
            c.bench_function(
                &format!("forward_auth/answer {name}, cached token, 10k tokens"),
                |b| {
                    b.iter(|| {
                        obsgate::proxy::forward_auth::answer(
                            &gw,
                            peer,
                            &Method::GET,
                            black_box(&uri),
                            black_box(&q),
                        )
                        .status()
                    })
                },
            );
        }
    }
    c.bench_function("store/lookup_and_resolve uncached, 10k tokens", |b| {
        let s = store.snapshot();
        b.iter(|| s.resolve(s.lookup(black_box(&h)).unwrap()))
    });
    c.bench_function("store/lookup unknown token, 10k tokens", |b| {
        let s = store.snapshot();
        let unknown = TokenHash::of("glc_unknown");
        b.iter(|| s.lookup(black_box(&unknown)).is_none())
    });

    let mut headers = HeaderMap::new();
    let basic = base64::engine::general_purpose::STANDARD.encode(format!("tenant-007:{glc_tok}"));
    headers.insert(
        "authorization",
        HeaderValue::from_str(&format!("Basic {basic}")).unwrap(),
    );
    c.bench_function("auth/credentials_basic", |b| {
        b.iter(|| obsgate::auth::credentials(black_box(&headers)).unwrap())
    });

    let policy = obsgate::selector::parse_selector(r#"{env="prod", team=~"a|b"}"#)
        .unwrap()
        .matchers;
    let limits = obsgate::lbac::QueryLimits::default();
    let promql_cases = [
        ("simple", "up".to_string()),
        ("nested", "sum by (job) (rate(http_requests_total{code=~\"5..\"}[5m])) / sum by (job) (rate(http_requests_total[5m]))".to_string()),
        ("10 selectors", (0..10).map(|i| format!("rate(m{i}{{a=\"{i}\"}}[5m])")).collect::<Vec<_>>().join(" + ")),
    ];
    for (name, q) in &promql_cases {
        c.bench_function(&format!("lbac/promql_rewrite {name}"), |b| {
            b.iter(|| obsgate::lbac::promql::rewrite(black_box(q), &policy, &limits).unwrap())
        });
    }
    let cache = obsgate::lbac::RewriteCache::default();
    let nested = &promql_cases[1].1;
    c.bench_function(
        "lbac/promql_rewrite nested, cached (repeated dashboard query)",
        |b| {
            b.iter(|| {
                let key = format!(
                    "PromQL|query|{{env=\"prod\", team=~\"a|b\"}}\u{0}{}",
                    black_box(nested)
                );
                cache
                    .get_or_insert_with(key, || {
                        obsgate::lbac::promql::rewrite(nested, &policy, &limits)
                    })
                    .unwrap()
            })
        },
    );
    let logql_cases = [
        ("simple", r#"{app="x"}"#.to_string()),
        ("nested", r#"sum by (level) (count_over_time({app="x"} |= "error" | json | level!="debug" [5m])) / sum(count_over_time({app="x"}[5m]))"#.to_string()),
        ("10 selectors", (0..10).map(|i| format!("count_over_time({{a=\"{i}\"}} |= \"x\" [1m])")).collect::<Vec<_>>().join(" + ")),
    ];
    // a query at the default depth limit: the cost of the depth check plus a deep rewrite
    let deep = format!("{}up{}", "sum(".repeat(511), ")".repeat(511));
    c.bench_function("lbac/promql_depth check, depth 512", |b| {
        b.iter(|| obsgate::lbac::promql_depth::check(black_box(&deep), &limits).unwrap())
    });
    c.bench_function("lbac/promql_depth check, nested", |b| {
        b.iter(|| obsgate::lbac::promql_depth::check(black_box(nested), &limits).unwrap())
    });
    // queries at the default length limit (128 KiB): what one worst-case first sight costs
    let mut long_logql = String::from("sum(count_over_time({app=\"x\"}");
    while long_logql.len() < obsgate::lbac::DEFAULT_MAX_QUERY_BYTES - 100 {
        long_logql.push_str(" |= \"abc\" | json | x=\"y\" or n > 5");
    }
    long_logql.push_str(" [1m]))");
    c.bench_function("lbac/logql_rewrite 128 KiB pipeline", |b| {
        b.iter(|| obsgate::lbac::logql::rewrite(black_box(&long_logql), &policy, &limits).unwrap())
    });
    // 128 KiB of matchers in one selector: depth 1, the longest flat query
    let mut long_promql = String::from("up{");
    let mut i = 0;
    while long_promql.len() < obsgate::lbac::DEFAULT_MAX_QUERY_BYTES - 100 {
        long_promql.push_str(&format!("l{i}=\"value-{i}\", "));
        i += 1;
    }
    long_promql.push('}');
    c.bench_function("lbac/promql_rewrite 128 KiB selector", |b| {
        b.iter(|| {
            obsgate::lbac::promql::rewrite(black_box(&long_promql), &policy, &limits).unwrap()
        })
    });
    // 128 KiB of `or`: refused by the depth check alone, without parsing
    let mut or_chain = String::from("up");
    while or_chain.len() < obsgate::lbac::DEFAULT_MAX_QUERY_BYTES - 100 {
        or_chain.push_str(" or up");
    }
    c.bench_function(
        "lbac/promql_rewrite 128 KiB or-chain (refused: too deep)",
        |b| {
            b.iter(|| {
                obsgate::lbac::promql::rewrite(black_box(&or_chain), &policy, &limits).unwrap_err()
            })
        },
    );
    for (name, q) in &logql_cases {
        c.bench_function(&format!("lbac/logql_rewrite {name}"), |b| {
            b.iter(|| obsgate::lbac::logql::rewrite(black_box(q), &policy, &limits).unwrap())
        });
    }
    let sel = obsgate::selector::parse_selector(r#"{env="prod", team=~"a|b"}"#).unwrap();
    // selector matching against a label set (regexes compile on first use, then are reused)
    let labels = [("env", "prod"), ("team", "b"), ("job", "api")];
    let get = |n: &str| labels.iter().find(|(k, _)| *k == n).map(|(_, v)| *v);
    assert!(sel.matches(get));
    c.bench_function("selector/match 2 matchers (= and =~)", |b| {
        b.iter(|| black_box(&sel).matches(get))
    });

    c.bench_function("lbac/header_value_encoding first use", |b| {
        b.iter(|| {
            format!(
                "team-a:{}",
                obsgate::selector::path_escape(&black_box(&sel).to_string())
            )
        })
    });

    // the pipeline keeps each policy selector's escaped text: later requests only join
    c.bench_function("lbac/header_value_encoding cached", |b| {
        b.iter(|| {
            let escaped = black_box(&sel).path_escaped();
            let mut v = String::with_capacity(7 + escaped.len());
            v.push_str("team-a:");
            v.push_str(escaped);
            http::HeaderValue::try_from(v).unwrap()
        })
    });

    c.bench_function("route/match_mimir_query_range", |b| {
        b.iter(|| {
            obsgate::route::match_kind(
                BackendSlot::Metrics,
                BackendKind::Mimir,
                black_box(&Method::GET),
                black_box("/prometheus/api/v1/query_range"),
            )
        })
    });
}

criterion_group! {
    name = hot_path;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(hot_path);
