//! Admin-store figures (README "Several replicas: the shared admin store"):
//! 1. per-write latency of `POST /admin/api/v3/tokens` through the real gateway on the local
//!    backend, around 1k, 10k and 100k tokens (target ≤ 5 ms, flat);
//! 2. the time a new replica takes to start (catch up) on that store at 100k tokens;
//! 3. the requests an idle replica makes to the store per second.
//!
//! Run: `cargo bench --bench admin_store` (`ADMIN_BENCH_TOKENS=20000` for a shorter run).
//! `cargo test --benches` runs it with 300 tokens, as a smoke test.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use obsgate::token::TokenHash;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

fn config(dir: &Path, poll: &str) -> String {
    format!(
        "server:\n  listen: \"127.0.0.1:0\"\ncluster: local\nstore:\n  policy_files: [{}]\n  data_dir: {}\n  admin:\n    backend: local\n    poll_interval: {poll}\nbackends:\n  metrics:\n    kind: mimir\n    url: \"http://127.0.0.1:9\"\n",
        dir.join("policies.yaml").display(),
        dir.join("data").display()
    )
}

struct Conn {
    send: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Conn {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.set_nodelay(true).unwrap();
        let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
        tokio::spawn(conn);
        Conn { send }
    }

    async fn call(&mut self, method: &str, path: &str, auth: &str, body: String) -> (u16, Bytes) {
        let req = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "bench")
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.send.ready().await.unwrap();
        let resp = self.send.send_request(req).await.unwrap();
        let status = resp.status().as_u16();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn summary(lat: &mut [f64]) -> String {
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let mean = lat.iter().sum::<f64>() / lat.len() as f64;
    format!(
        "{:.2} | {:.2} | {:.2} | {:.2} | {:.2}",
        mean,
        pct(lat, 0.5),
        pct(lat, 0.99),
        pct(lat, 0.999),
        lat[lat.len() - 1]
    )
}

async fn metric(addr: SocketAddr, name: &str) -> f64 {
    let mut c = Conn::open(addr).await;
    let (_, body) = c.call("GET", "/metrics", "", String::new()).await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench");
    let total: usize = std::env::var("ADMIN_BENCH_TOKENS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if quick { 300 } else { 100_000 });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(total));
}

async fn run(total: usize) {
    let dir = tempfile::tempdir().unwrap();
    let admin_token = obsgate::token::mint_glc("", "admin", "bench-admin", "obsgate").unwrap();
    std::fs::write(
        dir.path().join("policies.yaml"),
        format!(
            "tenants:\n  - name: team-a\naccess_policies:\n  - name: admin\n    scopes: [admin]\n    realms: [{{tenant: team-a}}]\n  - name: bench\n    scopes: [metrics:read]\n    realms: [{{tenant: team-a}}]\ntokens:\n  - {{name: bench-admin, access_policy: admin, hash: \"{}\"}}\n",
            TokenHash::of(&admin_token).stored()
        ),
    )
    .unwrap();
    let cfg_path = dir.path().join("gateway.yaml");
    std::fs::write(&cfg_path, config(dir.path(), "1s")).unwrap();
    let cfg = obsgate::config::load(&cfg_path).unwrap();
    let gw = obsgate::proxy::server::start(cfg).await.unwrap();
    let addr = gw.shared_addr();
    let auth = format!("Bearer {admin_token}");
    let mut c = Conn::open(addr).await;

    // 1. writes: the latency of the writes around each mark (the 1,000 before it)
    let marks: Vec<usize> = [1_000, 10_000, 100_000]
        .into_iter()
        .filter(|m| *m <= total)
        .chain(std::iter::once(total))
        .collect();
    println!("| tokens | writes measured | mean ms | p50 ms | p99 ms | p99.9 ms | max ms |");
    println!("|---|---|---|---|---|---|---|");
    let window = 1000.min(total);
    let mut lat: Vec<f64> = Vec::with_capacity(window);
    let started = Instant::now();
    let mut printed = std::collections::BTreeSet::new();
    for i in 1..=total {
        let body = format!(r#"{{"name":"tok-{i:07}","access_policy":"bench"}}"#);
        let t = Instant::now();
        let (status, resp) = c.call("POST", "/admin/api/v3/tokens", &auth, body).await;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
        if i + window > marks.iter().copied().find(|m| *m >= i).unwrap_or(total) {
            lat.push(ms);
        }
        if marks.contains(&i) && printed.insert(i) {
            println!("| {i} | {} | {} |", lat.len(), summary(&mut lat));
            lat.clear();
        }
    }
    let write_secs = started.elapsed().as_secs_f64();
    println!(
        "\n{total} tokens created in {write_secs:.1} s ({:.0} writes/s, one client)",
        total as f64 / write_secs
    );
    let rss = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS"))
                .map(|l| l.to_string())
        })
        .unwrap_or_default();
    println!("bench process (gateway inside) {rss}");
    let files = std::fs::read_dir(dir.path().join("data/admin-log/log"))
        .map(|d| d.count())
        .unwrap_or(0);
    let checkpoints = std::fs::read_dir(dir.path().join("data/admin-log/checkpoints"))
        .map(|d| d.count())
        .unwrap_or(0);
    println!("store: {files} log entries, {checkpoints} checkpoints kept");

    // 2. a new replica on the same store: start-up until ready, with the state loaded
    let t = Instant::now();
    let cfg = obsgate::config::load(&cfg_path).unwrap();
    let second = obsgate::proxy::server::start(cfg).await.unwrap();
    let catch_up = t.elapsed();
    let mut c2 = Conn::open(second.shared_addr()).await;
    let (status, _) = c2
        .call(
            "GET",
            &format!("/admin/api/v3/tokens/tok-{total:07}"),
            &auth,
            String::new(),
        )
        .await;
    assert_eq!(status, 200, "the new replica has the last token");
    println!(
        "new replica at {total} tokens: ready with the whole state in {:.2} s",
        catch_up.as_secs_f64()
    );

    // 3. an idle replica's requests to the store
    let before = metric(second.shared_addr(), "obsgate_admin_store_requests_total").await;
    let idle = Duration::from_secs(if total <= 1000 { 3 } else { 10 });
    tokio::time::sleep(idle).await;
    let after = metric(second.shared_addr(), "obsgate_admin_store_requests_total").await;
    let per_sec = (after - before) / idle.as_secs_f64();
    println!(
        "idle replica (poll_interval 1s): {per_sec:.2} store requests/s; 100 replicas: {:.0} M requests per 30-day month",
        per_sec * 100.0 * 86_400.0 * 30.0 / 1e6
    );
    second.shutdown().await;
    gw.shutdown().await;
}
